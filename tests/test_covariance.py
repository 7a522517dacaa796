"""Covariance structures of random-effects terms (jaxmlm/_covariance.py): us, diag, cs, ar1.

* The maps: each structure's Σ = σ² T Tᵀ equals its definition built densely
  here; T is lower triangular; SDs and correlations map back to the parameters.
* glmmTMB 1.1.5 parity (tests/reference/structures/, made by
  make_structures_reference.R): log-likelihood within 1e-4, fixed effects
  within 0.002 SE, covariance matrices within 1e-3 relative.
* Exact equivalences: homogeneous cs of (0 + f | g) ≡ (1 | g) + (1 | g:f)
  (correlation ≥ 0), identity ≡ (1 | g:f), diag(1 + x | g) ≡ (1 + x || g).
* Every consumer names a structured term's parameters the same way; bad
  structures are clear errors.
"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm
from jaxmlm import FormulaError, FormulaSyntaxError
from jaxmlm._covariance import make_structure

REF_DIR = Path(__file__).parent / "reference" / "structures"
REF = json.loads((REF_DIR / "structures_reference.json").read_text())
CASES = [k for k, v in REF.items() if isinstance(v, dict) and "formula" in v]


@pytest.fixture(scope="module")
def panel():
    return pd.read_csv(REF_DIR / "panel.csv")


# ---- the maps ------------------------------------------------------------------------------------


def _dense(kind: str, hom: bool, k: int, par: np.ndarray) -> np.ndarray:
    """Σ/σ² from the definitions (independent of the module's factor)."""
    if kind == "us":
        T = np.zeros((k, k))
        jj, ii = np.triu_indices(k)
        T[ii, jj] = par
        return T @ T.T
    ns = 1 if hom else k
    if kind == "diag" and not hom:
        return np.diag(par**2)  # T = diag(par): each parameter one entry of T, as lme4's θ
    s = np.broadcast_to(par[:ns] ** 2, (k,))
    if kind == "diag":
        return np.diag(s**2)
    eta = par[ns]
    if kind == "ar1":
        rho = np.tanh(eta)
        C = rho ** np.abs(np.subtract.outer(np.arange(k), np.arange(k)))
    else:
        rho = (np.exp(eta) - 1) / (np.exp(eta) + k - 1)
        C = np.full((k, k), rho) + (1 - rho) * np.eye(k)
    return np.outer(s, s) * C


@pytest.mark.parametrize("kind, hom, k", [("us", False, 3), ("diag", False, 3), ("diag", True, 4), ("cs", False, 4),
                                          ("cs", True, 5), ("ar1", True, 5), ("ar1", False, 3), ("cs", False, 2)])
def test_factor_matches_the_definition_and_sdcor_maps_back(kind, hom, k):
    cov = make_structure(kind, k, hom)
    rng = np.random.default_rng(k)
    for _ in range(3):
        par = rng.normal(size=cov.nparams) * 0.8
        T = np.asarray(cov.factor(jnp.asarray(par)))
        assert np.allclose(np.triu(T, 1), 0.0)
        np.testing.assert_allclose(T @ T.T, _dense(kind, hom, k, par), rtol=1e-12, atol=1e-14)
        sigma = 1.3
        v = cov.sdcor(sigma**2 * T @ T.T)
        labels = cov.sdcor_labels()
        sd = jnp.asarray([x for x, lab in zip(v, labels) if lab[0] == "sd"])
        cor = jnp.asarray([x for x, lab in zip(v, labels) if lab[0] == "cor"])
        T2 = np.asarray(cov.factor(cov.params_from_sdcor(sd, cor, sigma)))
        np.testing.assert_allclose(T2 @ T2.T, T @ T.T, rtol=1e-10, atol=1e-12)


# ---- glmmTMB 1.1.5 -------------------------------------------------------------------------------


def _cov_matrix(m, group: str, columns: list[str]) -> np.ndarray:
    vc = m.varcorr
    vc = vc[vc.grp == group]
    k = len(columns)
    S = np.zeros((k, k))
    for _, r in vc.iterrows():
        i = columns.index(r.var1)
        j = i if r.var2 is None or (isinstance(r.var2, float) and np.isnan(r.var2)) else columns.index(r.var2)
        S[i, j] = S[j, i] = r.vcov
    return S


@pytest.mark.parametrize("cid", CASES)
def test_glmmtmb_parity(panel, cid):
    case = REF[cid]
    m = jaxmlm.lmer(case["formula"], panel, REML=case["REML"])
    assert m.record.converged
    assert m.loglik == pytest.approx(case["loglik"], abs=1e-4)
    se = np.sqrt(np.diag(np.asarray(case["vcov"])))
    fe = np.array([case["fixef"][n] for n in case["vcov_names"]])
    assert np.all(np.abs(m.fixef[case["vcov_names"]].to_numpy() - fe) <= 0.002 * se)
    np.testing.assert_allclose(m.sigma, case["sigma"], rtol=1e-3)
    for term in case["re_terms"]:
        S_ref = np.asarray(term["cov"])
        S = _cov_matrix(m, term["group"], term["names"])
        if term["structure"] == "diag":
            S_ref = np.diag(np.diag(S_ref))
        np.testing.assert_allclose(S, S_ref, rtol=1e-3, atol=1e-3 * np.abs(S_ref).max())
        if "rho" in term:
            i, j = 1, 0
            assert S[i, j] / np.sqrt(S[i, i] * S[j, j]) == pytest.approx(term["rho"], abs=1e-3)


def test_glmmtmb_ar1_and_cs_have_the_parameter_counts_of_glmmtmb(panel):
    for cid in ("cs_time_ml", "ar1_time_ml", "diag_ml", "us_ml"):
        case = REF[cid]
        m = jaxmlm.lmer(case["formula"], panel, REML=False)
        n_theta = sum(len(t["theta"]) for t in case["re_terms"])
        assert len(m.theta) == n_theta
        assert m.npar == len(case["vcov_names"]) + n_theta + 1


# ---- exact equivalences ----------------------------------------------------------------------------


def _same_fit(a, b, rtol=1e-6):
    assert a.loglik == pytest.approx(b.loglik, rel=1e-9, abs=1e-7)
    np.testing.assert_allclose(a.fixef, b.fixef, rtol=rtol, atol=1e-8)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=rtol)


@pytest.mark.parametrize("reml", [True, False])
def test_homogeneous_cs_is_intercepts_for_group_and_cell(panel, reml):
    cs = jaxmlm.lmer("y ~ x + cs(0 + time | g, hom = TRUE)", panel, REML=reml)
    nested = jaxmlm.lmer("y ~ x + (1 | g) + (1 | g:time)", panel, REML=reml)
    _same_fit(cs, nested)
    vc = nested.varcorr.set_index("grp").vcov
    S = _cov_matrix(cs, "g", [f"timet{i}" for i in range(1, 6)])
    assert S[1, 0] == pytest.approx(vc["g"], rel=1e-4)  # the covariance is the group's variance
    assert S[0, 0] == pytest.approx(vc["g"] + vc["g:time"], rel=1e-4)


def test_identity_is_an_intercept_per_cell(panel):
    ident = jaxmlm.lmer("y ~ x + diag(0 + time | g, hom = TRUE)", panel)
    cell = jaxmlm.lmer("y ~ x + (1 | g:time)", panel)
    _same_fit(ident, cell)
    assert len(ident.theta) == 1
    assert (ident.varcorr.grp == "g").sum() == 5  # one variance row per column, no covariances


@pytest.mark.parametrize("reml", [True, False])
def test_diag_is_double_bar_with_one_group_name(panel, reml):
    d = jaxmlm.lmer("y ~ x + diag(1 + x | g)", panel, REML=reml)
    dbar = jaxmlm.lmer("y ~ x + (1 + x || g)", panel, REML=reml)
    _same_fit(d, dbar)
    np.testing.assert_allclose(d.theta, dbar.theta, rtol=1e-5)
    assert list(d.varcorr.grp) == ["g", "g", "Residual"]
    assert list(dbar.varcorr.grp) == ["g", "g.1", "Residual"]
    np.testing.assert_allclose(d.varcorr.vcov, dbar.varcorr.vcov, rtol=1e-5)
    np.testing.assert_allclose(d.coef_table()["df"], dbar.coef_table()["df"], rtol=1e-5)


# ---- consumers ---------------------------------------------------------------------------------------


def test_every_consumer_names_parameters_alike(panel):
    m = jaxmlm.lmer("y ~ x + cs(0 + f | g) + (1 | time)", panel, REML=False)
    names = ["sd_fa|g", "sd_fb|g", "sd_fc|g", "sd_fd|g", "cor_fb.fa|g", "sd_(Intercept)|time"]
    assert list(m.confint(method="wald").index) == names + ["sigma", "(Intercept)", "x"]
    vc = m.variance_components()
    assert [n for n in vc.index if not n.startswith("var_")] == names + ["sigma"]
    boot = m.bootstrap(4, seed=1, progress=False)
    assert list(boot.replicates.columns) == names + ["sigma", "(Intercept)", "x"]
    np.testing.assert_allclose(boot.t0[names], vc.loc[names, "Estimate"], rtol=1e-10)
    assert list(m.refit_many(m.simulate(2, seed=2), progress=False).sdcor.columns) == names + ["sigma"]
    # the values agree with varcorr
    row = vc.loc["cor_fb.fa|g", "Estimate"]
    S = _cov_matrix(m, "g", ["fa", "fb", "fc", "fd"])
    assert row == pytest.approx(S[1, 0] / np.sqrt(S[0, 0] * S[1, 1]), rel=1e-10)
    assert vc.loc["sd_fc|g", "Std. Error"] > 0


def test_double_bar_names_agree_across_consumers():
    """Was: variance_components called (Days || Subject)'s slope sd_Days|Subject.1, confint sd_Days|Subject."""
    m = jaxmlm.lmer("Reaction ~ Days + (Days || Subject)", jaxmlm.load_example("sleepstudy"))
    vc = [n for n in m.variance_components().index if n.startswith(("sd_", "cor_"))]
    assert vc == [n for n in m.confint(method="wald").index if n.startswith(("sd_", "cor_"))]


def test_refits_of_the_observed_response_equal_the_fit(panel):
    m = jaxmlm.lmer("y ~ x + ar1(0 + time | g)", panel, REML=False)
    r = m.refit_many(np.asarray(m.design.y)[None, :], progress=False)
    assert r.objective[0] == pytest.approx(m.objective, rel=1e-9)
    np.testing.assert_allclose(r.fixef.iloc[0], m.fixef, rtol=1e-6)


def test_ranova_removes_a_structured_term_whole(panel):
    m = jaxmlm.lmer("y ~ x + ar1(0 + time | g) + (1 | f)", panel, REML=False)
    tab = m.ranova()
    assert list(tab.index) == ["<none>", "ar1(0 + time | g)", "(1 | f)"]
    assert list(tab.Df[1:]) == [2, 1]
    without = jaxmlm.lmer("y ~ x + (1 | f)", panel, REML=False)
    assert tab.logLik.iloc[1] == pytest.approx(without.loglik, abs=1e-6)


# ---- bad structures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "formula, error, match",
    [
        ("y ~ x + toep(0 + time | g)", FormulaSyntaxError, "unknown covariance structure toep()"),
        ("y ~ x + cs(1 + x || g)", FormulaSyntaxError, "'||' inside cs()"),
        ("y ~ x + us(1 + x | g, hom = TRUE)", FormulaSyntaxError, "us() has no hom"),
        ("y ~ x + cs(0 + time | g, hom = maybe)", FormulaSyntaxError, "hom = TRUE or FALSE"),
        ("y ~ x + ar1(0 + tnum | g)", FormulaError, "one factor"),
        ("y ~ x + ar1(1 + time | g)", FormulaError, "without an intercept"),
    ],
)
def test_bad_structures_are_clear_errors(panel, formula, error, match):
    with pytest.raises(error, match=match.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        jaxmlm.lmer(formula, panel)


def test_ar1_over_times_with_a_gap_is_refused(panel):
    gap = panel[panel.tnum != 3].assign(tf=lambda d: d.tnum.astype(str))
    with pytest.raises(jaxmlm.DataError, match="equally spaced"):
        jaxmlm.lmer("y ~ x + ar1(0 + tf | g)", gap)

"""confint (profile, Wald, bootstrap) against lme4's confint(oldNames = FALSE).

Every reference case's ``confint_profile`` and ``confint_wald`` (lme4 1.1-31) must be
met within 1e-3 of the interval's width. Eleven profile limits are checked against
exact roots instead (tests/reference/compare/compare.json, ``profile_exact``): there
lme4 interpolates ζ through a coarse grid with a spline and misses ζ = ±1.96 (by up
to 0.36 of the width); the exact roots come from lme4's own ``devfun2`` minimized
directly in R (make_compare_reference.R), and lme4's limits are shown to be off there.
"""

import json
import warnings
from pathlib import Path

import jax.monitoring
import numpy as np
import pandas as pd
import pytest
from conftest import CASES, assert_compiled_once

import jaxmlm
from jaxmlm._confint import _percent_labels, confint, param_names

REF = json.loads((Path(__file__).parent / "reference" / "compare" / "compare.json").read_text())
EXACT = {(e["case"], e["param"], e["side"]): e for e in REF["profile_exact"]}
Z975 = 1.959963984540054

_COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: _COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
)


@pytest.fixture(scope="module")
def profiles(fits):
    cache = {}

    def get(case_id):
        if case_id not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("error", jaxmlm.ConvergenceWarning)
                cache[case_id] = confint(fits(case_id))
        return cache[case_id]

    return get


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_profile_matches_lme4(case_id, profiles):
    ref = CASES[case_id]["confint_profile"]
    got = profiles(case_id)
    assert list(got.index) == [r["param"] for r in ref]
    assert list(got.columns) == ["2.5 %", "97.5 %"]
    for r in ref:
        width = r["upper"] - r["lower"]
        for side, col in (("lower", "2.5 %"), ("upper", "97.5 %")):
            value = got.loc[r["param"], col]
            exact = EXACT.get((case_id, r["param"], side))
            want = exact["exact"] if exact else r[side]
            assert abs(value - want) <= 1e-3 * width, (r["param"], side, value, want)


def test_exact_references_show_lme4_off_the_level():
    """The eleven replaced limits: lme4's value is not at |ζ| = 1.96, the exact root is."""
    assert len(EXACT) == 11
    for e in EXACT.values():
        assert abs(abs(e["zeta_at_exact"]) - Z975) < 1e-5
        assert abs(abs(e["zeta_at_lme4"]) - Z975) > 3e-3


def test_boundaries_as_lme4(profiles):
    # singular fit: sd estimate 0 -> lower limit 0; sd whose profile stays above -z at 0 -> 0;
    # a correlation whose profile does not reach -z before -1 -> -1
    assert profiles("dyestuff2_singular").loc["sd_(Intercept)|Batch", "2.5 %"] == 0.0
    assert profiles("pastes_nested").loc["sd_(Intercept)|batch", "2.5 %"] == 0.0
    assert profiles("hsb_uncorr_ml").loc["sd_ses|school", "2.5 %"] == 0.0
    assert profiles("nlschools_rs_ml_bobyqa").loc["cor_IQ.(Intercept)|class", "2.5 %"] == -1.0
    assert profiles("hsb_ses_slope").loc["cor_ses.(Intercept)|school", "2.5 %"] == -1.0


def test_reml_fits_are_profiled_on_the_ml_deviance(profiles):
    """lme4's devfun2 refits by ML: REML and ML fits of one model give one profile."""
    a, b = profiles("sleepstudy_rs"), profiles("sleepstudy_rs_ml")
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_wald_matches_lme4(case_id, fits):
    m = fits(case_id)
    ref = {r["param"]: r for r in CASES[case_id]["confint_wald"]}
    got = confint(m, method="Wald")
    assert list(got.index) == param_names(m)
    for name in got.index:
        lo, hi = got.loc[name]
        if name in ref:
            width = ref[name]["upper"] - ref[name]["lower"]
            assert abs(lo - ref[name]["lower"]) <= 1e-3 * width
            assert abs(hi - ref[name]["upper"]) <= 1e-3 * width
        else:  # variance parameters: NA in lme4
            assert np.isnan(lo) and np.isnan(hi)
    assert set(ref) <= set(got.index)


def test_level_090_labels_and_values(fits):
    m = fits("sleepstudy_rs")
    ref = REF["confint_sleep_rs_90"]
    for method, key in (("profile", "profile"), ("wald", "wald")):
        got = confint(m, method=method, level=0.9)
        assert list(got.columns) == ref["columns"] == ["5 %", "95 %"]
        for r in ref[key]:
            lo, hi = got.loc[r["_row"]]
            if r["5 %"] is None:
                assert np.isnan(lo) and np.isnan(hi)
            else:
                width = r["95 %"] - r["5 %"]
                assert abs(lo - r["5 %"]) <= 1e-3 * width and abs(hi - r["95 %"]) <= 1e-3 * width


def test_percent_labels_as_r():
    assert _percent_labels(0.95) == ["2.5 %", "97.5 %"]
    assert _percent_labels(0.999) == ["0.05 %", "99.95 %"]
    assert _percent_labels(0.683) == ["15.8 %", "84.2 %"]


def test_parm_selection_and_errors(fits):
    m = fits("sleepstudy_rs")
    full = confint(m, method="wald")
    sub = confint(m, method="wald", parm=["Days", "sigma"])
    assert list(sub.index) == ["Days", "sigma"]
    pd.testing.assert_frame_equal(sub, full.loc[["Days", "sigma"]])
    assert list(confint(m, method="wald", parm="beta_").index) == ["(Intercept)", "Days"]
    one = confint(m, parm=["sd_Days|Subject"])
    assert one.iloc[0].to_numpy() == pytest.approx([3.8011640532591, 8.75338075305527], rel=1e-4)
    with pytest.raises(jaxmlm.JaxmlmError, match="unknown parameter"):
        confint(m, parm=["Dayz"])
    with pytest.raises(jaxmlm.JaxmlmError, match="method"):
        confint(m, method="bayes")
    with pytest.raises(jaxmlm.JaxmlmError, match="level"):
        confint(m, level=95)


def test_boot_delegates_to_bootstrap(fits, monkeypatch):
    import importlib

    refit = importlib.import_module("jaxmlm._refit")
    m = fits("sleepstudy_ri")
    seen = {}

    class FakeBoot:
        def confint(self, level):
            seen["level"] = level
            return pd.DataFrame({"lower": [1.0] * 4, "upper": [2.0] * 4}, index=param_names(m))

    def fake_bootstrap(model, nsim, seed=None, **kw):
        seen.update(nsim=nsim, seed=seed)
        return FakeBoot()

    monkeypatch.setattr(refit, "bootstrap", fake_bootstrap, raising=False)
    got = m.confint(method="boot", nsim=123, seed=5, level=0.9)
    assert seen == {"nsim": 123, "seed": 5, "level": 0.9}
    assert list(got.index) == param_names(m)
    assert list(got.columns) == ["5 %", "95 %"]


def test_second_profile_of_a_model_does_not_recompile(fits, profiles, no_tier_up):
    m = fits("sleepstudy_rs")
    # The first profile right here: one made many tests earlier may have left the bounded
    # list of compiled programs (_compiled.py) since, as it should.
    first = confint(m)
    before = len(_COMPILES)
    again = confint(m)
    assert len(_COMPILES) == before
    pd.testing.assert_frame_equal(again, first)
    pd.testing.assert_frame_equal(again, profiles("sleepstudy_rs"))


def test_repeated_profiles_compile_nothing_past_the_tier_up_call(fits, monkeypatch, caplog):
    """The profile's program is compiled once, at the quick tier, never again at full
    optimization on a later call: a ``confint()`` calls it a handful of times (Dyestuff: 6),
    and the one whose calls reached the tier-up count used to compile it again (the classroom
    three-level model's second ``confint()``: 1.9 s instead of 0.1 s)."""
    first, again = assert_compiled_once(lambda: confint(fits("dyestuff")), "_prof_minimize", monkeypatch, caplog)
    pd.testing.assert_frame_equal(again, first)


# ---- profiles of covariance structures (diag, cs, ar1) ------------------------------------------------------

PANEL = Path(__file__).parent / "reference" / "structures" / "panel.csv"  # made by make_structures_reference.R


@pytest.mark.parametrize(
    "structured, unstructured",
    [
        # Exact equivalences: a 2-column cs or heterogeneous ar1 has one free correlation
        # in (−1, 1), as us; diag is the double-bar model. The us profiles are lme4's (above).
        ("Reaction ~ Days + diag(1 + Days | Subject)", "Reaction ~ Days + (1 + Days || Subject)"),
        ("Reaction ~ Days + cs(1 + Days | Subject)", "Reaction ~ Days + (1 + Days | Subject)"),
        ("y ~ x + ar1(0 + time | g, hom = FALSE)", "y ~ x + (0 + time | g)"),
        # One column: no correlation (was: a dead η parameter, and confint raised IndexError).
        ("Reaction ~ Days + cs(1 | Subject)", "Reaction ~ Days + (1 | Subject)"),
    ],
)
def test_structure_profiles_equal_their_unstructured_twins(structured, unstructured):
    if structured.startswith("y"):  # ar1 over two times of the panel
        panel = pd.read_csv(PANEL)
        data = panel[panel["time"].isin(["t1", "t2"])]
    else:
        data = jaxmlm.load_example("sleepstudy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxmlm.ConvergenceWarning)
        got = confint(jaxmlm.lmer(structured, data))
        want = confint(jaxmlm.lmer(unstructured, data))
    # Rows by name: us lists sd, cor, sd (lme4's order), cs and ar1 the sds, then the correlation.
    assert sorted(got.index) == sorted(want.index)
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=2e-5, atol=1e-6)


def _dense_ml_deviance(sd, rho, sigma, kind, y, X, codes, rows):
    """−2 log L of y ~ X + kind(0 + time | g) by the marginal covariance of each group,
    V_g = Z_g Σ Z_gᵀ + σ² I (Σ = D C D; C compound symmetric or AR(1)), β by GLS:
    numpy only, nothing shared with the engine. ``rows`` (groups × rows per group) indexes
    each group's rows."""
    k = len(sd)
    i, j = np.indices((k, k))
    C = np.where(i == j, 1.0, rho) if kind == "cs" else rho ** np.abs(i - j)
    S = np.asarray(sd)[:, None] * C * np.asarray(sd)[None, :]
    Z = np.eye(k)[codes[rows]]  # (G, r, k)
    V = Z @ S @ np.swapaxes(Z, 1, 2) + sigma**2 * np.eye(rows.shape[1])
    L = np.linalg.cholesky(V)
    Xw = np.linalg.solve(L, X[rows])
    yw = np.linalg.solve(L, y[rows][..., None])[..., 0]
    XVX, XVy = np.einsum("gra,grb->ab", Xw, Xw), np.einsum("gra,gr->a", Xw, yw)
    r2 = np.sum(yw * yw) - XVy @ np.linalg.solve(XVX, XVy)
    logdet = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum()
    return logdet + r2 + len(y) * np.log(2.0 * np.pi)


@pytest.mark.parametrize("kind, hom", [("cs", False), ("ar1", True)])
def test_structure_profile_limits_are_roots_of_an_independent_profile(kind, hom):
    """At each limit of an sd or the correlation of a 3-column cs/ar1 term (ML fit), the ML
    deviance minimized over every other parameter (dense, scipy) is D̂ + z². (Three times of
    the panel: each 5-column model compiles for ~40 s.)"""
    from scipy.optimize import minimize

    k = 3
    panel = pd.read_csv(PANEL)
    panel = panel[panel["time"].isin(["t1", "t2", "t3"])].reset_index(drop=True)
    formula = f"y ~ x + {kind}(0 + time | g, hom = {'TRUE' if hom else 'FALSE'})"
    m = jaxmlm.lmer(formula, panel, REML=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxmlm.ConvergenceWarning)
        ci = m.confint(parm="theta_")
    y, X = panel["y"].to_numpy(float), np.column_stack([np.ones(len(panel)), panel["x"].to_numpy(float)])
    codes = panel["time"].str[1:].astype(int).to_numpy() - 1
    rows = np.stack([np.flatnonzero(panel["g"].to_numpy() == g) for g in np.unique(panel["g"])])  # 40 × 6
    nsd = 1 if hom else k
    vc = m.varcorr
    sd_hat = vc["sdcor"].to_numpy()[:nsd]
    rho_hat = float(vc.loc[vc["var2"].notna(), "sdcor"].iloc[0])
    lo = -1.0 / (k - 1) if kind == "cs" else -1.0

    def unpack(free, fixed_name, fixed_value):
        """(sds, ρ, σ) from the free vector (log sds, atanh-like ρ, log σ) with one fixed."""
        vals = list(free)
        sds = [fixed_value if fixed_name == f"sd{i}" else np.exp(vals.pop(0)) for i in range(nsd)]
        rho = fixed_value if fixed_name == "rho" else lo + (1 - lo) / (1 + np.exp(-vals.pop(0)))
        return np.repeat(sds, k) if hom else np.asarray(sds), rho, np.exp(vals.pop(0))

    base = _dense_ml_deviance(np.repeat(sd_hat, k) if hom else sd_hat, rho_hat, m.sigma, kind, y, X, codes, rows)
    assert base == pytest.approx(-2 * m.loglik, abs=1e-6)
    z2 = Z975**2
    checked = 0
    for name, row in ci.iterrows():
        if name == "sigma":
            continue
        fixed = "rho" if name.startswith("cor_") else f"sd{0 if hom else list(ci.index).index(name)}"
        for limit in row:
            if not np.isfinite(limit) or limit <= 0 and fixed != "rho" or fixed == "rho" and limit in (lo, 1.0):
                continue
            start = [np.log(s) for i, s in enumerate(sd_hat) if fixed != f"sd{i}"]
            if fixed != "rho":
                start.append(-np.log((1 - lo) / (rho_hat - lo) - 1))
            start.append(np.log(m.sigma))
            res = minimize(lambda f: _dense_ml_deviance(*unpack(f, fixed, limit), kind, y, X, codes, rows),
                           start, method="BFGS", options={"gtol": 1e-7})
            assert res.fun - base == pytest.approx(z2, abs=2e-3), (name, limit)
            checked += 1
    assert checked >= (3 if hom else 6)  # most limits are interior (not 0 or a bound)

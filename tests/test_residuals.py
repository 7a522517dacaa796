"""Residual structures (jaxmlm.residuals; lmer(correlation=, variance=) and gls) against nlme 3.1
and against an independent dense marginal likelihood.

Reference values: tests/reference/nlme/ (make_nlme_reference.R wrote the JSON and the CSV
data; eval_nlme_at.R evaluated nlme's own likelihood at jaxmlm's estimates where jaxmlm's
optimum is the better one). See the README there.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxmlm

REF = Path(__file__).parent / "reference" / "nlme"


def _data(name: str) -> pd.DataFrame:
    df = pd.read_csv(REF / name)
    if "Sex" in df:
        df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])  # R's level order
    for c in ("Diet", "Rat", "Dog", "Mare", "Subject", "plot", "Side"):
        if c in df:
            df[c] = df[c].astype(str)
    return df


J = jaxmlm
#: case → (function, formula, correlation, variance); the nlme call is in each JSON's "call"
CASES = {
    "sleep_ar1_reml": ("lmer", "Reaction ~ Days + (Days | Subject)", J.corAR1(form="~ Days | Subject"), None),
    "sleep_ar1_ml": ("lmer", "Reaction ~ Days + (Days | Subject)", J.corAR1(form="~ Days | Subject"), None),
    "orth_ident_reml": ("lmer", "distance ~ age * Sex + (1 | Subject)", None, J.varIdent(form="~ 1 | Sex")),
    "orth_ident_ml": ("lmer", "distance ~ age * Sex + (1 | Subject)", None, J.varIdent(form="~ 1 | Sex")),
    "bw_car1_power_reml": ("lmer", "weight ~ Time * Diet + (Time | Rat)", J.corCAR1(form="~ Time | Rat"),
                           J.varPower(form="~ Time")),
    "orth_cs_gls_reml": ("gls", "distance ~ age * Sex", J.corCompSymm(form="~ 1 | Subject"), None),
    "ovary_ar1_gls_ml": ("gls", "follicles ~ s1 + c1", J.corAR1(form="~ 1 | Mare"), None),
    "pixel_nested_car1_reml": ("lmer", "pixel ~ day + day2 + (day | Dog) + (1 | Dog:Side)",
                               J.corCAR1(form="~ day | Dog/Side"), None),
    "orth_exp_ml": ("lmer", "distance ~ age + (1 | Subject)", None, J.varExp(form="~ age")),
    "orth_ar1_ident_gls_ml": ("gls", "distance ~ age * Sex", J.corAR1(form="~ 1 | Subject"),
                              J.varIdent(form="~ 1 | Sex")),
    "spatial_exp_reml": ("lmer", "y ~ x1 + (1 | plot)", J.corExp(form="~ cx + cy | plot"), None),
    "spatial_exp_nugget_ml": ("lmer", "y ~ x1 + (1 | plot)", J.corExp(form="~ cx + cy | plot", nugget=True), None),
    "orth_fixed_gls_reml": ("gls", "distance ~ age", None, J.varFixed("~ age")),
    "bw_ident_diet_ml": ("lmer", "weight ~ Time * Diet + (Time | Rat)", None, J.varIdent(form="~ 1 | Diet")),
    "orth_ar1_time_reml": ("lmer", "distance ~ age + (1 | Subject)", J.corAR1(form="~ occ | Subject"), None),
    "orth_plain_gls_reml": ("gls", "distance ~ age * Sex", None, None),
}

#: cases where jaxmlm's optimum beats nlme's (nlme stops early): eval_nlme_at.R shows nlme's own
#: likelihood at jaxmlm's estimates equals jaxmlm's
BETTER = ("sleep_ar1_reml", "sleep_ar1_ml")


def _ref(case: str) -> dict:
    with open(REF / f"{case}.json") as fh:
        return json.load(fh)


def _fit(case: str):
    r = _ref(case)
    kind, formula, cor, var = CASES[case]
    fn = J.gls if kind == "gls" else J.lmer
    return r, fn(formula, _data(r["data"]), correlation=cor, variance=var, REML=r["method"] == "REML")


@pytest.fixture(scope="module")
def fits():
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", J.ConvergenceWarning)
        for case in CASES:
            out[case] = _fit(case)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_loglik_matches_nlme(fits, case):
    r, m = fits[case]
    assert m.record.converged
    assert m.npar == r["df"]
    if case in BETTER:
        assert m.loglik > r["logLik"]  # ahead of nlme; its own likelihood there agrees (below)
    else:
        assert abs(m.loglik - r["logLik"]) < 1e-3
    assert m.loglik > r["logLik"] - 1e-3  # never worse by more
    assert m.aic == pytest.approx(r["AIC"], abs=2e-3) if case not in BETTER else m.aic < r["AIC"]


def test_better_optimum_is_nlme_likelihood():
    """Where jaxmlm's optimum is higher, nlme's own likelihood function at jaxmlm's estimates
    (eval_nlme_at.R) equals jaxmlm's value — jaxmlm is not computing a different quantity."""
    with open(REF / "nlme_at_jaxmlm_output.json") as fh:
        out = json.load(fh)
    for case in BETTER:
        r, m = _fit(case)
        got = out[case]
        assert got["jaxmlm_logLik"] == pytest.approx(m.loglik, abs=1e-6)
        assert got["nlme_logLik_at_jaxmlm"] == pytest.approx(m.loglik, abs=1e-4)
        assert got["nlme_logLik_at_jaxmlm"] > got["nlme_logLik_at_nlme_optimum"]


@pytest.mark.parametrize("case", [c for c in CASES if c not in BETTER])
def test_estimates_match_nlme(fits, case):
    r, m = fits[case]
    se = np.array(list(r["se"].values()))
    assert list(m.fixef.index) == list(r["fixef"])
    np.testing.assert_array_less(np.abs(m.fixef.to_numpy() - np.array(list(r["fixef"].values()))), 0.01 * se)
    np.testing.assert_allclose(m.se.to_numpy(), se, rtol=0.01)
    assert m.sigma == pytest.approx(r["sigma"], rel=0.01)
    ours = {**m.correlation_params, **m.variance_params}
    theirs = {**(r["corStruct"] or {}), **(r["varStruct"] or {})}
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        if abs(v) < 1e-4:  # a nugget at its bound 0: absolute
            assert abs(ours[k]) < 1e-3
        else:
            assert ours[k] == pytest.approx(v, rel=0.01)
    if r["kind"] == "lme":
        for grp, ref in r["random"].items():
            sd = m.varcorr_matrices
            key = {"Side": "Dog:Side"}.get(grp, grp)
            ours_sd = np.sqrt(np.diag(sd[key].to_numpy()))
            np.testing.assert_allclose(ours_sd, list(ref["sd"].values()), rtol=0.01)


# ---- an independent dense marginal likelihood: crossed random effects with AR(1) residuals -------------

def _crossed_data(n_subj=40, n_item=12, phi=0.4, seed=7):
    rng = np.random.default_rng(seed)
    rows = []
    bs, bi = rng.normal(0, 1.0, n_subj), rng.normal(0, 0.7, n_item)
    for s in range(n_subj):
        order = rng.permutation(n_item)
        e = np.empty(n_item)
        e[0] = rng.normal()
        for t in range(1, n_item):
            e[t] = phi * e[t - 1] + np.sqrt(1 - phi**2) * rng.normal()
        for t, i in enumerate(order):
            x = rng.normal()
            rows.append((f"s{s:02d}", f"i{i:02d}", t, x, 1 + 0.5 * x + bs[s] + bi[i] + 0.8 * e[t]))
    return pd.DataFrame(rows, columns=["subj", "item", "trial", "x", "y"])


def _dense_criterion(df, beta_free, s_subj, s_item, sigma, phi, reml):
    """−2 log L (or lme4's REML criterion) of y ~ x + (1|subj) + (1|item) with AR(1) residuals in
    trial order within subject, from the n × n marginal covariance (β at its GLS estimate)."""
    n = len(df)
    X = np.column_stack([np.ones(n), df["x"].to_numpy()])
    y = df["y"].to_numpy()
    Zs = pd.get_dummies(df["subj"]).to_numpy(float)
    Zi = pd.get_dummies(df["item"]).to_numpy(float)
    R = np.zeros((n, n))
    for _, idx in df.groupby("subj").indices.items():
        t = df["trial"].to_numpy()[idx]
        R[np.ix_(idx, idx)] = phi ** np.abs(np.subtract.outer(t, t))
    V = s_subj**2 * Zs @ Zs.T + s_item**2 * Zi @ Zi.T + sigma**2 * R
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    p = X.shape[1]
    val = np.linalg.slogdet(V)[1] + r @ Vi @ r
    if reml:
        return val + np.linalg.slogdet(XtViX)[1] + (n - p) * np.log(2 * np.pi), beta
    return val + n * np.log(2 * np.pi), beta


@pytest.mark.parametrize("reml", [True, False])
def test_crossed_ar1_against_dense_likelihood(reml):
    df = _crossed_data()
    m = J.lmer("y ~ x + (1 | subj) + (1 | item)", df, REML=reml, correlation=J.corAR1(form="~ trial | subj"))
    vc = m.varcorr.set_index("grp")["sdcor"]
    pars = np.array([vc["subj"], vc["item"], m.sigma, m.correlation_params["Phi"]])
    f0, beta = _dense_criterion(df, None, *pars, reml)
    assert m.objective == pytest.approx(f0, abs=1e-6)
    np.testing.assert_allclose(m.fixef.to_numpy(), beta, rtol=1e-7)
    # an optimum of the dense criterion too: every parameter moved by ±1 % raises it
    for k in range(4):
        for step in (0.99, 1.01):
            q = pars.copy()
            q[k] *= step
            assert _dense_criterion(df, None, *q, reml)[0] > f0
    assert 0.2 < m.correlation_params["Phi"] < 0.6


def test_satterthwaite_df_with_structure_against_dense_finite_differences():
    """Satterthwaite's df with the AR(1) parameter among the variance parameters, against the same
    formula on the dense criterion: finite-difference Hessian of d(sd_subj, sd_item, σ, φ) and
    Jacobian of vcov(β̂) = (XᵀV⁻¹X)⁻¹ (the df do not depend on how the parameters are written)."""
    df = _crossed_data()
    m = J.lmer("y ~ x + (1 | subj) + (1 | item)", df, correlation=J.corAR1(form="~ trial | subj"))
    vc = m.varcorr.set_index("grp")["sdcor"]
    psi = np.array([vc["subj"], vc["item"], m.sigma, m.correlation_params["Phi"]])
    n = len(df)
    X = np.column_stack([np.ones(n), df["x"].to_numpy()])
    Zs = pd.get_dummies(df["subj"]).to_numpy(float)
    Zi = pd.get_dummies(df["item"]).to_numpy(float)
    t = df["trial"].to_numpy()
    same = df["subj"].to_numpy()[:, None] == df["subj"].to_numpy()[None, :]
    lag = np.abs(np.subtract.outer(t, t))

    def V_of(q):
        return q[0] ** 2 * Zs @ Zs.T + q[1] ** 2 * Zi @ Zi.T + q[2] ** 2 * np.where(same, q[3] ** lag, 0.0)

    def crit(q):
        return _dense_criterion(df, None, *q, True)[0]

    def vcov(q):
        return np.linalg.inv(X.T @ np.linalg.solve(V_of(q), X))

    h = 1e-4 * np.maximum(np.abs(psi), 1e-2)
    k = len(psi)
    H = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            e_i, e_j = np.eye(k)[i] * h[i], np.eye(k)[j] * h[j]
            H[i, j] = (crit(psi + e_i + e_j) - crit(psi + e_i - e_j) - crit(psi - e_i + e_j)
                       + crit(psi - e_i - e_j)) / (4 * h[i] * h[j])
    Jv = np.stack([(vcov(psi + np.eye(k)[i] * h[i]) - vcov(psi - np.eye(k)[i] * h[i])) / (2 * h[i]) for i in range(k)])
    A = 2 * np.linalg.inv(H)
    V = vcov(psi)
    ct = m.coef_table()
    for c in range(2):
        g = Jv[:, c, c]
        dense_df = 2 * V[c, c] ** 2 / (g @ A @ g)
        assert ct["df"].iloc[c] == pytest.approx(dense_df, rel=2e-3)
    np.testing.assert_allclose(ct["Std. Error"].to_numpy(), np.sqrt(np.diag(V)), rtol=1e-6)
    with pytest.raises(J.InferenceError, match="Kenward-Roger"):
        m.coef_table(ddf="Kenward-Roger")


def test_varident_and_prior_weights_against_dense():
    df = _data("Orthodont.csv")
    w = np.where(df["age"] > 10, 2.0, 1.0)
    m = J.lmer("distance ~ age + (1 | Subject)", df, REML=False, variance=J.varIdent(form="~ 1 | Sex"), weights=w)
    n = len(df)
    X = np.column_stack([np.ones(n), df["age"]])
    Z = pd.get_dummies(df["Subject"]).to_numpy(float)
    delta = np.where(df["Sex"] == "Female", m.variance_params["Female"], 1.0)
    V = m.varcorr.set_index("grp").loc["Subject", "vcov"] * Z @ Z.T + np.diag(m.sigma**2 * delta**2 / w)
    Vi = np.linalg.inv(V)
    r = df["distance"].to_numpy() - X @ m.fixef.to_numpy()
    dense = np.linalg.slogdet(V)[1] + r @ Vi @ r + n * np.log(2 * np.pi)
    assert m.objective == pytest.approx(dense, abs=1e-6)


# ---- results -------------------------------------------------------------------------------------------

def test_normalized_residuals_and_correlation_matrix(fits):
    _, m = fits["bw_car1_power_reml"]
    df = _data("BodyWeight.csv")
    rat = "1"
    C = m.residual_cor(rat)
    t = df.loc[df["Rat"] == rat, "Time"].to_numpy()
    phi = m.correlation_params["Phi"]
    np.testing.assert_allclose(C.to_numpy(), phi ** np.abs(np.subtract.outer(t, t)), rtol=1e-12)
    pear = m.residuals("pearson")
    d = np.abs(df["Time"].to_numpy()) ** m.variance_params["power"]
    np.testing.assert_allclose(pear, m.residuals("response") / (m.sigma * d), rtol=1e-10)
    rows = np.flatnonzero(df["Rat"] == rat)
    L = np.linalg.cholesky(C.to_numpy())
    np.testing.assert_allclose(m.residuals("normalized")[rows], np.linalg.solve(L, pear[rows]), rtol=1e-9)
    with pytest.raises(J.DataError, match="type must be"):
        m.residuals("studentized")


@pytest.mark.parametrize("case, group, name", [("spatial_exp_reml", "plot", "p01"), ("orth_cs_gls_reml", "Subject", "M01")])
def test_normalized_residuals_within_groups(fits, case, group, name):
    """nlme's normalized residuals L⁻¹ × Pearson residuals of a group, L the Cholesky factor of
    its correlation matrix, for the structures whitened by a factor per group (corExp) or by a
    closed-form root in the fit (compound symmetry): the results still use L."""
    r, m = fits[case]
    df = _data(r["data"])
    rows = np.flatnonzero(df[group].astype(str) == name)
    L = np.linalg.cholesky(m.residual_cor(name).to_numpy())
    pear = m.residuals("pearson")
    np.testing.assert_allclose(m.residuals("normalized")[rows], np.linalg.solve(L, pear[rows]), rtol=1e-9)


def test_summary_prints_structure(fits):
    _, m = fits["sleep_ar1_reml"]
    s = m.summary()
    assert "Correlation Structure: AR(1)" in s and "Phi" in s
    assert s.index("Correlation Structure") < s.index("Fixed effects:")
    _, g = fits["orth_ar1_ident_gls_ml"]
    s = g.summary()
    assert "Generalized least squares fit by maximum likelihood" in s
    assert "Different standard deviations per stratum" in s and "Female" in s
    assert "Degrees of freedom: 108 total; 104 residual" in s


def test_anova_structure_against_none(fits):
    _, m1 = fits["orth_ident_reml"]
    m0 = J.lmer("distance ~ age * Sex + (1 | Subject)", _data("Orthodont.csv"))
    tab = J.anova(m0, m1, refit=False)  # nlme's anova.lme: REML criteria, same fixed effects
    assert list(tab["Df"].iloc[1:]) == [1]
    assert tab["Chisq"].iloc[1] == pytest.approx(2 * (m1.loglik - m0.loglik), rel=1e-9)
    ml = J.anova(m0, m1)  # lme4's default: both refitted by ML, the structure refitted with them
    _, m1_ml = fits["orth_ident_ml"]
    assert ml["logLik"].iloc[1] == pytest.approx(m1_ml.loglik, abs=1e-6)


def test_methods_that_ignore_the_structure_are_refused(fits):
    _, m = fits["sleep_ar1_reml"]
    for call in (lambda: m.ranova(),
                 lambda: m.influence("Subject"), lambda: m.lrt_vs_ols()):
        with pytest.raises(J.InferenceError):
            call()


@pytest.mark.parametrize("case", ["sleep_ar1_reml", "orth_ident_ml", "spatial_exp_reml"])
def test_refit_many_equals_single_fits(fits, case):
    """Batched refits (the structure re-estimated in each) equal single fits: the observed
    response gives the fit itself, a simulated one what lmer gives for it. sleep and orth use
    the n-free statistics, spatial (corExp) the pass over the rows."""
    r, m = fits[case]
    kind, formula, cor, var = CASES[case]
    Y = np.array(m.simulate(2, seed=11))
    Y[0] = m.design.y
    ref = m.refit_many(Y)
    assert ref.ok.all()
    np.testing.assert_allclose(ref.objective[0], m.objective, rtol=1e-9)
    np.testing.assert_allclose(ref.beta[0], m.fixef.to_numpy(), rtol=1e-6)
    df = _data(r["data"])
    y_name = formula.split("~")[0].strip()
    single = J.lmer(formula, df.assign(**{y_name: Y[1]}), REML=m.REML, correlation=cor, variance=var)
    np.testing.assert_allclose(ref.objective[1], single.objective, rtol=1e-9)
    np.testing.assert_allclose(ref.beta[1], single.fixef.to_numpy(), rtol=1e-6)
    ours = {**single.correlation_params, **single.variance_params}
    np.testing.assert_allclose(ref.structure.iloc[1].to_numpy(), list(ours.values()), rtol=1e-5, atol=1e-7)


def test_simulate_has_the_structure(fits):
    _, m = fits["sleep_ar1_reml"]
    Y = m.simulate(3000, seed=5, use_u=True)  # residuals only: fitted + σ L z
    E = (Y - m.fitted).reshape(3000, 18, 10)  # sleepstudy: 18 subjects × days 0–9, in order
    phi = m.correlation_params["Phi"]
    assert np.mean(E[:, :, 1:] * E[:, :, :-1]) / np.mean(E**2) == pytest.approx(phi, abs=0.02)
    assert np.mean(E[:, :, 2:] * E[:, :, :-2]) / np.mean(E**2) == pytest.approx(phi**2, abs=0.02)
    assert np.mean(E**2) == pytest.approx(m.sigma**2, rel=0.03)
    _, v = fits["orth_ident_ml"]
    df = _data("Orthodont.csv")
    R = v.simulate(4000, seed=6, use_u=True) - v.fitted
    ratio = R[:, (df["Sex"] == "Female").to_numpy()].std() / R[:, (df["Sex"] == "Male").to_numpy()].std()
    assert ratio == pytest.approx(v.variance_params["Female"], rel=0.03)


def test_bootstrap_with_structure(fits):
    _, m = fits["orth_ident_ml"]
    b = m.bootstrap(40, seed=3)
    ci = b.confint()
    assert "Female" in ci.index and "sigma" in ci.index
    assert b.refits.ok.sum() >= 38
    for name in ("Female", "sigma", "(Intercept)"):
        assert ci.loc[name, "lower"] < b.t0[name] < ci.loc[name, "upper"]


def test_data_not_modified():
    df = _data("Orthodont.csv")
    before = df.copy()
    J.gls("distance ~ age", df, correlation=J.corAR1(form="~ 1 | Subject"))
    pd.testing.assert_frame_equal(df, before)


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_input():
    sl = _data("sleepstudy.csv")
    dup = sl.copy()
    dup.loc[1, "Days"] = 0  # two rows of one subject at Days 0
    with pytest.raises(J.DataError, match="repeats within a group"):
        J.lmer("Reaction ~ Days + (1 | Subject)", dup, correlation=J.corAR1(form="~ Days | Subject"))
    with pytest.raises(J.DataError, match="integer"):
        J.lmer("Reaction ~ Days + (1 | Subject)", sl.assign(t=sl["Days"] / 3),
               correlation=J.corAR1(form="~ t | Subject"))
    one = sl.assign(row=np.arange(len(sl)))
    with pytest.raises(J.DataError, match="single row"):
        J.gls("Reaction ~ Days", one, correlation=J.corCompSymm(form="~ 1 | row"))
    orth = _data("Orthodont.csv")
    orth["Sex3"] = pd.Categorical(orth["Sex"].astype(str), categories=["Male", "Female", "Other"])
    with pytest.raises(J.DataError, match="no rows"):
        J.lmer("distance ~ age + (1 | Subject)", orth, variance=J.varIdent(form="~ 1 | Sex3"))
    with pytest.raises(J.GroupingError, match="most levels"):
        J.lmer("distance ~ age + (1 | Subject)", orth, correlation=J.corCompSymm(form="~ 1 | Sex"))
    with pytest.raises(J.UnknownColumnError):
        J.lmer("distance ~ age + (1 | Subject)", orth, correlation=J.corAR1(form="~ 1 | Subjct"))
    with pytest.raises(J.FormulaError):
        J.corAR1(form="Days | Subject")
    with pytest.raises(J.FormulaError, match="fitted"):
        J.varPower(form="~ fitted")
    with pytest.raises(J.DataError, match="must be a jaxmlm structure"):
        J.lmer("distance ~ age + (1 | Subject)", orth, correlation="ar1")
    with pytest.raises(J.FormulaError, match="no random-effects"):
        J.gls("distance ~ age + (1 | Subject)", orth)
    with pytest.raises(J.DataError, match="is 0"):
        J.gls("distance ~ age", orth.assign(z=0.0), variance=J.varPower(form="~ z"))
    crossed = _crossed_data(n_subj=8, n_item=20)  # items outnumber subjects: item is block 1
    with pytest.raises(J.GroupingError, match="most levels"):
        J.lmer("y ~ x + (1 | subj) + (1 | item)", crossed, correlation=J.corAR1(form="~ trial | subj"))


# ---- review cases -------------------------------------------------------------------------------------

def test_integer_times_up_to_rounding_are_integers():
    """Times like 3.0000000000000004 (0.1·t·10) are the integers they round to: a negative φ
    keeps its sign over odd steps, and the fit equals the one on exact integers."""
    df = _data("Orthodont.csv")
    f = "distance ~ age + (1 | Subject)"
    exact = J.lmer(f, df, correlation=J.corAR1(form="~ occ | Subject"))
    noisy = J.lmer(f, df.assign(occ=(df["occ"] * 0.1) * 10), correlation=J.corAR1(form="~ occ | Subject"))
    assert noisy.objective == pytest.approx(exact.objective, abs=1e-9)
    assert noisy.correlation_params["Phi"] == pytest.approx(exact.correlation_params["Phi"], abs=1e-7)


def test_compound_symmetry_results_and_simulation():
    df = _data("Orthodont.csv")
    m = J.lmer("distance ~ age + (1 | Subject)", df, variance=J.varIdent(form="~ 1 | Sex"),
               correlation=J.corCompSymm(form="~ 1 | Subject"))
    C = m.residual_cor("M01").to_numpy()
    rho = m.correlation_params["Rho"]
    np.testing.assert_allclose(C, rho + (1 - rho) * np.eye(4), rtol=1e-12)
    assert m.simulate(3, seed=1).shape == (3, len(df))


def test_gls_rows_dropped_predict_and_non_finite():
    df = _data("Orthodont.csv")
    holes = df.assign(distance=np.where(np.arange(len(df)) % 2 == 1, np.nan, df["distance"]))
    g = J.gls("distance ~ age", holes, correlation=J.corAR1(form="~ 1 | Subject"))  # every other row missing
    assert g.nobs == len(df) // 2 and g.n_dropped == len(df) // 2
    new = pd.DataFrame({"age": [9.0, 13.0]})
    np.testing.assert_allclose(g.predict(new), g.fixef["(Intercept)"] + g.fixef["age"] * new["age"], rtol=1e-12)
    np.testing.assert_allclose(g.predict(), g.fitted)
    same = pd.DataFrame({"y": [1.0, 2.0, 0.5, 1.5], "x": [0.0, 1.0, 0.0, 1.0], "cx": 0.0, "cy": 0.0, "g": ["a"] * 4})
    with pytest.raises(J.ConvergenceError, match="not finite"):
        J.gls("y ~ x", same, correlation=J.corExp(form="~ cx + cy | g"))


def test_what_ignores_the_structure_is_refused_everywhere(fits):
    _, m = fits["orth_ident_reml"]
    m0 = J.lmer("distance ~ age * Sex + (1 | Subject)", _data("Orthodont.csv"))
    with pytest.raises(J.InferenceError, match="parametric-bootstrap"):
        J.anova(m0, m, method="pb", nsim=5)
    with pytest.raises(J.InferenceError):
        J.power(m, "age", effect=0.5, nsim=5)
    with pytest.raises(J.InferenceError):
        m.augment()
    _, g = fits["orth_cs_gls_reml"]
    for call in (lambda: J.anova(g), lambda: J.emmeans(g, "Sex"), lambda: J.pseudo_r2(g, g)):
        with pytest.raises(J.InferenceError, match="gls"):
            call()


def test_signatures_shared_with_lmer(fits):
    _, m = fits["orth_ident_reml"]
    Y = np.array(m.simulate(2, seed=4))
    Y[0] = m.design.y
    ml = m.refit_many(Y, progress=False, REML=False)
    assert not ml.REML
    assert ml.objective[0] == pytest.approx(fits["orth_ident_ml"][1].objective, abs=1e-6)
    assert m.bootstrap(3, seed=1, progress=False).nsim == 3
    table = J.compare_models([m])  # no ICC row: with a variance function σ² is one stratum's
    assert not table.long["row"].str.startswith("ICC").any()
    em = J.emmeans(m, "Sex")  # Satterthwaite by default (no Kenward-Roger with a structure)
    assert len(em) == 2


@pytest.mark.parametrize("reml", [True, False])
def test_ar1_with_gaps_strata_and_weights_against_dense(reml):
    """The n-free statistics (AR(1) over integer times with gaps, a negative φ, varIdent strata
    that change within a group, prior weights) against the n × n likelihood at the estimates."""
    rng = np.random.default_rng(3)
    rows = []
    for g in range(25):
        times = np.sort(rng.choice(9, size=rng.integers(1, 8), replace=False))  # steps 1–8: the n-free form
        for t in times:
            rows.append((f"g{g:02d}", int(t), rng.choice(["a", "b", "c"]), rng.normal()))
    df = pd.DataFrame(rows, columns=["g", "t", "s", "x"])
    df = df.sample(frac=1.0, random_state=1).reset_index(drop=True)  # rows out of order
    n = len(df)
    e = np.zeros(n)
    for _, idx in df.groupby("g").indices.items():
        order = idx[np.argsort(df["t"].to_numpy()[idx])]
        for k, i in enumerate(order):
            e[i] = rng.normal() if k == 0 else -0.5 * e[order[k - 1]] + rng.normal()
    sd = df["s"].map({"a": 1.0, "b": 1.6, "c": 0.7}).to_numpy()
    df["y"] = 2 + df["x"] + np.repeat(rng.normal(size=25), 1)[pd.factorize(df["g"])[0]] + sd * e
    w = rng.uniform(0.5, 2.0, n)
    m = J.lmer("y ~ x + (1 | g)", df, REML=reml, weights=w, correlation=J.corAR1(form="~ t | g"),
               variance=J.varIdent(form="~ 1 | s"))
    phi = m.correlation_params["Phi"]
    ratio = np.r_[1.0, [m.variance_params[k] for k in ("b", "c")]]
    d = ratio[pd.Categorical(df["s"], categories=["a", "b", "c"]).codes] / np.sqrt(w)
    t = df["t"].to_numpy()
    same = df["g"].to_numpy()[:, None] == df["g"].to_numpy()[None, :]
    C = np.where(same, np.sign(phi) ** np.abs(np.subtract.outer(t, t)) * np.abs(phi) ** np.abs(np.subtract.outer(t, t)), 0.0)
    Z = pd.get_dummies(df["g"]).to_numpy(float)
    tau2 = m.varcorr.set_index("grp").loc["g", "vcov"]
    V = tau2 * Z @ Z.T + m.sigma**2 * d[:, None] * C * d[None, :]
    X = np.column_stack([np.ones(n), df["x"]])
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ df["y"].to_numpy())
    r = df["y"].to_numpy() - X @ beta
    dense = np.linalg.slogdet(V)[1] + r @ Vi @ r + (n - 2 if reml else n) * np.log(2 * np.pi)
    if reml:
        dense += np.linalg.slogdet(XtViX)[1]
    assert m.objective == pytest.approx(dense, abs=1e-6)
    np.testing.assert_allclose(m.fixef.to_numpy(), beta, rtol=1e-7)
    assert phi < 0


@pytest.mark.parametrize("kind, largest", [("cs", 5), ("cs", 12), ("exp", 12)])
def test_within_group_structures_against_dense(kind, largest):
    """Compound symmetry and corExp within groups of 1 to ``largest`` rows (compound symmetry
    with up to 8 sizes: the n-free form of group sums; else the pass over the rows, where
    batched LAPACK calls once hung the fit), nested in the levels of a random slope's factor,
    which are nested in those of a second factor, with prior weights and rows out of order,
    against the n × n likelihood at the estimates."""
    rng = np.random.default_rng(5)
    rows = []
    for g in range(60):
        for _ in range(rng.integers(1, largest + 1)):
            rows.append((f"g{g:02d}", f"h{g // 6}", f"k{g // 20}", rng.normal(), *rng.uniform(0, 3, 2)))
    df = pd.DataFrame(rows, columns=["g", "h", "k", "x", "cx", "cy"])
    df = df.sample(frac=1.0, random_state=2).reset_index(drop=True)
    gi, hi, ki = (pd.factorize(df[c])[0] for c in ("g", "h", "k"))
    n = len(df)
    e = np.sqrt(0.4) * rng.normal(size=60)[gi] + np.sqrt(0.6) * rng.normal(size=n)  # ρ = 0.4 within g
    df["y"] = 1 + 0.5 * df["x"] + rng.normal(size=10)[hi] * (1 + 0.3 * df["x"]) + rng.normal(size=3)[ki] + e
    w = rng.uniform(0.5, 2.0, n)
    cor = J.corCompSymm(form="~ 1 | g") if kind == "cs" else J.corExp(form="~ cx + cy | g")
    m = J.lmer("y ~ x + (1 + x | h) + (1 | k)", df, weights=w, correlation=cor)
    same = pd.get_dummies(df["g"]).to_numpy(float) @ pd.get_dummies(df["g"]).to_numpy(float).T > 0
    if kind == "cs":
        rho = m.correlation_params["Rho"]
        C = np.where(same, rho + (1 - rho) * np.eye(n), 0.0)
        assert 0.1 < rho < 0.7
    else:
        dist = np.hypot(np.subtract.outer(df["cx"].to_numpy(), df["cx"].to_numpy()),
                        np.subtract.outer(df["cy"].to_numpy(), df["cy"].to_numpy()))
        C = np.where(same, np.exp(-dist / m.correlation_params["range"]), 0.0)
    vc = m.varcorr
    v0, v1, c01 = vc.loc[vc["grp"] == "h", "vcov"].to_numpy()
    tau_k = vc.loc[vc["grp"] == "k", "vcov"].item()
    x = df["x"].to_numpy()
    Zh, Zk = (pd.get_dummies(df[c]).to_numpy(float) for c in ("h", "k"))
    V = (Zh @ Zh.T * (v0 + c01 * (x[:, None] + x[None, :]) + v1 * np.outer(x, x)) + tau_k * Zk @ Zk.T
         + m.sigma**2 * C / np.sqrt(np.outer(w, w)))
    X = np.column_stack([np.ones(n), x])
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ df["y"].to_numpy())
    r = df["y"].to_numpy() - X @ beta
    dense = np.linalg.slogdet(V)[1] + r @ Vi @ r + (n - 2) * np.log(2 * np.pi) + np.linalg.slogdet(XtViX)[1]
    assert m.objective == pytest.approx(dense, abs=1e-6)
    np.testing.assert_allclose(m.fixef.to_numpy(), beta, rtol=1e-7)
    assert m.record.converged


with open(REF / "intervals.json") as _fh:
    INTERVALS = json.load(_fh)  # make_nlme_intervals.R: nlme's intervals(m, which = "var-cov")


@pytest.mark.parametrize("case", list(INTERVALS))
def test_intervals_match_nlme(fits, case):
    """Wald intervals on nlme's unconstrained scales (structure parameters, log σ) from the exact
    Hessian against nlme's, which take a numerical one: each bound within 1 % of the interval's
    width."""
    _, m = fits[case]
    ref = INTERVALS[case]
    got = m.intervals()
    expected = {**(ref["corStruct"] or {}), **(ref["varStruct"] or {}), "sigma": ref["sigma"]}
    assert set(got.index) == set(expected)
    for name, iv in expected.items():
        width = iv["upper"] - iv["lower"]
        assert got.loc[name, "est."] == pytest.approx(iv["est"], abs=0.01 * width)
        assert got.loc[name, "lower"] == pytest.approx(iv["lower"], abs=0.01 * width)
        assert got.loc[name, "upper"] == pytest.approx(iv["upper"], abs=0.01 * width)
    assert got.attrs["level"] == 0.95

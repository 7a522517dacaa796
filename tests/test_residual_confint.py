"""Profile intervals of models with a residual structure (jaxmlm._residual_confint), checked
against the independent dense marginal likelihood of tests/test_residuals.py: at each limit,
the dense ML deviance minimized over the other parameters (scipy, the parameter held at the
limit) lies z² above its minimum. nlme has no profile intervals (its ``intervals`` are Wald's,
checked in test_residuals.py); lme4 has no residual structures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import ndtri

import jaxmlm as J
from conftest import assert_compiled_once
from test_residuals import _crossed_data, _dense_criterion

Z2 = float(ndtri(0.975)) ** 2
NAMES = ["sd_(Intercept)|subj", "sd_(Intercept)|item", "sigma", "Phi"]


@pytest.fixture(scope="module")
def crossed():
    df = _crossed_data()
    form = "y ~ x + (1 | subj) + (1 | item)"
    ml = J.lmer(form, df, REML=False, correlation=J.corAR1(form="~ trial | subj"))
    reml = J.lmer(form, df, REML=True, correlation=J.corAR1(form="~ trial | subj"))
    return df, ml, reml, ml.confint()


def _dense_profile(df, k, value, start):
    """min over the other three of (s_subj, s_item, σ, φ) of the dense ML deviance, parameter k at value."""
    free = [j for j in range(4) if j != k]

    def full(w):
        q = np.empty(4)
        q[k] = value
        q[free] = w
        return q

    def f(w):
        q = full(w)
        if np.any(q[:3] <= 0) or not -1 < q[3] < 1:
            return np.inf
        return _dense_criterion(df, None, *q, False)[0]

    res = minimize(f, np.asarray(start)[free], method="Nelder-Mead",
                   options=dict(xatol=1e-7, fatol=1e-9, maxiter=4000, maxfev=8000))
    return res.fun


def test_rows_and_order(crossed):
    _, ml, _, ci = crossed
    assert list(ci.index) == NAMES + ["(Intercept)", "x"]
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    est = [ml.varcorr.set_index("grp")["sdcor"]["subj"], ml.varcorr.set_index("grp")["sdcor"]["item"], ml.sigma,
           ml.correlation_params["Phi"], *ml.fixef]
    assert np.all(ci["2.5 %"].to_numpy() < est) and np.all(est < ci["97.5 %"].to_numpy())


@pytest.mark.parametrize("k", [0, 2, 3])
def test_variance_and_structure_limits_against_the_dense_profile(crossed, k):
    """The dense deviance, minimized with the parameter at either limit, is z² above its
    minimum (the SD of subjects, σ, and the AR(1) Phi on its natural scale)."""
    df, ml, _, ci = crossed
    vc = ml.varcorr.set_index("grp")["sdcor"]
    est = np.array([vc["subj"], vc["item"], ml.sigma, ml.correlation_params["Phi"]])
    base = _dense_criterion(df, None, *est, False)[0]
    assert base == pytest.approx(ml.objective, abs=1e-6)
    for v in ci.loc[NAMES[k]]:
        assert _dense_profile(df, k, v, est) - base == pytest.approx(Z2, abs=2e-3)


def test_fixed_effect_limits_are_where_an_offset_refit_rises_by_z_squared(crossed):
    """The fixed effect of x held at a limit through the offset (x's column dropped): the ML
    refit with the structure, by the public lmer, is z² above the fit."""
    df, ml, _, ci = crossed
    for v in ci.loc["x"]:
        r = J.lmer("y ~ 1 + (1 | subj) + (1 | item)", df, REML=False, offset=v * df["x"].to_numpy(),
                   correlation=J.corAR1(form="~ trial | subj"))
        assert r.objective - ml.objective == pytest.approx(Z2, abs=1e-5)


def test_a_reml_fit_is_profiled_by_its_ml_refit(crossed):
    _, _, reml, ci = crossed
    pd.testing.assert_frame_equal(reml.confint(parm=["Phi", "x"]), ci.loc[["Phi", "x"]], rtol=1e-5)


def _orthodont_dense(d, s_subj, sigma, ratio):
    """ML deviance of distance ~ age * Sex + (1 | Subject), residual SD σ for girls and σ·ratio
    for boys, from the dense marginal covariance (β at its GLS estimate)."""
    X = np.column_stack([np.ones(len(d)), d["age"], d["Sex"] == "Male", d["age"] * (d["Sex"] == "Male")]).astype(float)
    y = d["distance"].to_numpy()
    Z = pd.get_dummies(d["Subject"]).to_numpy(float)
    V = s_subj**2 * Z @ Z.T + np.diag((sigma * np.where(d["Sex"] == "Male", ratio, 1.0)) ** 2)
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    r = y - X @ beta
    return np.linalg.slogdet(V)[1] + r @ Vi @ r + len(y) * np.log(2 * np.pi)


def test_varident_ratio_limits_against_the_dense_profile():
    """A varIdent ratio (boys' residual SD over girls'): at either limit, on nlme's scale, the
    dense deviance minimized over the SD of subjects and σ is z² above its minimum."""
    d = pd.read_csv(Path(__file__).parent / "reference" / "nlme" / "Orthodont.csv")
    m = J.lmer("distance ~ age * Sex + (1 | Subject)", d, REML=False, variance=J.varIdent(form="~ 1 | Sex"))
    ci = m.confint(parm=["Male", "sigma"])
    assert list(ci.index) == ["Male", "sigma"]
    s_subj = m.varcorr.set_index("grp")["sdcor"]["Subject"]
    base = _orthodont_dense(d, s_subj, m.sigma, m.variance_params["Male"])
    assert base == pytest.approx(m.objective, abs=1e-6)
    for v in ci.loc["Male"]:
        res = minimize(lambda w: _orthodont_dense(d, *np.exp(w), v), np.log([s_subj, m.sigma]), method="Nelder-Mead",
                       options=dict(xatol=1e-8, fatol=1e-10, maxiter=2000))
        assert res.fun - base == pytest.approx(Z2, abs=2e-3)


def test_bootstrap_intervals_carry_the_structure(crossed):
    _, ml, _, prof = crossed
    boot = ml.confint(method="boot", nsim=40, seed=3)
    assert {"Phi", "sigma", "x"} <= set(boot.index)
    lo, hi = boot.loc["Phi"]
    assert lo < ml.correlation_params["Phi"] < hi
    # percentile and profile limits of Phi within half the profile width of each other
    width = prof.loc["Phi", "97.5 %"] - prof.loc["Phi", "2.5 %"]
    assert np.all(np.abs(boot.loc["Phi"].to_numpy() - prof.loc["Phi"].to_numpy()) < 0.5 * width)


def test_profile_grid_of_phi_against_the_dense_profile(crossed):
    """m.profile(): Phi's grid on nlme's scale, each point's ζ² the dense deviance's rise with Phi
    held there; it crosses ±z at confint's limits."""
    df, ml, _, ci = crossed
    pr = ml.profile(parm="Phi")
    assert set(pr["parameter"]) == {"Phi"} and pr["zeta"].is_monotonic_increasing
    vc = ml.varcorr.set_index("grp")["sdcor"]
    est = np.array([vc["subj"], vc["item"], ml.sigma, ml.correlation_params["Phi"]])
    base = _dense_criterion(df, None, *est, False)[0]
    for v, zeta in pr.iloc[[1, -2]][["value", "zeta"]].to_numpy():
        assert _dense_profile(df, 3, v, est) - base == pytest.approx(zeta**2, abs=2e-3)
    lo, hi = np.interp([-np.sqrt(Z2), np.sqrt(Z2)], pr["zeta"], pr["value"])
    width = ci.loc["Phi", "97.5 %"] - ci.loc["Phi", "2.5 %"]
    np.testing.assert_allclose([lo, hi], ci.loc["Phi"].to_numpy(float), atol=0.01 * width)


def test_repeated_profiles_compile_the_profile_program_once(crossed, monkeypatch, caplog):
    """As for lmer and glmer, the profile's program is compiled once (here fully optimized from
    the start): a later ``confint()`` whose calls reach the tier-up count compiles nothing more of it."""
    ml = crossed[1]
    first, again = assert_compiled_once(ml.confint, "_minimize", monkeypatch, caplog)
    pd.testing.assert_frame_equal(again, first)

"""GLMM confidence intervals (jaxmlm._glmm_confint): lme4's profile intervals, independent
refits, the bootstrap, and bad input.

Reference numbers: tests/reference/glmer/profile_glmer.json, made by make_glmer_profile.R
(lme4 1.1-31): per case lme4's ``confint(profile(m, delta.cutoff = 1/32))`` (a fine grid for
its spline) and "exact" limits — roots of ζ(v) = ±z found with uniroot on lme4's own deviance
function, the other parameters re-optimized by bobyqa at each v — for the fixed effects and
the SDs of scalar terms.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri

import jaxmlm
from conftest import assert_compiled_once
from test_glmer import REF, fitted

PROFILE = json.loads((REF / "profile_glmer.json").read_text())
PROFILE_CASES = sorted(c for c in PROFILE if isinstance(PROFILE[c], dict) and "exact" in PROFILE[c])

_CI: dict = {}


def _ci(cid):
    if cid not in _CI:
        with warnings.catch_warnings():
            warnings.simplefilter("error", jaxmlm.ConvergenceWarning)
            _CI[cid] = fitted(cid)[2].confint()
    return _CI[cid]


def _table(entry) -> pd.DataFrame:
    return pd.DataFrame({"lo": entry["lower"], "hi": entry["upper"]}, index=entry["rows"], dtype=float)


@pytest.mark.parametrize("cid", PROFILE_CASES)
def test_profile_limits_are_the_exact_roots_of_lme4s_deviance(cid):
    """Fixed effects and scalar SDs: the limits are lme4's own ζ = ±z roots (uniroot on lme4's
    deviance function, the others re-optimized) to 1e-3 of the interval's width (the largest gap
    seen is 3e-4: lme4's deviance function stops PIRLS at its default tolerance)."""
    ci = _ci(cid)
    exact = PROFILE[cid]["exact"]
    assert exact, f"{cid}: no exact roots in the reference"
    for name, (lo, hi) in exact.items():
        got = ci.loc[name].to_numpy(float)
        want = np.array([lo, hi], float)
        width = want[1] - want[0]
        np.testing.assert_allclose(got, want, atol=1e-3 * width, err_msg=f"{cid}: {name}")


@pytest.mark.parametrize("cid", PROFILE_CASES)
def test_profile_intervals_match_lme4s_confint(cid):
    """Every parameter (vector-term SDs and correlations too) against lme4's ``confint`` on a fine
    profile grid, to 0.2 % of the interval's width (lme4 interpolates a spline; the largest gap
    seen is 3e-4, the correlated-slope model); the same rows, in lme4's order."""
    ci = _ci(cid)
    ref = _table(PROFILE[cid]["lme4_confint_fine"])
    assert list(ci.index) == list(ref.index)
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    for name, (lo, hi) in ref.iterrows():
        got = ci.loc[name].to_numpy(float)
        finite = np.isfinite([lo, hi])
        width = (hi - lo) if finite.all() else abs(got[finite.argmax()]) + 1.0
        assert np.array_equal(np.isfinite(got), finite), f"{cid}: {name}: {got} vs lme4 {lo, hi}"
        np.testing.assert_allclose(got[finite], np.array([lo, hi])[finite], atol=0.002 * width,
                                   err_msg=f"{cid}: {name}")


def test_fixed_effect_limit_is_where_a_refit_with_the_effect_as_offset_rises_by_z_squared():
    """Independently of the profile code: refitting the Poisson model without x, x·v added to the
    offset (the public glmer), raises the deviance by z² at either limit of x's interval."""
    _, d, m = fitted("pois_offset")
    lo, hi = m.confint(parm="x").loc["x"]
    z = float(ndtri(0.975))
    for v in (lo, hi):
        off = np.log(d["expo"].to_numpy()) + v * d["x"].to_numpy()
        r = jaxmlm.glmer("count ~ 1 + (1 | g)", d, "poisson", offset=off)
        np.testing.assert_allclose(-2 * r.loglik - (-2 * m.loglik), z**2, rtol=1e-5)


def test_an_sd_estimated_at_zero_has_lower_limit_zero_and_a_finite_upper_one():
    ci = _ci("singular_bern")
    lo, hi = ci.loc["sd_(Intercept)|g"]
    assert lo == 0.0 and 0.0 < hi < np.inf


def test_parm_selects_rows_and_level_moves_the_limits():
    m = fitted("cbpp_cbind")[2]
    full = _ci("cbpp_cbind")
    beta = m.confint(parm="beta_")
    assert list(beta.index) == list(m.fixef.index)
    np.testing.assert_allclose(beta.to_numpy(), full.loc[beta.index].to_numpy(), rtol=1e-6)
    narrow = m.confint(level=0.8, parm=["sd_(Intercept)|herd", "period2"])
    assert list(narrow.columns) == ["10 %", "90 %"]
    for name in narrow.index:
        assert full.loc[name, "2.5 %"] < narrow.loc[name, "10 %"] < narrow.loc[name, "90 %"] < full.loc[name, "97.5 %"]


def test_bootstrap_intervals_cover_the_estimates_and_roughly_agree_with_the_profile():
    m = fitted("cbpp_cbind")[2]
    boot = m.confint(method="boot", nsim=200, seed=7)
    prof = _ci("cbpp_cbind")
    assert list(boot.index) == list(prof.index)
    est = np.r_[m.theta[0], m.fixef.to_numpy()]
    assert np.all(boot["2.5 %"].to_numpy() < est) and np.all(est < boot["97.5 %"].to_numpy())
    # fixed effects: percentile and profile limits within a quarter of the profile width
    b = list(m.fixef.index)
    width = (prof.loc[b, "97.5 %"] - prof.loc[b, "2.5 %"]).to_numpy()
    assert np.all(np.abs(boot.loc[b].to_numpy() - prof.loc[b].to_numpy()) < 0.25 * width[:, None])


@pytest.mark.parametrize(
    "cid, kwargs, error, match",
    [
        ("cbpp_nagq0", {}, jaxmlm.InferenceError, "nAGQ"),
        ("cbpp_cbind", {"parm": "nope"}, jaxmlm.JaxmlmError, "unknown parameter"),
        ("cbpp_cbind", {"method": "spline"}, jaxmlm.DataError, "method must be"),
        ("cbpp_cbind", {"level": 1.5}, jaxmlm.DataError, "level must be"),
    ],
)
def test_bad_requests_are_clear_errors(cid, kwargs, error, match):
    m = fitted(cid)[2]
    with pytest.raises(error, match=match):
        m.confint(**kwargs)


def test_profile_grid_of_a_fixed_effect_against_offset_refits():
    """m.profile(): each grid point's ζ² is the deviance rise of the public glmer refitted with the
    effect held there through the offset; ζ's sign is the side; the grid spans lme4's cutoff."""
    _, d, m = fitted("pois_offset")
    pr = m.profile(parm="x")
    assert set(pr["parameter"]) == {"x"} and (pr["zeta"] == 0).sum() == 1
    assert pr["zeta"].is_monotonic_increasing and pr["value"].is_monotonic_increasing
    assert pr["zeta"].min() < -2.5 and pr["zeta"].max() > 2.5
    for v, zeta in pr.iloc[[1, len(pr) // 2 + 2, -2]][["value", "zeta"]].to_numpy():
        r = jaxmlm.glmer("count ~ 1 + (1 | g)", d, "poisson", offset=np.log(d["expo"].to_numpy()) + v * d["x"].to_numpy())
        assert np.sign(zeta) * np.sqrt(max(-2 * r.loglik + 2 * m.loglik, 0.0)) == pytest.approx(zeta, abs=1e-4)


def test_profile_grid_crosses_z_at_the_confint_limits():
    m = fitted("cbpp_cbind")[2]
    pr = m.profile()
    ci = _ci("cbpp_cbind")
    z = float(ndtri(0.975))
    for name, g in pr.groupby("parameter"):
        lo, hi = np.interp([-z, z], g["zeta"], g["value"])
        width = ci.loc[name, "97.5 %"] - ci.loc[name, "2.5 %"]
        np.testing.assert_allclose([lo, hi], ci.loc[name].to_numpy(float), atol=0.01 * width)


def test_repeated_profiles_compile_the_profile_program_once(monkeypatch, caplog):
    """The profile's program is compiled once, at the quick tier, and not again at full
    optimization once its calls reach the tier-up count (a later ``confint()`` paid that
    compile on the main thread)."""
    m = fitted("cbpp_cbind")[2]
    first, again = assert_compiled_once(m.confint, "_minimize", monkeypatch, caplog)
    pd.testing.assert_frame_equal(again, first)

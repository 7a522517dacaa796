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
from conftest import CASES

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


def test_second_profile_of_a_model_does_not_recompile(fits, profiles):
    m = fits("sleepstudy_rs")
    # The first profile right here: one made many tests earlier may have left the bounded
    # list of compiled programs (_compiled.py) since, as it should.
    first = confint(m)
    before = len(_COMPILES)
    again = confint(m)
    assert len(_COMPILES) == before
    pd.testing.assert_frame_equal(again, first)
    pd.testing.assert_frame_equal(again, profiles("sleepstudy_rs"))

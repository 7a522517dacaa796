"""tidy / glance / augment (jaxmlm/_tidy.py) against broom.mixed 0.2.9.4 on lmerTest fits.

Reference: tests/reference/broom/broom_reference.json, made by make_broom_reference.R beside it
(lme4 run to tight tolerances, so both sides sit at the criterion's minimum)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from jaxmlm import InferenceError

REF = json.loads((Path(__file__).parent / "reference" / "broom" / "broom_reference.json").read_text())


def _broom(table) -> pd.DataFrame:
    """A broom.mixed table with its names as jaxmlm spells them (std.error → std_error, ...)."""
    frame = pd.DataFrame(table)
    return frame.rename(columns=lambda c: c if c.startswith(".") else c.replace(".", "_"))
CASES = [k for k in REF if k not in ("versions", "lmlist")]


@pytest.fixture(scope="module")
def fits():
    cache = {}

    def get(cid):
        if cid not in cache:
            c = REF[cid]
            cache[cid] = jaxmlm.lmer(c["formula"], jaxmlm.load_example(c["data"]), REML=c["REML"])
        return cache[cid]

    return get


def _close(ours, theirs, rtol, what):
    a, b = np.asarray(ours, float), np.asarray(theirs, float)
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: missing values differ"
    ok = ~np.isnan(b)
    scale = np.max(np.abs(b[ok])) if ok.any() else 1.0
    np.testing.assert_allclose(a[ok], b[ok], rtol=rtol, atol=rtol * scale, err_msg=what)


def _labels(frame, cols):
    return {c: [None if pd.isna(v) else str(v) for v in frame[c]] for c in cols}


@pytest.mark.parametrize("cid", CASES)
def test_tidy_equals_broom(fits, cid):
    m, ref = fits(cid), _broom(REF[cid]["tidy"])
    ours = m.tidy(conf_int=True)
    assert list(ours.columns) == list(ref.columns)
    assert _labels(ours, ["effect", "group", "term"]) == _labels(ref, ["effect", "group", "term"])
    for col in ["estimate", "std_error", "statistic", "conf_low", "conf_high"]:
        _close(ours[col], ref[col], 2e-6, f"{cid} {col}")
    _close(ours["df"], ref["df"], 1e-5, f"{cid} df")  # Satterthwaite: lmerTest differentiates numerically
    _close(np.log(ours["p_value"]), np.log(ref["p_value"]), 1e-5, f"{cid} log p")


@pytest.mark.parametrize("cid", CASES)
def test_ran_vals_and_glance_equal_broom(fits, cid):
    m = fits(cid)
    ref = _broom(REF[cid]["tidy_ran_vals"])
    ours = m.tidy(effects="ran_vals")
    assert list(ours.columns) == list(ref.columns)
    assert _labels(ours, ["effect", "group", "level", "term"]) == _labels(ref, ["effect", "group", "level", "term"])
    _close(ours["estimate"], ref["estimate"], 2e-6, f"{cid} ran_vals")
    _close(ours["std_error"], ref["std_error"], 2e-6, f"{cid} ran_vals se")
    g, rg = m.glance(), _broom([REF[cid]["glance"]])
    assert list(g.columns) == list(rg.columns)
    _close(g.to_numpy(float)[0], rg.to_numpy(float)[0], 1e-8, f"{cid} glance")


@pytest.mark.parametrize("cid", CASES)
def test_augment_equals_broom(fits, cid):
    m = fits(cid)
    ref = _broom(REF[cid]["augment"])
    ours = m.augment()
    assert len(ours) == len(ref) == m.nobs
    frame_cols = [c for c in ours.columns if not c.startswith(".")]
    assert frame_cols == list(m.design.frame.columns)
    assert [c for c in ours.columns if c.startswith(".")] == list(ref.columns)
    for col in ref.columns:
        _close(ours[col], ref[col], 2e-5, f"{cid} {col}")


def test_tidy_options():
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", jaxmlm.load_example("sleepstudy"))
    fixed = m.tidy(effects="fixed", conf_int=True, conf_level=0.9)
    ct = m.coef_table()
    from scipy import stats

    q = stats.t.ppf(0.95, ct["df"].to_numpy())
    np.testing.assert_allclose(fixed["conf_high"] - fixed["estimate"], q * ct["Std. Error"].to_numpy(), rtol=1e-12)
    coefs = m.tidy(effects=["ran_coefs"])
    wide = coefs.pivot(index="level", columns="term", values="estimate")
    np.testing.assert_allclose(wide.loc[m.coef["Subject"].index.astype(str), list(m.fixef.index)].to_numpy(),
                               m.coef["Subject"][list(m.fixef.index)].to_numpy(), rtol=1e-12)
    both = m.tidy(effects=["ran_pars", "fixed"])
    assert list(both["effect"]) == ["fixed"] * 2 + ["ran_pars"] * 4  # broom's order
    with pytest.raises(InferenceError, match="effects must be"):
        m.tidy(effects="random")
    with pytest.raises(InferenceError, match="conf_level"):
        m.tidy(conf_level=95)


def test_augment_of_a_weighted_fit():
    df = jaxmlm.load_example("sleepstudy")
    w = np.linspace(0.5, 2.0, len(df))
    a = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", df, weights=w).augment()
    np.testing.assert_allclose(a[".sqrtXwt"], np.sqrt(w))  # lme4's sqrtXWt of a weighted LMM
    np.testing.assert_allclose(a[".sqrtrwt"], np.sqrt(w))
    np.testing.assert_allclose(a[".wtres"], np.sqrt(w) * a[".resid"])
    with pytest.raises(InferenceError, match="effects must be"):
        jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", df).tidy(effects=None)

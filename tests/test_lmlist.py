"""lmList (jaxmlm/_lmlist.py) against lme4's lmList (tests/reference/broom/, make_broom_reference.R)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import jaxmlm
from jaxmlm import FormulaError

REF = json.loads((Path(__file__).parent / "reference" / "broom" / "broom_reference.json").read_text())["lmlist"]


@pytest.mark.parametrize("cid", ["sleep", "classroom", "sleep_offset_weights"])
def test_lmlist_equals_lme4(cid):
    c = REF[cid]
    df = jaxmlm.load_example(c["data"])
    kwargs = {}
    if cid == "sleep_offset_weights":  # the columns the R script made: an offset() term and weights
        i = np.arange(1, len(df) + 1)
        df = df.assign(off=0.3 * df["Days"] + np.sin(i), w=1 + (i % 3) / 2)
        kwargs = {"weights": "w"}
    out = jaxmlm.lmList(c["formula"], df, **kwargs)
    assert list(out.index.astype(str)) == c["levels"]
    assert list(out.columns) == list(c["coef"])
    for name, values in c["coef"].items():
        ref = np.array([np.nan if v is None else v for v in values])
        ours = out[name].to_numpy()
        assert np.array_equal(np.isnan(ours), np.isnan(ref)), name  # the groups that cannot estimate it
        np.testing.assert_allclose(ours[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=1e-7, atol=1e-7)


def test_lmlist_refuses_a_formula_without_group():
    with pytest.raises(FormulaError, match="response ~ predictors | group"):
        jaxmlm.lmList("Reaction ~ Days", jaxmlm.load_example("sleepstudy"))


def test_lmlist_keeps_a_column_aliased_everywhere_as_nan():
    df = jaxmlm.load_example("sleepstudy").assign(Days2=lambda d: 2 * d["Days"])
    out = jaxmlm.lmList("Reaction ~ Days + Days2 | Subject", df)
    assert list(out.columns) == ["(Intercept)", "Days", "Days2"] and out["Days2"].isna().all()
    np.testing.assert_allclose(out[["(Intercept)", "Days"]], jaxmlm.lmList("Reaction ~ Days | Subject", df))

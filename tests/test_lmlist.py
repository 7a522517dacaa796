"""lmList (jaxmlm/_lmlist.py) against lme4's lmList (tests/reference/broom/, make_broom_reference.R)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import jaxmlm
from jaxmlm import FormulaError

REF = json.loads((Path(__file__).parent / "reference" / "broom" / "broom_reference.json").read_text())["lmlist"]


@pytest.mark.parametrize("cid", ["sleep", "classroom"])
def test_lmlist_equals_lme4(cid):
    c = REF[cid]
    out = jaxmlm.lmList(c["formula"], jaxmlm.load_example(c["data"]))
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

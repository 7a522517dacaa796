"""The random-effects block of summary() printed as lme4 prints it (jaxmlm/_present.py).

Reference: tests/reference/printed/varcorr_printed.json, made by make_varcorr_printed.R beside it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import jaxmlm

REF = json.loads((Path(__file__).parent / "reference" / "printed" / "varcorr_printed.json").read_text())
NUMBER = re.compile(r"-?\d+(\.\d+)?(e[+-]\d+)?$")


def _block(m) -> list[str]:
    lines = m.summary().splitlines()
    start = lines.index("Random effects:")
    stop = next(i for i, ln in enumerate(lines) if ln.startswith("Number of obs"))
    return [ln.rstrip() for ln in lines[start:stop + 1] if ln.strip()]


@pytest.mark.parametrize("cid", list(REF))
def test_random_effects_block_as_lme4_prints_it(cid):
    """Same words, same column positions, same decimals; numbers equal to the last printed digit
    (large variances print every integer digit, so there within 1e-6 relative)."""
    c = REF[cid]
    df = jaxmlm.load_example(c["data"])
    if "R100" in c["formula"]:
        df = df.assign(R100=df["Reaction"] * 100)
    ours, theirs = _block(jaxmlm.lmer(c["formula"], df)), c["lines"]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        ta, tb = list(re.finditer(r"\S+", a)), list(re.finditer(r"\S+", b))
        assert [t.start() for t in ta] == [t.start() for t in tb], (a, b)
        for x, y in zip(ta, tb):
            x, y = x.group(), y.group()
            if NUMBER.match(y):
                decimals = len(y.split(".")[1].split("e")[0]) if "." in y else 0
                assert len(x) == len(y) and (len(x.split(".")[1].split("e")[0]) if "." in x else 0) == decimals
                assert abs(float(x) - float(y)) <= 10.0**-decimals + 1e-6 * abs(float(y)), (a, b)
            else:
                assert x == y, (a, b)

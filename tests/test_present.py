"""The random-effects block of summary() printed as lme4 prints it (jaxmlm/_present.py).

Reference: tests/reference/printed/varcorr_printed.json, made by make_varcorr_printed.R beside it."""

from __future__ import annotations

import json
import re
from html import escape
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


# ---- the whole summary, as lmerTest prints it ----------------------------------------------------------
# Reference: tests/reference/printed/summary_printed.json, made by make_summary_printed.R beside it.
FULL = json.loads((Path(__file__).parent / "reference" / "printed" / "summary_printed.json").read_text())
ABBREV = FULL.pop("abbreviate")


def _same_print(ours: str, theirs: str):
    """Same words at the same column positions; each number to the same decimals and equal to its
    last printed digit (1e-6 relative for wide ones: df to 5 decimals, variances to every integer)."""
    ta, tb = list(re.finditer(r"\S+", ours)), list(re.finditer(r"\S+", theirs))
    assert [t.start() for t in ta] == [t.start() for t in tb], (ours, theirs)
    for x, y in zip(ta, tb):
        x, y = x.group(), y.group()
        if NUMBER.match(y):
            decimals = len(y.split(".")[1].split("e")[0]) if "." in y else 0
            assert len(x) == len(y) and (len(x.split(".")[1].split("e")[0]) if "." in x else 0) == decimals, (ours, theirs)
            assert abs(float(x) - float(y)) <= 10.0**-decimals + 1e-6 * abs(float(y)), (ours, theirs)
        else:
            assert x == y, (ours, theirs)


@pytest.mark.parametrize("cid", list(FULL))
def test_summary_prints_as_lmertest(cid):
    """Every line after lmerTest's title (which names its class, wrapped at 80 columns): the Data line
    (the name of the caller's variable), criterion or AIC table, scaled residuals, random effects,
    fixed effects with Satterthwaite df, p-values and stars, correlation of the fixed effects."""
    c = FULL[cid]
    frames = {c["data"]: jaxmlm.load_example(c["data"])}
    m = jaxmlm.lmer(c["formula"], frames[c["data"]], REML=c["REML"], data_name=c["data"])
    ours = [ln.rstrip() for ln in m.summary().splitlines()]
    theirs = [ln.replace("\u2018", "'").replace("\u2019", "'") for ln in c["lines"]]
    theirs = [ln for ln in theirs if not ln.startswith("Control:")]  # R names its own control argument
    theirs = theirs[next(i for i, ln in enumerate(theirs) if ln.startswith("Formula:")):]
    ours = ours[next(i for i, ln in enumerate(ours) if ln.startswith("Formula:")):]
    while theirs and not theirs[-1]:
        theirs.pop()
    assert len(ours) == len(theirs), "\n".join(ours)
    for a, b in zip(ours, theirs):
        if b.startswith("optimizer ("):  # lme4 names its optimizer, jaxmlm its own
            assert re.sub(r"\(\w+\)", "", a) == re.sub(r"\(\w+\)", "", b)
        else:
            _same_print(a, b)


def test_data_line_names_the_callers_variable():
    sleep = jaxmlm.load_example("sleepstudy")
    m = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", sleep)
    assert m.summary().splitlines()[2] == "   Data: sleep"
    assert m.update(REML=False).data_name == "sleep"
    assert jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", sleep, data_name="my data").data_name == "my data"
    unnamed = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", sleep.copy())
    assert unnamed.data_name is None and "Data:" not in unnamed.summary()


@pytest.mark.parametrize("minlength", [6, 11])
def test_abbreviate_as_r(minlength):
    from jaxmlm._rnum import abbreviate

    assert abbreviate(ABBREV["names"], minlength) == ABBREV[f"minlength{minlength}"]


def test_anova_tables_show_as_html_with_their_heading():
    """anova(m0, m1), ranova(m) and anova(m) in a notebook: the heading lines, then the table."""
    sleep = jaxmlm.load_example("sleepstudy")
    m1 = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    m0 = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", sleep)
    for table in (jaxmlm.anova(m0, m1), m1.ranova(), m1.anova()):
        html = table._repr_html_()
        heading = table.attrs["heading"]
        heading = [heading] if isinstance(heading, str) else [h for h in heading if h]
        assert html.startswith("<p>") and html.count("<p>") == len(heading) and "<table" in html
        assert all(escape(col) in html for col in table.columns) and all(escape(h) in html for h in heading)
        assert f"{table.iloc[-1, 0]}"[:5] in html  # the table's numbers, not just its frame


# lmerTest's ranova of a model without fixed effects refits its reduced models wrongly (npar 3,
# Df 0, negative LRT): that table is not a reference.
@pytest.mark.parametrize("cid, what", [(c, w) for c in FULL for w in ("ranova", "anova")
                                       if FULL[c][w] and (c, w) != ("pastes_no_intercept", "ranova")])
def test_ranova_and_anova_print_as_lmertest(cid, what):
    """ranova(m) and anova(m) (type III, Satterthwaite) of each fit, every printed line (lmerTest
    prints no anova table for a model with the intercept alone)."""
    c = FULL[cid]
    theirs = [ln.replace("\u2018", "'").replace("\u2019", "'") for ln in c[what]]
    m = jaxmlm.lmer(c["formula"], jaxmlm.load_example(c["data"]), REML=c["REML"], data_name=c["data"])
    ours = [ln.rstrip() for ln in str(m.ranova() if what == "ranova" else m.anova()).splitlines()]
    while theirs and not theirs[-1]:
        theirs.pop()
    assert len(ours) == len(theirs), "\n".join(ours)
    for a, b in zip(ours, theirs):
        _same_print(a, b)


COEFMAT = json.loads((Path(__file__).parent / "reference" / "printed" / "coefmat_printed.json").read_text())


@pytest.mark.parametrize("k", range(len(COEFMAT["coefmat"])))
def test_coefmat_prints_a_negative_zero_as_r(k):
    """A t value (or estimate) that rounds to zero from below prints as R prints it: "0.000", not "-0.000"."""
    import numpy as np
    import pandas as pd

    from jaxmlm._present import print_coefmat

    case = COEFMAT["coefmat"][k]
    est, se, df = (np.array(case[c], dtype=float) for c in ("Estimate", "SE", "df"))
    t = est / se
    from scipy import stats

    table = pd.DataFrame({"Estimate": est, "Std. Error": se, "df": df, "t value": t,
                          "Pr(>|t|)": 2 * stats.t.sf(np.abs(t), df)}, index=[f"x{i + 1}" for i in range(len(t))])
    expected = [ln.replace("‘", "'").replace("’", "'") for ln in case["printed"]]
    assert print_coefmat(table) == expected


def test_r_format_prints_a_negative_zero_as_zero():
    from jaxmlm._rnum import r_format

    # JSON keeps no sign of zero: the R script's x is c(-0.0, -0.4, 0.0, -0.1)
    assert r_format([-0.0, -0.4, 0.0, -0.1], COEFMAT["format"]["digits"][0]) == COEFMAT["format"]["printed"]


# R's deparse of formulas: tests/reference/printed/formula_deparse.json, made by make_formula_deparse.R
DEPARSED = json.loads((Path(__file__).parent / "reference" / "printed" / "formula_deparse.json").read_text())


@pytest.mark.parametrize("case", DEPARSED, ids=[c["input"] for c in DEPARSED])
def test_formulas_print_as_r_deparses_them(case):
    from jaxmlm._rnum import deparse_formula

    assert deparse_formula(case["input"]) == case["deparsed"]
    assert deparse_formula(case["deparsed"]) == case["deparsed"]  # idempotent


def test_summary_and_anova_print_the_deparsed_formula():
    sleep = jaxmlm.load_example("sleepstudy")
    m1 = jaxmlm.lmer("Reaction~Days+(Days|Subject)", sleep)
    m0 = jaxmlm.lmer("Reaction~Days+(1|Subject)", sleep)
    assert "Formula: Reaction ~ Days + (Days | Subject)" in m1.summary().splitlines()
    heading = str(jaxmlm.anova(m0, m1)).splitlines()
    assert "m0: Reaction ~ Days + (1 | Subject)" in heading and "m1: Reaction ~ Days + (Days | Subject)" in heading

"""m.summary(style="stata"): Stata's ``mixed`` output, every printed number against R.

tests/reference/stata/make_stata_reference.R fits each model with lme4 and computes Stata's
formulas there, independently of jaxmlm: the Wald chi2 of the fixed effects, z, p and normal
intervals, delta-method SEs of the variance parameters from a numerical Hessian (numDeriv) of a
marginal log-likelihood written in R in the log-SD / atanh-correlation parametrization, their
intervals, and the LR test against the linear regression. Here the printed text is read back
and each number compared with R's value at the digits printed. The layout (row labels, column
headings) is compared with Stata's output as course note 004 prints it.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import jaxmlm
from jaxmlm._stata import stata_number

REF = json.loads((Path(__file__).parent / "reference" / "stata" / "stata_reference.json").read_text())


def _data(name):
    if name == "exam":
        d = jaxmlm.load_example("Exam")
        d["lrt_c"] = d["standLRT"] - d.groupby("school", observed=True)["standLRT"].transform("mean")
        return d
    if name == "sleep":  # as the R script: 4 of the days, every 7th of those rows left out, a knot at day 2
        d = jaxmlm.load_example("sleepstudy")
        d = d[d["Days"].isin([0, 2, 4, 9])]
        d = d[(np.arange(1, len(d) + 1) % 7) != 0].copy()
        d["Days_sp"] = np.maximum(d["Days"] - 2, 0)
        return d
    return jaxmlm.load_example(name)


_FITS = {}


def _fit(case):
    if case not in _FITS:
        ref = REF[case]
        _FITS[case] = jaxmlm.lmer(ref["formula"], _data(ref["data"]), REML=ref["REML"])
    return _FITS[case]


_NUM = r"(-?(?:\d+\.?\d*|\.\d+)(?:e[+-]\d+)?|\.)"


def _num(s):
    return math.nan if s == "." else float(s)


def _parse(text):
    """The numbers of a Stata-style summary: header, fixed-effects rows, random-effects rows, LR test."""
    lines = text.splitlines()
    out = {"header": {}, "fixed": {}, "random": [], "blocks": []}
    for label, key in [("Number of obs", "nobs"), ("Number of groups", "ngroups"), ("Obs per group: min", "min"),
                       (" avg", "avg"), (" max", "max"), (r"Wald chi2\(\d+\)", "wald"), ("Prob > chi2", "p_wald")]:
        for ln in lines:
            mm = re.search(label + r"\s*=\s*" + _NUM + r"\s*$", ln[48:] if key in ("avg", "max") else ln)
            if mm:
                out["header"][key] = _num(mm.group(1))
                break
    mm = re.search(r"Wald chi2\((\d+)\)", text)
    out["header"]["df"] = int(mm.group(1))
    mm = re.search(r"Log (?:restricted-)?likelihood = " + _NUM, text)
    out["header"]["loglik"] = _num(mm.group(1))
    rules = [i for i, ln in enumerate(lines) if ln == "-" * 78]
    fixed = lines[rules[0] + 3 : rules[1]]
    for ln in fixed:
        name, rest = ln.split("|")
        out["fixed"][name.strip()] = [_num(v) for v in rest.split()]
    random = lines[rules[2] + 3 : rules[3]]
    for ln in random:  # rows keyed "factor/label" (the block they are printed in)
        if ln.startswith("-"):
            continue
        name, rest = ln.split("|")
        if not rest.strip():
            out["blocks"].append(name.strip())
            continue
        block = "Residual" if name.strip().endswith("(Residual)") else out["blocks"][-1].split(": ")[0]
        out["random"].append((f"{block}/{name.strip()}", [_num(v) for v in rest.split()]))
    mm = re.search(r"LR test vs\. linear regression:\s+(\S+) =\s+" + _NUM + r"\s+Prob >=? \S+ = " + _NUM, text)
    out["lr"] = (mm.group(1), _num(mm.group(2)), _num(mm.group(3)))
    return out


def _agrees(printed, expected, rel=2e-6, what=""):
    """The printed number is R's value to the digits printed (half a unit of the last printed digit),
    with a relative allowance for the difference of two optimizers (and of R's numerical Hessian)."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        assert math.isnan(printed), what
        return
    s = stata_number(printed) if not float(printed).is_integer() else str(int(printed))
    decimals = len(s.split(".")[1]) if "." in s and "e" not in s else 0
    tol = 0.5 * 10.0 ** -decimals + rel * abs(expected)
    assert abs(printed - expected) <= tol, f"{what}: printed {printed}, R {expected}"


def _stata_label(ref_row, stddev):
    """The row label Stata gives an R reference row (names as they are in these models: no abbreviation)."""
    name = {None: None, "(Intercept)": "_cons"}
    v1 = name.get(ref_row["var1"], ref_row["var1"])
    v2 = name.get(ref_row["var2"], ref_row["var2"])
    kind = ref_row["kind"]
    block = ref_row["grp"].split(":")[0]  # lme4's "classid:schoolid" is Stata's classid
    if ref_row["grp"] == "Residual":
        return f"Residual/{kind}(Residual)"
    if kind in ("corr", "cov"):
        a, b = (v2, v1) if v1 == "_cons" else (v1, v2)  # _cons second
        return f"{block}/{kind}({a},{b})"
    return f"{block}/{kind}({v1})"


@pytest.mark.parametrize("case", sorted(REF))
@pytest.mark.parametrize("stddev", [False, True])
def test_every_printed_number_is_r_s(case, stddev):
    ref = REF[case]
    m = _fit(case)
    out = _parse(m.summary(style="stata", stddev=stddev))
    h = out["header"]
    assert h["nobs"] == ref["nobs"]
    g = ref["groups"]
    if len(g) == 1:
        assert h["ngroups"] == g[0]["ngroups"] and h["min"] == g[0]["min"] and h["max"] == g[0]["max"]
        _agrees(h["avg"], g[0]["avg"], 0, "avg")
    _agrees(h["loglik"], ref["loglik"], 1e-9, "log likelihood")
    assert h["df"] == ref["wald"]["df"]
    _agrees(h["wald"], ref["wald"]["statistic"], 1e-5, "Wald chi2")
    _agrees(h["p_wald"], ref["wald"]["p"], 1e-5, "Prob > chi2")
    fe = ref["fixef"]
    names = ["_cons" if n == "(Intercept)" else n for n in fe["names"]]
    assert list(out["fixed"]) == [n for n in names if n != "_cons"] + ["_cons"]  # _cons last, as Stata
    for i, n in enumerate(names):
        row = out["fixed"][n]
        for v, key, rel in zip(row, ["estimate", "se", "z", "p", "lower", "upper"], [1e-5, 1e-4, 1e-4, 0, 1e-5, 1e-5]):
            _agrees(v, fe[key][i], rel, f"{n} {key}")
    # random-effects rows: R's rows of the shown kinds, matched by label
    kinds = ("sd", "corr") if stddev else ("var", "cov")
    expected = [r for r in ref["random"] if r["kind"] in kinds]
    got = dict(out["random"])
    assert len(got) == len(out["random"]) == len(expected)
    for r in expected:
        row = got[_stata_label(r, stddev)]
        for v, key, rel in zip(row, ["estimate", "se", "lower", "upper"], [1e-5, 5e-5, 5e-5, 5e-5]):
            _agrees(v, r[key], rel, f"{_stata_label(r, stddev)} {key}")
    lr = ref["lr_test"]
    assert out["lr"][0] == lr["kind"]
    _agrees(out["lr"][1], lr["statistic"], 1e-6, "LR")
    _agrees(out["lr"][2], lr["p"], 1e-4, "LR p")


def test_stata_number_prints_as_the_note():
    # numbers as course note 004 prints them (Stata's %9.0g; the log-likelihood %10.0g)
    for s in ["6.466099", ".2687824", "-4.5202", "-11.88", "-.9660133", ".0225032", "-.3995493", "10.27181",
              "1.882779", ".5529766", ".0199474", "69.83566", ".5415451", ".13837", "4.220941", "-.2797043"]:
        assert stata_number(float(s)) == s
    assert stata_number(-14020.718, 10) == "-14020.718" and stata_number(-265.42862, 10) == "-265.42862"
    assert stata_number(float("nan")) == "." and stata_number(0.0) == "0"
    assert stata_number(1.234567e-6) == "1.23e-06" and stata_number(123456789.0) == "1.23e+08"
    assert stata_number(9.99999999) == "10"


def _note_model():
    d = _data("exam").rename(columns={"lrt_c": "lrt_groupc"})
    return jaxmlm.lmer("normexam ~ lrt_groupc + (lrt_groupc | school)", d)


def test_layout_as_in_the_note():
    """`mixed normexam lrt_groupc || school: lrt_groupc, cov(uns) stddev` (REML), laid out as the note
    prints the GCSE model: headings, labels (Stata's abbreviations), separators, the LR line."""
    text = _note_model().summary(style="stata", stddev=True)
    lines = text.splitlines()
    assert lines[0].startswith("Mixed-effects REML regression") and lines[0].endswith("Number of obs      =      4059")
    assert lines[1] == "Group variable: school" + " " * 26 + "Number of groups   =        65"
    assert "Obs per group: min =         2" in text and "avg =      62.4" in text and "max =       198" in text
    assert re.search(r"^Log restricted-likelihood = -4680\.753 +Prob > chi2        =    0\.0000$", text, re.M)
    assert re.search(r"Wald chi2\(1\)       =    756\.87$", text, re.M)
    assert "      normexam |" not in text and "    normexam |      Coef.   Std. Err.      z    P>|z|     " \
        "[95% Conf. Interval]" in lines
    assert "-------------+" + "-" * 64 in lines
    labels = [ln.split("|")[0].strip() for ln in lines if "|" in ln and not ln.startswith("-")]
    assert labels == ["normexam", "lrt_groupc", "_cons", "Random-effects Parameters", "school: Unstructured",
                      "sd(lrt_gr~c)", "sd(_cons)", "corr(lrt_gr~c,_cons)", "sd(Residual)"]
    assert lines.count("-" * 29 + "+" + "-" * 48) == 2  # under the heading; after the block, before the residual
    assert "  Random-effects Parameters  |   Estimate   Std. Err.     [95% Conf. Interval]" in lines
    # spaced as the note's line "LR test vs. linear regression:      chi2(3) =    835.32    Prob > chi2 = 0.0000"
    assert "LR test vs. linear regression:      chi2(3) =    837.28    Prob > chi2 = 0.0000" in lines
    assert "Note: LR test is conservative and provided only for reference." in lines
    assert all(len(ln) <= 78 for ln in lines if not ln.startswith("LR test"))
    var = _note_model().summary(style="stata")
    assert re.search(r"^ +var\(lrt_gr~c\) \|", var, re.M) and re.search(r"^ +cov\(lrt_gr~c,_cons\) \|", var, re.M)
    assert re.search(r"^ +var\(Residual\) \|", var, re.M)


def test_note_numbers_where_the_public_data_reproduce_them():
    """The public Exam is a rescaled version of the note's data (normal scores, GCSE about 10 x
    normexam + 70): scale-free numbers agree with the note's to a few digits, not all."""
    out = _parse(_note_model().summary(style="stata", stddev=True))
    rows = {k.split("/")[1]: v for k, v in out["random"]}
    slope = out["fixed"]["lrt_groupc"][0]
    assert abs(slope - 0.5529766) < 1e-3  # the note's coefficient .5529766 (same units on both sides)
    assert abs(rows["sd(lrt_gr~c)"][0] - 0.1202955) < 2e-3  # note: .1202955
    assert abs(rows["corr(lrt_gr~c,_cons)"][0] - 0.5481782) < 3e-3  # note: .5481782
    assert abs(10 * rows["sd(_cons)"][0] - 4.220941) < 0.01  # note: 4.220941 (GCSE points)
    assert abs(10 * rows["sd(Residual)"][0] - 7.432694) < 0.01  # note: 7.432694
    assert out["lr"][0] == "chi2(3)" and abs(out["lr"][1] - 835.32) < 3  # note: chi2(3) = 835.32


def test_chibar2_line_and_identity_block():
    text = _fit("growth_ml").summary(style="stata")
    assert "id: Identity" not in text and "Subject: Identity            |" in text
    assert re.search(r"^LR test vs\. linear regression: chibar2\(01\) = +\d+\.\d\d +Prob >= chibar2 = 0\.\d{4}$",
                     text, re.M)
    assert "Note: LR test" not in text and "Log likelihood = " in text and "Mixed-effects ML regression" in text


def test_nested_factors_print_outermost_first():
    text = _fit("classroom_nested_ml").summary(style="stata")
    assert text.index("schoolid: Identity") < text.index("classid: Identity")
    assert " Group Variable |   Groups    Minimum    Average    Maximum" in text
    assert re.search(r"^ +schoolid \| +107 +2 +11\.1 +31$", text, re.M)
    assert re.search(r"^ +classid \| +312 +1 +3\.8 +10$", text, re.M)


def test_long_factor_names_are_abbreviated_to_keep_the_columns():
    """A grouping factor's name too long for its column is cut as Stata's abbrev() cuts names, so the
    header's right column and every bar of the random-effects table stay where they are."""
    d = jaxmlm.load_example("sleepstudy").rename(columns={"Subject": "participant_identifier_in_study"})
    lines = jaxmlm.lmer("Reaction ~ Days + (Days | participant_identifier_in_study)", d).summary(style="stata").splitlines()
    assert lines[1] == "Group variable: participant_identifier_in_study Number of groups   =        18"
    re_table = lines[lines.index("  Random-effects Parameters  |   Estimate   Std. Err.     [95% Conf. Interval]"):]
    assert all(ln[29] in "|+" for ln in re_table if "|" in ln or "+" in ln)
    assert "participan~y: Unstructured" + " " * 3 + "|" in re_table
    d = d.rename(columns={"participant_identifier_in_study": "participant_identifier_in_the_sleep_study"})
    lines = jaxmlm.lmer("Reaction ~ Days + (1 | participant_identifier_in_the_sleep_study)", d) \
        .summary(style="stata").splitlines()
    assert lines[1] == "Group variable: participant_identifier_in_the~y Number of groups   =        18"


def test_independent_block_for_uncorrelated_terms():
    text = _fit("exam_diag_ml").summary(style="stata")
    assert "school: Independent" in text and "cov(" not in text
    assert text.index("var(standLRT)") < text.index("var(_cons)")


def test_default_summary_is_lme4s_and_bad_arguments_are_refused():
    m = _fit("growth_ml")
    assert m.summary() == str(m) and m.summary().startswith("Linear mixed model fit by maximum likelihood")
    with pytest.raises(jaxmlm.JaxmlmError, match="style"):
        m.summary(style="spss")
    with pytest.raises(jaxmlm.JaxmlmError, match="stddev"):
        m.summary(style="stata", stddev="yes")
    with pytest.raises(jaxmlm.JaxmlmError, match="stddev"):
        m.summary(stddev=True)


def test_exchangeable_covariance_equals_the_nested_intercept_model():
    """cs(0 + f | g, hom = TRUE) with ρ ≥ 0 is (1 | g) + (1 | g:f): Stata's cov(f0 ... f3) of the
    exchangeable block is then the g intercept variance, with the same SE and the same residual."""
    import pandas as pd

    d = jaxmlm.load_example("sleepstudy")
    d = d[d["Days"] < 8].copy()
    d["f"] = pd.Categorical((d["Days"] // 2).astype(str))
    cs = _parse(jaxmlm.lmer("Reaction ~ cs(0 + f | Subject, hom = TRUE)", d, REML=False).summary(style="stata"))
    nested = _parse(jaxmlm.lmer("Reaction ~ (1 | Subject) + (1 | Subject:f)", d, REML=False).summary(style="stata"))
    assert cs["blocks"] == ["Subject: Exchangeable"]
    assert nested["blocks"] == ["Subject: Identity", "Subject:f: Identity"]
    c, n = dict(cs["random"]), dict(nested["random"])
    assert np.allclose(c["Subject/cov(f0 f1 f2 f3)"][:2], n["Subject/var(_cons)"][:2], rtol=1e-5)
    assert np.allclose(c["Residual/var(Residual)"], n["Residual/var(Residual)"], rtol=1e-5)
    assert cs["lr"][1] == nested["lr"][1]


def test_fit_from_parquet_pieces_prints_the_same_numbers(tmp_path):
    """A fit from data in pieces keeps no rows: the group sizes' min and max are Stata's '.', the rest
    as the in-memory fit."""
    pytest.importorskip("pyarrow")
    d = jaxmlm.load_example("classroom")
    for i in range(3):
        d.iloc[i::3].to_parquet(tmp_path / f"part{i}.parquet")
    m = jaxmlm.lmer(REF["classroom_nested_ml"]["formula"], str(tmp_path / "*.parquet"), REML=False)
    text = m.summary(style="stata")
    assert re.search(r"^ +schoolid \| +107 +\. +11\.1 +\.$", text, re.M)
    ours, memory = _parse(text), _parse(_fit("classroom_nested_ml").summary(style="stata"))
    assert ours["fixed"] == memory["fixed"] and ours["lr"] == memory["lr"]
    assert np.allclose([v for _, r in ours["random"] for v in r], [v for _, r in memory["random"] for v in r],
                       rtol=1e-5)

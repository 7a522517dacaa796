"""Estimated marginal means and their contrasts against emmeans 1.8.4.

Reference: tests/reference/anova/anova_reference.json (make_anova_reference.R): for the nine
models of test_anova.py, ``emmeans(m, specs, by, at, lmer.df = "satterthwaite" |
"kenward-roger")`` with emmeans' lmerTest.limit / pbkrtest.limit raised so df are never
asymptotic, ``pairs(..., adjust = "tukey" | "holm" | "bonferroni" | "none")`` and one
general ``contrast``. Non-estimable means (empty cells) are NA in both.

Tolerances (the issue's): means and SEs within 1e-6 relative, df within 1e-4 relative,
Tukey p-values within 1e-4 (R's ptukey is accurate to about 1e-8, and floors there),
other p-values within 1e-6.
"""

import json

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from conftest import REF
from test_anova import CASES, _close, fit

ANOVA = json.loads((REF / "anova" / "anova_reference.json").read_text())

EMMS = [(cid, j) for cid in sorted(CASES) for j in range(len(CASES[cid]["emmeans"]))]
DDF = {"satterthwaite": "Satterthwaite", "kenward-roger": "Kenward-Roger"}


def _specs(ref):
    """The emmeans call of a reference entry, as jaxmlm arguments."""
    if ref["spec_terms"]:
        return list(ref["spec_terms"]), None
    text = ref["spec"].split(" at ")[0]
    return text, None


def _ours(cid, ref):
    m = fit(cid)
    specs, by = _specs(ref)
    return jaxmlm.emmeans(m, specs, by=by, at=ref["at"], ddf=DDF[ref["lmer_df"]])


@pytest.mark.parametrize("cid,j", EMMS, ids=[f"{c}-{j}" for c, j in EMMS])
def test_emmeans_match(cid, j):
    ref = CASES[cid]["emmeans"][j]
    e = _ours(cid, ref)
    want = pd.DataFrame(ref["rows"])
    factors = [c for c in want.columns if c not in ("emmean", "SE", "df", "lower.CL", "upper.CL")]
    assert list(e.columns) == factors + ["emmean", "SE", "df", "lower_CL", "upper_CL"]
    for f in factors:
        assert [str(v) for v in e[f]] == [str(v) for v in want[f]], f
    what = f"{cid} {ref['spec']} {ref['lmer_df']}"
    _close(e["emmean"], want["emmean"], rtol=1e-6, what=what + " emmean")
    _close(e["SE"], want["SE"], rtol=1e-6, what=what + " SE")
    _close(e["df"], want["df"], rtol=1e-4, what=what + " df")
    _close(e["lower_CL"], want["lower.CL"], rtol=1e-5, what=what + " lower")
    _close(e["upper_CL"], want["upper.CL"], rtol=1e-5, what=what + " upper")


PAIRS = [(cid, j, k) for cid, j in EMMS for k in range(len(CASES[cid]["emmeans"][j]["pairs"]))]


@pytest.mark.parametrize("cid,j,k", PAIRS, ids=[f"{c}-{j}-{CASES[c]['emmeans'][j]['pairs'][k]['adjust']}"
                                                for c, j, k in PAIRS])
def test_pairs_match(cid, j, k):
    ref = CASES[cid]["emmeans"][j]
    pref = ref["pairs"][k]
    e = _ours(cid, ref)
    pr = e.pairs(adjust=pref["adjust"])
    want = pd.DataFrame(pref["rows"])
    assert list(pr["contrast"]) == list(want["contrast"])
    by = [c for c in want.columns if c not in ("contrast", "estimate", "SE", "df", "t.ratio", "z.ratio", "p.value")]
    assert list(pr.columns) == ["contrast", *by, "estimate", "SE", "df", "t_ratio", "p_value"]
    what = f"{cid} {ref['spec']} {ref['lmer_df']} {pref['adjust']}"
    _close(pr["estimate"], want["estimate"], rtol=1e-6, what=what + " estimate")
    _close(pr["SE"], want["SE"], rtol=1e-6, what=what + " SE")
    _close(pr["df"], want["df"], rtol=1e-4, what=what + " df")
    ratio = want["t.ratio"] if "t.ratio" in want else want["z.ratio"]
    _close(pr["t_ratio"], ratio, rtol=1e-5, what=what + " t")
    _close(pr["p_value"], want["p.value"], atol=1e-4 if pref["adjust"] == "tukey" else 1e-6, what=what + " p")


@pytest.mark.parametrize("k", range(len(ANOVA["contrast_example"][0]["results"])))
def test_general_contrasts_match(k):
    ex = ANOVA["contrast_example"][0]
    res = ex["results"][k]
    e = jaxmlm.emmeans(fit(ex["case"]), "intake", ddf=DDF[ex["lmer_df"]])
    c = e.contrast({name: coefs for name, coefs in ex["coefs"].items()}, adjust=res["adjust"])
    want = pd.DataFrame(res["rows"])
    assert list(c["contrast"]) == list(want["contrast"])
    _close(c["estimate"], want["estimate"], rtol=1e-6, what="estimate")
    _close(c["SE"], want["SE"], rtol=1e-6, what="SE")
    _close(c["df"], want["df"], rtol=1e-4, what="df")
    _close(c["p_value"], want["p.value"], atol=1e-6, what="p")


def test_pairs_print_as_emmeans():
    ref = CASES["exam_main"]["emmeans"][0]
    e = _ours("exam_main", ref)
    text = str(e.pairs())
    assert "mixed - boys" in text and "P value adjustment: tukey method for comparing a family of 3 estimates" in text
    assert str(e).splitlines()[0].split() == ref["printed"][0].split()
    assert "Degrees-of-freedom method: satterthwaite" in str(e)


def test_kenward_roger_is_the_default_for_reml_fits():
    m = fit("exam_main")
    a = jaxmlm.emmeans(m, "schgend")
    b = jaxmlm.emmeans(m, "schgend", ddf="Kenward-Roger")
    pd.testing.assert_frame_equal(pd.DataFrame(a), pd.DataFrame(b))
    assert "kenward-roger" in str(a)
    assert "satterthwaite" in str(jaxmlm.emmeans(fit("exam_ml"), "schgend"))


def test_means_are_averages_of_cell_predictions():
    """Invariance: with every cell estimable, a marginal mean is the average of predict() over its cells."""
    m = fit("exam_factors")
    e = jaxmlm.emmeans(m, "intake")
    frame = m.design.frame
    cells = pd.DataFrame(
        [(i, s, g) for g in ("mixed", "boys", "girls") for s in ("F", "M") for i in ("bottom 25%", "mid 50%", "top 25%")],
        columns=["intake", "sex", "schgend"],
    )
    for col in cells:
        cells[col] = pd.Categorical(cells[col], categories=frame[col].cat.categories)
    pred = m.predict(cells, re_form="~0")
    means = pd.Series(pred).groupby(cells["intake"].astype(str).to_numpy()).mean()
    np.testing.assert_allclose(e["emmean"].to_numpy(), means.loc[["bottom 25%", "mid 50%", "top 25%"]].to_numpy(),
                               rtol=1e-12)


def test_bad_input():
    m = fit("exam_main")
    with pytest.raises(jaxmlm.InferenceError, match="not a variable"):
        jaxmlm.emmeans(m, "schgnd")
    with pytest.raises(jaxmlm.InferenceError, match="numeric covariate"):
        jaxmlm.emmeans(m, "standLRT")
    with pytest.raises(jaxmlm.InferenceError, match="coefficients"):
        jaxmlm.emmeans(m, "schgend").contrast({"c": [1, -1]})
    with pytest.raises(jaxmlm.InferenceError, match="adjust"):
        jaxmlm.emmeans(m, "schgend").pairs(adjust="scheffe")
    with pytest.raises(jaxmlm.InferenceError, match="at"):
        jaxmlm.emmeans(m, "schgend", at={"nonsense": 1})
    with pytest.raises(jaxmlm.InferenceError, match="level"):
        jaxmlm.emmeans(m, "schgend", at={"schgend": ["coed"]})
    with pytest.raises(jaxmlm.InferenceError, match="REML"):
        jaxmlm.emmeans(fit("exam_ml"), "schgend", ddf="Kenward-Roger")


def test_numeric_variable_with_values_in_at_is_a_grid_dimension():
    m = fit("exam_main")
    e = jaxmlm.emmeans(m, "standLRT", at={"standLRT": [-1.0, 1.0]})
    assert list(e["standLRT"]) == [-1.0, 1.0]
    diff = e.pairs()["estimate"].iloc[0]
    np.testing.assert_allclose(diff, -2 * m.fixef["standLRT"], rtol=1e-12)


def test_emmeans_needs_a_model():
    with pytest.raises(jaxmlm.InferenceError, match="lmer"):
        jaxmlm.emmeans("not a model", "x")


PRINTED = [(cid, j) for cid, j in EMMS if cid != "exam_sum_contrasts"]


@pytest.mark.parametrize("cid,j", PRINTED, ids=[f"{c}-{j}" for c, j in PRINTED])
def test_emmeans_and_pairs_print_as_emmeans(cid, j):
    ref = CASES[cid]["emmeans"][j]
    e = _ours(cid, ref)
    skip = ("NOTE",)  # emmeans' interaction note is a message, not part of the printed summary
    want = [line.rstrip() for line in ref["printed"] if not line.startswith(skip)]
    _same_print(str(e).split("\n"), want)
    tukey = ref["pairs"][0]
    if "printed" in tukey and not all(r["estimate"] is None for r in tukey["rows"]):
        _same_print(str(e.pairs()).split("\n"), [line.rstrip() for line in tukey["printed"]])


def _same_print(ours: list[str], want: list[str]) -> None:
    """Line by line the same layout; a printed number may differ by one unit in its last digit
    (df agree to 1e-4 relative, so 4024.5 may print as 4024 or 4025)."""
    assert len(ours) == len(want), "\n".join(ours)
    for a, b in zip(ours, want):
        assert len(a) == len(b) and a.split() and b.split() or a == b == "", (a, b)
        for x, y in zip(a.split(), b.split()):
            if x == y:
                continue
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                raise AssertionError((a, b)) from None
            unit = 10.0 ** -(len(y.split(".")[1]) if "." in y and "e" not in y else 0)
            assert abs(fx - fy) <= unit * 1.0001 or "e" in y and abs(fx / fy - 1) < 1e-2, (a, b)


def test_reverse_pairs_negate_the_pairs():
    e = jaxmlm.emmeans(fit("exam_main"), "schgend", ddf="Satterthwaite")
    fwd, rev = e.pairs(adjust="none"), e.pairs(adjust="none", reverse=True)
    assert list(rev["contrast"]) == ["boys - mixed", "girls - mixed", "girls - boys"]
    np.testing.assert_allclose(rev["estimate"], -fwd["estimate"], rtol=1e-12)
    np.testing.assert_allclose(rev["p_value"], fwd["p_value"], rtol=1e-12)
    pd.testing.assert_frame_equal(pd.DataFrame(e.contrast("revpairwise")), pd.DataFrame(rev))

"""The example data sets: what load_example returns, and the classroom data against the numbers
lme4 and lmerTest printed for it in course note 002 (shared/seeds; values copied from its
printed output, so compared to its printed precision)."""

import math

import numpy as np
import pytest

import jaxmlm


def test_every_example_loads_with_its_documented_row_count():
    rows = {"sleepstudy": 180, "Dyestuff": 30, "Dyestuff2": 30, "Penicillin": 144, "Pastes": 60,
            "nlschools": 2287, "Hsb82": 7185, "classroom": 1190, "Exam": 4059}
    assert set(rows) == set(jaxmlm.EXAMPLES)
    for name, n in rows.items():
        assert len(jaxmlm.load_example(name)) == n, name


def test_classroom_keeps_its_missing_values_and_integer_ids():
    d = jaxmlm.load_example("classroom")
    assert d.shape == (1190, 12)
    assert int(d["mathknow"].isna().sum()) == 109  # the pupils of 27 classrooms
    assert int(d.drop(columns="mathknow").isna().sum().sum()) == 0
    assert d["classid"].nunique() == 312 and d["schoolid"].nunique() == 107
    assert d[["classid", "schoolid", "childid"]].dtypes.map(lambda t: t.kind).eq("i").all()


def _close(got, printed: str):
    """got rounds to the printed value (its last printed digit)."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(got - float(printed)) <= 0.5 * 10.0**-decimals * (1 + 1e-9)


@pytest.mark.parametrize("formula, reml, var", [
    ("mathkind ~ ses + (1 | schoolid)", "12038.7", {"schoolid": ("309", "17.58"), "Residual": ("1308", "36.16")}),
    ("mathkind ~ ses + (1 | schoolid/classid)", "12038.4",
     {"classid:schoolid": ("20.44", "4.521"), "schoolid": ("301.52", "17.364"), "Residual": ("1294.08", "35.973")}),
])
def test_classroom_reproduces_the_course_note(formula, reml, var):
    m = jaxmlm.lmer(formula, jaxmlm.load_example("classroom"))
    assert _close(m.objective, reml)
    vc = m.varcorr.set_index("grp")
    for grp, (v, sd) in var.items():
        # lme4 prints variances with 4-5 significant digits: compare at that precision
        digits = len(v.replace(".", "").lstrip("0"))
        assert math.isclose(vc.loc[grp, "vcov"], float(v), rel_tol=0.6 * 10.0 ** (1 - digits)), grp
        assert _close(vc.loc[grp, "sdcor"], sd), grp


def test_classroom_missing_teacher_data_and_ranova_as_in_the_note():
    d = jaxmlm.load_example("classroom")
    m3 = jaxmlm.lmer("mathgain ~ (1 | schoolid/classid)", d)
    r = m3.ranova()
    assert _close(r.loc["<none>", "logLik"], "-5884.4")
    assert _close(r.loc["(1 | classid:schoolid)", "LRT"], "7.9048")
    assert _close(r.loc["(1 | schoolid)", "LRT"], "7.8875")
    m4 = jaxmlm.lmer("mathgain ~ ses + mathknow + (1 | schoolid/classid)", d)
    assert m4.nobs == 1081 and m4.n_dropped == 109
    assert m4.ngroups == {"classid:schoolid": 285, "schoolid": 105}
    assert _close(m4.objective, "10684.6")
    t = m4.coef_table()
    printed = {"(Intercept)": ("57.8169", "1.5468", "91.6576"), "ses": ("0.8847", "1.4602", "1039.2449"),
               "mathknow": ("2.4341", "1.3093", "211.2083")}
    for name, (est, se, df) in printed.items():
        assert _close(t.loc[name, "Estimate"], est) and _close(t.loc[name, "Std. Error"], se), name
        assert abs(t.loc[name, "df"] - float(df)) < 2e-3, name  # Satterthwaite: the note's 4 decimals
    assert np.isfinite(t["Pr(>|t|)"]).all()


def test_exam_has_r_types_and_level_orders():
    """mlmRev's Exam: its ten columns, R's factor levels in R's order (the first is the reference)."""
    d = jaxmlm.load_example("exam")
    assert d.shape == (4059, 10)
    assert list(d.columns) == ["school", "normexam", "schgend", "schavg", "vr", "intake", "standLRT", "sex",
                               "type", "student"]
    assert list(d["schgend"].cat.categories) == ["mixed", "boys", "girls"]
    assert list(d["vr"].cat.categories) == ["bottom 25%", "mid 50%", "top 25%"]
    assert list(d["sex"].cat.categories) == ["F", "M"] and list(d["type"].cat.categories) == ["Mxd", "Sngl"]
    assert list(d["school"].cat.categories[:3]) == ["1", "2", "3"] and d["school"].nunique() == 65
    assert d["student"].cat.categories.size == 650
    assert int(d.isna().sum().sum()) == 0
    # course note 004's summary of pupils per school (Stata's summarize): 65 schools, mean 62.44615,
    # SD 29.74844, min 2, max 198 -- the public data have the note's schools and pupils
    n = d.groupby("school", observed=True).size()
    assert (len(n), n.min(), n.max()) == (65, 2, 198)
    assert abs(n.mean() - 62.44615) < 5e-6 and abs(n.std() - 29.74844) < 5e-6
    # mlmRev's first row (R: Exam[1, ])
    assert d.loc[0, "normexam"] == 0.2613242 and d.loc[0, "standLRT"] == 0.6190592

"""lmerTest's single-model ANOVA tables (types I, II, III; Satterthwaite and Kenward-Roger).

Reference: tests/reference/anova/anova_reference.json, made by make_anova_reference.R with
lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2 (R fitted with tight nloptwrap tolerances so its
optimum is exact to ~1e-8). Nine models: factors with 2-4 levels, factor x factor and
factor x covariate interactions, empty cells (Exam's boys' and girls' schools), ML, nested
(school/class) and crossed (subject x item) random effects, and sum-to-zero contrasts.

Tolerances (the issue's): F within 1e-6 relative, DenDF within 1e-4 relative, p-values
within 1e-6 absolute.
"""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from conftest import REF

ANOVA = json.loads((REF / "anova" / "anova_reference.json").read_text())
CASES = {c["id"]: c for c in ANOVA["cases"]}

# R fitted the sum-to-zero case with lmer(contrasts = ...); in a jaxmlm formula that is C(f, contr.sum).
FORMULAS = {
    "exam_sum_contrasts": "normexam ~ C(intake, contr.sum) * C(sex, contr.sum) + C(schgend, contr.sum) + (1 | school)",
}


def reference_data(case: dict) -> pd.DataFrame:
    """The case's data with R's factor levels (the data of the Hsb82 case ship with jaxmlm)."""
    if case["data"] == "Hsb82":
        return jaxmlm.load_example("Hsb82")
    df = pd.read_csv(REF / "data" / case["data"])
    for col, levels in case["factor_levels"].items():
        df[col] = pd.Categorical(df[col].map(lambda v: v if pd.isna(v) else str(v)), categories=levels)
    return df


_FITS: dict = {}


def fit(cid: str) -> jaxmlm.LinearMixedModel:
    if cid not in _FITS:
        c = CASES[cid]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxmlm.RankDeficiencyWarning)
            _FITS[cid] = jaxmlm.lmer(FORMULAS.get(cid, c["formula"]), reference_data(c), REML=c["REML"])
    return _FITS[cid]


def _close(ours, theirs, rtol=None, atol=None, what=""):
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    both_nan = np.isnan(ours) & np.isnan(theirs)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)), f"{what}: NA pattern {ours} vs {theirs}"
    o, t = ours[~both_nan], theirs[~both_nan]
    if rtol is not None:
        err = np.max(np.abs(o / t - 1.0), initial=0.0)
        assert err < rtol, f"{what}: relative error {err:.2e} (ours {o}, lmerTest {t})"
    if atol is not None:
        err = np.max(np.abs(o - t), initial=0.0)
        assert err < atol, f"{what}: absolute error {err:.2e} (ours {o}, lmerTest {t})"


@pytest.mark.parametrize("cid", sorted(CASES))
def test_fits_reach_the_reference_optimum(cid):
    c, m = CASES[cid], fit(cid)
    assert m.nobs == c["nobs"]
    assert abs(m.loglik - c["loglik"]) < 1e-7 * abs(c["loglik"])
    np.testing.assert_allclose(m.fixef.to_numpy(), list(c["fixef"].values()), rtol=1e-5, atol=1e-7)
    if cid not in FORMULAS:
        assert list(m.fixef.index) == c["fixef_names"]


TABLES = [(cid, i) for cid in sorted(CASES) for i in range(len(CASES[cid]["anova"]))]


@pytest.mark.parametrize("cid,i", TABLES, ids=[f"{c}-{CASES[c]['anova'][i]['type']}-{CASES[c]['anova'][i]['ddf']}"
                                                for c, i in TABLES])
def test_anova_matches_lmertest(cid, i):
    ref = CASES[cid]["anova"][i]
    m = fit(cid)
    if ref["error"]:
        with pytest.raises(jaxmlm.InferenceError, match="REML"):
            m.anova(type=ref["type"], ddf=ref["ddf"])
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxmlm.InferenceWarning)  # the missing-cells note
        tab = m.anova(type=ref["type"], ddf=ref["ddf"])
    want = pd.DataFrame(ref["rows"])
    assert list(tab.columns) == ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
    if cid not in FORMULAS:
        assert list(tab.index) == list(want["term"])
    assert len(tab) == len(want)
    assert tab.attrs["heading"] == ref["heading"][0]
    what = f"{cid} type {ref['type']} {ref['ddf']}"
    _close(tab["NumDF"], want["NumDF"], atol=1e-12, what=what + " NumDF")
    _close(tab["F value"], want["F value"], rtol=1e-6, what=what + " F")
    _close(tab["Sum Sq"], want["Sum Sq"], rtol=1e-6, what=what + " Sum Sq")
    _close(tab["Mean Sq"], want["Mean Sq"], rtol=1e-6, what=what + " Mean Sq")
    _close(tab["DenDF"], want["DenDF"], rtol=1e-4, what=what + " DenDF")
    _close(tab["Pr(>F)"], want["Pr(>F)"], atol=1e-6, what=what + " p")


@pytest.mark.parametrize("cid,i", [(c, i) for c, i in TABLES if c not in FORMULAS and not CASES[c]["anova"][i]["error"]])
def test_anova_prints_as_lmertest(cid, i):
    ref = CASES[cid]["anova"][i]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxmlm.InferenceWarning)
        printed = str(fit(cid).anova(type=ref["type"], ddf=ref["ddf"])).split("\n")
    want = [line.replace("\u2018", "'").replace("\u2019", "'") for line in ref["printed"]]
    assert printed[0] == want[0]
    assert printed[1].split() == want[1].split()
    assert [line.split()[0] for line in printed[2:]] == [line.split()[0] for line in want[2:]]
    assert printed == want


def test_type3_does_not_depend_on_the_coding():
    a = fit("exam_factors").anova(type=3)
    b = fit("exam_sum_contrasts").anova(type=3)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-8)
    # ... while the coefficient-wise tests do: the sum-coded main effects are different hypotheses.
    assert not np.allclose(fit("exam_factors").coef_table()["t value"].to_numpy()[1:3],
                           fit("exam_sum_contrasts").coef_table()["t value"].to_numpy()[1:3])


def test_hypotheses_of_a_balanced_two_way_design():
    """Type III on treatment coding: the main effect of sx is its effect averaged over sector."""
    m = fit("hsb_factors")
    L = m.anova(type=3).attrs["hypotheses"]["sx"]
    np.testing.assert_array_equal(L.loc[0, ["sxFemale", "sxFemale:sectorCatholic"]].to_numpy(), [1.0, 0.5])
    assert L.loc[0].abs().sum() == 1.5
    # Type I: the term's row of the unit-lower factor of X'X = L D L' (from a Cholesky factor here).
    L1 = m.anova(type=1).attrs["hypotheses"]["sx"].to_numpy()[0]
    C = np.linalg.cholesky(m.design.X.T @ m.design.X)
    want = (C / np.diag(C)).T[1]
    np.testing.assert_allclose(L1, np.where(np.abs(want) < 1e-6, 0.0, want), atol=1e-12)


def test_missing_cells_are_noted_and_untestable_terms_are_na():
    with pytest.warns(jaxmlm.InferenceWarning, match="missing cells for schgendboys:sexF, schgendgirls:sexM"):
        tab = fit("exam_missing_cells").anova(type=3)
    assert tab.loc["schgend:sex"].isna().all()
    assert any("interpret type III hypotheses with care" in n for n in tab.attrs["notes"])


def test_single_model_anova_is_the_f_table():
    m = fit("exam_main")
    pd.testing.assert_frame_equal(pd.DataFrame(jaxmlm.anova(m, type=2)), pd.DataFrame(m.anova(type=2)))
    pd.testing.assert_frame_equal(pd.DataFrame(jaxmlm.anova(m)), pd.DataFrame(m.anova()))


def test_anova_argument_errors():
    m = fit("exam_main")
    with pytest.raises(jaxmlm.InferenceError, match="type"):
        m.anova(type=4)
    with pytest.raises(jaxmlm.InferenceError, match="ddf"):
        m.anova(ddf="Wald")
    with pytest.raises(jaxmlm.InferenceError, match="REML"):
        fit("exam_ml").anova(ddf="Kenward-Roger")


def test_tables_do_not_depend_on_column_names():
    """Invariance: backquoted names with spaces and integer columns give the tables of plain ones."""
    df = reference_data(CASES["exam_factors"]).rename(columns={"intake": "in take"})
    df["lrt"] = np.round(df["standLRT"] * 10).astype(np.int16)
    m = jaxmlm.lmer("normexam ~ `in take` * sex + lrt + (1 | school)", df)
    df2 = df.rename(columns={"in take": "intake"}).assign(lrt=df["lrt"].astype(float))
    m2 = jaxmlm.lmer("normexam ~ intake * sex + lrt + (1 | school)", df2)
    for t in (1, 2, 3):
        np.testing.assert_allclose(m.anova(type=t).to_numpy(), m2.anova(type=t).to_numpy(), rtol=1e-10)
    a = jaxmlm.emmeans(m, "in take")
    b = jaxmlm.emmeans(m2, "intake")
    np.testing.assert_allclose(a["emmean"].to_numpy(), b["emmean"].to_numpy(), rtol=1e-10)


def test_intercept_only_model_has_an_empty_table():
    m = jaxmlm.lmer("Yield ~ 1 + (1 | Batch)", jaxmlm.load_example("Dyestuff"))
    tab = m.anova()
    assert len(tab) == 0 and list(tab.columns)[-1] == "Pr(>F)"

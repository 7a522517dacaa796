"""anova, ranova, LR test vs OLS, ICC, R² against lme4 / lmerTest / hand-computed R numbers.

References: the ``ranova`` field of every reference case (lmerTest 3.1-3), and
tests/reference/compare/compare.json made by make_compare_reference.R (lme4's
anova on Hsb82 and sleepstudy fits, Stata-style LR tests, variance decompositions).
"""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CASES

import jaxmlm
from jaxmlm._compare import anova, icc, lrt_vs_ols, pseudo_r2, r2_nakagawa, ranova

REF = json.loads((Path(__file__).parent / "reference" / "compare" / "compare.json").read_text())
ANOVA_COLS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]


def _fit(formula, data, REML=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxmlm.RankDeficiencyWarning)
        return jaxmlm.lmer(formula, data, REML=REML)


@pytest.fixture(scope="module")
def hsb():
    return jaxmlm.load_example("Hsb82")


@pytest.fixture(scope="module")
def hsb_models(hsb):
    return {
        "null_ml": _fit("mAch ~ 1 + (1 | school)", hsb, REML=False),
        "ses_ml": _fit("mAch ~ ses + (1 | school)", hsb, REML=False),
        "null_reml": _fit("mAch ~ 1 + (1 | school)", hsb),
        "ses_reml": _fit("mAch ~ ses + (1 | school)", hsb),
    }


@pytest.fixture(scope="module")
def sleep_models():
    d = jaxmlm.load_example("sleepstudy")
    return {
        "fm0": _fit("Reaction ~ 1 + (1 | Subject)", d),
        "fm1": _fit("Reaction ~ Days + (1 | Subject)", d),
        "fm2": _fit("Reaction ~ Days + (Days | Subject)", d),
    }


def _compare_table(got: pd.DataFrame, ref_rows: list, rtol=1e-7, atol_chisq=1e-4):
    assert list(got.columns[: len(ANOVA_COLS)]) == ANOVA_COLS
    assert list(got.index) == [r["_row"] for r in ref_rows]
    for r in ref_rows:
        row = got.loc[r["_row"]]
        for col in ANOVA_COLS:
            want = r[col]
            if want is None:
                assert np.isnan(row[col]), (r["_row"], col)
            elif col == "Chisq":
                assert row[col] == pytest.approx(want, abs=atol_chisq), (r["_row"], col)
            elif col == "Pr(>Chisq)":
                assert row[col] == pytest.approx(want, rel=1e-3), (r["_row"], col)
            else:
                assert row[col] == pytest.approx(want, rel=rtol), (r["_row"], col)


# ---- anova -------------------------------------------------------------------------------------------


def test_anova_hsb_ml_reproduces_lme4(hsb_models):
    got = anova(hsb_models["null_ml"], hsb_models["ses_ml"], names=["hsb_null", "hsb_ses"])
    _compare_table(got, REF["anova_hsb_ml"])
    assert got.attrs["refitted"] == []


def test_anova_refits_reml_fits_by_ml(hsb_models):
    got = anova(hsb_models["null_reml"], hsb_models["ses_reml"], names=["hsb_null_reml", "hsb_ses_reml"])
    _compare_table(got, REF["anova_hsb_reml_refit"])
    assert got.attrs["refitted"] == ["hsb_null_reml", "hsb_ses_reml"]


def test_anova_refit_false_compares_reml_criteria(hsb_models):
    got = anova(hsb_models["null_reml"], hsb_models["ses_reml"], refit=False, names=["hsb_null_reml", "hsb_ses_reml"])
    _compare_table(got, REF["anova_hsb_reml_norefit"])


def test_anova_orders_rows_by_npar_and_uses_given_names(sleep_models):
    m = sleep_models
    got = anova(m["fm2"], m["fm0"], m["fm1"], names=["fm2", "fm0", "fm1"])
    _compare_table(got, REF["anova_sleep3"], rtol=1e-6)
    default = anova(m["fm2"], m["fm0"])
    assert list(default.index) == ["m1", "m0"]  # argument order names, sorted by npar
    assert default.attrs["formulas"]["m0"] == m["fm2"].formula


def test_anova_refuses_models_fitted_to_different_rows(hsb):
    d = hsb.copy()
    d.loc[d.index[:15], "ses"] = np.nan
    m0 = _fit("mAch ~ 1 + (1 | school)", d, REML=False)
    m1 = _fit("mAch ~ ses + (1 | school)", d, REML=False)
    assert (m0.nobs, m1.nobs) == (7185, 7170)
    with pytest.raises(jaxmlm.JaxmlmError) as err:
        anova(m0, m1)
    msg = str(err.value)
    assert "7185" in msg and "7170" in msg and "dropna" in msg
    assert isinstance(err.value, jaxmlm.DataError)


def test_anova_refuses_different_responses():
    d = jaxmlm.load_example("sleepstudy")
    a = _fit("Reaction ~ Days + (1 | Subject)", d)
    b = _fit("log(Reaction) ~ Days + (1 | Subject)", d)
    with pytest.raises(jaxmlm.DataError, match="different responses"):
        anova(a, b)


def test_anova_argument_errors(sleep_models):
    with pytest.raises(jaxmlm.JaxmlmError, match="fitted model"):
        anova()
    with pytest.raises(jaxmlm.JaxmlmError, match="lmer"):
        anova("not a model")
    with pytest.raises(jaxmlm.JaxmlmError, match="lmer"):
        anova(sleep_models["fm0"], "not a model")
    with pytest.raises(jaxmlm.JaxmlmError, match="method"):
        anova(sleep_models["fm0"], sleep_models["fm1"], method="exact")
    with pytest.raises(jaxmlm.JaxmlmError, match="names"):
        anova(sleep_models["fm0"], sleep_models["fm1"], names=["a", "a"])


def test_anova_pb_adds_bootstrap_p_values(sleep_models, monkeypatch):
    import importlib

    refit = importlib.import_module("jaxmlm._refit")
    calls = []

    def fake_pb_test(small, large, nsim, seed):
        calls.append((small.formula, large.formula, nsim, seed))
        return pd.DataFrame({"stat": [1.0, 1.0], "df": [1.0, np.nan], "p.value": [0.5, 0.0123]},
                            index=["LRT", "PBtest"])

    monkeypatch.setattr(refit, "pb_test", fake_pb_test, raising=False)
    m = sleep_models
    got = anova(m["fm1"], m["fm2"], method="pb", nsim=99, seed=7)
    assert calls == [(m["fm1"].formula, m["fm2"].formula, 99, 7)]
    assert np.isnan(got["Pr(PB)"].iloc[0]) and got["Pr(PB)"].iloc[1] == 0.0123
    assert len(got.attrs["pb"]) == 2


def test_top_level_exports():
    assert jaxmlm.anova is anova and jaxmlm.pseudo_r2 is pseudo_r2


# ---- ranova -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_ranova_matches_lmertest(case_id, fits):
    ref = CASES[case_id]["ranova"]
    got = fits(case_id).ranova()
    assert list(got.index) == [r["_row"] for r in ref]
    assert list(got.columns) == ["npar", "logLik", "AIC", "LRT", "Df", "Pr(>Chisq)"]
    for r in ref:
        row = got.loc[r["_row"]]
        assert row["npar"] == r["npar"]
        assert row["logLik"] == pytest.approx(r["logLik"], abs=1e-3)
        if "LRT" in r:
            assert row["LRT"] == pytest.approx(r["LRT"], abs=1e-3)
            assert row["Df"] == r["Df"]
        if "Pr(>Chisq)" in r:
            assert row["Pr(>Chisq)"] == pytest.approx(r["Pr(>Chisq)"], rel=1e-2, abs=1e-12)
        else:
            assert np.isnan(row["Pr(>Chisq)"])  # <none>, or Df = 0 (lmerTest's NA)


@pytest.mark.parametrize("spec", REF["ranova_extra"], ids=lambda s: s["formula"])
def test_ranova_reductions_of_interactions_factors_and_double_bars(spec):
    """lmerTest's drop.scope keeps marginality ((x * z | g): only x:z), reduces (0 + f | g) to
    (1 | g) by a refit, and reduces an '||'-expanded slope term to the intercept term."""
    from conftest import REF as DATA

    d = pd.read_csv(DATA / "data" / spec["data"])
    got = ranova(_fit(spec["formula"], d))
    assert list(got.index) == [r["_row"] for r in spec["table"]]
    for r in spec["table"]:
        row = got.loc[r["_row"]]
        assert row["npar"] == r["npar"]
        assert row["logLik"] == pytest.approx(r["logLik"], abs=1e-3)
        if r.get("LRT") is not None:
            assert row["LRT"] == pytest.approx(r["LRT"], abs=1e-3)
            assert row["Df"] == r["Df"]


@pytest.mark.parametrize("formula, term", [
    ("Reaction ~ Days + (Days | Subject) + (1 | h)", "(1 | h)"),
    ("Reaction ~ Days + (1 | Subject) + (1 | h)", "(1 | h)"),
    ("Reaction ~ Days + (1 | h)", "(1 | h)"),
])
@pytest.mark.parametrize("reml", [True, False])
def test_ranova_of_a_term_already_zero_at_the_fit_is_exactly_zero(formula, term, reml):
    """A term whose variance the fit put at 0 removes nothing: the reduced model's optimum is the
    fit, LRT is 0 exactly and p is 1, as lmerTest prints them (computed again by another program,
    the criterion came out ±2e-13 apart, and the table showed that)."""
    d = jaxmlm.load_example("sleepstudy").copy()
    d["h"] = np.random.default_rng(1).integers(0, 6, len(d)).astype(str)  # pure noise: θ_h = 0
    m = _fit(formula, d, REML=reml)
    row = ranova(m).loc[term]
    assert m.theta[-1] == 0.0
    assert row["LRT"] == 0.0 and row["Pr(>Chisq)"] == 1.0
    assert row["logLik"] == -0.5 * float(m.objective)


def test_ranova_reduce_terms_false_removes_whole_terms(fits):
    m = fits("sleepstudy_rs")
    got = ranova(m, reduce_terms=False)
    assert list(got.index) == ["<none>", "(Days | Subject)"]
    # lmerTest's example: 2 (logLik(fm1, REML) - logLik(lm, REML)), a 3-df test
    ols = lrt_vs_ols(m)
    assert got.loc["(Days | Subject)", "Df"] == 3
    assert got.loc["(Days | Subject)", "LRT"] == pytest.approx(ols.statistic, rel=1e-10)


# ---- LR test vs OLS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["hsb_ses", "sleepstudy_ri", "dyestuff_ml", "sleepstudy_rs"])
def test_lrt_vs_ols_matches_r(key, fits):
    ref = REF["lrt_vs_ols"][key]
    got = lrt_vs_ols(fits(key))
    assert got.statistic == pytest.approx(ref["chi2"], rel=1e-6)
    assert got.loglik_ols == pytest.approx(ref["loglik_ols"], rel=1e-10)
    assert got.df == ref["df"]
    assert got.p_value == pytest.approx(ref["p_value"], rel=1e-4)
    assert got.conservative == (ref["df"] > 1)
    text = str(got)
    if ref["df"] == 1:
        assert "chibar2(01)" in text and "Note" not in text
    else:
        assert "chi2(3)" in text and "conservative" in text


def test_lrt_vs_ols_on_the_boundary_has_p_one(fits):
    got = lrt_vs_ols(fits("dyestuff2_singular"))
    assert got.statistic == 0.0 and got.p_value == 1.0


def test_lrt_chibar2_halves_the_ranova_p_value(fits):
    for case_id in ("dyestuff", "nlschools_ri", "factors_na"):
        r = CASES[case_id]["ranova"][1]
        got = lrt_vs_ols(fits(case_id))
        assert got.p_value == pytest.approx(r["Pr(>Chisq)"] / 2, rel=1e-3)


# ---- ICC, R², pseudo-R² --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(REF["decomp"]))
def test_icc_and_r2_nakagawa_match_r(key, fits):
    ref = REF["decomp"][key]
    m = fits(key)
    r2 = r2_nakagawa(m)
    assert r2["R2_marginal"] == pytest.approx(ref["R2_marginal"], rel=1e-4, abs=1e-12)
    assert r2["R2_conditional"] == pytest.approx(ref["R2_conditional"], rel=1e-4)
    assert r2["var_fixed"] == pytest.approx(ref["varF"], rel=1e-4, abs=1e-10)
    assert r2["var_random"] == pytest.approx(sum(ref["varR"].values()), rel=1e-4)
    assert r2["var_residual"] == pytest.approx(ref["varE"], rel=1e-4)
    got = icc(m)
    assert sorted(got.index) == sorted(ref["icc"])
    for g, v in ref["icc"].items():
        assert got.loc[g, "ICC"] == pytest.approx(v, rel=1e-4)
        assert got.loc[g, "variance"] == pytest.approx(ref["varR"][g], rel=1e-4)
    assert got.attrs["ICC_adjusted"] == pytest.approx(ref["icc_adjusted"], rel=1e-4)


def test_icc_cumulative_for_nested_levels(fits):
    got = icc(fits("pastes_nested"))
    for g, v in REF["pastes_icc_cumulative"].items():
        assert got.loc[g, "ICC_cumulative"] == pytest.approx(v, rel=1e-4)
    crossed = icc(fits("penicillin_crossed"))
    np.testing.assert_allclose(crossed["ICC_cumulative"], crossed["ICC"])


def test_icc_sums_terms_on_the_same_factor(fits):
    a, b = icc(fits("sleepstudy_uncorr")), icc(fits("sleepstudy_uncorr_explicit"))
    assert list(a.index) == ["Subject"]
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6)


def test_pseudo_r2_raudenbush_bryk(hsb_models):
    got = pseudo_r2(hsb_models["null_ml"], hsb_models["ses_ml"])
    for k, v in REF["pseudo_r2_hsb"].items():
        assert got[k] == pytest.approx(v, rel=1e-5)


def test_model_methods_delegate(fits):
    m = fits("sleepstudy_ri")
    assert m.icc().equals(icc(m))
    assert m.r2_nakagawa().equals(r2_nakagawa(m))
    assert m.lrt_vs_ols() == lrt_vs_ols(m)
    assert math.isclose(m.ranova().loc["(1 | Subject)", "LRT"], CASES["sleepstudy_ri"]["ranova"][1]["LRT"], rel_tol=1e-6)


# How R prints these tables: tests/reference/compare/make_printed_reference.R
PRINTED_JSON = Path(__file__).parent / "reference" / "compare" / "printed_reference.json"
PRINTED = {c["id"]: c for c in json.loads(PRINTED_JSON.read_text())["cases"]}


def _r_lines(cid):
    return [line.replace("\u2018", "'").replace("\u2019", "'") for line in PRINTED[cid]["printed"]]


@pytest.mark.parametrize("cid,names", [("anova_sleepstudy", ["fm0", "fm1"]), ("anova_sleepstudy_three", ["fm0", "fm2", "fm1"])])
def test_anova_prints_as_lme4(cid, names):
    df = jaxmlm.load_example("sleepstudy")
    forms = {"fm0": "Reaction ~ Days + (1 | Subject)", "fm1": "Reaction ~ Days + (Days | Subject)",
             "fm2": "Reaction ~ Days + (Days || Subject)"}
    models = [jaxmlm.lmer(forms[n], df, data_name="sleepstudy") for n in names]
    table = anova(*models, names=names)
    assert str(table).split("\n") == _r_lines(cid)
    assert isinstance(table, pd.DataFrame) and list(table.index) == names


@pytest.mark.parametrize("cid,formula", [("ranova_sleepstudy", "Reaction ~ Days + (Days | Subject)"),
                                         ("ranova_sleepstudy_uncorr", "Reaction ~ Days + (Days || Subject)")])
def test_ranova_prints_as_lmertest(cid, formula):
    table = jaxmlm.lmer(formula, jaxmlm.load_example("sleepstudy")).ranova()
    assert str(table).split("\n") == _r_lines(cid)


HEADINGS = json.loads((Path(__file__).parent / "reference" / "printed" / "ranova_heading.json").read_text())


@pytest.mark.parametrize("spec", HEADINGS, ids=lambda s: s["formula"])
def test_ranova_model_line_as_lmertest(spec):
    """ranova's "Model:" line is the formula as lmerTest rebuilds it: interactions expanded, removed
    terms gone, first-order fixed terms, then the random terms, then higher-order terms, offsets
    and "- 1" last (tests/reference/printed/make_ranova_heading.R)."""
    d = jaxmlm.load_example("sleepstudy").assign(z=lambda x: np.cos(x["Days"]), off=lambda x: x["Days"] / 10)
    heading = ranova(_fit(spec["formula"], d)).attrs["heading"]
    assert heading[heading.index("Model:") + 1] == spec["model"]

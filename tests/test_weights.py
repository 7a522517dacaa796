"""Prior weights and offsets (jaxmlm/_frontend.py ``with_prior``, jaxmlm/_stats.py ``weighted_rows``).

* lme4 1.1-31 parity on generated cases (tests/reference/weights/, made by
  make_weights_reference.R): log-likelihood, θ, σ, fixed effects and their
  covariance, VarCorr, fitted values, conditional modes, Satterthwaite df,
  predictions with offsets.
* Identities that hold whatever lme4 does: equal weights c change σ by √c and
  nothing else; an offset equals fitting y − offset; the formula's offset()
  equals the argument; weight-0 rows equal dropping the rows; batched refits
  of the observed response equal the fit; simulated means include the offset.
* Bad weights and offsets are DataErrors that name the problem.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from jaxmlm import DataError, FormulaSyntaxError, PredictArgumentError

REF_DIR = Path(__file__).parent / "reference" / "weights"


@pytest.fixture(scope="module")
def sleep():
    df = jaxmlm.load_example("sleepstudy")
    rng = np.random.default_rng(7)
    return df.assign(w=np.round(rng.uniform(0.5, 2.0, len(df)), 3), z=rng.normal(size=len(df)))


def _close(a, b, rtol=1e-7, atol=1e-9):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=atol)


# ---- identities --------------------------------------------------------------------------------


@pytest.mark.parametrize("reml", [True, False])
def test_equal_weights_scale_sigma_only(sleep, reml):
    """w ≡ c: residual variance σ_w²/c = σ², so σ_w = √c σ and θ (relative to σ) = θ/√c; β, the
    random effects' covariance and the likelihood are unchanged."""
    f = "Reaction ~ Days + (Days | Subject)"
    m0 = jaxmlm.lmer(f, sleep, REML=reml)
    m1 = jaxmlm.lmer(f, sleep, REML=reml, weights=np.full(len(sleep), 4.0))
    _close(m1.fixef, m0.fixef, rtol=1e-7)
    _close(2.0 * m1.theta, m0.theta, rtol=1e-5, atol=1e-6)
    _close(m1.sigma, 2.0 * m0.sigma, rtol=1e-7)
    vc0, vc1 = m0.varcorr, m1.varcorr
    _close(vc1.vcov[:-1], vc0.vcov[:-1], rtol=1e-5)
    _close(m1.loglik, m0.loglik, rtol=1e-10)
    _close(m1.vcov, m0.vcov, rtol=1e-6)
    _close(m1.coef_table()["df"], m0.coef_table()["df"], rtol=1e-5)


def test_offset_equals_fitting_the_shifted_response(sleep):
    shifted = sleep.assign(Reaction=sleep.Reaction - 3.0 * sleep.z)
    m0 = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", shifted)
    for m in (jaxmlm.lmer("Reaction ~ Days + offset(3 * z) + (Days | Subject)", sleep),
              jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", sleep, offset=3.0 * sleep.z.to_numpy()),
              jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", sleep.assign(o=3.0 * sleep.z), offset="o")):
        _close(m.fixef, m0.fixef)
        _close(m.theta, m0.theta, rtol=1e-6, atol=1e-8)
        _close(m.loglik, m0.loglik, rtol=1e-10)
        _close(m.fitted, m0.fitted + 3.0 * sleep.z.to_numpy())
        _close(m.resid, m0.resid, atol=1e-7)
        _close(m.predict(re_form=False), m0.predict(re_form=False) + 3.0 * sleep.z.to_numpy())


def test_formula_and_argument_offsets_add_up(sleep):
    both = jaxmlm.lmer("Reaction ~ Days + offset(z) + (1 | Subject)", sleep, offset=2.0 * sleep.z.to_numpy())
    one = jaxmlm.lmer("Reaction ~ Days + offset(3 * z) + (1 | Subject)", sleep)
    _close(both.fixef, one.fixef)
    _close(both.fitted, one.fitted)
    assert list(both.fixef.index) == ["(Intercept)", "Days"]


@pytest.mark.parametrize("formula", ["Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (1 | Subject) + (1 | d)"])
def test_zero_weights_equal_dropping_the_rows(sleep, formula):
    df = sleep.assign(d=sleep.Days.astype(str))
    w = df.w.to_numpy().copy()
    zero = np.array([3, 17, 40, 41, 99])
    w[zero] = 0.0
    m0 = jaxmlm.lmer(formula, df.drop(index=df.index[zero]), weights=np.delete(w, zero))
    m1 = jaxmlm.lmer(formula, df, weights=w)
    assert m1.nobs == len(df)
    _close(m1.loglik, m0.loglik, rtol=1e-9)
    _close(m1.fixef, m0.fixef, rtol=1e-7)
    _close(m1.theta, m0.theta, rtol=1e-5, atol=1e-7)
    _close(m1.sigma, m0.sigma, rtol=1e-7)
    keep = np.setdiff1d(np.arange(len(df)), zero)
    _close(m1.fitted[keep], m0.fitted)
    # inference counts the rows of positive weight, as the criterion does
    _close(m1.coef_table()["df"], m0.coef_table()["df"], rtol=1e-5)
    _close(m1.vcov, m0.vcov, rtol=1e-6)
    vc1, vc0 = m1.variance_components(), m0.variance_components()
    num = vc0.select_dtypes("number").columns
    _close(vc1[num].to_numpy(dtype=float), vc0[num].to_numpy(dtype=float), rtol=1e-4)


def test_refits_of_the_observed_response_equal_the_fit(sleep):
    m = jaxmlm.lmer("Reaction ~ Days + offset(z) + (Days | Subject)", sleep, weights="w", REML=False)
    r = m.refit_many(np.asarray(m.design.y)[None, :], progress=False)
    _close(r.fixef.iloc[0], m.fixef, rtol=1e-6)
    _close(r.sigma[0], m.sigma, rtol=1e-6)


def test_simulated_responses_have_the_offset_mean_and_weighted_variance(sleep):
    w = np.where(np.arange(len(sleep)) % 2 == 0, 1.0, 16.0)
    m = jaxmlm.lmer("Reaction ~ Days + offset(10 * z) + (1 | Subject)", sleep, weights=w)
    Y = m.simulate(4000, seed=3, use_u=True)
    _close(Y.mean(axis=0), m.fitted, rtol=0, atol=5 * m.sigma / np.sqrt(4000))
    sd = (Y - m.fitted).std(axis=0)
    _close(sd[0::2].mean(), m.sigma, rtol=0.03)
    _close(sd[1::2].mean(), m.sigma / 4.0, rtol=0.03)


def test_zero_weight_rows_simulate_as_nan_and_refit(sleep):
    w = sleep.w.to_numpy().copy()
    w[:2] = 0.0
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", sleep, weights=w)
    Y = m.simulate(3, seed=1)
    assert np.isnan(Y[:, :2]).all() and np.isfinite(Y[:, 2:]).all()
    r = m.refit_many(Y, progress=False)
    assert r.ok.all()


def test_weights_reach_summary_and_comparisons(sleep):
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", sleep, weights="w", REML=False)
    _close(m.weights, sleep.w)
    r = m.pearson_resid
    _close(r, np.sqrt(sleep.w.to_numpy()) * m.resid / m.sigma)
    assert f"{np.quantile(r, 0.5):.4f}" in m.summary()
    u = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)
    with pytest.raises(DataError, match="weights"):
        jaxmlm.anova(u, m)
    m0 = jaxmlm.lmer("Reaction ~ 1 + (Days | Subject)", sleep, weights="w", REML=False)
    lrt = jaxmlm.anova(m0, m)
    _close(lrt["Chisq"].iloc[1], 2 * (m.loglik - m0.loglik), rtol=1e-9)
    # ranova's reduced model keeps the weights: its criterion is the weighted fit of the reduced formula.
    red = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", sleep, weights="w", REML=False)
    tab = m.ranova()
    assert np.isclose(tab["logLik"].min(), red.loglik, rtol=1e-8) or np.isclose(
        np.sort(tab["logLik"])[:2], red.loglik, rtol=1e-8).any()


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, match",
    [
        (lambda d: np.ones(len(d) - 1), "has 179 values but the data have 180 rows"),
        (lambda d: -d.w.to_numpy(), "must be >= 0"),
        (lambda d: np.where(np.arange(len(d)) == 5, np.nan, 1.0), "not finite in 1 row"),
        (lambda d: np.zeros(len(d)), "every weight is 0"),
        (lambda d: np.array(["a"] * len(d)), "numeric"),
        (lambda d: np.ones((len(d), 2)), "1-d array"),
    ],
)
def test_bad_weights_are_data_errors(sleep, weights, match):
    before = sleep.copy()
    with pytest.raises(DataError, match=match):
        jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", sleep, weights=weights(sleep))
    pd.testing.assert_frame_equal(sleep, before)


def test_unknown_weights_column_is_named(sleep):
    with pytest.raises(jaxmlm.UnknownColumnError, match="'nope'"):
        jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", sleep, weights="nope")


def test_nan_offset_in_a_complete_row_is_an_error_but_not_in_a_dropped_row(sleep):
    df = sleep.assign(o=0.0)
    df.loc[df.index[4], "o"] = np.nan
    with pytest.raises(DataError, match="offset is missing or not finite in 1 row"):
        jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", df, offset="o")
    df.loc[df.index[4], "Days"] = np.nan  # the row is dropped anyway
    m = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", df, offset="o")
    assert m.nobs == len(df) - 1


def test_offset_inside_a_random_term_is_refused(sleep):
    with pytest.raises(FormulaSyntaxError, match="fixed part"):
        jaxmlm.lmer("Reaction ~ Days + (offset(z) | Subject)", sleep)


def test_offset_of_a_factor_is_refused(sleep):
    with pytest.raises(DataError, match="numeric"):
        jaxmlm.lmer("Reaction ~ Days + offset(Subject) + (1 | Subject)", sleep)


def test_predict_new_rows_with_an_offset(sleep):
    new = sleep.head(4).assign(z=[0.0, 1.0, 2.0, 3.0])
    m = jaxmlm.lmer("Reaction ~ Days + offset(2 * z) + (1 | Subject)", sleep)
    base = m.predict(new.assign(z=0.0))
    _close(m.predict(new), base + 2.0 * new.z.to_numpy())
    ma = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", sleep, offset=2.0 * sleep.z.to_numpy())
    with pytest.raises(PredictArgumentError, match="offset="):
        ma.predict(new)
    _close(ma.predict(new, offset=2.0 * new.z.to_numpy()), m.predict(new))
    mc = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", sleep.assign(o=2.0 * sleep.z), offset="o")
    _close(mc.predict(new.assign(o=2.0 * new.z)), m.predict(new))
    with pytest.raises(PredictArgumentError, match="no column 'o'"):
        mc.predict(new)
    with pytest.raises(PredictArgumentError, match="has none"):
        m.predict(new, offset=np.zeros(4))


# ---- lme4 1.1-31 ---------------------------------------------------------------------------------


def _ref():
    path = REF_DIR / "weights_reference.json"
    return json.loads(path.read_text()) if path.exists() else {}


REF = _ref()
FITS = [k for k in REF if k not in ("meta", "predict_offset", "zero_weights")]
_ARG_OFFSETS = {"log(expo)": lambda df: np.log(df["expo"].to_numpy())}


def _data(case: dict) -> pd.DataFrame:
    return pd.read_csv(REF_DIR / case["data_csv"], dtype={c: str for c in ("g", "subj", "item", "a", "b", "Subject")})


def _fit(case: dict):
    df = _data(case)
    if case["subset"]:
        df = df[df[case["weights"]] > 0].reset_index(drop=True)
    offset = _ARG_OFFSETS[case["offset"]](df) if case["offset"] else None
    return jaxmlm.lmer(case["formula"], df, REML=case["REML"], weights=case["weights"], offset=offset), df


def _fixef(case: dict) -> np.ndarray:
    return np.array([case["fixef"][n] for n in case["fixef_names"]])


def test_reference_cases_are_there():
    assert len(FITS) >= 8, "tests/reference/weights/weights_reference.json is missing cases"


@pytest.mark.parametrize("cid", FITS)
def test_lme4_parity(cid):
    """Foundation tolerances: criterion within 2e-4 and not worse than lme4's, fixed effects within
    0.002 SE, SEs, σ and variance components within 0.2 %, conditional modes within 0.002 SD."""
    case = REF[cid]
    m, _ = _fit(case)
    assert m.nobs == case["nobs"]
    assert m.loglik == pytest.approx(case["loglik"], abs=2e-4) and m.loglik > case["loglik"] - 1e-6
    se = np.sqrt(np.diag(np.asarray(case["vcov"])))
    assert list(m.fixef.index) == case["fixef_names"]
    assert np.all(np.abs(m.fixef.to_numpy() - _fixef(case)) <= 0.002 * se)
    _close(m.se, se, rtol=2e-3)
    _close(m.sigma, case["sigma"], rtol=2e-3)
    vc = pd.DataFrame(case["varcorr"])
    _close(m.varcorr.sdcor, vc.sdcor, rtol=2e-3, atol=2e-3)
    _close(m.fitted, case["fitted"], rtol=1e-4, atol=1e-4 * m.sigma)
    _close(m.resid, case["residuals"], rtol=0, atol=1e-3 * m.sigma)
    _close(m.pearson_resid * m.sigma, case["residuals_pearson"], rtol=0, atol=1e-3 * m.sigma)
    for g, re in case["ranef"].items():
        ours = m.ranef[g]
        sd = m.condsd[g]
        levels = [str(v) for v in re["level"]]
        for col in ours.columns:
            diff = ours.loc[levels, col].to_numpy() - np.asarray(re[col])
            assert np.all(np.abs(diff) <= 0.002 * sd.loc[levels, col].to_numpy() + 1e-8), (g, col)
    sat = pd.DataFrame(case["satterthwaite"])
    _close(m.coef_table()["df"], sat["df"], rtol=1e-3)


def test_zero_weights_fit_as_lme4_fits_without_the_rows():
    """lme4 1.1-31 takes log 0 into its criterion (logLik −Inf, "Gradient contains NAs"); the
    rows carry no information, so jaxmlm's fit is lme4's fit without them."""
    with_zero, without = REF["zero_weights"], REF["zero_weights_rows_dropped"]
    assert with_zero["loglik"] == "-Inf"
    m, _ = _fit(with_zero)
    assert m.nobs == 180
    assert m.loglik == pytest.approx(without["loglik"], abs=2e-4)
    se = np.sqrt(np.diag(np.asarray(without["vcov"])))
    assert np.all(np.abs(m.fixef.to_numpy() - _fixef(without)) <= 0.002 * se)
    _close(m.sigma, without["sigma"], rtol=2e-3)


@pytest.mark.parametrize("which", ["offset_formula", "offset_arg"])
def test_lme4_predictions_with_offsets(which):
    ref = REF["predict_offset"][which]
    m, _ = _fit(REF[which])
    new = pd.read_csv(REF_DIR / REF["predict_offset"]["newdata_csv"], dtype={"g": str})
    _close(m.fitted, ref["fitted"], rtol=1e-4, atol=1e-4)
    kwargs = {} if which == "offset_formula" else {"offset": np.log(new.expo.to_numpy())}
    # lme4 applies offset() terms to new data, but not an offset= argument (issue #447): compare
    # with the prediction it makes by hand, offset included.
    _close(m.predict(new, allow_new_levels=True, **kwargs), ref["manual_newdata_with_offset"], rtol=1e-4, atol=1e-4)
    _close(m.predict(new, re_form=False, **kwargs), ref["manual_newdata_re_na_with_offset"], rtol=1e-4, atol=1e-4)
    if which == "offset_formula":
        _close(m.predict(new, allow_new_levels=True), ref["predict_newdata"], rtol=1e-4, atol=1e-4)


def test_update_keeps_rows_weights_and_offset(sleep):
    df = sleep.copy()
    df.loc[df.index[:3], "Days"] = np.nan  # rows the model drops stay dropped in the update
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", df, weights="w", offset=2.0 * df.z.to_numpy())
    u = m.update("Reaction ~ Days + (1 | Subject)", REML=False)
    direct = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", df, weights="w", offset=2.0 * df.z.to_numpy(), REML=False)
    assert u.nobs == direct.nobs == len(df) - 3
    _close(u.loglik, direct.loglik, rtol=1e-10)
    _close(u.fixef, direct.fixef)
    _close(m.update().loglik, m.loglik, rtol=1e-12)


def test_subset_equals_fitting_the_filtered_rows():
    """lmer(subset=) as lme4's subset: a condition, a mask or a Series; weights given as values are
    cut alike; missing mask values leave the row out; the data frame is not modified."""
    df = jaxmlm.load_example("sleepstudy")
    df = df.assign(w=np.linspace(0.5, 2.0, len(df)))
    before = df.copy()
    keep = df["Days"] >= 2
    ref = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", df[keep], weights=df.loc[keep, "w"].to_numpy())
    for subset in ("Days >= 2", keep, keep.to_numpy()):
        m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", df, weights=df["w"].to_numpy(), subset=subset)
        assert m.nobs == ref.nobs and m.objective == pytest.approx(ref.objective, rel=1e-12)
        np.testing.assert_allclose(m.fixef, ref.fixef, rtol=1e-10)
    masked = keep.astype(object)
    masked.iloc[:3] = None
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", df, subset=masked)
    assert m.nobs == int(keep.sum()) - int(keep.iloc[:3].sum())
    pd.testing.assert_frame_equal(df, before)
    for bad, match in (("Hours > 2", "could not be evaluated"), (np.ones(5, bool), "one boolean per row"),
                       (df["Days"], "true or false"), ("Days > 100", "no rows")):
        with pytest.raises(DataError, match=match):
            jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", df, subset=bad)

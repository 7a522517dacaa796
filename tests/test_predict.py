"""predict(): lme4's predict.merMod on the reference fits and on new data built in R.

Reference numbers: tests/reference/predict/predict_reference.json, written by
make_predict_reference.R beside it (lme4 1.1-31): predictions for hand-made
newdata (known and new levels, new combinations of nested levels, missing
values, a categorical fixed effect, transformed predictors) with re.form =
NULL, NA and partial formulas, and the messages of lme4's errors.

Predictions differ from lme4's only through the estimates (β̂ within 0.002
SE, b̂ within 0.002 conditional SD, see test_results.py), so they are
compared with atol = 2e-3·σ plus 1e-6 of the prediction scale.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from conftest import CASES, case_data
from jaxmlm import NewLevelsError, PredictArgumentError

REF = json.loads((Path(__file__).parent / "reference" / "predict" / "predict_reference.json").read_text())
SCENARIOS = {s["id"]: s for s in REF["scenarios"]}


def _as_array(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _close(ours: np.ndarray, theirs: np.ndarray, sigma: float) -> None:
    """Same missing pattern; values within 2e-3·σ + 1e-6 of the scale of the predictions."""
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    scale = np.nanmax(np.abs(theirs)) if np.isfinite(theirs).any() else 1.0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-3 * sigma + 1e-6 * scale)


def _newdata(name: str) -> pd.DataFrame:
    return pd.DataFrame(REF["newdata"][name])


@pytest.fixture(scope="module")
def model(fits):
    """The models of the predict reference: reference cases via `fits`, the others fitted once here."""
    own: dict[str, jaxmlm.LinearMixedModel] = {}

    def get(name: str) -> jaxmlm.LinearMixedModel:
        md = REF["models"][name]
        if md["case"]:
            return fits(md["case"])
        if name not in own:
            data = case_data(CASES["factors_na"])
            assert md["data"] == CASES["factors_na"]["data_csv"]
            own[name] = jaxmlm.lmer(md["formula"], data, REML=md["REML"])
        return own[name]

    return get


# ---- rows of the fit: every reference case ----------------------------------------------------


@pytest.mark.parametrize("cid", sorted(CASES))
def test_predict_without_newdata_is_fitted(fits, cid):
    ref, m = CASES[cid], fits(cid)
    p = m.predict()
    assert isinstance(p, np.ndarray) and p.dtype == np.float64
    np.testing.assert_array_equal(p, m.fitted)
    np.testing.assert_allclose(p, np.asarray(ref["fitted"]), rtol=0, atol=2e-3 * ref["sigma"])


@pytest.mark.parametrize("cid", sorted(CASES))
def test_fit_data_as_newdata_gives_fitted(fits, cid):
    """Rebuilding X and Z from the frozen specs reproduces the design's own (every formula feature of the cases)."""
    m = fits(cid)
    data = case_data(CASES[cid]).loc[m.design.rows]
    scale = np.abs(m.fitted).max()
    np.testing.assert_allclose(m.predict(data), m.fitted, rtol=0, atol=1e-10 * scale)
    population = m.design.X @ m.fixef.to_numpy()
    np.testing.assert_allclose(m.predict(data, re_form=False), population, rtol=0, atol=1e-10 * scale)


# ---- lme4's predictions on new data ---------------------------------------------------------------

PREDICTIONS = sorted(k for k, s in SCENARIOS.items() if "prediction" in s)
ERRORS = sorted(k for k, s in SCENARIOS.items() if "error" in s)


def _re_forms(s) -> list:
    """lme4's re.form as jaxmlm spells it: NA is False or "~0" (both are checked)."""
    return [False, "~0"] if s["re_form"] == "NA" else [s["re_form"]]


@pytest.mark.parametrize("sid", PREDICTIONS)
def test_matches_lme4(model, sid):
    s = SCENARIOS[sid]
    m = model(s["model"])
    nd = None if s["newdata"] is None else _newdata(s["newdata"])
    for re_form in _re_forms(s):
        p = m.predict(nd, re_form=re_form, allow_new_levels=s["allow_new_levels"])
        _close(p, _as_array(s["prediction"]), REF["sigma"][s["model"]])


@pytest.mark.parametrize("sid", ERRORS)
def test_lme4_errors_are_ours_too(model, sid):
    """Where lme4 stops, jaxmlm raises a JaxmlmError that names the problem."""
    s = SCENARIOS[sid]
    m = model(s["model"])
    nd = _newdata(s["newdata"])
    with pytest.raises(jaxmlm.JaxmlmError) as err:
        for re_form in _re_forms(s):
            m.predict(nd, re_form=re_form, allow_new_levels=s["allow_new_levels"])
    msg = str(err.value)
    if s["error"].startswith("new levels detected"):
        assert isinstance(err.value, NewLevelsError)
        for level in s["error"].split(": ", 1)[1].split(", "):
            assert repr(level) in msg  # every level lme4 names, quoted
        assert "allow_new_levels=True" in msg
    elif s["error"].startswith("NAs are not allowed"):
        assert isinstance(err.value, NewLevelsError)
        assert "missing" in msg and "allow_new_levels=True" in msg
    elif "re.form" in s["error"]:
        assert isinstance(err.value, jaxmlm.FormulaError)
        assert "(Days | Subject)" in msg  # lists the model's terms
    else:  # lme4's "non-conformable arguments" for a new level of a fixed-effect factor
        assert isinstance(err.value, jaxmlm.DataError) and not isinstance(err.value, NewLevelsError)
        assert "'none'" in msg and "'f3'" in msg


def test_original_data_with_missing_values(model):
    """All 240 rows of factors_na: NA where x is missing, a prediction where only y is (na.pass)."""
    full = REF["full_data"]
    m = model(full["model"])
    data = case_data(CASES["factors_na"])
    sigma = REF["sigma"][full["model"]]
    _close(m.predict(data), _as_array(full["prediction"]), sigma)
    _close(m.predict(data, re_form=False), _as_array(full["prediction_pop"]), sigma)


def test_transformed_predictor_model_matches_lme4_fit(model):
    """The one model of the predict reference that is not a reference case: its fit is at parity too."""
    m, ref = model("factors_transforms"), REF["transforms_fit"]
    names = list(ref["fixef"])
    assert list(m.fixef.index) == names
    se = np.array([ref["se"][k] for k in names])
    np.testing.assert_array_less(np.abs(m.fixef.to_numpy() - [ref["fixef"][k] for k in names]), 2e-3 * se)
    assert m.sigma == pytest.approx(ref["sigma"], rel=2e-3)
    assert m.nobs == ref["nobs"]


def test_stateful_transform_keeps_fit_state(model):
    """scale(x) uses the fit's centre and scale: one row at a time equals all rows at once."""
    m = model("factors_transforms")
    nd = _newdata("factors")
    together = m.predict(nd, allow_new_levels=True)
    alone = np.array([m.predict(nd.iloc[[i]], allow_new_levels=True)[0] for i in range(len(nd))])
    np.testing.assert_allclose(alone, together, rtol=1e-12, equal_nan=True)


# ---- invariances ---------------------------------------------------------------------------------


def test_row_order_and_index_do_not_matter(model):
    m = model("sleepstudy_rs")
    nd = _newdata("sleep")
    base = m.predict(nd, allow_new_levels=True)
    perm = np.random.default_rng(0).permutation(len(nd))
    shuffled = nd.iloc[perm].set_index(pd.Index([f"r{i}" for i in range(len(nd))]))
    np.testing.assert_allclose(m.predict(shuffled, allow_new_levels=True), base[perm], rtol=1e-12, equal_nan=True)


def test_newdata_is_not_modified(model):
    m = model("factors_na")
    nd = _newdata("factors")
    before = nd.copy()
    m.predict(nd, allow_new_levels=True)
    pd.testing.assert_frame_equal(nd, before)


def test_grouping_and_factor_column_types_do_not_matter(model):
    """Levels are matched by R's labels: numbers, strings and Categoricals (any category order) agree."""
    m = model("factors_na")
    nd = _newdata("factors").iloc[[0, 1, 2, 5]]  # known groups only
    base = m.predict(nd)
    as_text = nd.assign(g=nd["g"].astype(int).astype(str))
    as_float = nd.assign(g=nd["g"].astype(float))
    reordered = nd.assign(f3=pd.Categorical(nd["f3"], categories=["mid", "low", "high"]))
    for variant in (as_text, as_float, reordered):
        np.testing.assert_allclose(m.predict(variant), base, rtol=1e-12)


def test_crossed_effects_add_up(model):
    """With crossed factors, conditioning on both adds each factor's contribution to Xβ̂."""
    m = model("penicillin_crossed")
    nd = _newdata("penicillin")
    pop = m.predict(nd, re_form=False)
    plate = m.predict(nd, re_form="~(1 | plate)", allow_new_levels=True)
    sample = m.predict(nd, re_form="~ (1|sample)", allow_new_levels=True)
    both = m.predict(nd, allow_new_levels=True)
    np.testing.assert_allclose(both - pop, (plate - pop) + (sample - pop), rtol=0, atol=1e-10)


def test_new_level_gets_population_prediction(model):
    m = model("sleepstudy_rs")
    nd = pd.DataFrame({"Subject": ["999", "1000"], "Days": [2.0, 7.0]})
    np.testing.assert_allclose(m.predict(nd, allow_new_levels=True), m.predict(nd, re_form="~0"), rtol=1e-14)


def test_known_levels_need_no_permission(model):
    """Only unseen levels need allow_new_levels; known ones give the conditional prediction either way."""
    m = model("sleepstudy_rs")
    nd = _newdata("sleep_known")
    np.testing.assert_array_equal(m.predict(nd), m.predict(nd, allow_new_levels=True))


def test_only_used_columns_are_required(model):
    """A re_form on one crossed factor does not need the other factor's column (as lme4)."""
    m = model("penicillin_crossed")
    nd = _newdata("penicillin")
    expected = m.predict(nd, re_form="~(1 | plate)", allow_new_levels=True)
    np.testing.assert_array_equal(
        m.predict(nd.drop(columns="sample"), re_form="~(1 | plate)", allow_new_levels=True), expected
    )
    # population level needs no grouping column at all
    assert m.predict(nd.drop(columns=["plate", "sample"]), re_form=False).shape == (len(nd),)


# ---- errors ---------------------------------------------------------------------------------------


def test_new_levels_error_lists_levels_per_factor(model):
    m = model("pastes_nested")
    nd = pd.DataFrame({"batch": ["K", "L", "M", "N", "O", "P", "Q", "A"], "cask": ["a"] * 7 + ["z"]})
    with pytest.raises(NewLevelsError) as err:
        m.predict(nd)
    e = err.value
    assert e.levels == {
        "cask:batch": ["a:K", "a:L", "a:M", "a:N", "a:O", "a:P", "a:Q", "z:A"],
        "batch": list("KLMNOPQ"),
    }
    msg = str(e)
    assert "'a:K'" in msg and "and 3 more (8 in all)" in msg and "and 2 more (7 in all)" in msg
    assert "'z:A'" not in msg  # only the first few are listed
    assert isinstance(e, jaxmlm.DataError)


def test_missing_grouping_value_is_counted(model):
    m = model("sleepstudy_rs")
    nd = pd.DataFrame({"Subject": ["308", None, None], "Days": [1.0, 2.0, 3.0]})
    with pytest.raises(NewLevelsError) as err:
        m.predict(nd)
    assert err.value.missing == {"Subject": 2} and err.value.levels == {}


@pytest.mark.parametrize(
    "re_form, fragment",
    [
        ("~(1 | Days)", "not a grouping factor of the model"),
        ("~(0 + I(Days**2) | Subject)", "no random effect for"),
        ("~ Days + (1 | Subject)", "only random-effects terms"),
        ("(1 | Subject)", "one-sided formula"),
        ("~ Days", "no random-effects term"),
        ("~(1 | Subject) + (1 | Subject)", "more than once"),
    ],
)
def test_bad_re_form(model, re_form, fragment):
    m = model("sleepstudy_rs")
    with pytest.raises(jaxmlm.FormulaError) as err:
        m.predict(re_form=re_form)
    assert fragment in str(err.value)
    if "model" in fragment or "random effect for" in fragment:
        assert "(Days | Subject)" in str(err.value)


def test_re_form_syntax_error_points_into_re_form(model):
    """The caret sits where the model-formula parser puts it in the same text."""
    m = model("sleepstudy_rs")
    with pytest.raises(jaxmlm.FormulaSyntaxError) as err:
        m.predict(re_form="~(1 | )")
    with pytest.raises(jaxmlm.FormulaSyntaxError) as as_model:
        jaxmlm.lmer("y ~(1 | )", pd.DataFrame({"y": [1.0]}))
    assert err.value.formula == "~(1 | )"
    assert err.value.position == as_model.value.position - 2 == "~(1 | )".index("|") + 1


@pytest.fixture(scope="module")
def categorical_slope():
    """sleepstudy with a categorical random slope; same shapes as sleepstudy_rs, so no new compilation."""
    data = jaxmlm.load_example("sleepstudy")
    data = data.assign(late=np.where(data["Days"] >= 5, "yes", "no"))
    return jaxmlm.lmer("Reaction ~ Days + (1 + late | Subject)", data)


def test_partial_categorical_random_term_is_refused(categorical_slope):
    """A categorical random slope must be named as in the model: its coding depends on the other terms."""
    m = categorical_slope
    with pytest.raises(jaxmlm.FormulaError, match="exactly as in the model"):
        m.predict(re_form="~(0 + late | Subject)")
    np.testing.assert_array_equal(m.predict(re_form="~(late | Subject)"), m.fitted)
    # the intercept alone is numeric and may be taken out
    pop, intercept = m.predict(re_form=False), m.predict(re_form="~(1 | Subject)")
    b0 = m.ranef["Subject"]["(Intercept)"].to_numpy()[m.design.blocks[0].codes]
    np.testing.assert_allclose(intercept - pop, b0, rtol=0, atol=1e-10)


def test_new_level_of_categorical_random_slope_is_refused(categorical_slope):
    nd = pd.DataFrame({"Days": [1.0, 2.0], "late": ["no", "maybe"], "Subject": ["308", "309"]})
    with pytest.raises(jaxmlm.DataError, match="'maybe'") as err:
        categorical_slope.predict(nd, allow_new_levels=True)
    assert not isinstance(err.value, NewLevelsError)
    ok = categorical_slope.predict(nd.iloc[[0]])
    assert np.isfinite(ok).all()


def test_missing_fixed_factor_value_predicts_nan(model):
    """na.pass: a missing level of a fixed-effect factor gives NaN, not the reference level's prediction."""
    m = model("factors_na")
    nd = _newdata("factors").iloc[[0, 1, 2]].reset_index(drop=True)
    nd.loc[1, "f3"] = None
    p = m.predict(nd)
    assert np.isnan(p[1]) and np.isfinite(p[[0, 2]]).all()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"re_form": True}, PredictArgumentError),
        ({"re_form": 0}, PredictArgumentError),
        ({"allow_new_levels": "yes"}, PredictArgumentError),
        ({"type": "response"}, PredictArgumentError),
        ({"newdata": {"Days": [1.0], "Subject": ["308"]}}, jaxmlm.DataError),
        ({"newdata": pd.DataFrame({"Day": [1.0], "Subject": ["308"]})}, jaxmlm.UnknownColumnError),
        ({"newdata": pd.DataFrame({"Days": [1.0]})}, jaxmlm.UnknownColumnError),
    ],
)
def test_bad_arguments(model, kwargs, error):
    m = model("sleepstudy_rs")
    with pytest.raises(error) as err:
        m.predict(**kwargs)
    assert isinstance(err.value, jaxmlm.JaxmlmError)
    if error is jaxmlm.UnknownColumnError:
        assert "Days" in str(err.value) or "Subject" in str(err.value)


def test_numeric_column_given_as_text_is_refused(model):
    m = model("sleepstudy_rs")
    with pytest.raises(jaxmlm.DataError, match="pd.to_numeric"):
        m.predict(pd.DataFrame({"Days": ["1", "2"], "Subject": ["308", "309"]}))


# ---- non-syntactic names and integer columns in newdata -------------------------------------------


def _spaced_data() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 90
    g = np.repeat(np.arange(9), 10)
    x = rng.standard_normal(n)
    return pd.DataFrame(
        {
            "y": 1 + 0.5 * x + rng.standard_normal(9)[g] * 0.8 + rng.standard_normal(9)[g] * x * 0.5
            + rng.standard_normal(n) * 0.3,
            "x 1": x,
            "z.w": rng.standard_normal(n),
            "k": (np.arange(n) % 4 + 1) * 50000,  # int: k*k overflows int32, not double
            "my g": g,
        }
    ).astype({"k": np.int32})


@pytest.mark.parametrize(
    "formula, re_form",
    [
        ("y ~ 1 + (`x 1` | `my g`)", None),
        ("y ~ `x 1` + (`x 1` || `my g`)", None),
        ("y ~ 1 + (`x 1`:z.w | `my g`)", None),
        ("y ~ 1 + (log(`x 1` + 5) | `my g`)", None),
        ("y ~ 1 + (`x 1` | `my g`)", "~(0 + `x 1` | `my g`)"),
        ("y ~ `x 1` + I(k * k / 1e9) + (1 + I(k * k / 1e9) | `my g`)", None),
    ],
    ids=["slope", "uncorrelated", "interaction", "transform", "partial-re-form", "integer-product"],
)
def test_newdata_with_backquoted_and_integer_columns(formula, re_form):
    """The fit's own data as newdata gives the fitted values (lme4's predict(fit, newdata = data))."""
    df = _spaced_data()
    m = jaxmlm.lmer(formula, df)
    expected = m.predict(re_form=re_form)
    np.testing.assert_allclose(m.predict(df, re_form=re_form), expected, rtol=1e-10, atol=1e-10)
    # integer columns given as another integer width or as doubles predict the same
    np.testing.assert_allclose(m.predict(df.astype({"k": np.int64}), re_form=re_form), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.predict(df.astype({"k": float}), re_form=re_form), expected, rtol=1e-10, atol=1e-10)

"""Stage 2: terms + pandas → y, X, Z blocks, grouping codes, as lme4 builds them.

Every expected name, level order, dropped column, error condition and number
below was produced by lme4 1.1-31 in R 4.2 (``lFormula``/``lmer`` on the same
data, written to CSV from the generators here) or follows from first
principles; none comes from the code under test. Tests never need R.
"""

import copy
import datetime
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from jaxmlm._design import Design, r_column_name
from jaxmlm._frontend import build_design
from jaxmlm._errors import (
    DataError,
    DataWarning,
    DataWarning,
    FormulaError,
    FormulaSyntaxError,
    GroupingError,
    JaxmlmError,
    RankDeficiencyWarning,
    UnknownColumnError,
)


def design(formula: str, data: pd.DataFrame) -> Design:
    """build_design, failing on any warning (rank deficiency is tested on its own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return build_design(formula, data)


def small(n: int = 24, groups: int = 6) -> pd.DataFrame:
    i = np.arange(n)
    return pd.DataFrame(
        {
            "y": np.sin(i * 1.7) + 0.1 * i,
            "x": np.cos(i * 0.9) * 2 + 3,
            "z": 1.5 + np.sin(i * 0.45),
            "f": np.array(["b", "a", "c"], dtype=object)[i % 3],
            "g": np.array([f"g{k}" for k in i % groups], dtype=object),
            "h": (i // 3) % 4,
        }
    )


# ---- fixed part: names and values as lme4's model matrix ----------------------------------------


def fixed_data() -> pd.DataFrame:
    i = np.arange(48)
    return pd.DataFrame(
        {
            "y": np.round(np.sin(i * 0.9) * 3 + i * 0.05, 4),
            "x": np.round(np.cos(i * 1.1) * 2 + 3, 4),
            "z": np.round(1.2 + np.sin(i * 0.45), 4),
            "ses": np.round(np.sin(i * 2.3), 4),
            "sector": pd.Categorical(np.array(["Public", "Catholic"])[(i // 3) % 2], categories=["Public", "Catholic"]),
            "f": np.array(["b", "a", "c"], dtype=object)[i % 3],
            "h": pd.Categorical(np.array(["q", "p"])[(i // 2) % 2], categories=["q", "p"]),
            "COMB": pd.Categorical((i // 4) % 2),
            "b": (i % 5) < 2,
            "g": np.array([f"s{k}" for k in i % 8], dtype=object),
        }
    )


# colnames(lFormula(<f> + (1|g), d)$X) and colSums(X^2) + colSums(X) (a checksum of the values)
LME4_FIXED = [
    ("y ~ ses * sector", "(Intercept)|ses|sectorCatholic|ses:sectorCatholic", "96|24.72201748|48|12.39918361"),
    ("y ~ sector * ses", "(Intercept)|sectorCatholic|ses|sectorCatholic:ses", "96|48|24.72201748|12.39918361"),
    ("y ~ f * h", "(Intercept)|fb|fc|hp|fb:hp|fc:hp", "96|32|32|48|16|16"),
    ("y ~ f:x", "(Intercept)|fa:x|fb:x|fc:x", "96|233.117778|231.2171992|227.1011237"),
    ("y ~ x:f", "(Intercept)|x:fa|x:fb|x:fc", "96|233.117778|231.2171992|227.1011237"),
    ("y ~ 0 + f + h", "fa|fb|fc|hp", "32|32|32|48"),
    ("y ~ f + x + f:x", "(Intercept)|fb|fc|x|fb:x|fc:x", "96|32|32|691.4361009|231.2171992|227.1011237"),
    ("y ~ COMB + sector", "(Intercept)|COMB1|sectorCatholic", "96|48|48"),
    (
        "y ~ poly(x, 2) + log(z) + sqrt(z)",
        "(Intercept)|poly(x, 2)1|poly(x, 2)2|log(z)|sqrt(z)",
        "96|1|1|29.48838205|113.3018193",
    ),
    ("y ~ x + I(x^2)", "(Intercept)|x|I(x^2)", "96|691.4361009|10321.36995"),
    (
        "y ~ (x + z + ses)^2",
        "(Intercept)|x|z|ses|x:z|x:ses|z:ses",
        "96|691.4361009|164.6583659|24.72201748|1356.86716|268.7875693|53.42956152",
    ),
    ("y ~ x %in% f", "(Intercept)|x:fa|x:fb|x:fc", "96|233.117778|231.2171992|227.1011237"),
    ("y ~ 0 + x", "x", "691.4361009"),
    ("y ~ -1 + x", "x", "691.4361009"),
    ("y ~ x - 1", "x", "691.4361009"),
    ("y ~ b", "(Intercept)|bTRUE", "96|40"),
    ("y ~ 0 + b", "bFALSE|bTRUE", "56|40"),
    ("y ~ b:x", "(Intercept)|bFALSE:x|bTRUE:x", "96|365.8855151|325.5505858"),
    (
        "y ~ f*x*h",
        "(Intercept)|fb|fc|x|hp|fb:x|fc:x|fb:hp|fc:hp|x:hp|fb:x:hp|fc:x:hp",
        "96|32|32|691.4361009|48|231.2171992|227.1011237|16|16|330.0835259|102.9608304|110.0930597",
    ),
    ("y ~ 1", "(Intercept)", "96"),
]


@pytest.mark.parametrize("formula, names, checksums", LME4_FIXED)
def test_fixed_part_as_lme4(formula, names, checksums):
    d = design(formula + " + (1 | g)", fixed_data())
    assert list(d.fixef_names) == names.split("|")
    np.testing.assert_allclose((d.X**2).sum(0) + d.X.sum(0), [float(v) for v in checksums.split("|")], rtol=1e-8)
    assert d.X.dtype == np.float64 and d.y.dtype == np.float64


@pytest.mark.parametrize(
    "formula, names, checksums",
    [
        # lme4 drops log2(z) (aliased with log10(z)) and I(2 * x) (aliased with scale(x)), after a message
        (
            "y ~ exp(z) + log10(z) + log2(z) + abs(ses)",
            "(Intercept)|exp(z)|log10(z)|abs(ses)",
            "96|1571.195812|5.733099927|54.54701748",
        ),
        ("y ~ scale(x) + I(2 * x)", "(Intercept)|scale(x)", "96|47"),
    ],
)
def test_fixed_part_with_aliased_transforms(formula, names, checksums):
    with pytest.warns(RankDeficiencyWarning):
        d = build_design(formula + " + (1 | g)", fixed_data())
    assert list(d.fixef_names) == names.split("|")
    np.testing.assert_allclose((d.X**2).sum(0) + d.X.sum(0), [float(v) for v in checksums.split("|")], rtol=1e-8)


def test_response_and_transform_values():
    df = fixed_data()
    d = design("log(y + 10) ~ I(x^2) + scale(z) + (1 | g)", df)
    np.testing.assert_allclose(d.y, np.log(df.y + 10))
    np.testing.assert_allclose(d.X[:, 1], df.x**2)
    np.testing.assert_allclose(d.X[:, 2], (df.z - df.z.mean()) / df.z.std(ddof=1))


def test_r_power_on_integers_is_not_xor():
    df = small().assign(k=np.arange(24))
    d = design("y ~ I(k^2) + (1 | g)", df)
    np.testing.assert_array_equal(d.X[:, 1], np.arange(24) ** 2)


@pytest.mark.parametrize(
    "values, names",
    [
        (pd.Series(["b", "a", "c"] * 8, dtype=object), ["fb", "fc"]),
        (pd.Series(["b", "a", "c"] * 8, dtype="str"), ["fb", "fc"]),
        (pd.Series(["b", "a", "c"] * 8, dtype="string"), ["fb", "fc"]),
        (pd.Categorical(["b", "a", "c"] * 8, categories=["c", "b", "a"]), ["fb", "fa"]),  # category order kept
        (pd.Categorical(["b", "a", "c"] * 8, categories=["d", "c", "b", "a"]), ["fb", "fa"]),  # unused 'd' dropped
        (pd.Categorical(["b", "a", "c"] * 8, categories=["c", "b", "a"], ordered=True), ["fb", "fa"]),
        (pd.Series([2, 10, 1] * 8).astype("category"), ["f2", "f10"]),
        (pd.Series([True, False, False] * 8), ["fTRUE"]),
        (pd.Series([True, False, False] * 8, dtype="boolean"), ["fTRUE"]),
    ],
    ids=["object", "str", "string", "categorical", "unused-category", "ordered", "int-categorical", "bool", "boolean"],
)
def test_categorical_predictors(values, names):
    d = design("y ~ f + (1 | g)", small().assign(f=values))
    assert list(d.fixef_names) == ["(Intercept)", *names]
    # treatment coding: each row has at most one 1, reference-level rows none
    assert set(np.unique(d.X[:, 1:])) <= {0.0, 1.0}
    assert (d.X[:, 1:].sum(1) <= 1).all()


def test_numeric_predictor_dtypes():
    base = small()
    expected = design("y ~ x + (1 | g)", base).X
    for dtype in ["float32", "Float64"]:
        np.testing.assert_allclose(design("y ~ x + (1 | g)", base.astype({"x": dtype})).X, expected, rtol=1e-6)
    ints = base.assign(x=np.arange(24))
    for dtype in ["int8", "int32", "uint16", "Int64"]:
        np.testing.assert_array_equal(design("y ~ x + (1 | g)", ints.astype({"x": dtype})).X[:, 1], np.arange(24))


def test_non_syntactic_names_print_as_r_does():
    # R: colnames "`my x`", "`my f`q", "lgTRUE"; cnms "(Intercept)" "`my x`"; flist name "my g"
    i = np.arange(24)
    df = pd.DataFrame(
        {
            "y": np.sin(i),
            "my x": np.cos(i),
            "my f": ["p", "q"] * 12,
            "lg": (i % 3) == 0,
            "my g": np.array(["u", "v", "w", "s"])[i % 4],
        }
    )
    d = design("y ~ `my x` + `my f` + lg + (`my x` | `my g`)", df)
    assert d.fixef_names == ("(Intercept)", "`my x`", "`my f`q", "lgTRUE")
    assert d.terms[0].columns == ("(Intercept)", "`my x`")
    assert d.terms[0].group == "my g"
    assert design("y ~ log(`my x` + 2) + (1 | `my g`)", df).fixef_names[1] == "log(`my x` + 2)"


def test_dotted_r_names():
    df = small().rename(columns={"x": "Sepal.Length"})
    d = design("y ~ Sepal.Length + log(Sepal.Length) + (Sepal.Length | g)", df)
    assert d.fixef_names == ("(Intercept)", "Sepal.Length", "log(Sepal.Length)")
    assert d.terms[0].columns == ("(Intercept)", "Sepal.Length")
    np.testing.assert_allclose(d.X[:, 2], np.log(df["Sepal.Length"]))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Intercept", "(Intercept)"),
        ("f[T.b]", "fb"),
        ("f[a]:x", "fa:x"),
        ("poly(x, 2)[1]", "poly(x, 2)1"),
        ("I(x ** 2)", "I(x^2)"),
        ("log(`x.y`)", "log(x.y)"),
        ("log(`my x`)", "log(`my x`)"),
    ],
)
def test_r_column_name(name, expected):
    assert r_column_name(name, ("x.y", "my x")) == expected


def test_r_spellings_of_functions():
    df = small()
    d = design("y ~ sqrt(z) + abs(x - 3) + factor(h) + (1 | g)", df)
    assert d.fixef_names == ("(Intercept)", "sqrt(z)", "abs(x - 3)", "factor(h)1", "factor(h)2", "factor(h)3")
    np.testing.assert_allclose(d.X[:, 1], np.sqrt(df.z))


def test_no_fixed_effects():
    d = design("y ~ 0 + (1 | g)", small())
    assert d.X.shape == (24, 0) and d.fixef_names == ()


# ---- random-effects terms -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "formula, columns",
    [
        ("y ~ (1 | g)", [("(Intercept)",)]),
        ("y ~ (x | g)", [("(Intercept)", "x")]),
        ("y ~ (0 + x | g)", [("x",)]),
        ("y ~ (-1 + x | g)", [("x",)]),
        ("y ~ (x - 1 | g)", [("x",)]),
        ("y ~ (x || g)", [("(Intercept)",), ("x",)]),
        ("y ~ (f | g)", [("(Intercept)", "fb", "fc")]),
        ("y ~ (0 + f | g)", [("fa", "fb", "fc")]),
        ("y ~ (f || g)", [("(Intercept)",), ("fa", "fb", "fc")]),  # lme4: (1|g) + (0 + f|g)
        ("y ~ (log(z) | g)", [("(Intercept)", "log(z)")]),
    ],
)
def test_random_term_columns(formula, columns):
    d = design(formula, small(48))
    assert [t.columns for t in d.terms] == columns


def test_terms_on_one_factor_share_a_block():
    d = design("y ~ x + (1 | g) + (0 + x | g)", small(48))
    assert [t.vc_name for t in d.terms] == ["g", "g.1"]  # R's make.unique
    assert len(d.blocks) == 1
    blk = d.blocks[0]
    assert blk.columns == ("(Intercept)", "x") and blk.k == 2 and blk.terms == (0, 1)
    assert [(t.block, t.offset) for t in d.terms] == [(0, 0), (0, 1)]
    np.testing.assert_allclose(blk.Z[:, 1], small(48).x)


def order_data() -> pd.DataFrame:
    i = np.arange(60)
    return pd.DataFrame({"y": np.sin(i), "a": i % 5 + 1, "b": i // 6 + 1, "c": i // 12 + 1})


@pytest.mark.parametrize(
    "formula, order",
    [
        # names(lFormula(f, d)$reTrms$cnms), with 5, 10, 5 levels for a, b, c
        ("y ~ (1|a) + (1|b) + (1|c)", ["b", "c", "a"]),  # rev(order(nl)): ties reversed
        ("y ~ (1|b) + (1|a) + (1|c)", ["b", "a", "c"]),  # already non-increasing: kept
        ("y ~ (1|a) + (1|c) + (1|b)", ["b", "c", "a"]),
        ("y ~ (1|c) + (1|a)", ["c", "a"]),
    ],
)
def test_lme4_term_order(formula, order):
    d = design(formula, order_data())
    assert [t.group for t in d.terms] == order
    nlev = [b.nlev for b in d.blocks]
    assert nlev == sorted(nlev, reverse=True)  # engine blocks: largest first


# ---- grouping factors: levels as lme4 makes them --------------------------------------------------------


@pytest.mark.parametrize(
    "values, levels, first_rows",
    [
        ([3, 1, 2, 10] * 6, ["1", "2", "3", "10"], ["3", "1", "2", "10"]),  # numeric order, not string order
        (np.array([3, 1, 2, 10] * 6, dtype=np.uint8), ["1", "2", "3", "10"], ["3", "1", "2", "10"]),
        (pd.array([3, 1, 2, 10] * 6, dtype="Int64"), ["1", "2", "3", "10"], ["3", "1", "2", "10"]),
        # R's as.character of doubles: 15 significant digits, scientific when shorter
        ([1.5, 0.1 + 0.2, 1e5, 1e-20] * 6, ["1e-20", "0.3", "1.5", "1e+05"], ["1.5", "0.3", "1e+05", "1e-20"]),
        ([2.0, 1.0, 3.0, 10.0] * 6, ["1", "2", "3", "10"], ["2", "1", "3", "10"]),
        # strings sort by code point, as R does in the C locale (R's ICU collation would give a, b, B, c)
        (pd.Series(["b", "B", "a", "c"] * 6, dtype=object), ["B", "a", "b", "c"], ["b", "B", "a", "c"]),
        (pd.Series(["b", "a", "c", "d"] * 6, dtype="str"), ["a", "b", "c", "d"], ["b", "a", "c", "d"]),
        (pd.Series(["b", "a", "c", "d"] * 6, dtype="string"), ["a", "b", "c", "d"], ["b", "a", "c", "d"]),
        (pd.Series(["10", "9", "1", "2"] * 6), ["1", "10", "2", "9"], ["10", "9", "1", "2"]),
        (
            pd.Categorical(["b", "a", "c", "d"] * 6, categories=["d", "c", "b", "a", "zz"]),
            ["d", "c", "b", "a"],  # category order kept, unused level dropped
            ["b", "a", "c", "d"],
        ),
        (pd.Categorical([2, 1, 3, 4] * 6, categories=[4, 3, 2, 1]), ["4", "3", "2", "1"], ["2", "1", "3", "4"]),
        ([True, False, False, True] * 6, ["FALSE", "TRUE"], ["TRUE", "FALSE", "FALSE", "TRUE"]),
        (
            pd.array([True, False, False, True] * 6, dtype="boolean"),
            ["FALSE", "TRUE"],
            ["TRUE", "FALSE", "FALSE", "TRUE"],
        ),
    ],
    ids=["int", "uint8", "Int64", "float-labels", "float-integral", "object", "str", "string", "numeric-strings",
         "categorical", "int-categorical", "bool", "boolean"],
)
def test_grouping_levels_any_dtype(values, levels, first_rows):
    df = small(24).assign(g=values)
    d = design("y ~ x + (1 | g)", df)
    blk = d.blocks[0]
    assert list(blk.levels) == levels
    assert blk.codes.dtype == np.int64 and blk.codes.shape == (24,)
    assert list(np.asarray(blk.levels)[blk.codes]) == first_rows * 6  # each row carries its own level


def test_interaction_levels_of_integer_columns():
    # R: levels(lFormula(y ~ x + (1|a:b), d)$reTrms$flist[[1]]) with a = 2,10,1 and b = 5,3
    i = np.arange(24)
    df = pd.DataFrame({"y": np.sin(i), "x": np.cos(i), "a": np.array([2, 10, 1])[i % 3], "b": np.where(i < 12, 5, 3)})
    d = design("y ~ x + (1 | a:b)", df)
    assert list(d.blocks[0].levels) == ["1:3", "1:5", "2:3", "2:5", "10:3", "10:5"]
    labels = np.asarray(d.blocks[0].levels)[d.blocks[0].codes]
    assert list(labels) == [f"{a}:{b}" for a, b in zip(df.a, df.b)]


def test_nested_levels_and_names():
    # R: names(flist) "b:a" "a"; levels of b:a "3:1" "3:2" "3:10" "5:1" "5:2" "5:10"
    i = np.arange(24)
    df = pd.DataFrame({"y": np.sin(i), "x": np.cos(i), "a": np.array([2, 10, 1])[i % 3], "b": np.where(i < 12, 5, 3)})
    d = design("y ~ x + (1 | a/b)", df)
    assert [t.group for t in d.terms] == ["b:a", "a"]
    assert list(d.blocks[0].levels) == ["3:1", "3:2", "3:10", "5:1", "5:2", "5:10"]
    assert d.blocks[0].factors == ("b", "a")


def test_interaction_keeps_only_observed_combinations():
    df = small(24).assign(a=np.repeat(list("pqr"), 8), b=np.tile(list("uvwx"), 6))
    d = design("y ~ (1 | a:b)", df)
    assert list(d.blocks[0].levels) == [f"{a}:{b}" for a in "pqr" for b in "uvwx"]
    d = design("y ~ (1 | a:b)", df.iloc[:12])  # p:u..p:x, q:u..q:x only
    assert list(d.blocks[0].levels) == [f"{a}:{b}" for a in "pq" for b in "uvwx"]


# ---- missing values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [None, np.nan, pd.NA], ids=["None", "nan", "NA"])
@pytest.mark.parametrize(
    "column, dtype",
    [
        ("y", "float64"),
        ("y", "Float64"),
        ("x", "object"),
        ("x", "Float64"),
        ("f", "object"),
        ("f", "str"),
        ("f", "string"),
        ("f", "category"),
        ("g", "object"),
        ("g", "str"),
        ("g", "string"),
        ("g", "category"),
        ("h", "Int64"),
        ("h", "float64"),
        ("b", "boolean"),
        ("b", "object"),
    ],
)
def test_missing_values_drop_rows(column, dtype, missing):
    df = small(30).assign(b=np.arange(30) % 4 == 0)
    df = df.astype({column: dtype})
    if dtype == "float64" and missing is pd.NA:
        missing = np.nan  # a float64 column cannot hold pd.NA; pandas stores NaN
    rows = [2, 7, 11]
    df[column] = df[column].astype(object).where(~df.index.isin(rows), missing).astype(dtype)
    assert df[column].isna().sum() == 3
    formula = "y ~ x + f + b + (1 | g) + (1 | h)"
    d = design(formula, df)
    assert d.n_dropped_na == 3
    assert d.n == 27 and d.X.shape[0] == 27 and d.blocks[0].codes.shape == (27,)
    assert list(d.rows) == [r for r in range(30) if r not in rows]
    full = design(formula, small(30).assign(b=np.arange(30) % 4 == 0).drop(index=rows))
    np.testing.assert_allclose(d.X, full.X)
    np.testing.assert_allclose(d.y, full.y)
    assert d.fixef_names == full.fixef_names


def test_missing_values_in_unused_columns_are_ignored():
    df = small().assign(other=np.nan, other_str=None)
    d = design("y ~ x + (1 | g)", df)
    assert d.n_dropped_na == 0 and d.n == 24


def test_level_seen_only_in_dropped_rows_is_dropped():
    # R's model.frame(drop.unused.levels = TRUE): 'a' only occurs where y is missing
    df = small(24)
    values = np.where(np.arange(24) < 2, "a", np.array(["b", "c"])[np.arange(24) % 2])
    df["f"] = pd.Categorical(values, categories=["a", "b", "c"])
    df.loc[[0, 1], "y"] = np.nan
    d = design("y ~ f + (1 | g)", df)
    assert d.fixef_names == ("(Intercept)", "fc")  # reference is now 'b'
    df["g"] = np.where(np.arange(24) < 2, "only-dropped", df["g"])
    assert "only-dropped" not in list(design("y ~ f + (1 | g)", df).blocks[0].levels)


def test_nan_made_by_a_transform_drops_the_row():
    # R: lFormula(y ~ log(x) + (1|g)) with one x < 0 warns "NaNs produced" and uses n - 1 rows
    df = small(40)
    df.loc[3, "z"] = -1.0
    d = design("y ~ log(z) + (1 | g)", df)
    assert d.n == 39 and d.n_dropped_na == 1 and 3 not in d.rows


def test_transforms_see_all_rows_as_in_r():
    # R's model.frame evaluates scale(x) before dropping rows missing y (checked against lme4)
    df = small(24)
    df.loc[[0, 1], "y"] = np.nan
    d = design("y ~ scale(x) + center(z) + (1 | g)", df)
    np.testing.assert_allclose(d.X[:, 1], ((df.x - df.x.mean()) / df.x.std())[2:])
    np.testing.assert_allclose(d.X[:, 2], (df.z - df.z.mean())[2:])
    # ... and skip missing x itself (scale() uses na.rm)
    df = small(24)
    df.loc[[0, 1], "x"] = np.nan
    d = design("y ~ scale(x) + (1 | g)", df)
    kept = df.x[2:]
    np.testing.assert_allclose(d.X[:, 1], (kept - kept.mean()) / kept.std())


def test_all_rows_missing():
    df = small().assign(y=np.nan)
    with pytest.raises(DataError, match="no complete rows"):
        build_design("y ~ x + (1 | g)", df)


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "formula, name, close",
    [
        ("y ~ xx + (1 | g)", "xx", ["x"]),
        ("Y ~ x + (1 | g)", "Y", ["y"]),
        ("y ~ x + (1 | gg)", "gg", ["g"]),
        ("y ~ x + (1 | G)", "G", ["g"]),
        ("y ~ x + (1 | g:hh)", "hh", ["h"]),
        ("y ~ x + (1 | g/hh)", "hh", ["h"]),
        ("y ~ x + (xz | g)", "xz", ["z", "x"]),
        ("y ~ log(xq) + (1 | g)", "xq", ["x"]),
        ("log(yy) ~ x + (1 | g)", "yy", ["y"]),
        ("y ~ I(x + zz^2) + (1 | g)", "zz", ["z"]),
        ("y ~ x + `q r` + (1 | g)", "q r", []),
        ("y ~ x.z + (1 | g)", "x.z", []),
        ("y ~ log(x.z) + (1 | g)", "x.z", []),
        ("y ~ Sepal.Length + (1 | g)", "Sepal.Length", []),
        ("y ~ (x || gg)", "gg", ["g"]),
    ],
)
def test_unknown_columns(formula, name, close):
    with pytest.raises(UnknownColumnError) as info:
        build_design(formula, small())
    err = info.value
    assert err.name == name
    assert err.close[: len(close)] == close
    assert isinstance(err, KeyError) and isinstance(err, JaxmlmError)
    assert repr(name) in str(err)
    if close:
        assert "Did you mean" in str(err)


@pytest.mark.parametrize("formula", ["y ~ foo(x) + (1 | g)", "y ~ x + (sqr(x) | g)", "y ~ lg(x) + (1 | g)"])
def test_unknown_function(formula):
    with pytest.raises(FormulaError, match="unknown function"):
        build_design(formula, small())


@pytest.mark.parametrize(
    "formula, position",
    [
        ("y ~ x ** + (1 | g)", 6),
        ("y ~ x +* z + (1 | g)", 6),
        ("y ~ x + (1 | g) + 'x'", 18),
        ("y ~ x + (1 | g) + {x", 18),
        ("y ~ x + (x ** | g)", 11),
        ("y ~ x + + (1 | g)", 6),
    ],
)
def test_formulaic_syntax_errors_are_readable(formula, position):
    with pytest.raises(FormulaSyntaxError) as info:
        build_design(formula, small())
    msg = str(info.value)
    assert "\x1b" not in msg and "⧛" not in msg and "⧚" not in msg
    assert info.value.position == position
    assert msg.splitlines()[-2:] == ["    " + formula, "    " + " " * position + "^"]


def test_python_syntax_error_is_wrapped():
    with pytest.raises(FormulaSyntaxError, match="cannot parse"):
        build_design("y ~ x + (1 | g) + {x+}", small())


def test_no_random_term():
    with pytest.raises(FormulaError, match="no random-effects term"):
        build_design("y ~ x", small())


# lme4: checkNlevels (gtr.1, then nobs.vs.nlev over all factors), then checkZdims per term.
@pytest.mark.parametrize(
    "formula, data, message",
    [
        ("y ~ x + (1 | g)", lambda d: d.assign(g="a"), "grouping factors must have > 1 sampled level"),
        (
            "y ~ x + (1 | g)",
            lambda d: d.assign(g=np.where(np.arange(len(d)) == 0, "a", None)),
            "grouping factors must have > 1 sampled level",
        ),
        (
            "y ~ x + (1 | g)",
            lambda d: d.assign(g=np.arange(len(d))),
            "number of levels of each grouping factor must be < number of observations (problems: g)",
        ),
        (
            "y ~ x + (1 | g) + (1 | id)",
            lambda d: d.assign(id=np.arange(len(d))),
            "number of levels of each grouping factor must be < number of observations (problems: id)",
        ),
        (
            "y ~ x + (x | g)",
            lambda d: d.assign(g=np.arange(len(d)) % (len(d) // 2)),
            "number of observations (=40) <= number of random effects (=40) for term (x | g); the random-effects "
            "parameters and the residual variance (or scale parameter) are probably unidentifiable",
        ),
        (
            # gtr.1 is checked before the others, whatever the term order
            "y ~ x + (x | g) + (1 | one)",
            lambda d: d.assign(g=np.arange(len(d)) % (len(d) // 2), one=1),
            "grouping factors must have > 1 sampled level",
        ),
    ],
)
def test_grouping_errors(formula, data, message):
    df = data(small(40, 8))
    with pytest.raises(GroupingError) as info:
        build_design(formula, df)
    assert message in str(info.value)
    assert isinstance(info.value, DataError)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | g) + (0 + x | g)", "y ~ x + (x || g)"])
def test_uncorrelated_terms_pass_the_random_effects_count(formula):
    # lme4 counts per term: 20 levels x 1 < 40 observations, where (x | g) (40) is refused
    df = small(40).assign(g=np.arange(40) % 20)
    d = design(formula, df)
    assert d.blocks[0].nlev == 20


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(list("ab") * 12, dtype=object),
        pd.Series(list("ab") * 12, dtype="str"),
        pd.Series(list("ab") * 12, dtype="string"),
        pd.Categorical([1.0, 2.0] * 12),
        pd.Series(pd.date_range("2020-01-01", periods=24)),
    ],
    ids=["object", "str", "string", "categorical", "datetime"],
)
def test_non_numeric_response(values):
    with pytest.raises(DataError, match="must be numeric"):
        build_design("y ~ x + (1 | g)", small().assign(y=values))


def test_boolean_response_is_zero_one_as_in_lme4():
    df = small().assign(y=np.arange(24) % 3 == 0)
    d = design("y ~ x + (1 | g)", df)
    np.testing.assert_array_equal(d.y, (np.arange(24) % 3 == 0).astype(float))


@pytest.mark.parametrize(
    "formula, change, fragment",
    [
        ("y ~ x + (1 | g)", lambda d: d.assign(x=np.where(np.arange(len(d)) == 4, np.inf, d.x)), "'x' (1 row"),
        ("y ~ x + (1 | g)", lambda d: d.assign(x=np.where(np.arange(len(d)) < 2, -np.inf, d.x)), "'x' (2 row"),
        ("y ~ x + (1 | g)", lambda d: d.assign(y=np.where(np.arange(len(d)) == 4, np.inf, d.y)), "response"),
        ("y ~ log(z) + (1 | g)", lambda d: d.assign(z=np.where(np.arange(len(d)) == 4, 0.0, d.z)), "'log(z)'"),
        ("log(y) ~ x + (1 | g)", lambda d: d.assign(y=np.where(np.arange(len(d)) == 4, 0.0, d.y + 5)), "response"),
        ("y ~ x + (z | g)", lambda d: d.assign(z=np.where(np.arange(len(d)) == 4, np.inf, d.z)), "'z'"),
        (
            "y ~ x + (1 | g)",
            lambda d: d.assign(x=pd.array(np.where(np.arange(len(d)) == 4, np.inf, d.x), dtype="Float64")),
            "'x'",
        ),
    ],
)
def test_infinite_values_are_refused(formula, change, fragment):
    with pytest.raises(DataError, match="infinite") as info:
        build_design(formula, change(small(40)))
    assert fragment in str(info.value)


def test_infinite_value_in_a_dropped_row_is_fine():
    df = small(40)
    df.loc[4, "x"] = np.inf
    df.loc[4, "y"] = np.nan  # R's na.omit removes the row before anything sees the Inf
    assert design("y ~ x + (1 | g)", df).n == 39


@pytest.mark.parametrize(
    "data, error, fragment",
    [
        ([[1, 2]], DataError, "DataFrame"),
        ({"y": [1.0]}, DataError, "DataFrame"),
        (np.zeros((3, 3)), DataError, "DataFrame"),
    ],
)
def test_data_must_be_a_dataframe(data, error, fragment):
    with pytest.raises(error, match=fragment):
        build_design("y ~ x + (1 | g)", data)


def test_duplicated_column_names():
    df = small()
    df = pd.concat([df, df[["x"]]], axis=1)
    with pytest.raises(DataError, match="more than once"):
        build_design("y ~ x + (1 | g)", df)


def test_two_column_response():
    with pytest.raises(FormulaError, match="glmer"):
        build_design("cbind(y, x) ~ z + (1 | g)", small())


def test_failing_transform_is_a_data_error():
    with pytest.raises(DataError, match="evaluating"):
        build_design("y ~ log(f) + (1 | g)", small())


# ---- rank deficiency ------------------------------------------------------------------------------


def rank_data() -> pd.DataFrame:
    i = np.arange(48)
    x1 = np.round(np.sin(i * 0.7) * 2, 4)
    x2 = np.round(np.cos(i * 1.9), 4)
    f = np.array(["p", "q", "r"], dtype=object)[i % 3]
    return pd.DataFrame(
        {
            "y": np.round(np.sin(i * 1.3) + 0.1 * i, 4),
            "x1": x1,
            "x2": x2,
            "x3": x1 + x2,
            "xd": x1.copy(),
            "x1b": 2 * x1,
            "z0": np.zeros(48),
            "one": np.ones(48),
            "f": f,
            "f2": pd.Series(f).map({"p": "k", "q": "m", "r": "l"}).to_numpy(),
            "a": np.array(["u", "v"], dtype=object)[i // 24],
            "b": np.array(["s", "t"], dtype=object)[i % 2],
            "g": np.array([f"g{k}" for k in i % 8], dtype=object),
        }
    )


# colnames(X) and names(attr(X, "col.dropped")) from lme4's lFormula(<f> + (1|g))
LME4_RANK = [
    ("y ~ x1 + xd", "(Intercept)|x1", "xd"),  # duplicated column: the later one goes
    ("y ~ xd + x1", "(Intercept)|xd", "x1"),
    ("y ~ x1 + x2 + x3", "(Intercept)|x1|x2", "x3"),  # sum of two earlier columns
    ("y ~ x3 + x1 + x2", "(Intercept)|x3|x1", "x2"),
    ("y ~ f + f2", "(Intercept)|fq|fr", "f2l|f2m"),  # factor confounded with another
    ("y ~ f2 + f", "(Intercept)|f2l|f2m", "fq|fr"),
    ("y ~ 0 + f + f2", "fp|fq|fr", "f2l|f2m"),
    ("y ~ x1 + z0 + x2", "(Intercept)|x1|x2", "z0"),  # all-zero column
    ("y ~ x1 + x1b", "(Intercept)|x1", "x1b"),
    ("y ~ x1 + I(2*x1) + I(x1+x2) + x2", "(Intercept)|x1|I(x1 + x2)", "I(2 * x1)|x2"),
    ("y ~ one + x1", "(Intercept)|x1", "one"),  # constant column aliased with the intercept
    ("y ~ 0 + one + x1 + f", "one|x1|fp|fq", "fr"),
    ("y ~ x1 + x2 + x3 + xd + f + f2", "(Intercept)|x1|x2|fq|fr", "x3|xd|f2l|f2m"),
]


@pytest.mark.parametrize("formula, kept, dropped", LME4_RANK)
def test_rank_deficiency_as_lme4(formula, kept, dropped):
    with pytest.warns(RankDeficiencyWarning) as rec:
        d = build_design(formula + " + (1 | g)", rank_data())
    assert list(d.fixef_names) == kept.split("|")
    assert list(d.dropped_columns) == dropped.split("|")
    assert d.X.shape[1] == len(d.fixef_names)
    assert sorted(d.fixed_columns_all) == sorted(kept.split("|") + dropped.split("|"))
    msg = str(rec[0].message)
    k = len(dropped.split("|"))
    assert msg.startswith(
        f"fixed-effect model matrix is rank deficient so dropping {k} "
        + ("column / coefficient" if k == 1 else "columns / coefficients")
    )
    assert all(name in msg for name in dropped.split("|"))


def test_rank_deficiency_from_an_empty_cell():
    df = rank_data()
    df = df[~((df.a == "v") & (df.b == "t"))]
    with pytest.warns(RankDeficiencyWarning, match="av:bt"):
        d = build_design("y ~ a*b + (1 | g)", df)
    assert d.fixef_names == ("(Intercept)", "av", "bt")


def test_full_rank_has_no_warning():
    design("y ~ x1 + x2 + f + (1 | g)", rank_data())


# ---- nothing is mutated ----------------------------------------------------------------------------


def messy() -> pd.DataFrame:
    i = np.arange(40)
    df = pd.DataFrame(
        {
            "y": np.sin(i * 1.3) + i * 0.05,
            "x": pd.array(np.cos(i), dtype="Float64"),
            "s": pd.Series(np.array(["lo", "mid", "hi"], dtype=object)[i % 3]),
            "t": pd.Series(np.array(["u", "v"])[i % 2], dtype="str"),
            "c": pd.Categorical(np.array(["q", "p"])[(i // 2) % 2], categories=["r", "q", "p"]),
            "b": (i % 4) == 0,
            "g": pd.Series([f"g{k}" for k in i % 8], dtype="string"),
            "h": (i // 5) + 1,
        }
    )
    df.index = pd.Index(np.arange(100, 140), name="row")
    df.loc[101, "y"] = np.nan
    df.loc[103, "s"] = None
    df.loc[105, "g"] = pd.NA
    df.loc[107, "c"] = np.nan
    df.loc[109, "x"] = pd.NA
    return df


def assert_unchanged(before: pd.DataFrame, after: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(after, before, check_exact=True)
    assert list(after.dtypes) == list(before.dtypes)
    assert list(after["c"].cat.categories) == ["r", "q", "p"]


def test_build_design_does_not_mutate_data():
    df = messy()
    before = copy.deepcopy(df)
    d = design("log(y + 3) ~ scale(x) + s + t + c + b + (1 + x | g) + (1 | h)", df)
    assert_unchanged(before, df)
    assert d.n_dropped_na == 5
    assert list(d.rows) == [r for r in range(100, 140) if r not in (101, 103, 105, 107, 109)]


def test_lmer_does_not_mutate_data():
    df = messy()
    before = copy.deepcopy(df)
    m = jaxmlm.lmer("y ~ x + s + b + (1 | g)", df)
    assert_unchanged(before, df)
    assert m.nobs == 36 and m.n_dropped == 4


# ---- lme4's numbers through lmer (the few end-to-end checks of this stage) -------------------------


def lme4_data() -> pd.DataFrame:
    i = np.arange(60)
    g = np.array([f"g{k:02d}" for k in (i * 7) % 10], dtype=object)
    x = np.round(np.sin(i * 1.3) * 2 + 5, 4)
    z = np.round(1.5 + np.cos(i * 0.7), 4)
    s = np.array(["lo", "mid", "hi"], dtype=object)[(i * 5) % 3]
    b = ((i * 3) % 7) < 3
    u = np.round(np.sin(np.arange(10) * 2.1), 4)
    y = np.round(10 + 0.5 * x + (s == "hi") * 1.0 - 0.3 * np.log(z) + u[(i * 7) % 10] + 0.8 * np.sin(i * i * 0.37), 4)
    y[3] = np.nan
    s[5] = None
    g[8] = None
    x[11] = np.nan
    return pd.DataFrame({"y": y, "x": x, "z": z, "s": s, "b": b, "g": g})


# lmer(<formula>, read.csv(...), REML) in lme4 1.1-31: fixef, REML criterion or deviance, nobs, theta
LME4_FITS = [
    (
        "y ~ scale(x) + s + log(z) + (1 | g)",
        True,
        {
            "(Intercept)": 13.60490524,
            "scale(x)": 0.6895194991,
            "slo": -0.9890416852,
            "smid": -0.8959689122,
            "log(z)": -0.4529596656,
        },
        122.4907914190,
        56,
        [1.267453255],
    ),
    (
        "y ~ x + b + (1 | g)",
        False,
        {"(Intercept)": 10.49923145, "x": 0.4867334896, "bTRUE": -0.1403356275},
        150.1573186285,
        57,
        [0.9502869037],
    ),
    (
        "y ~ x + x2 + s + (1 | g)",
        True,
        {"(Intercept)": 11.03815238, "x": 0.4924588534, "slo": -1.030898602, "smid": -0.8953650646},
        129.8787109891,
        56,
        [1.311145538],
    ),
]


@pytest.mark.parametrize("formula, reml, fixef, criterion, nobs, theta", LME4_FITS)
def test_lmer_matches_lme4_with_messy_data(formula, reml, fixef, criterion, nobs, theta):
    df = lme4_data()
    df["x2"] = 2 * df["x"]
    df["g"] = df["g"].astype("str")  # pandas' string dtype with a missing value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        m = jaxmlm.lmer(formula, df, REML=reml)
    assert list(m.fixef.index) == list(fixef)
    np.testing.assert_allclose(m.fixef.to_numpy(), list(fixef.values()), rtol=1e-6, atol=1e-7)
    assert m.objective == pytest.approx(criterion, abs=1e-6)
    assert m.nobs == nobs and m.n_dropped == 60 - nobs
    np.testing.assert_allclose(m.theta, theta, atol=1e-5)


def test_saved_spec_rebuilds_the_fixed_columns():
    # What predict(newdata) relies on: the frozen spec (with its scale() state) plus FORMULA_CONTEXT.
    from jaxmlm._formulaic import FORMULA_CONTEXT

    df = small(24)
    d = design("y ~ scale(x) + sqrt(z) + f + (1 | g)", df)
    X = d.fixed_spec.get_model_matrix(df.iloc[:5], context=FORMULA_CONTEXT)
    np.testing.assert_allclose(np.asarray(X, dtype=float), d.X[:5])
    assert [r_column_name(c) for c in X.columns] == list(d.fixef_names)


# ---- the fast path (plain columns, no formulaic) builds what formulaic builds --------------------------

from conftest import CASES, case_data  # noqa: E402
from jaxmlm._frontend import _fast_design  # noqa: E402
from jaxmlm._formulaic import formulaic_design as _formulaic_design  # noqa: E402
from jaxmlm._formula import parse_formula  # noqa: E402


def _assert_same_design(a: Design, b: Design) -> None:
    """Every field later stages read, exactly (values, names, levels, rows, model frame, specs)."""
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.X, b.X)
    assert (a.fixef_names, a.dropped_columns, a.fixed_columns_all) == (b.fixef_names, b.dropped_columns, b.fixed_columns_all)
    assert a.n_dropped_na == b.n_dropped_na
    pd.testing.assert_index_equal(a.rows, b.rows)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert [(t.group, t.vc_name, t.columns, t.block, t.offset) for t in a.terms] == [
        (t.group, t.vc_name, t.columns, t.block, t.offset) for t in b.terms
    ]
    assert len(a.blocks) == len(b.blocks)
    for ba, bb in zip(a.blocks, b.blocks):
        assert (ba.group, ba.columns, ba.terms, ba.factors) == (bb.group, bb.columns, bb.terms, bb.factors)
        np.testing.assert_array_equal(ba.Z, bb.Z)
        np.testing.assert_array_equal(ba.codes, bb.codes)
        pd.testing.assert_index_equal(ba.levels, bb.levels)
    assert a.fixed_spec.column_names == b.fixed_spec.column_names
    for ta, tb in zip(a.terms, b.terms):
        assert ta.spec.column_names == tb.spec.column_names


def _both_ways(formula: str, data: pd.DataFrame, fast_expected: bool = True):
    parsed = parse_formula(formula)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        fast = _fast_design(parsed, data)
        slow = _formulaic_design(parsed, data)
    assert (fast is not None) == fast_expected, "fast path taken" if fast is not None else "fast path not taken"
    if fast is not None:
        _assert_same_design(fast, slow)
    return fast


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_fast_path_matches_formulaic_on_reference_cases(case_id):
    c = CASES[case_id]
    # Interactions and transforms take the general path; every other case must match it exactly.
    general = {"factors_na", "hsb_ses_sector", "sleepstudy_log"}
    _both_ways(c["formula"], case_data(c), fast_expected=case_id not in general)


def _messy(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    df = pd.DataFrame(
        {
            "y": rng.standard_normal(n),
            "x": rng.standard_normal(n),
            "k": rng.integers(0, 5, n),  # an int covariate
            "s": rng.choice(["b", "a", "c"], n),  # strings → sorted levels
            "cat": pd.Categorical(rng.choice(["lo", "mid", "hi", "unused"][:3], n), categories=["lo", "mid", "hi", "unused"]),
            "g": rng.integers(100, 112, n) * 3,  # int groups with gaps
            "h": pd.Categorical(rng.choice(list("pqrs"), n), categories=list("srqpz")),
            "w": rng.choice(["u", "v"], n),
        },
        index=np.arange(n)[::-1] * 10,
    )
    df.loc[df.index[3], "x"] = np.nan
    df.loc[df.index[5], "y"] = np.nan
    df.loc[df.index[8], "s"] = None
    df["h"] = df["h"].where(df["x"].notna() | True)
    return df


@pytest.mark.parametrize(
    "formula",
    [
        "y ~ x + (1 | g)",
        "y ~ x + k + (x | g)",
        "y ~ 0 + x + (0 + x | g) + (1 | h)",
        "y ~ x - 1 + (x - 1 | g)",
        "y ~ -1 + x + (1 | g)",
        "y ~ 1 + s + cat + x + (1 | g) + (1 | h)",
        "y ~ cat + (1 + x | h)",
        "y ~ s + (1 | g:h)",
        "y ~ x + (1 | h/g)",
        "y ~ x + (1 | w) + (x || g)",
        "y ~ 1 + (1 | g) + (0 + k | g)",
        "y ~ k + x + (1 | k)",  # a column both a covariate and a grouping factor
    ],
)
def test_fast_path_matches_formulaic(formula):
    _both_ways(formula, _messy())


def test_fast_path_drops_unused_levels_and_aliased_columns_as_formulaic():
    df = _messy()
    df["x2"] = 2 * df["x"]  # aliased: dropped with a warning on both paths
    df.loc[df["cat"] == "hi", "y"] = np.nan  # level "hi" unused in the rows kept
    fast = _both_ways("y ~ x + cat + x2 + (1 | g)", df)
    assert fast.dropped_columns == ("x2",)
    assert "cathi" not in fast.fixef_names and "catmid" in fast.fixef_names


@pytest.mark.parametrize(
    "formula",
    [
        "y ~ x * k + (1 | g)",  # interaction
        "y ~ log(k + 1) + (1 | g)",  # transform
        "y ~ 0 + s + (1 | g)",  # factor without intercept: full dummy coding
        "y ~ x + (s | g)",  # factor in a random term
        "y ~ x + x + (1 | g)",  # repeated name
        "y ~ x + (1 | g) + (0 | h)",  # empty term: the general path's error
    ],
)
def test_fast_path_declines_what_needs_formulaic(formula):
    df = _messy()
    if formula.endswith("(0 | h)"):
        with pytest.raises(JaxmlmError):
            design(formula, df)
        assert _fast_design(parse_formula(formula), df) is None
        return
    _both_ways(formula, df, fast_expected=False)


def test_fast_path_errors_match():
    df = _messy()
    df.loc[df.index[0], "x"] = np.inf
    with pytest.raises(DataError, match="infinite values in 'x' \\(1 row"):
        design("y ~ x + (1 | g)", df)
    empty = _messy()
    empty["y"] = np.nan
    with pytest.raises(DataError, match="no complete rows"):
        design("y ~ x + (1 | g)", empty)


@pytest.mark.parametrize(
    "formula, columns", [("y ~ x + (1 | g)", ["y", "x", "g"]), ("y ~ log(k + 1) + (1 | g)", ["y", "k", "g"])]
)
def test_model_frame_is_a_snapshot(formula, columns):
    """Changing the data after the fit (values or columns) changes neither the design nor its model frame,
    even when the frame is first looked at after the change."""
    df = _messy()
    original = df.copy()
    d = design(formula, df)
    y_before = d.y.copy()
    df.loc[df.index[0], "y"] = 1e6
    df.loc[df.index[1], "k"] = 99
    df["x"] = -df["x"]
    df["g"] = 0
    pd.testing.assert_frame_equal(d.frame, original[columns].loc[d.rows])
    np.testing.assert_array_equal(d.y, y_before)
    assert len(d.frame) == len(d.y) == len(df) - original[columns].isna().any(axis=1).sum()


@pytest.mark.parametrize("rows", [60, 5000])  # small data's numeric columns are copied, larger data's shared
def test_a_fit_on_complete_data_keeps_its_rows_when_the_data_change_in_place(rows):
    """Values written into the data's own arrays after the fit, and columns replaced, reach neither
    the model frame, its fixed-effects spec for new data, nor a refit."""
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"y": rng.standard_normal(rows), "x": rng.standard_normal(rows),
                       "g": np.arange(rows) // 6})
    original = df.copy()
    m = jaxmlm.lmer("y ~ x + (1 | g)", df)
    df.loc[0, "y"] = 1e6
    df.loc[1, "x"] = 1e6
    df.iloc[2, df.columns.get_loc("g")] = 10**6
    df["x"] = 0.0
    pd.testing.assert_frame_equal(m.design.frame, original)
    np.testing.assert_allclose(m.predict(original.iloc[:5]), jaxmlm.lmer("y ~ x + (1 | g)", original).predict(original.iloc[:5]),
                               rtol=1e-10)
    ml = m.update(REML=False)  # refitted from the model's own frame
    expected = jaxmlm.lmer("y ~ x + (1 | g)", original, REML=False)
    np.testing.assert_allclose(ml.fixef, expected.fixef, rtol=1e-9)
    assert ml.objective == pytest.approx(expected.objective, rel=1e-12)


# ---- regressions found against lme4: integers, dates, ids, mixed columns, formula type -----------------------


def int_data(n: int = 60) -> pd.DataFrame:
    """Integer columns whose products overflow their own type (R computes formulas in double)."""
    i = np.arange(n)
    return pd.DataFrame(
        {
            "y": np.sin(i * 1.3) + 0.01 * i,
            "a": (i * 37 % 201 - 100).astype(np.int8),  # -100..100: a*b overflows int8
            "b": (i % 7 + 90).astype(np.int8),
            "xi": (i * 1000 + 50000).astype(np.int32),  # xi*xi > 2**31
            "xl": (i + 1).astype(np.int64) * 10**9,  # xl**2 > 2**63
            "u": (i % 5 + 250).astype(np.uint8),
            "k": (i % 3 + 1) * 100000,  # an int column both a covariate and a grouping factor
            "g": np.array([f"g{j}" for j in i % 6], dtype=object),
        }
    )


@pytest.mark.parametrize(
    "formula, column",
    [
        ("y ~ a:b + (1 | g)", lambda d: d.a * d.b),
        ("y ~ a*b + (1 | g)", lambda d: d.a * d.b),
        ("y ~ I(xi*xi) + (1 | g)", lambda d: d.xi * d.xi),
        ("y ~ I(xl**2) + (1 | g)", lambda d: d.xl**2),
        ("y ~ I(xl^2) + (1 | g)", lambda d: d.xl**2),
        ("y ~ I(u + u) + (1 | g)", lambda d: d.u + d.u),
        ("y ~ 1 + (0 + I(xi*xi) | g)", lambda d: d.xi * d.xi),
        ("y ~ 1 + (0 + a:b | g)", lambda d: d.a * d.b),
    ],
    ids=[
        "int8-interaction", "int8-star", "int32-product", "int64-power", "int64-r-power", "uint8-sum",
        "random-product", "random-interaction",
    ],
)
def test_integer_columns_are_computed_in_double(formula, column):
    df = int_data()
    before = df.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        d = build_design(formula, df)
        floats = build_design(formula, df.astype({c: np.float64 for c in "a b xi xl u".split()}))
    expected = column(df.drop(columns="g").astype(np.float64)).to_numpy()  # R's double arithmetic
    matrix = d.X if d.terms[0].columns == ("(Intercept)",) else d.blocks[0].Z
    assert np.any(np.all(np.isclose(matrix, expected[:, None], rtol=1e-12, atol=0), axis=0))  # some column is it
    np.testing.assert_array_equal(d.X, floats.X)
    for bi, bf in zip(d.blocks, floats.blocks):
        np.testing.assert_array_equal(bi.Z, bf.Z)
    pd.testing.assert_frame_equal(df, before)


@pytest.mark.parametrize(
    "formula, names",
    [
        # R: colnames(model.matrix(y ~ factor(k), d)) with integer k = 1e5L, 2e5L, 3e5L
        ("y ~ factor(k) + (1 | g)", ["(Intercept)", "factor(k)200000", "factor(k)300000"]),
        ("y ~ C(u) + (1 | g)", ["(Intercept)", "C(u)251", "C(u)252", "C(u)253", "C(u)254"]),
        ("y ~ 1 + (0 + factor(u) | g)", [f"factor(u){v}" for v in range(250, 255)]),
        # R: a double with whole values is labelled by as.character: "factor(w)2", not "2.0"
        ("y ~ factor(w) + (1 | g)", ["(Intercept)", "factor(w)2", "factor(w)3"]),
    ],
    ids=["int-factor", "uint8-C", "random-factor", "whole-double-factor"],
)
def test_integer_factors_keep_integer_labels(formula, names):
    df = int_data().assign(w=lambda d: (np.arange(len(d)) % 3 + 1).astype(float))
    d = design(formula, df)
    assert list(d.fixef_names if names[0] == "(Intercept)" else d.terms[0].columns) == names


@pytest.mark.parametrize(
    "values, levels",
    [
        # int8 ids spanning more than the type's positive range (counting path: the shift overflowed int8)
        (np.array([-100, 100, 5, 7, -3, 0] * 10, dtype=np.int8), ["-100", "-3", "0", "5", "7", "100"]),
        # uint64 ids >= 2**63, close together (counting path) and spread out (sorting path): R's decimal text
        (
            np.array([2**63 + 5, 2**63, 2**63 + 1, 2**63 + 2, 2**63 + 3, 2**63 + 4] * 10, dtype=np.uint64),
            [str(2**63 + j) for j in range(6)],
        ),
        (
            np.array([2**64 - 1, 2**63, 1, 2**62, 7, 2**63 + 9] * 10, dtype=np.uint64),
            ["1", "7", str(2**62), str(2**63), str(2**63 + 9), str(2**64 - 1)],
        ),
        (
            np.array([2**63 - 1, -(2**63), 0, 1, 2, 3] * 10, dtype=np.int64),
            [str(-(2**63)), "0", "1", "2", "3", str(2**63 - 1)],
        ),
        # integers keep their own text, not a double's ("100000", not "1e+05")
        (np.array([1, 2, 3, 4, 5, 6] * 10) * 100000, [str(j * 100000) for j in range(1, 7)]),
    ],
    ids=["int8-wide", "uint64-high-close", "uint64-high-spread", "int64-extremes", "int-large"],
)
@pytest.mark.parametrize("formula", ["y ~ 1 + (1 | id)", "y ~ I(a * b) + (1 | id)"], ids=["fast", "formulaic"])
def test_integer_grouping_ids_of_any_width(values, levels, formula):
    d = design(formula, int_data().assign(id=values))
    assert list(d.blocks[0].levels) == levels
    assert list(np.asarray(d.blocks[0].levels)[d.blocks[0].codes]) == [str(v) for v in values]


def test_integer_level_labels_kept_between_designs_follow_the_values():
    """Integer levels' labels are kept between designs (jaxmlm._design._labels): the same ids
    give the same labels, other ids or another width their own, and a label index a user
    renames (a design's, or ranef's) is a copy, not the one kept."""
    base = int_data()
    ids = np.array([7, 8, 9] * (len(base) // 3) + [7] * (len(base) % 3))
    first = design("y ~ 1 + (1 | id)", base.assign(id=ids))
    again = design("y ~ 1 + (1 | id)", base.assign(id=ids.astype(np.int32)))
    other = design("y ~ 1 + (1 | id)", base.assign(id=ids + 1))
    assert list(first.blocks[0].levels) == list(again.blocks[0].levels) == ["7", "8", "9"]
    assert list(other.blocks[0].levels) == ["8", "9", "10"]
    m = jaxmlm.lmer("y ~ 1 + (1 | id)", base.assign(id=ids))
    m.ranef["id"].index.name = "renamed"
    first.blocks[0].levels.name = "renamed too"  # (a user could reach it)
    assert design("y ~ 1 + (1 | id)", base.assign(id=ids)).blocks[0].levels.name is None


def test_integer_grouping_column_also_in_a_transform_keeps_its_labels():
    d = design("y ~ I(k * k) + (1 | k)", int_data())
    assert list(d.blocks[0].levels) == ["100000", "200000", "300000"]
    np.testing.assert_array_equal(d.X[:, 1], int_data().k.to_numpy(dtype=float) ** 2)


@pytest.mark.parametrize(
    "values, levels, first_rows",
    [
        # R: levels(factor(c(0.1 + 0.2, 0.3, 2, 1.5))) is "0.3" "1.5" "2": one level per as.character label
        ([0.1 + 0.2, 0.3, 2.0, 1.5] * 6, ["0.3", "1.5", "2"], ["0.3", "0.3", "2", "1.5"]),
        # an object column holding int 1 and str "1" is R's character column c("1", "1", "2", "b")
        (pd.Series([1, "1", 2, "b"] * 6, dtype=object), ["1", "2", "b"], ["1", "1", "2", "b"]),
        (pd.Series([1.0, "1", 2, "b"] * 6, dtype=object), ["1", "2", "b"], ["1", "1", "2", "b"]),
        (pd.Categorical([1, "1", 2, "b"] * 6, categories=["b", 1, "1", 2]), ["b", "1", "2"], ["1", "1", "2", "b"]),
    ],
    ids=["float-same-label", "object-int-and-str", "object-float-and-str", "categorical-int-and-str"],
)
def test_grouping_values_with_one_label_are_one_level(values, levels, first_rows):
    df = small(24).assign(g=values)
    d = design("y ~ x + (1 | g)", df)
    blk = d.blocks[0]
    assert list(blk.levels) == levels
    assert list(np.asarray(blk.levels)[blk.codes]) == first_rows * 6
    _both_ways("y ~ x + (1 | g)", df)


DATES = pd.Series(pd.date_range("2020-01-01", periods=24, freq="D"))
SPANS = pd.Series(pd.timedelta_range("0D", periods=24, freq="D"))


@pytest.mark.parametrize(
    "formula, column, what",
    [
        ("y ~ t + (1 | g)", DATES, "dates"),
        ("y ~ t + (1 | g)", pd.Series(pd.date_range("2020-01-01", periods=24, freq="h", tz="UTC")), "dates"),
        ("y ~ t + (1 | g)", SPANS, "time spans"),
        ("y ~ x:t + (1 | g)", DATES, "dates"),
        ("y ~ x + (t | g)", DATES, "dates"),
        ("y ~ x + (0 + t | g)", SPANS, "time spans"),
        ("y ~ t + (1 | g)", pd.Series([d.date() for d in DATES], dtype=object), "dates"),
        ("y ~ t + (1 | t)", DATES, "dates"),  # a predictor and a grouping factor: the predictor is refused
    ],
    ids=["datetime64", "datetime-tz", "timedelta64", "interaction", "random-slope", "random-timedelta",
         "date-objects", "also-grouping"],
)
def test_date_predictors_are_refused(formula, column, what):
    # lme4 fits one numeric slope for a Date/difftime; as a factor it would be one dummy per date
    df = small(24).assign(t=column)
    with pytest.raises(DataError, match=f"column 't' in the .* holds {what}.*dt.days"):
        build_design(formula, df)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(np.repeat(pd.date_range("2020-01-01", periods=6, freq="D").to_numpy(), 4)),
        pd.Series(np.repeat(pd.timedelta_range("1D", periods=6, freq="D").to_numpy(), 4)),
    ],
    ids=["datetime", "timedelta"],
)
@pytest.mark.parametrize("formula", ["y ~ x + (1 | t)", "y ~ I(x * 2) + (x | t)"], ids=["fast", "formulaic"])
def test_date_grouping_factor_is_fine(column, formula):
    d = design(formula, small(24).assign(t=column))
    assert list(d.blocks[0].levels) == [str(v) for v in column.unique()]  # labelled as before


@pytest.mark.parametrize(
    "values, shown, names",
    [
        (pd.Series([1, 2, "3a", 4] * 6, dtype=object), "'3a'", ["m2", "m3a", "m4"]),
        (pd.Series([1.5, "n/a", 2.5, "?"] * 6, dtype=object), "'n/a', '\\?'", ["m2.5", "m?", "mn/a"]),
        (pd.Series([1, 2, "3", None] * 6, dtype=object), "'3'", ["m2", "m3"]),
    ],
    ids=["int-and-text", "float-and-text", "numeric-string"],
)
def test_predictor_mixing_numbers_and_text_warns(values, shown, names):
    df = small(24).assign(m=values)
    with pytest.warns(DataWarning, match=rf"column 'm' mixes numbers .*\({shown}\).*pd.to_numeric"):
        d = build_design("y ~ m + (1 | g)", df)
    assert list(d.fixef_names) == ["(Intercept)", *names]  # still a factor, as R reads such a column (text)
    with pytest.warns(DataWarning):
        _both_ways("y ~ m + (1 | g)", df)
    with pytest.warns(DataWarning):  # the general path too, e.g. in a random-effects term
        build_design("y ~ x + (0 + m | f)", df)


def test_mixed_column_as_grouping_factor_or_all_text_does_not_warn():
    df = small(24).assign(m=pd.Series([1, 2, "3a", 4] * 6, dtype=object))
    design("y ~ x + (1 | m)", df)  # fails on any warning
    design("y ~ f + (1 | g)", df)


@pytest.mark.parametrize("formula", [None, 3, 2.5, ["y ~ x + (1 | g)"], b"y ~ x + (1 | g)"])
@pytest.mark.parametrize("entry", ["build_design", "lmer"])
def test_formula_must_be_a_string(formula, entry):
    call = build_design if entry == "build_design" else jaxmlm.lmer
    with pytest.raises(FormulaError, match=r"formula must be a string such as 'y ~ x \+ \(1 \| g\)', got"):
        call(formula, small())


@pytest.mark.parametrize("dtype", [object, "str", "string"])
def test_text_group_ids_are_factors_with_sorted_levels_as_a_categorical(dtype):
    """Group ids read as text (object, pandas' str or string dtype; missing values, unicode,
    an empty string) are coded as the Categorical with sorted levels: same codes and labels,
    a level whose rows all drop out (missing response) dropped as R's droplevels."""
    rng = np.random.default_rng(3)
    ids = np.array(["b", "a", "Z", "é", "", "a10", "a2"], dtype=object)[rng.integers(0, 7, 70)]
    ids[[3, 40]] = None
    y = rng.normal(size=70)
    y[ids == "Z"] = np.nan
    d = pd.DataFrame({"y": y, "x": rng.normal(size=70), "g": pd.Series(ids, dtype=dtype)})
    ref = d.copy()
    ref["g"] = pd.Categorical(ids, categories=sorted({v for v in ids if v is not None}))
    a = build_design("y ~ x + (1 | g)", d)
    b = build_design("y ~ x + (1 | g)", ref)
    kept = sorted({v for v in ids if v is not None} - {"Z"})
    assert list(a.blocks[0].levels) == list(b.blocks[0].levels) == kept
    assert np.array_equal(a.blocks[0].codes, b.blocks[0].codes)
    assert a.n == b.n == int(np.sum((ids != None) & (ids != "Z")))  # noqa: E711
    new = pd.DataFrame({"x": [0.5, -1.0], "g": pd.Series(["a", "b"], dtype=dtype)})
    ma, mb = jaxmlm.lmer("y ~ x + (1 | g)", d), jaxmlm.lmer("y ~ x + (1 | g)", ref)
    np.testing.assert_allclose(ma.predict(new), mb.predict(new), rtol=1e-12)
    assert d["g"].dtype == pd.Series(ids, dtype=dtype).dtype  # the user's column is untouched

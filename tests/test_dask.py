"""Fits from data in pieces (jaxmlm/_dask.py, jaxmlm/_partitioned.py): a Dask frame or a Parquet
dataset gives the fit of the same rows held in one pandas frame, whatever the pieces."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from jaxmlm import DataError, FormulaError, GroupingError, RankDeficiencyWarning, RowsNotHeldError, UnknownColumnError

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")


def _data(seed: int = 0, n: int = 3000) -> pd.DataFrame:
    """Pupils (g, 150 levels as text) in schools (s, 25 levels) crossed with raters (r, 12 levels),
    a factor f, missing values, and a level ('solo') whose rows all sit in one piece (see _pieces)."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 25, n)
    g = s * 6 + rng.integers(0, 6, n)  # nested: each class in one school
    r = rng.integers(0, 12, n)
    x = rng.normal(size=n)
    f = rng.choice(["lo", "mid", "hi"], n)
    y = (2 + 0.5 * x + (f == "hi") + rng.normal(size=150)[g] * (1 + 0.3 * x) + rng.normal(size=25)[s]
         + 0.7 * rng.normal(size=12)[r] + rng.normal(size=n))
    df = pd.DataFrame({"y": y, "x": x, "f": f, "g": [f"c{v}" for v in g], "s": s, "r": r,
                       "w": rng.uniform(0.5, 2.0, n)})
    df.loc[rng.choice(n, 40, replace=False), "x"] = np.nan
    df.loc[rng.choice(n, 10, replace=False), "y"] = np.nan
    solo = pd.DataFrame({"y": rng.normal(size=6) + 2, "x": rng.normal(size=6), "f": "lo", "g": "solo", "s": 3,
                         "r": 5, "w": 1.0})
    return pd.concat([df, solo], ignore_index=True)


def _split(df: pd.DataFrame, k: int) -> list[pd.DataFrame]:
    cuts = np.linspace(0, len(df), k + 1).astype(int)
    return [df.iloc[a:b] for a, b in zip(cuts, cuts[1:])]


def _pieces(df: pd.DataFrame, k: int, seed: int):
    """``df`` shuffled into ``k`` partitions, the 'solo' level's rows all in one of them."""
    rng = np.random.default_rng(seed)
    solo = df[df.g == "solo"]
    rest = df[df.g != "solo"].iloc[rng.permutation(int((df.g != "solo").sum()))]
    parts = _split(rest, k)
    j = int(rng.integers(k))
    parts[j] = pd.concat([parts[j], solo])
    return dd.from_delayed([dask.delayed(p) for p in parts], meta=df.iloc[:0], verify_meta=False)


FORMULAS = [
    "y ~ x + f + (1 + x | g)",  # one factor, correlated slopes, a factor in the fixed part
    "y ~ x + (1 | s/g)",  # nested
    "y ~ x * f + (1 | g) + (1 | r)",  # crossed, an interaction
]


def _same(m, md, rel: float = 1e-9, se: float = 1e-8) -> None:
    assert md.nobs == m.nobs and md.n_dropped == m.n_dropped
    assert abs(md.objective - m.objective) <= rel * abs(m.objective)
    assert list(md.fixef.index) == list(m.fixef.index)
    assert np.max(np.abs((md.fixef - m.fixef) / m.se)) <= se
    np.testing.assert_allclose(md.se, m.se, rtol=1e-7)
    np.testing.assert_allclose(md.theta, m.theta, rtol=1e-6, atol=1e-8)
    assert md.ngroups == m.ngroups
    for g, re in m.ranef.items():
        assert list(md.ranef[g].index) == list(re.index)
        np.testing.assert_allclose(md.ranef[g].to_numpy(), re.to_numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("k", [1, 7, 64])
def test_pieces_give_the_pandas_fit(formula, k):
    df = _data()
    m = jaxmlm.lmer(formula, df)
    for REML in (True, False):
        ref = m if REML else jaxmlm.lmer(formula, df, REML=False)
        _same(ref, jaxmlm.lmer(formula, _pieces(df, k, seed=k), REML=REML))


def test_weights_offset_and_transforms():
    df = _data(1)
    df["o"] = 0.1 * df["s"]
    formula = "y ~ log(w) + I(x**2) + offset(0.5 * x) + (1 | g)"
    m = jaxmlm.lmer(formula, df, weights="w", offset="o")
    md = jaxmlm.lmer(formula, _pieces(df, 5, seed=3), weights="w", offset="o")
    _same(m, md)
    np.testing.assert_allclose(md.predict(df.head(20)), m.predict(df.head(20)), rtol=1e-9, atol=1e-9)


def test_categorical_columns_keep_their_level_order():
    df = _data(2)
    df["f"] = pd.Categorical(df["f"], categories=["mid", "hi", "lo", "unused"])
    m = jaxmlm.lmer("y ~ x + f + (1 | g)", df)
    md = jaxmlm.lmer("y ~ x + f + (1 | g)", dd.from_pandas(df, npartitions=6))
    assert list(m.fixef.index) == ["(Intercept)", "x", "fhi", "flo"]
    _same(m, md)


@pytest.mark.parametrize("formula, dropped", [
    ("y ~ x + x2 + (1 | g)", "x2"),
    ("y ~ tiny + x + big + (1 | g)", "big"),  # units far apart: the test is on the correlation scale
    ("y ~ x + xr + (1 | g)", "xr"),  # nearly aliased: the statistics are made again without xr
    ("y ~ x + x32 + (1 | g)", "x32"),
])
def test_aliased_columns_are_dropped_as_in_memory(formula, dropped):
    df = _data(3)
    df["x2"] = 2 * df["x"] - 1
    df["big"] = 1e6 * df["x"] + 3e5
    df["tiny"] = 1e-6 * df["x"] + 1e-6 * np.random.default_rng(0).normal(size=len(df))  # not aliased
    df["xr"] = df["x"].round(9)
    df["x32"] = df["x"].astype(np.float32).astype(float)
    with pytest.warns(RankDeficiencyWarning, match=dropped):
        m = jaxmlm.lmer(formula, df)
    with pytest.warns(RankDeficiencyWarning, match=dropped):
        md = jaxmlm.lmer(formula, _pieces(df, 7, seed=1))
    assert md.design.dropped_columns == m.design.dropped_columns == (dropped,)
    _same(m, md)


def test_pieces_with_different_categories_keep_the_level_order():
    """Pieces whose Categorical holds only its own levels (files written per subset): the levels of
    all pieces in order of appearance, as Dask's and pyarrow's concatenation gives them."""
    df = _data(12)
    df["fc"] = pd.Categorical(df["f"], categories=["mid", "lo", "hi"])
    df = df.sort_values("fc", kind="stable")
    parts = [p.assign(fc=p["fc"].cat.remove_unused_categories()) for p in _split(df, 3)]
    ddf = dd.from_delayed([dask.delayed(p) for p in parts], meta=df.iloc[:0], verify_meta=False)
    whole = ddf.compute()
    assert list(whole["fc"].cat.categories) == ["mid", "lo", "hi"]
    m = jaxmlm.lmer("y ~ x + fc + (1 | g)", whole)
    md = jaxmlm.lmer("y ~ x + fc + (1 | g)", ddf)
    assert list(md.fixef.index) == ["(Intercept)", "x", "fclo", "fchi"]
    _same(m, md)


def test_model_comparison_checks_the_rows():
    df = _data(13)
    rng = np.random.default_rng(0)
    df["z"] = rng.normal(size=len(df))  # missing in as many used rows as x, other ones
    lost = df.x.isna() & df.y.notna()
    other = rng.choice(np.flatnonzero(df.x.notna() & df.y.notna()), int(lost.sum()), replace=False)
    df.loc[df.index[other], "z"] = np.nan
    ddf = _pieces(df, 4, seed=2)
    m0, m1 = (jaxmlm.lmer(f, df, REML=False) for f in ("y ~ x + (1 | g)", "y ~ x + f + (1 | g)"))
    md0, md1 = (jaxmlm.lmer(f, ddf, REML=False) for f in ("y ~ x + (1 | g)", "y ~ x + f + (1 | g)"))
    pd.testing.assert_frame_equal(jaxmlm.anova(md0, md1), jaxmlm.anova(m0, m1), rtol=1e-8)
    mz = jaxmlm.lmer("y ~ z + f + (1 | g)", ddf, REML=False)
    assert mz.nobs == md0.nobs
    with pytest.raises(DataError, match="different rows"):
        jaxmlm.anova(md0, mz)
    other = jaxmlm.lmer("y ~ x + f + (1 | g)", _pieces(_data(14), 4, seed=2), REML=False)
    with pytest.raises(DataError, match="different rows"):
        jaxmlm.anova(md0, other)
    with pytest.raises(DataError, match="pandas frame and the other to data in pieces"):
        jaxmlm.anova(m0, md1)


def test_parquet_dataset(tmp_path):
    pytest.importorskip("pyarrow")
    df = _data(4)
    for i, part in enumerate(_split(df.sample(frac=1, random_state=0), 4)):
        part.to_parquet(tmp_path / f"part-{i}.parquet")
    m = jaxmlm.lmer("y ~ x + f + (1 + x | g)", df)
    _same(m, jaxmlm.lmer("y ~ x + f + (1 + x | g)", str(tmp_path)))
    _same(m, jaxmlm.lmer("y ~ x + f + (1 + x | g)", os.path.join(tmp_path, "part-*.parquet")))


def test_summary_and_row_free_inference():
    df = _data(5)
    m = jaxmlm.lmer("y ~ x + (1 | s/g)", df)
    md = jaxmlm.lmer("y ~ x + (1 | s/g)", _pieces(df, 7, seed=2))
    text = md.summary()
    assert "Scaled residuals: not computed" in text and f"Number of obs: {m.nobs}" in text
    pd.testing.assert_frame_equal(md.coef_table(), m.coef_table(), rtol=1e-6)
    pd.testing.assert_frame_equal(md.confint(method="Wald"), m.confint(method="Wald"), rtol=1e-7)
    pd.testing.assert_frame_equal(md.variance_components(), m.variance_components(), rtol=1e-6)


@pytest.mark.parametrize("use", [
    lambda m: m.fitted, lambda m: m.resid, lambda m: m.pearson_resid, lambda m: m.weights, lambda m: m.predict(), lambda m: m.simulate(2), lambda m: m.ranova(),
    lambda m: m.anova(), lambda m: m.update(REML=False), lambda m: m.icc(), lambda m: jaxmlm.emmeans(m, "f"),
])
def test_results_that_need_the_rows_say_so(use):
    md = jaxmlm.lmer("y ~ x + f + (1 | g)", _pieces(_data(6), 3, seed=0))
    with pytest.raises(RowsNotHeldError, match="data in pieces"):
        use(md)


def test_partitions_that_disagree_on_a_dtype():
    df = _data(7)
    a, b = df.iloc[:1500].copy(), df.iloc[1500:].copy()
    b["x"] = b["x"].astype(str)
    ddf = dd.from_delayed([dask.delayed(a), dask.delayed(b)], meta=df.iloc[:0], verify_meta=False)
    with pytest.raises(DataError, match=r"partition 1's column 'x' has dtype (object|str)"):
        jaxmlm.lmer("y ~ x + (1 | g)", ddf)


def test_bad_paths_and_columns(tmp_path):
    pytest.importorskip("pyarrow")
    with pytest.raises(DataError, match="no file matches"):
        jaxmlm.lmer("y ~ x + (1 | g)", str(tmp_path / "nothing-*.parquet"))
    df = _data(8)
    df.to_parquet(tmp_path / "one.parquet")
    with pytest.raises(UnknownColumnError, match=r"'z'.*one\.parquet"):
        jaxmlm.lmer("y ~ z + (1 | g)", str(tmp_path / "one.parquet"))
    # files of one dataset that disagree: the first such file is named
    df.iloc[:100].drop(columns="x").to_parquet(tmp_path / "two.parquet")
    with pytest.raises(DataError, match=r"file '.*two\.parquet' of the Parquet dataset has no column\(s\) \['x'\]"):
        jaxmlm.lmer("y ~ x + (1 | g)", str(tmp_path))
    bad = df.iloc[:100].copy()
    bad["x"] = bad["x"].astype(str)
    bad.to_parquet(tmp_path / "two.parquet")
    with pytest.raises(DataError, match=r"file '.*two\.parquet' stores column 'x' as"):
        jaxmlm.lmer("y ~ x + (1 | g)", str(tmp_path))
    # a partition without a column the others have
    ddf = dd.from_delayed([dask.delayed(df), dask.delayed(df.iloc[:100].drop(columns="x"))], meta=df.iloc[:0],
                          verify_meta=False)
    with pytest.raises(DataError, match=r"partition of the data lacks column\(s\) .*'x'"):
        jaxmlm.lmer("y ~ x + (1 | g)", ddf)


def test_refused_formulas_and_sizes():
    ddf = _pieces(_data(9), 3, seed=0)
    with pytest.raises(FormulaError, match="depends on all rows"):
        jaxmlm.lmer("y ~ scale(x) + (1 | g)", ddf)
    with pytest.raises(FormulaError, match="numeric column"):
        jaxmlm.lmer("y ~ C(s) + (1 | g)", ddf)
    with pytest.raises(DataError, match="column name"):
        jaxmlm.lmer("y ~ x + (1 | g)", ddf, weights=np.ones(10))
    df = _data(9)
    df.loc[df.index[df.x.notna() & df.y.notna()][:3], "w"] = np.nan  # as in memory: an error, not a dropped row
    with pytest.raises(DataError, match="weights"):
        jaxmlm.lmer("y ~ x + (1 | g)", df, weights="w")
    with pytest.raises(DataError, match="weights must be finite"):
        jaxmlm.lmer("y ~ x + (1 | g)", _pieces(df, 3, seed=0), weights="w")
    flat = _data(9).assign(y=lambda d: 1 + 2 * d["x"])
    with pytest.raises(DataError, match="exact linear function"):
        jaxmlm.lmer("y ~ x + (1 | g)", _pieces(flat, 3, seed=0))
    negative = _data(9)
    with pytest.raises(DataError, match="the formula gives a missing value"):
        jaxmlm.lmer("np.log(y) ~ x + (1 | g)", _pieces(negative, 3, seed=0))
    small = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "g": ["a", "b", "c", "d"]})
    with pytest.raises(GroupingError, match="number of levels of each grouping factor"):
        jaxmlm.lmer("y ~ 1 + (1 | g)", dd.from_pandas(small, npartitions=2))


def test_local_cluster_with_two_worker_processes():
    distributed = pytest.importorskip("distributed")
    df = _data(10)
    m = jaxmlm.lmer("y ~ x + (1 | g) + (1 | r)", df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # distributed's port and resource notices
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) \
                as cluster, distributed.Client(cluster):
            md = jaxmlm.lmer("y ~ x + (1 | g) + (1 | r)", _pieces(df, 7, seed=5))
    _same(m, md)


def test_four_cpu_devices():
    """Partitions accumulated on four devices in turn (a fresh process: the device count is fixed at start)."""
    code = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, numpy as np, jaxmlm
        import test_dask as t
        assert len(jax.local_devices()) == 4
        df = t._data(11)
        for formula in t.FORMULAS:
            t._same(jaxmlm.lmer(formula, df), jaxmlm.lmer(formula, t._pieces(df, 7, seed=1)))
        print("ok")
    """)
    env = dict(os.environ, JAXMLM_CACHE_DIR="off")
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=here, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]

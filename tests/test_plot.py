"""jaxmlm.plot: each function draws the model's numbers (checked on the artists' data, not pixels)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

import jaxmlm  # noqa: E402
from jaxmlm import DataError, plot  # noqa: E402


@pytest.fixture(scope="module")
def sleep():
    return jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", jaxmlm.load_example("sleepstudy"))


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _offsets(ax, k=0):
    return np.asarray(ax.collections[k].get_offsets())


def test_caterpillar(sleep):
    ax = plot.caterpillar(sleep, term="Days", level=0.9)
    modes, sds = sleep.ranef["Subject"]["Days"], sleep.condsd["Subject"]["Days"]
    order = np.argsort(modes.to_numpy(), kind="stable")
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), modes.to_numpy()[order])
    segs = ax.collections[0].get_segments()  # the error bars: x ± z·condsd
    half = np.array([(s[1][0] - s[0][0]) / 2 for s in segs])
    np.testing.assert_allclose(half, stats.norm.ppf(0.95) * sds.to_numpy()[order], rtol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(v) for v in modes.index[order]]


def test_shrinkage(sleep):
    ax = plot.shrinkage(sleep)
    ols = jaxmlm.lmList("Reaction ~ Days | Subject", jaxmlm.load_example("sleepstudy"))
    np.testing.assert_allclose(_offsets(ax, 0), ols[["(Intercept)", "Days"]].to_numpy())
    np.testing.assert_allclose(_offsets(ax, 1), sleep.coef["Subject"][["(Intercept)", "Days"]].to_numpy())
    np.testing.assert_allclose(_offsets(ax, 2), [sleep.fixef[["(Intercept)", "Days"]].to_numpy()])
    one = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", jaxmlm.load_example("sleepstudy"))
    ax = plot.shrinkage(one)
    np.testing.assert_allclose(_offsets(ax, 1)[:, 0], one.coef["Subject"]["(Intercept)"].to_numpy())
    with pytest.raises(DataError, match="grouping factor"):
        plot.shrinkage(sleep, group="Days")


def test_trajectories_and_group_lines(sleep):
    ax = plot.trajectories(sleep, "Days")
    assert len(ax.lines) == 18 + 1
    d = sleep.design
    days = d.frame["Days"].to_numpy()
    mean = ax.lines[-1]
    np.testing.assert_allclose(mean.get_ydata(), (d.X @ sleep.fixef.to_numpy())[np.argsort(days, kind="stable")])
    fig = plot.group_lines(sleep, "Days", max_groups=8, ncols=4)
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 8
    first = visible[0]
    rows = np.flatnonzero(d.blocks[0].codes == 0)
    np.testing.assert_allclose(first.lines[0].get_ydata(), d.y[rows])
    np.testing.assert_allclose(first.lines[1].get_ydata(), sleep.fitted[rows])
    with pytest.raises(DataError, match="not a column"):
        plot.trajectories(sleep, "Hours")


def test_group_lines_with_each_groups_ols_line(sleep):
    fig = plot.group_lines(sleep, "Days", max_groups=5, ncols=5, ols=True)
    ols = jaxmlm.lmList("Reaction ~ Days | Subject", jaxmlm.load_example("sleepstudy"))
    for ax in fig.axes:
        a, b = ols.loc[ax.get_title()]
        line = ax.lines[2]  # data, model's fit, then the group's own OLS line over its range of x
        np.testing.assert_allclose(line.get_xdata(), [0, 9])
        np.testing.assert_allclose(line.get_ydata(), [a, a + 9 * b], rtol=1e-10)
    assert all(len(ax.lines) == 2 for ax in plot.group_lines(sleep, "Days", max_groups=2).axes)
    # a group whose x has one value gets no line; prior weights weight the line as lm's weights
    df = jaxmlm.load_example("sleepstudy")
    df = df[(df["Subject"] != "308") | (df["Days"] == 0)].assign(w=lambda d: 1.0 + (d["Days"] % 3))
    m = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", df, weights="w")
    fig = plot.group_lines(m, "Days", max_groups=2, ols=True)
    assert fig.axes[0].get_title() == "308" and len(fig.axes[0].lines) == 2
    a, b = jaxmlm.lmList("Reaction ~ Days | Subject", df, weights="w").loc["309"]
    np.testing.assert_allclose(fig.axes[1].lines[2].get_ydata(), [a, a + 9 * b], rtol=1e-10)
    with pytest.raises(DataError, match="ols must be True or False"):
        plot.group_lines(sleep, "Days", ols="yes")


def test_residuals_qq_and_density(sleep):
    ax = plot.resid_fitted(sleep)
    np.testing.assert_allclose(_offsets(ax), np.column_stack([sleep.fitted, sleep.pearson_resid]))
    ax = plot.qq(sleep)
    n = sleep.nobs
    theo = stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n)  # R's ppoints for n > 10
    np.testing.assert_allclose(_offsets(ax), np.column_stack([theo, np.sort(sleep.pearson_resid)]))
    ax = plot.qq(sleep, "Subject", term="Days")
    np.testing.assert_allclose(_offsets(ax)[:, 1], np.sort(sleep.ranef["Subject"]["Days"].to_numpy()))
    ax = plot.ranef_density(sleep, term="Days")
    sd = sleep.varcorr.query("var1 == 'Days' and var2.isna()")["sdcor"].iloc[0]
    normal = ax.lines[1]
    assert np.max(normal.get_ydata()) == pytest.approx(1 / (sd * np.sqrt(2 * np.pi)), rel=1e-3)
    with pytest.raises(DataError, match="no term"):
        plot.qq(sleep, "Subject", term="Hours")


def test_shrinkage_of_the_innermost_of_three_nested_factors():
    rng = np.random.default_rng(0)
    a = np.repeat(np.arange(6), 40)
    b = np.tile(np.repeat(np.arange(4), 10), 6)
    c = np.tile(np.repeat(np.arange(2), 5), 24)
    import pandas as pd

    df = pd.DataFrame({"A": a, "B": b, "C": c, "x": rng.normal(size=240)})
    df["y"] = df.x + rng.normal(size=6)[a] + rng.normal(size=24)[a * 4 + b] + rng.normal(size=240)
    m = jaxmlm.lmer("y ~ x + (1 | A/B/C)", df)
    inner = max(m.ngroups, key=m.ngroups.get)
    ax = plot.shrinkage(m, inner, terms="(Intercept)")
    np.testing.assert_allclose(_offsets(ax, 1)[:, 0], m.coef[inner]["(Intercept)"].to_numpy())


def test_plot_arguments_are_checked(sleep):
    with pytest.raises(DataError, match="level must be between 0 and 1"):
        plot.caterpillar(sleep, level=95)
    with pytest.raises(DataError, match="positive integers"):
        plot.group_lines(sleep, "Days", max_groups=0)
    df = jaxmlm.load_example("sleepstudy").assign(phase=lambda d: np.where(d["Days"] < 5, "early", "late"))
    m = jaxmlm.lmer("Reaction ~ phase + (1 | Subject)", df)
    with pytest.raises(DataError, match="numeric column"):
        plot.trajectories(m, "phase")


def test_profile_zeta_draws_the_profile_table():
    m = jaxmlm.lmer("Yield ~ 1 + (1 | Batch)", jaxmlm.load_example("Dyestuff"))
    prof = m.profile()
    fig = plot.profile_zeta(prof, levels=(0.95, 0.99))
    names = list(dict.fromkeys(prof["parameter"]))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(names) == 3
    for ax, name in zip(axes, names):
        rows = prof[prof["parameter"] == name]
        np.testing.assert_array_equal(ax.lines[0].get_xdata(), rows["value"].to_numpy())
        np.testing.assert_array_equal(ax.lines[0].get_ydata(), rows["zeta"].to_numpy())
        levels = sorted(line.get_ydata()[0] for line in ax.lines[1:] if line.get_ydata()[0] != 0)
        np.testing.assert_allclose(levels, [-2.5758293035489004, -1.959963984540054, 1.959963984540054,
                                            2.5758293035489004], rtol=1e-12)
        assert ax.get_xlabel() == name
    # a model is profiled on the spot; parm picks panels
    fig = plot.profile_zeta(m, parm="sigma")
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_visible()] == ["sigma"]
    with pytest.raises(DataError, match="no parameter"):
        plot.profile_zeta(prof, parm="nope")
    with pytest.raises(DataError, match="columns"):
        plot.profile_zeta(prof.rename(columns={"zeta": "z"}))
    # one level, whatever its number type; a level that is not a number in (0, 1) is a DataError
    fig = plot.profile_zeta(prof, levels=np.float32(0.9))
    assert len([ln for ln in fig.axes[0].lines[1:] if ln.get_ydata()[0] != 0]) == 2
    for bad in (1, "0.95", [0.95, "x"]):
        with pytest.raises(DataError, match="level"):
            plot.profile_zeta(prof, levels=bad)

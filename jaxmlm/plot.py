"""jaxmlm.plot — the pictures a multilevel course draws, from a fitted model (matplotlib).

Each function takes a fitted :class:`~jaxmlm.LinearMixedModel` and returns the matplotlib
Axes (or Figure, for several panels) it drew on, so it can be styled, saved or tested:

* :func:`caterpillar` — conditional modes of each level with intervals from the conditional
  SDs, sorted (lme4's ``dotplot(ranef(m, condVar = TRUE))``);
* :func:`shrinkage` — per-group OLS estimates (``lmList``, no pooling) against the model's
  per-group coefficients (partial pooling), with the fixed effects (complete pooling);
* :func:`group_lines` — each group's data with its fitted line, one panel per group
  (lattice's ``xyplot(y ~ x | g)`` with the model's fit);
* :func:`trajectories` — individual fitted trajectories against the population mean;
* :func:`resid_fitted` — residuals against fitted values;
* :func:`qq` — normal QQ plot of the scaled residuals or of one term's conditional modes;
* :func:`ranef_density` — density of the conditional modes of one term, with the
  normal density the model assumes for the random effects;
* :func:`profile_zeta` — the profile ζ of each parameter against its value with the ±z
  lines of the confidence levels (lattice's ``xyplot(profile(m))`` in lme4);
* :func:`influence` — Cook's distance (or DFBETAS) of each group left out, a dot plot with the
  4/J reference line (influence.ME's ``plot(estex, which = "cook")``).

Needs matplotlib (``pip install 'jaxmlm[plot]'``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ._design import level_rows
from ._errors import ConfigurationError, DataError

__all__ = ["caterpillar", "group_lines", "influence", "profile_zeta", "qq", "ranef_density", "resid_fitted",
           "shrinkage", "trajectories"]


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - the [plot] extra installs it
        raise ConfigurationError("jaxmlm.plot needs matplotlib: pip install 'jaxmlm[plot]'") from None
    return plt


def _axes(ax):
    return _plt().subplots()[1] if ax is None else ax


def _group(m, group: str | None) -> str:
    groups = list(m.ranef)
    if group is None:
        return groups[0]
    if group not in groups:
        raise DataError(f"the model has no grouping factor {group!r}; it has {groups}")
    return group


def _term(m, group: str, term: str | None) -> str:
    cols = list(m.ranef[group].columns)
    if term is None:
        return cols[0]
    if term not in cols:
        raise DataError(f"the random effects of {group!r} have no term {term!r}; they have {cols}")
    return term


def caterpillar(m, group: str | None = None, term: str | None = None, level: float = 0.95, ax=None):
    """Conditional modes b̂ of ``group``'s levels for one ``term`` (default: the first of each), sorted,
    with intervals b̂ ± z·condsd at ``level`` (lme4's ``dotplot(ranef(m, condVar = TRUE))``)."""
    g = _group(m, group)
    t = _term(m, g, term)
    modes, sds = m.ranef[g][t], m.condsd[g][t]
    order = np.argsort(modes.to_numpy(), kind="stable")
    z = stats.norm.ppf(0.5 + _level(level) / 2)
    ax = _axes(ax)
    y = np.arange(len(order))
    ax.errorbar(modes.to_numpy()[order], y, xerr=z * sds.to_numpy()[order], fmt="o", ms=3, lw=1, color="C0")
    ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
    if len(y) <= 60:
        ax.set_yticks(y, [str(v) for v in modes.index[order]], fontsize="x-small" if len(y) > 30 else None)
        ax.set_ylabel(g)
    else:  # too many to label: the levels' ranks
        ax.set_ylabel(f"{g} ({len(y)} levels, by conditional mode)")
    ax.set_xlabel(f"conditional mode of {t} ± {level:.0%} interval")
    ax.set_title(f"{g}: {t}")
    return ax


def shrinkage(m, group: str | None = None, terms: str | tuple[str, str] | None = None, ax=None):
    """No pooling against partial pooling: each group's OLS coefficients (:func:`jaxmlm.lmList` of the
    model's fixed part) and the model's per-group coefficients (``m.coef``), joined by arrows, with
    the fixed effects (complete pooling) marked. Two coefficients (default the first two of the
    random-effects terms) give a plane; one (random intercepts) a strip of arrows per group."""
    from ._lmlist import lmList

    d = m._rows("shrinkage()")
    g = _group(m, group)
    block = next(b for b in d.blocks if b.group == g)
    # the same rows, weights and offsets; the group by its columns ("C:B:A" for lme4's "C:(B:A)")
    ols = lmList(f"{d.formula.lhs} ~ {d.formula.fixed_rhs} | {':'.join(block.factors)}", d.frame,
                 weights=d.weights, offset=d.arg_offset)
    part = m.coef[g]
    names = [terms] if isinstance(terms, str) else list(terms) if terms is not None else list(m.ranef[g].columns)[:2]
    missing = [c for c in names if c not in ols.columns or c not in part.columns]
    if missing:
        raise DataError(f"shrinkage needs coefficients that are both fixed and random; {missing} are not")
    common = part.index.intersection(ols.index)
    ax = _axes(ax)
    fe = m.fixef
    if len(names) >= 2:
        a, b = names[:2]
        x0, y0 = ols.loc[common, a].to_numpy(), ols.loc[common, b].to_numpy()
        x1, y1 = part.loc[common, a].to_numpy(), part.loc[common, b].to_numpy()
        ax.scatter(x0, y0, s=12, color="C1", label="no pooling (per-group OLS)")
        ax.scatter(x1, y1, s=12, color="C0", label="partial pooling (mixed model)")
        for i in range(len(common)):
            ax.annotate("", xy=(x1[i], y1[i]), xytext=(x0[i], y0[i]),
                        arrowprops=dict(arrowstyle="->", color="0.6", lw=0.7))
        ax.scatter([fe[a]], [fe[b]], marker="X", s=80, color="k", label="complete pooling (fixed effects)")
        ax.set_xlabel(a)
        ax.set_ylabel(b)
    else:
        a = names[0]
        x0, x1 = ols.loc[common, a].to_numpy(), part.loc[common, a].to_numpy()
        ax.scatter(x0, np.zeros(len(common)), s=12, color="C1", label="no pooling (per-group OLS)")
        ax.scatter(x1, np.ones(len(common)), s=12, color="C0", label="partial pooling (mixed model)")
        for i in range(len(common)):
            ax.plot([x0[i], x1[i]], [0, 1], color="0.6", lw=0.7)
        ax.axvline(fe[a], color="k", ls="--", label="complete pooling (fixed effect)")
        ax.set_yticks([0, 1], ["per-group OLS", "mixed model"])
        ax.set_xlabel(a)
    ax.set_title(f"shrinkage of {g}'s coefficients")
    ax.legend(fontsize="small")
    return ax


def _x_column(m, x: str) -> np.ndarray:
    d = m._rows("group_lines() and trajectories()")
    frame = d.frame
    if x not in frame.columns:
        raise DataError(f"{x!r} is not a column of the model frame; it has {list(frame.columns)}")
    col = frame[x]
    if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        raise DataError(f"{x!r} must be a numeric column to draw lines over (it has dtype {col.dtype})")
    return col.to_numpy(dtype=float)


def _level(level: float) -> float:
    if not (isinstance(level, (int, float, np.integer, np.floating)) and not isinstance(level, bool)
            and 0 < level < 1):
        raise DataError(f"level must be between 0 and 1, got {level!r}")
    return float(level)


def group_lines(m, x: str, group: str | None = None, max_groups: int = 24, ncols: int = 6, ols: bool = False):
    """Each group's observations against ``x`` with the model's fitted values as a line, one panel
    per level of ``group`` (the first ``max_groups`` levels), as lattice's ``xyplot(y ~ x | g)``.

    ``ols=True`` adds, dashed, each group's own least-squares line of the response on ``x``
    alone (lattice's ``type = "r"``; weighted by the model's prior weights, if any), over the
    group's range of ``x``: the no-pooling line beside the model's partial-pooling fit, which
    shows how far the model pulls each group toward the others. A group whose ``x`` takes fewer
    than two values has no such line. (The fitted values include every predictor of the model,
    so with predictors other than ``x`` varying within groups the model's line is not straight.)
    """
    plt = _plt()
    if not (isinstance(max_groups, int) and max_groups >= 1 and isinstance(ncols, int) and ncols >= 1):
        raise DataError(f"max_groups and ncols must be positive integers, got {max_groups!r} and {ncols!r}")
    if not isinstance(ols, bool):
        raise DataError(f"ols must be True or False, got {ols!r}")
    d = m._rows("group_lines()")
    g = _group(m, group)
    block = next(b for b in d.blocks if b.group == g)
    xs = _x_column(m, x)
    levels = list(range(min(block.nlev, max_groups)))
    nrows = math.ceil(len(levels) / ncols)
    fig, axes = plt.subplots(nrows, min(ncols, len(levels)), sharex=True, sharey=True, squeeze=False,
                             figsize=(2.0 * min(ncols, len(levels)), 1.8 * nrows))
    fitted = m.fitted
    rows_of = level_rows(block.codes, block.nlev)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(levels):
            ax.set_visible(False)
            continue
        rows = rows_of[levels[k]]
        order = rows[np.argsort(xs[rows], kind="stable")]
        ax.plot(xs[order], d.y[order], "o", ms=3, color="C0")
        ax.plot(xs[order], fitted[order], "-", color="C1")
        if ols and np.unique(xs[order]).size >= 2:
            # y = a + b x by least squares in this group; polyfit's w scales residuals, so √w
            w = None if d.weights is None else np.sqrt(d.weights[order])
            b, a = np.polyfit(xs[order], d.y[order], 1, w=w)
            ends = xs[order][[0, -1]]
            ax.plot(ends, a + b * ends, "--", color="0.35", lw=1)
        ax.set_title(str(block.levels[levels[k]]), fontsize="small")
    fig.supxlabel(x)
    fig.supylabel(d.formula.lhs)
    return fig


def trajectories(m, x: str, group: str | None = None, ax=None):
    """Each group's fitted trajectory over ``x`` (thin lines) and the population mean, the fixed
    part Xβ̂ (thick): how far individuals spread around the average growth."""
    d = m._rows("trajectories()")
    g = _group(m, group)
    block = next(b for b in d.blocks if b.group == g)
    xs = _x_column(m, x)
    fixed = m.predict(re_form="~0")  # Xβ̂ + offset: the population mean
    ax = _axes(ax)
    fitted = m.fitted
    for rows in level_rows(block.codes, block.nlev):
        order = rows[np.argsort(xs[rows], kind="stable")]
        ax.plot(xs[order], fitted[order], color="C0", alpha=0.35, lw=0.8)
    order = np.argsort(xs, kind="stable")
    ax.plot(xs[order], fixed[order], color="k", lw=2.5, label="population mean (fixed effects)")
    ax.set_xlabel(x)
    ax.set_ylabel(d.formula.lhs)
    ax.legend(fontsize="small")
    return ax


def resid_fitted(m, ax=None):
    """Pearson residuals against fitted values, with a smooth-free zero line (lme4's ``plot(m)``)."""
    ax = _axes(ax)
    ax.scatter(m.fitted, m.pearson_resid, s=8, color="C0")
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("fitted values")
    ax.set_ylabel("scaled residuals")
    return ax


def qq(m, which: str = "resid", term: str | None = None, ax=None):
    """Normal QQ plot of the scaled residuals (``which="resid"``) or of one grouping factor's
    conditional modes (``which=<grouping factor>``, ``term`` default its first column),
    against the normal quantiles (R's ``qqnorm``: plotting positions (i − a) / (n + 1 − 2a),
    a = 3/8 for n ≤ 10, else 1/2), with the line through the quartiles (``qqline``)."""
    if which == "resid":
        values, label = m.pearson_resid, "scaled residuals"
    else:
        g = _group(m, which)
        t = _term(m, g, term)
        values, label = m.ranef[g][t].to_numpy(), f"conditional modes, {g}: {t}"
    n = len(values)
    a = 3 / 8 if n <= 10 else 0.5
    theo = stats.norm.ppf((np.arange(1, n + 1) - a) / (n + 1 - 2 * a))
    sample = np.sort(values)
    ax = _axes(ax)
    ax.scatter(theo, sample, s=8, color="C0")
    q1, q3 = np.quantile(values, [0.25, 0.75])
    z1, z3 = stats.norm.ppf([0.25, 0.75])
    slope = (q3 - q1) / (z3 - z1)
    ax.axline((z1, q1), slope=slope, color="C1", lw=1)
    ax.set_xlabel("normal quantiles")
    ax.set_ylabel(label)
    return ax


def ranef_density(m, group: str | None = None, term: str | None = None, ax=None):
    """Kernel density of one term's conditional modes with the normal density N(0, σ̂²_term) the
    model assumes for the random effects (modes are shrunk, so their spread is smaller)."""
    g = _group(m, group)
    t = _term(m, g, term)
    values = m.ranef[g][t].to_numpy()
    vc = m.varcorr
    row = vc[(vc["var1"] == t) & vc["var2"].isna()]
    sd = float(row[row["grp"].isin([tm.vc_name for tm in m.design.terms if tm.group == g])]["sdcor"].iloc[0])
    lim = max(4 * sd, float(np.max(np.abs(values))) * 1.1) if sd > 0 else float(np.max(np.abs(values))) * 1.1 + 1e-12
    grid = np.linspace(-lim, lim, 256)
    ax = _axes(ax)
    if np.std(values) > 0:
        ax.plot(grid, stats.gaussian_kde(values)(grid), color="C0", label="conditional modes (kernel density)")
    ax.plot(grid, stats.norm.pdf(grid, scale=sd) if sd > 0 else np.zeros_like(grid), color="C1", ls="--",
            label=f"N(0, {sd:.3g}²), the model's")
    ax.plot(values, np.zeros_like(values), "|", color="C0", ms=10)
    ax.set_xlabel(f"{g}: {t}")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return ax


def profile_zeta(prof, parm=None, levels=(0.95, 0.99), ncols: int = 3, **kwargs):
    """ζ against each parameter's value, one panel per parameter, with horizontal lines at ±z for
    each confidence level in ``levels`` (z = Φ⁻¹((1 + level)/2)), as lattice's
    ``xyplot(profile(m))`` in lme4. Where the curve crosses ±z are the profile limits of
    ``m.confint(level=...)``; a straight line means the Wald interval would be as good
    (Bates et al. 2015, *J. Stat. Softw.* 67(1), §5.1).

    ``prof`` is a fitted model (profiled here by ``m.profile(**kwargs)``) or the DataFrame
    ``m.profile()`` returned (columns ``parameter``, ``value``, ``zeta``); ``parm``: the
    parameters to draw (default all). Each panel's first line is the profile's points, joined.
    """
    plt = _plt()
    if isinstance(prof, pd.DataFrame):
        if kwargs:
            raise DataError(f"keywords {sorted(kwargs)} profile a model; a profile table takes none")
        missing = {"parameter", "value", "zeta"} - set(prof.columns)
        if missing:
            raise DataError(f"a profile table needs the columns parameter, value and zeta; it lacks {sorted(missing)}")
        table = prof
    elif hasattr(prof, "profile"):
        table = prof.profile(parm=parm, **kwargs)
    else:
        raise DataError(f"profile_zeta takes a fitted model or the table m.profile() returns, not {type(prof).__name__}")
    names = list(dict.fromkeys(table["parameter"]))
    if parm is not None:
        wanted = [parm] if isinstance(parm, str) else list(parm)
        unknown = [q for q in wanted if q not in names]
        if unknown:
            raise DataError(f"the profile has no parameter {unknown}; it has {names}")
        names = wanted
    if not names:
        raise DataError("the profile table is empty")
    if not (isinstance(ncols, int) and ncols >= 1):
        raise DataError(f"ncols must be a positive integer, got {ncols!r}")
    lv = [_level(x) for x in (levels if isinstance(levels, (list, tuple, np.ndarray)) else [levels])]
    nc = min(ncols, len(names))
    nrows = math.ceil(len(names) / nc)
    fig, axes = plt.subplots(nrows, nc, sharey=True, squeeze=False, figsize=(3.2 * nc, 2.8 * nrows))
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
    for k, ax in enumerate(axes.ravel()):
        if k >= len(names):
            ax.set_visible(False)
            continue
        rows = table[table["parameter"] == names[k]].sort_values("value", kind="stable")
        ax.plot(rows["value"].to_numpy(), rows["zeta"].to_numpy(), "o-", ms=2.5, lw=1.2, color="C0")
        for j, level in enumerate(lv):
            z = float(stats.norm.ppf(0.5 + level / 2))
            for sgn in (1.0, -1.0):
                ax.axhline(sgn * z, color="0.45", lw=0.8, ls=styles[j % len(styles)],
                           label=f"±z, {level:.0%}" if sgn > 0 else None)
        ax.axhline(0.0, color="0.8", lw=0.6)
        ax.set_xlabel(names[k], fontsize="small")
        if k % nc == 0:
            ax.set_ylabel("ζ")
    axes.ravel()[0].legend(fontsize="x-small", loc="upper left")
    fig.tight_layout()
    return fig


def influence(inf, group: str | None = None, which: str = "cook", sort: bool = True, cutoff: float | None = None,
              max_levels: int = 100, ax=None):
    """Deletion diagnostics as influence.ME's ``plot(estex, which = "cook" | "dfbetas")``: one dot per
    level left out, levels on the vertical axis (sorted by value with ``sort``), those beyond
    the reference drawn in red.

    ``inf``: an ``Influence`` (``m.influence(...)``) or a fitted model, whose exact diagnostics
    for ``group`` are computed first. ``which="cook"``: Cook's distance with the line at
    ``cutoff`` (default 4/J, J levels); ``"dfbetas"``: one panel per fixed effect with lines at
    ±``cutoff`` (default 2/√J), returned as a Figure. Beyond ``max_levels`` levels only the
    largest ones (by Cook's distance, or by the largest |DFBETAS|) are drawn, and the title says so."""
    from ._influence import Influence

    if not isinstance(inf, Influence):
        if not hasattr(inf, "influence"):
            raise DataError("plot.influence needs an Influence (m.influence(...)) or a fitted model")
        inf = inf.influence(group)
    if which not in ("cook", "dfbetas"):
        raise DataError(f"which must be 'cook' or 'dfbetas', got {which!r}")
    what = "row" if inf.group is None else inf.group
    if which == "cook":
        vals = inf.cooks_distance
        keep = vals.sort_values(ascending=False).index[:max_levels]
        vals = vals.loc[keep]
        if sort:
            vals = vals.sort_values()
        ref = inf.cutoff if cutoff is None else float(cutoff)
        ax = _axes(ax)
        _dots(ax, vals, ref, lower=None)
        ax.set_xlabel("Cook's distance")
        ax.set_ylabel(what)
        shown = "" if len(keep) == len(inf.labels) else f", largest {len(keep)} of {len(inf.labels)}"
        ax.set_title(f"Cook's distance, {what} left out{shown} (line: {ref:.3g})")
        return ax
    dfb = inf.dfbetas
    keep = dfb.abs().max(axis=1).sort_values(ascending=False).index[:max_levels]
    dfb = dfb.loc[keep]
    ref = inf.dfbetas_cutoff if cutoff is None else float(cutoff)
    plt = _plt()
    fig, axes = plt.subplots(1, dfb.shape[1], sharey=not sort, squeeze=False,
                             figsize=(3.2 * dfb.shape[1], max(3.5, 1.2 + 0.2 * len(dfb))))
    for ax, (name, col) in zip(axes[0], dfb.items()):
        _dots(ax, col.sort_values() if sort else col, ref, lower=-ref)
        ax.set_title(name, fontsize="small")
        ax.set_xlabel("DFBETAS")
    axes[0][0].set_ylabel(what)
    shown = "" if len(keep) == len(inf.labels) else f", largest {len(keep)} of {len(inf.labels)}"
    fig.suptitle(f"DFBETAS, {what} left out{shown} (lines: ±{ref:.3g})")
    fig.tight_layout()
    return fig


def _dots(ax, vals: pd.Series, ref: float, lower: float | None):
    y = np.arange(len(vals))
    v = vals.to_numpy()
    out = (v > ref) | ((v < lower) if lower is not None else False)
    ax.plot(v[~out], y[~out], "o", ms=4, color="C0")
    ax.plot(v[out], y[out], "o", ms=5, color="C3")
    for r in (ref, lower):
        if r is not None:
            ax.axvline(r, color="0.4", lw=0.8, ls="--")
    ax.set_yticks(y, [str(k) for k in vals.index], fontsize="x-small" if len(y) > 30 else None)

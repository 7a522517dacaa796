"""Stage 3 for data held in pieces: a plan from the pieces' structure, each piece's statistics
against it, merged — the rows are never gathered in one place.

A linear mixed model's sufficient statistics (:mod:`jaxmlm._stats`) have sizes set by the
numbers of levels, not of rows, and statistics of disjoint rows merge
(:func:`~jaxmlm._stats.merge_stats`). Data in pieces — the partitions of a Dask frame, the
files of a Parquet dataset — are therefore fitted in two passes over the pieces:

1. **Structure** (:func:`piece_structure`, :func:`combine_structure`). Each piece gives,
   from its complete rows, one row per distinct combination of the grouping factors and the
   non-numeric predictors, and its row counts. Their union (the *skeleton*) holds every
   level and every combination of levels that occurs, which is all that the design's levels,
   term order and formulaic specs and the schema's sparse index read: the design built on
   it (``build_design(..., template=True)``) and its schema are those of all rows
   (:func:`make_plan`).
2. **Statistics** (:func:`piece_statistics`). Each piece is materialized with the plan's
   frozen formulaic specs (as ``predict(newdata)`` materializes new rows), its grouping
   levels mapped onto the plan's, and its statistics accumulated against the schema;
   :func:`merge_pieces` adds them up in any order and grouping (a tree).

What needs every row is decided from the merged statistics: lme4's checks of level counts
against the number of rows (in :func:`make_plan`, from the counts), and lme4's test for aliased
fixed-effects columns, made on the merged XᵀX (:func:`aliased`); when it drops columns, the
pieces' statistics are made again without them (:func:`without`), as in memory the columns go
before the pass over the rows.

Limits: transforms whose result depends on all rows (``scale``, ``center``, ``poly``…) are
refused (their state would come from the skeleton), and so is ``C(x)`` / ``factor(x)`` of a
numeric column (its levels would be missed by the skeleton): compute those columns first.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd

from . import _compiled
from ._design import (Design, _doubles, _grouping, _no_complete_rows, _prepare, _quote_columns, _unknown_column,
                      check_levels, warn_dropped)
from ._errors import DataError, FormulaError
from ._formula import ParsedFormula, parse_formula
from ._frontend import build_design
from ._stats import Layout, Schema, Stats, accumulate, make_schema, merge_stats

__all__ = ["Columns", "Plan", "Structure", "check_piece", "column_kind", "columns_of", "combine_structure",
           "aliased", "finish", "formula_columns_of", "make_plan", "merge_compiled", "merge_pieces", "piece_statistics",
           "piece_structure", "without"]


def column_kind(dtype) -> str:
    """What a column's dtype means to a formula: numbers, or the levels of a factor (logical,
    categorical, text): pieces must agree on it."""
    if pd.api.types.is_bool_dtype(dtype):
        return "logical"
    if isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    return "numeric" if pd.api.types.is_numeric_dtype(dtype) else "text"


class Columns(NamedTuple):
    """What the passes read: the parsed formula, the columns in data order (``kinds``: each one's
    :func:`column_kind` and dtype), the response's, the ``keys`` whose level combinations the
    first pass collects (grouping factors and non-numeric predictors), the ``required`` ones
    (a row missing one of them is dropped) and the weights' and offset's column names."""

    parsed: ParsedFormula
    columns: tuple[str, ...]
    kinds: dict
    lhs: tuple[str, ...]
    keys: tuple[str, ...]
    required: tuple[str, ...]
    weights: str | None
    offset: str | None


class Structure(NamedTuple):
    """What the first pass keeps of some pieces: the skeleton rows (one per distinct combination of
    the ``cols.keys`` columns among complete rows, with the formula's other columns from one such
    row), the :class:`Columns` read, the number of rows and of complete rows, and of pieces seen;
    ``fingerprint`` identifies the complete rows (their index labels, response, weights and offset
    values): the sum of one 64-bit hash per row, modulo 2⁶⁴, so any split of the rows in any order
    gives the same value, and fits of different rows differ (``anova(m0, m1)`` checks it)."""

    frame: pd.DataFrame
    cols: Columns
    rows: int
    complete: int
    pieces: int
    fingerprint: int = 0


class Plan(NamedTuple):
    """Everything a piece needs to make its statistics (picklable: it travels to a cluster's workers).

    ``design`` is the template design without rows (levels, names, frozen specs, lme4's term
    order; every fixed-effects column kept); ``schema`` its statistics' shapes; ``lhs_spec``
    formulaic's spec of the response; ``cols`` the :class:`Columns` read."""

    design: Design
    schema: Schema
    lhs_spec: object
    cols: Columns


def columns_of(formula: str | ParsedFormula, meta: pd.DataFrame, weights=None, offset=None) -> Columns:
    """The :class:`Columns` of a fit of ``formula`` on data whose columns and dtypes are ``meta``'s
    (a Dask frame's metadata, or any piece)."""
    parsed, columns, lhs, factors = formula_columns_of(formula, meta.columns, weights, offset)
    kinds = {c: (column_kind(meta[c].dtype), meta[c].dtype) for c in columns}
    for c in (weights, offset):
        if c is not None and kinds[c][0] != "numeric":
            raise DataError(f"column {c!r} ({'weights' if c == weights else 'offset'}) must be numeric, got dtype "
                            f"{kinds[c][1]}")
    prior = (weights, offset)
    keys = tuple(c for c in columns if c in factors or (kinds[c][0] != "numeric" and c not in lhs and c not in prior))
    return Columns(parsed, columns, kinds, lhs, keys, tuple(c for c in columns if c not in prior), weights, offset)


def formula_columns_of(formula: str | ParsedFormula, columns, weights=None, offset=None):
    """(parsed formula, the columns a fit reads in data order, the response's columns, the grouping
    factors): what the passes over pieces select. ``columns``: the data's column labels."""
    from ._formulaic import formula_columns

    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    if parsed.lhs.startswith("cbind("):
        raise FormulaError("a two-column (binomial) response needs glmer, which jaxmlm does not provide yet")
    labels = list(columns)
    names = {c for c in labels if isinstance(c, str)}
    lhs_cols, _, needed, _ = formula_columns(parsed, names)
    for what, name in (("weights", weights), ("offset", offset)):
        if name is None:
            continue
        if not isinstance(name, str):
            raise DataError(f"with data in pieces, {what}= must be a column name (values given as an array cannot be "
                            "matched to the pieces' rows)")
        if name not in names:
            _unknown_column(name, names)
        needed.add(name)
    dup = sorted(c for c in needed if labels.count(c) > 1)
    if dup:
        raise DataError(f"column(s) {dup} appear more than once in the data")
    factors = tuple(dict.fromkeys(f for t in parsed.random for f in t.factors))
    return parsed, tuple(c for c in labels if c in needed), tuple(sorted(lhs_cols)), factors


def _complete(piece: pd.DataFrame, columns) -> np.ndarray:
    return ~piece[list(columns)].isna().any(axis=1).to_numpy()


def piece_structure(piece: pd.DataFrame, cols: Columns, where: str = "a piece") -> Structure:
    """The first pass over one piece: its complete rows' distinct ``keys`` combinations (one row each).
    A row is complete without a missing value in ``cols.required`` (the weights and offset columns
    are not among them: a missing weight in a row the model uses is an error, as in memory)."""
    check_piece(piece, cols, where)
    complete = _complete(piece, cols.required)
    rows = piece.loc[complete, list(cols.columns)] if not complete.all() else piece[list(cols.columns)]
    frame = rows.drop_duplicates(subset=list(cols.keys)) if cols.keys else rows.iloc[:1]
    ident = [c for c in (*cols.lhs, cols.weights, cols.offset) if c is not None]
    hashes = pd.util.hash_pandas_object(rows[ident], index=True).to_numpy()
    return Structure(frame, cols, len(piece), int(complete.sum()), 1, int(np.sum(hashes, dtype=np.uint64)))


def check_piece(piece: pd.DataFrame, cols: Columns, where: str) -> None:
    """Refuse a piece without one of the columns, or whose column means something else (numbers
    where the others hold levels, or the reverse) than ``cols.kinds`` says."""
    for c, (kind, dtype) in cols.kinds.items():
        if c not in piece.columns:
            raise DataError(f"{where} has no column {c!r}, which the formula reads")
        got = piece[c].dtype
        if column_kind(got) != kind and not (len(piece) and piece[c].isna().all()):
            raise DataError(f"{where}'s column {c!r} has dtype {got}, but the data's metadata (its first piece or "
                            f"schema) says {dtype}: the pieces disagree on the column's type; cast it to one type "
                            f"first (e.g. ddf[{c!r}].astype(...))")


def _same_categories(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``a`` and ``b`` with each Categorical column on the union of both sides' categories, a's
    first then b's new ones in their order (as pandas and pyarrow unite the files of a dataset),
    so that concatenating keeps the column categorical and its level order (the reference level)."""
    fixes_a, fixes_b = {}, {}
    for c in a.columns:
        ca, cb = a[c].dtype, b[c].dtype
        if isinstance(ca, pd.CategoricalDtype) and isinstance(cb, pd.CategoricalDtype) and not ca.categories.equals(
                cb.categories):
            cats = ca.categories.append(cb.categories[~cb.categories.isin(ca.categories)])
            dtype = pd.CategoricalDtype(cats, ordered=ca.ordered)
            fixes_a[c], fixes_b[c] = a[c].astype(dtype), b[c].astype(dtype)
    return (a.assign(**fixes_a) if fixes_a else a), (b.assign(**fixes_b) if fixes_b else b)


def combine_structure(a: Structure, b: Structure) -> Structure:
    """The structure of the pieces of ``a`` and ``b`` together (associative: a tree reduction)."""
    keys = a.cols.keys
    if keys != b.cols.keys or a.cols.columns != b.cols.columns:
        raise DataError(f"the pieces disagree on the columns read or on which hold levels ({list(keys)} against "
                        f"{list(b.cols.keys)}); give every piece the same columns and dtypes")
    both = pd.concat(_same_categories(a.frame, b.frame), ignore_index=True)
    frame = both.drop_duplicates(subset=list(keys)) if keys else both.iloc[:1]
    return Structure(frame, a.cols, a.rows + b.rows, a.complete + b.complete, a.pieces + b.pieces,
                     (a.fingerprint + b.fingerprint) % (1 << 64))


def _refuse_stateful(spec, what: str) -> None:
    state = getattr(spec, "transform_state", None) or {}
    if state:
        names = ", ".join(sorted(str(k) for k in state))
        raise FormulaError(
            f"{what} uses {names}, a transform whose result depends on all rows (its state would come from a "
            "sample of them); with data in pieces compute that column first (e.g. with Dask) and use it as it is")


def _refuse_numeric_factors(spec, skeleton: pd.DataFrame, what: str) -> None:
    from formulaic.parser.types.factor import Factor

    for factor, (kind, _) in spec.encoder_state.items():
        if kind is not Factor.Kind.CATEGORICAL:
            continue
        for variables in (v for f, v in spec.factor_variables.items() if f.expr == factor):
            numeric = sorted(str(c) for c in variables if str(c) in skeleton.columns
                             and pd.api.types.is_numeric_dtype(skeleton[str(c)].dtype)
                             and not pd.api.types.is_bool_dtype(skeleton[str(c)].dtype))
            if numeric:
                raise FormulaError(
                    f"{what} makes a factor of the numeric column(s) {numeric}; with data in pieces make the column "
                    f"categorical first (e.g. ddf[{numeric[0]!r}] = ddf[{numeric[0]!r}].astype(str)), so that its "
                    "levels are gathered from every piece")


def make_plan(structure: Structure) -> Plan:
    """The :class:`Plan` of a fit from the first pass's :class:`Structure` of all pieces.

    lme4's level-count checks (``checkNlevels``, ``checkZdims``) run here against the
    number of complete rows of all pieces."""
    from ._formulaic import _model_matrix  # formulaic: imported when first needed

    if structure.complete == 0:
        raise _no_complete_rows()
    skeleton = structure.frame.reset_index(drop=True)
    cols = structure.cols
    parsed, columns, lhs_cols, offset = cols.parsed, cols.columns, cols.lhs, cols.offset
    template = build_design(parsed, skeleton, template=True)
    if template.n < len(skeleton):
        raise _nan_rows(len(skeleton) - template.n, "the data")
    check_levels([(t.group, _term_text(parsed, t), t.k, template.blocks[t.block].nlev) for t in template.terms],
                 structure.complete)
    fixed_spec = template.fixed_spec
    _refuse_stateful(fixed_spec, "the fixed-effects part")
    _refuse_numeric_factors(fixed_spec, skeleton, "the fixed-effects part")
    terms = []
    for t in template.terms:
        where = f"the random-effects term on {t.group!r}"
        _refuse_stateful(t.spec, where)
        _refuse_numeric_factors(t.spec, skeleton, where)
        terms.append(dataclasses.replace(t, _spec=t.spec))
    names = {c for c in skeleton.columns if isinstance(c, str)}
    frame = pd.DataFrame({c: _prepare(skeleton[c], c in lhs_cols) for c in columns})
    lhs_spec = _model_matrix(_quote_columns(parsed.lhs, names) + " ~ 1", _doubles(frame), parsed.text, 0,
                             "the response").lhs.model_spec
    _refuse_stateful(lhs_spec, "the response")
    schema = make_schema(template)
    blocks = tuple(dataclasses.replace(b, Z=None, codes=None) for b in template.blocks)
    design = dataclasses.replace(
        template, y=None, X=None, blocks=blocks, terms=tuple(terms), rows=pd.RangeIndex(0), _fixed_spec=fixed_spec,
        _frame=None, positions=None, formula_offset=None, n_dropped_na=structure.rows - structure.complete,
        nobs_total=structure.complete, offset_column=offset, fingerprint=structure.fingerprint)
    return Plan(design, schema, lhs_spec, cols)


def _term_text(parsed: ParsedFormula, term) -> str:
    """The formula text of a template term (lme4's order) for lme4's messages."""
    for t in parsed.random:
        if t.group_name == term.group:
            return t.expr
    return ", ".join(term.columns)


def _nan_rows(count: int, where: str) -> DataError:
    return DataError(
        f"in {where} the formula gives a missing value (e.g. the log of a number <= 0) in {count} row(s) without "
        "missing values; in memory such rows are dropped, but with data in pieces a level seen only in them would "
        "be counted: remove them first (e.g. ddf[ddf['y'] > 0])")


def _matrix(spec, frame: pd.DataFrame, what: str) -> np.ndarray:
    """``spec``'s model matrix for ``frame``. Not through ``predict``'s evaluator: that one records
    formulaic's warnings with ``warnings.catch_warnings``, which is not thread-safe, and pieces are
    made in Dask's worker threads (a level the plan lacks is caught by ``_check_levels`` instead)."""
    from ._formulaic import FORMULA_CONTEXT
    from ._predict import _check_levels

    _check_levels(spec, frame, what, "The data changed between the passes over it; fit again")
    try:
        with np.errstate(all="ignore"):  # thread-safe, unlike catch_warnings: NaN is reported below
            mm = spec.get_model_matrix(frame, context=FORMULA_CONTEXT, na_action="ignore")
    except Exception as exc:  # noqa: BLE001 - formulaic or a transform; the user needs the reason
        raise DataError(f"evaluating {what} failed ({type(exc).__name__}: {exc})") from None
    return np.asarray(mm, dtype=np.float64)


def _used_levels(col: pd.Series) -> pd.Series:
    """A Categorical without the categories its values do not use (formulaic re-codes a piece's
    categories onto the plan's levels, and pandas deprecates categories outside them)."""
    return col.cat.remove_unused_categories() if isinstance(col.dtype, pd.CategoricalDtype) else col


def piece_design(plan: Plan, piece: pd.DataFrame, where: str = "a piece") -> Design:
    """One piece's rows as a :class:`Design` in the plan's shapes: its complete rows materialized
    with the frozen specs, grouping codes indexing the plan's levels (a level the first pass
    did not see is an error: the data changed between passes)."""
    tpl, cols = plan.design, plan.cols
    check_piece(piece, cols, where)
    frame = pd.DataFrame({c: _used_levels(_prepare(piece[c], c in cols.lhs)) for c in cols.columns}, index=piece.index)
    complete = _complete(frame, cols.required)
    kept = frame if complete.all() else frame.loc[complete]
    names = list(tpl.fixed_columns_all)
    if len(kept):
        doubles = _doubles(kept)
        y = _matrix(plan.lhs_spec, doubles, f"the response in {where}")[:, 0]
        X_all = _matrix(tpl.fixed_spec, doubles, f"the fixed-effects part in {where}")
    else:  # an empty piece adds nothing (formulaic cannot evaluate zero rows)
        y, X_all = np.zeros(0), np.zeros((0, len(names)))
    offsets = [names.index(nm) for nm in tpl.offset_columns]
    keep = [names.index(nm) for nm in tpl.fixef_names]
    formula_offset = X_all[:, offsets].sum(axis=1) if offsets else None
    blocks = []
    for b, blk in enumerate(tpl.blocks):
        Z = np.column_stack([_matrix(tpl.terms[t].spec, doubles, f"the random-effects term on {blk.group!r} in "
                                     f"{where}") for t in blk.terms]) if len(kept) else np.zeros((0, blk.k))
        if len(kept):
            codes, labels = _grouping(kept, blk.factors)
            index = blk.levels.get_indexer(pd.Index(labels, dtype=object))
            if (index < 0).any():
                unseen = [str(v) for v in np.asarray(labels, dtype=object)[index < 0][:5]]
                raise DataError(f"{where} has level(s) of {blk.group!r} that the first pass over the data did not see "
                                f"({', '.join(unseen)}): the data changed between the passes; fit again")
            codes = index[codes]
        else:
            codes = np.zeros(0, np.int64)
        blocks.append(dataclasses.replace(blk, Z=Z, codes=codes))
    nan = np.isnan(y) | np.isnan(X_all).any(axis=1)
    for blk in blocks:
        nan |= np.isnan(blk.Z).any(axis=1)
    if nan.any():
        raise _nan_rows(int(nan.sum()), where)
    weights = arg_offset = None
    if cols.weights is not None:
        weights = np.asarray(kept[cols.weights], dtype=np.float64)
        if (weights < 0).any() or not np.isfinite(weights).all():
            raise DataError(f"{where}: weights must be finite and >= 0 in every row the model uses (a weight is the "
                            "inverse of a row's relative residual variance)")
    if cols.offset is not None:
        arg_offset = np.asarray(kept[cols.offset], dtype=np.float64)
        if not np.isfinite(arg_offset).all():
            raise DataError(f"{where}: the offset is missing or not finite in {int((~np.isfinite(arg_offset)).sum())} "
                            "row(s) the model uses; give a finite value for every complete row")
    return dataclasses.replace(
        tpl, y=y, X=np.asarray(X_all[:, keep], order="F"), blocks=tuple(blocks), rows=kept.index,
        formula_offset=formula_offset, weights=weights, arg_offset=arg_offset, nobs_total=None)


def piece_statistics(plan: Plan, piece: pd.DataFrame, where: str = "a piece") -> Stats:
    """The statistics of one piece's complete rows against the plan's schema, as host (numpy) arrays."""
    return jax.device_get(accumulate(plan.schema, piece_design(plan, piece, where)))


#: merge_stats as one compiled program (called eagerly on host arrays too: ``core.merge``).
merge_compiled = _compiled.jit(merge_stats)


def merge_pieces(a: Stats, b: Stats) -> Stats:
    """:func:`~jaxmlm._stats.merge_stats` as one compiled program, back on the host (picklable)."""
    return jax.device_get(merge_compiled(a, b))


def aliased(plan: Plan, stats: Stats, tol: float = 1e-5) -> tuple[str, ...]:
    """The fixed-effects columns of ``plan`` aliased with earlier ones, judged on the merged XᵀX.

    lme4 (chkRank.drop.cols) drops a column whose residual on the columns before it is below
    1e-7 of its norm (pivoting QR of X); from XᵀX alone, whose condition number is squared,
    the test is made at relative residual ``tol`` (1e-5), on the correlation scale (so the
    columns' units do not matter). The statistics of the kept columns are then made again
    (:func:`without`): centring the response on nearly aliased columns loses the digits that
    recentring them afterwards would need."""
    names = plan.design.fixef_names
    p = len(names)
    G = np.asarray(stats.WW, dtype=np.float64)[:p, :p]
    d = np.sqrt(np.maximum(np.diag(G), 0.0))
    scale = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    R = G * scale[:, None] * scale[None, :]  # unit diagonal
    keep: list[int] = []
    for j in range(p):
        if d[j] == 0:
            continue
        r2 = 1.0 - (R[keep, j] @ np.linalg.solve(R[np.ix_(keep, keep)], R[keep, j]) if keep else 0.0)
        if r2 > tol * tol:
            keep.append(j)
    return tuple(nm for j, nm in enumerate(names) if j not in keep)


def without(plan: Plan, names: tuple[str, ...]) -> Plan:
    """``plan`` without the fixed-effects columns ``names`` (recorded as dropped, lme4's way)."""
    tpl = plan.design
    design = dataclasses.replace(tpl, fixef_names=tuple(nm for nm in tpl.fixef_names if nm not in names),
                                 dropped_columns=tpl.dropped_columns + tuple(names))
    layout = plan.schema.layout._replace(p=len(design.fixef_names))
    return plan._replace(design=design, schema=plan.schema._replace(layout=layout))


def finish(plan: Plan, stats: Stats) -> tuple[Design, Layout, Stats]:
    """The merged statistics of all pieces → (design without rows, layout, statistics) for the fit.

    Aliased fixed-effects columns must have been taken out of the plan first (:func:`aliased`,
    :func:`without`, statistics made again): that is an error here. The dropped ones get lme4's
    warning; a response with nothing to explain is refused, as in memory."""
    tpl = plan.design
    left = aliased(plan, stats)
    if left:
        raise DataError(f"fixed-effects column(s) {list(left)} are aliased with earlier ones: make the plan without "
                        "them (jaxmlm._partitioned.without) and the pieces' statistics again")
    if tpl.dropped_columns:
        warn_dropped(tpl.dropped_columns)
    p = len(tpl.fixef_names)
    WW, beta0 = np.asarray(stats.WW), np.asarray(stats.beta0)
    rss = float(WW[p, p])
    yy = rss + 2.0 * float(beta0 @ WW[:p, p]) + float(beta0 @ WW[:p, :p] @ beta0)  # Σ yᵢ² (weighted)
    if not rss > 1e-20 * yy:  # as in memory: the residuals below 1e-10 of the response's scale
        raise DataError(f"the response {tpl.formula.lhs!r} is constant or an exact linear function of the fixed-effects "
                        "columns: nothing is left for random effects or residuals to explain, so the model has no "
                        "maximum-likelihood estimate")
    return tpl, plan.schema.layout, jax.device_put(stats)

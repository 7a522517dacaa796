"""Stage 2 — terms + pandas data → design (y, X, Z blocks, group codes).

Plain numpy/pandas. formulaic builds every model matrix (fixed part and the
left-hand side of each bar term), so contrasts, interactions and transforms
behave as in formulaic and are frozen in a :class:`formulaic.ModelSpec` that
``predict(newdata)`` can reuse. The grouping factors and their level order
follow lme4:

* a column's levels are its pandas categories (unused ones dropped), else the
  sorted unique values;
* ``a:b`` has the levels of ``factor(a:b)`` in R — combinations, ``a``
  slowest, unobserved ones dropped;
* terms are ordered by decreasing number of levels exactly as lme4's
  ``mkReTrms`` does (``rev(order(nl))``, only when the order is not already
  non-increasing), which fixes the order of θ and of VarCorr.

Terms that share a grouping factor are amalgamated into one *block* for the
engine (as MixedModels.jl does): their templates sit block-diagonally in one
k×k template, so ``(x || g)`` costs what ``(x | g)`` costs instead of
creating a dense cross block between two terms on the same factor.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field

import formulaic
import numpy as np
import pandas as pd

from ._errors import DataError, FormulaError, FormulaSyntaxError, GroupingError, RankDeficiencyWarning, UnknownColumnError
from ._formula import ParsedFormula, RandomTerm, parse_formula

__all__ = ["Term", "Block", "Design", "build_design", "r_column_name"]


@dataclass(frozen=True)
class Term:
    """One random-effects term in lme4's order.

    Attributes: ``group`` (grouping factor label, e.g. ``"cask:batch"``),
    ``vc_name`` (label in VarCorr, made unique as R's ``make.unique``),
    ``columns`` (names of the k model-matrix columns), ``block`` (index of
    the engine block holding it), ``offset`` (first column in that block).
    """

    group: str
    vc_name: str
    columns: tuple[str, ...]
    block: int
    offset: int
    spec: object = field(repr=False, compare=False)

    @property
    def k(self) -> int:
        return len(self.columns)


@dataclass(frozen=True)
class Block:
    """All terms on one grouping factor: Z (n, k), codes (n,), level labels (l,)."""

    group: str
    Z: np.ndarray = field(repr=False)
    codes: np.ndarray = field(repr=False)
    levels: pd.Index
    columns: tuple[str, ...]
    terms: tuple[int, ...]
    factors: tuple[str, ...]

    @property
    def k(self) -> int:
        return self.Z.shape[1]

    @property
    def nlev(self) -> int:
        return len(self.levels)


@dataclass(frozen=True)
class Design:
    """The materialized model: everything later stages need, as numpy arrays.

    ``y`` (n,), ``X`` (n, p), ``terms`` in lme4 order, ``blocks`` in engine
    order (decreasing number of levels; blocks[0] is the block-diagonal one).
    """

    formula: ParsedFormula
    y: np.ndarray = field(repr=False)
    X: np.ndarray = field(repr=False)
    fixef_names: tuple[str, ...]
    dropped_columns: tuple[str, ...]
    terms: tuple[Term, ...]
    blocks: tuple[Block, ...]
    rows: pd.Index = field(repr=False)
    n_dropped_na: int
    fixed_spec: object = field(repr=False, compare=False)
    fixed_columns_all: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]


def r_column_name(name: str) -> str:
    """formulaic's column name → R's: ``Intercept``→``(Intercept)``, ``f[T.b]``→``fb``."""
    if name == "Intercept":
        return "(Intercept)"
    import re

    return re.sub(r"\[(?:T\.)?(.*?)\]", r"\1", name)


def _check_columns(names: set[str], data: pd.DataFrame, formula: str) -> None:
    cols = [str(c) for c in data.columns]
    for name in sorted(names):
        if name not in data.columns:
            close = difflib.get_close_matches(name, cols, n=3, cutoff=0.6)
            if not close:
                close = [c for c in cols if c.lower() == name.lower()]
            raise UnknownColumnError(name, close)


def _required(expr: str, formula: str) -> set[str]:
    try:
        return set(formulaic.Formula(expr).required_variables)
    except formulaic.errors.FormulaicError as exc:
        raise FormulaSyntaxError(f"cannot parse {expr!r} in {formula!r}: {exc}") from None


def _factor_codes(col: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and labels of one grouping column, levels as R's factor()."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        col = col.cat.remove_unused_categories()
        labels = pd.Index([_label(c) for c in col.cat.categories], dtype=object)
        return col.cat.codes.to_numpy().astype(np.int64), labels
    values = col.to_numpy()
    if values.dtype.kind == "b":
        values = values.astype(np.int8)
    try:
        uniques, codes = np.unique(values, return_inverse=True)
    except TypeError:  # mixed types: compare as strings
        uniques, codes = np.unique(values.astype(str), return_inverse=True)
    labels = pd.Index([_label(u) for u in uniques], dtype=object)
    return codes.astype(np.int64).ravel(), labels


def _label(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"
    return str(value)


def _grouping(data: pd.DataFrame, factors: tuple[str, ...]) -> tuple[np.ndarray, pd.Index]:
    """Codes and labels of ``factor(f1:f2:...)``: combinations, first slowest, observed only."""
    parts = [_factor_codes(data[f]) for f in factors]
    if len(parts) == 1:
        return parts[0]
    key = np.zeros(len(data), dtype=np.int64)
    for codes, labels in parts:
        key = key * len(labels) + codes
    uniq, codes = np.unique(key, return_inverse=True)
    label_parts = []
    rem = uniq.copy()
    for codes_i, labels_i in reversed(parts):
        label_parts.append(np.asarray(labels_i, dtype=object)[rem % len(labels_i)])
        rem //= len(labels_i)
    label_parts.reverse()
    labels = pd.Index([":".join(t) for t in zip(*label_parts)], dtype=object)
    return codes.astype(np.int64).ravel(), labels


def _model_matrix(expr: str, data: pd.DataFrame, formula: str):
    try:
        mm = formulaic.model_matrix(expr, data, na_action="ignore")
    except formulaic.errors.FormulaicError as exc:
        raise FormulaSyntaxError(f"cannot build the model matrix of {expr!r} in {formula!r}: {exc}") from None
    except Exception as exc:  # errors raised by user transforms, e.g. log of a string
        raise DataError(f"evaluating {expr!r} failed: {type(exc).__name__}: {exc}") from None
    return mm


def _prune_aliased(X: np.ndarray, names: list[str], tol: float = 1e-7) -> list[int]:
    """Indices of the columns to keep: each column not in the span of those kept before it.

    Mirrors R's pivoting QR (dqrdc2, tol 1e-7) used by lme4's chkRank.drop.cols:
    a column that is (numerically) a combination of earlier ones is dropped.
    """
    keep: list[int] = []
    Q = np.zeros((X.shape[0], 0))
    for j in range(X.shape[1]):
        x = X[:, j]
        nrm = np.linalg.norm(x)
        if nrm == 0:
            continue
        r = x - Q @ (Q.T @ x)
        r = r - Q @ (Q.T @ r)
        rn = np.linalg.norm(r)
        if rn / nrm > tol:
            keep.append(j)
            Q = np.column_stack([Q, r / rn])
    return keep


def _make_unique(names: list[str]) -> list[str]:
    """R's make.unique: repeated names get .1, .2, ..."""
    seen: dict[str, int] = {}
    out = []
    for nm in names:
        if nm in seen:
            seen[nm] += 1
            out.append(f"{nm}.{seen[nm]}")
        else:
            seen[nm] = 0
            out.append(nm)
    return out


def build_design(formula: str | ParsedFormula, data: pd.DataFrame) -> Design:
    """Materialize ``formula`` on ``data`` (rows with missing values dropped)."""
    parsed = parse_formula(formula) if isinstance(formula, str) else formula
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    text = parsed.text
    if parsed.lhs.startswith("cbind("):
        raise FormulaError("a two-column (binomial) response needs glmer, which jaxmlm does not provide yet")

    needed = _required(parsed.fixed, text)
    for term in parsed.random:
        needed |= _required(term.expr, text)
        needed |= set(term.factors)
    _check_columns(needed, data, text)
    cols = sorted(needed, key=list(data.columns).index)
    frame = data.loc[:, cols]

    # Infinite values are refused (lme4 refuses them too); NaN/None are missing.
    for c in cols:
        s = frame[c]
        if s.dtype.kind == "f" and np.isinf(s.to_numpy()).any():
            k = int(np.isinf(s.to_numpy()).sum())
            raise DataError(f"column {c!r} has {k} infinite value(s); remove or recode them before fitting")
    complete = ~frame.isna().any(axis=1).to_numpy()
    n_dropped = int((~complete).sum())
    frame = frame.loc[complete]
    if len(frame) == 0:
        raise DataError("no complete rows: every row has a missing value in a variable of the formula")
    for c in frame.columns:  # R's model.frame drops unused levels
        if isinstance(frame[c].dtype, pd.CategoricalDtype):
            frame[c] = frame[c].cat.remove_unused_categories()

    # Response.
    lhs_cols = _required(parsed.lhs, text)
    for c in lhs_cols:
        s = frame[c]
        if not (pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)):
            raise DataError(
                f"the response {parsed.lhs!r} must be numeric, but column {c!r} has dtype {s.dtype}; "
                "recode it as numbers (a binary or count response needs a GLMM)"
            )
    mm = _model_matrix(parsed.fixed, frame, text)
    y_mat = np.asarray(mm.lhs, dtype=np.float64)
    if y_mat.ndim != 2 or y_mat.shape[1] != 1:
        raise DataError(f"the response {parsed.lhs!r} must be one numeric column")
    y = y_mat[:, 0]
    X_all = np.asarray(mm.rhs, dtype=np.float64)
    names_all = [r_column_name(c) for c in mm.rhs.columns]
    if not np.isfinite(y).all():
        raise DataError(f"the response {parsed.lhs!r} has non-finite values after transformation")
    if not np.isfinite(X_all).all():
        bad = [names_all[j] for j in range(X_all.shape[1]) if not np.isfinite(X_all[:, j]).all()]
        raise DataError(f"fixed-effects column(s) {bad} have non-finite values (e.g. log of 0)")
    keep = _prune_aliased(X_all, names_all)
    dropped = tuple(nm for j, nm in enumerate(names_all) if j not in keep)
    if dropped:
        warnings.warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
            f"column{'s' if len(dropped) > 1 else ''} / coefficient{'s' if len(dropped) > 1 else ''}: "
            f"{', '.join(dropped)}",
            RankDeficiencyWarning,
            stacklevel=3,
        )
    X = X_all[:, keep]
    n = len(y)

    # Random-effects terms, then lme4's ordering.
    raw = []
    for term in parsed.random:
        zm = _model_matrix(term.expr, frame, text)
        Z = np.asarray(zm, dtype=np.float64)
        if Z.shape[1] == 0:
            raise FormulaError(f"the random-effects term ({term.expr} | {term.group_name}) has no columns")
        if not np.isfinite(Z).all():
            raise DataError(f"random-effects term ({term.expr} | {term.group_name}) has non-finite values")
        codes, labels = _grouping(frame, term.factors)
        raw.append((term, Z, tuple(r_column_name(c) for c in zm.columns), codes, labels, zm.model_spec))
    nl = [len(r[4]) for r in raw]
    order = list(range(len(raw)))
    if any(b > a for a, b in zip(nl, nl[1:])):
        order = sorted(range(len(raw)), key=lambda i: nl[i])[::-1]  # rev(order(nl)): Python sort is stable
    raw = [raw[i] for i in order]

    for term, Z, cols_t, codes, labels, _ in raw:
        if len(labels) < 2:
            raise GroupingError(
                f"grouping factor {term.group_name!r} has {len(labels)} level after removing missing "
                "values; grouping factors must have > 1 sampled level"
            )
        if len(labels) >= n:
            raise GroupingError(
                f"number of levels of each grouping factor must be < number of observations "
                f"(problems: {term.group_name}: {len(labels)} levels, {n} observations)"
            )
        if len(labels) * len(cols_t) >= n:
            raise GroupingError(
                f"number of observations (={n}) <= number of random effects "
                f"(={len(labels) * len(cols_t)}) for term ({' + '.join(cols_t)} | {term.group_name}); "
                "the random-effects parameters and the residual variance are probably unidentifiable"
            )

    vc_names = _make_unique([r[0].group_name for r in raw])
    # Amalgamate terms on the same grouping factor into blocks; blocks by decreasing levels.
    block_of: dict[str, list[int]] = {}
    for i, r in enumerate(raw):
        block_of.setdefault(r[0].group_name, []).append(i)
    groups = sorted(block_of, key=lambda g: len(raw[block_of[g][0]][4]), reverse=True)
    terms: list[Term | None] = [None] * len(raw)
    blocks = []
    for b, g in enumerate(groups):
        idx = block_of[g]
        off = 0
        for i in idx:
            term, Z, cols_t, codes, labels, spec = raw[i]
            terms[i] = Term(g, vc_names[i], cols_t, b, off, spec)
            off += len(cols_t)
        first = raw[idx[0]]
        blocks.append(
            Block(
                group=g,
                Z=np.column_stack([raw[i][1] for i in idx]),
                codes=first[3],
                levels=first[4],
                columns=tuple(c for i in idx for c in raw[i][2]),
                terms=tuple(idx),
                factors=first[0].factors,
            )
        )
    return Design(
        formula=parsed,
        y=y,
        X=X,
        fixef_names=tuple(names_all[j] for j in keep),
        dropped_columns=dropped,
        terms=tuple(terms),
        blocks=tuple(blocks),
        rows=frame.index,
        n_dropped_na=n_dropped,
        fixed_spec=mm.rhs.model_spec,
        fixed_columns_all=tuple(names_all),
    )

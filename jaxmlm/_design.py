"""Stage 2 — terms + pandas data → design (y, X, Z blocks, group codes).

Plain numpy/pandas: the design's data classes and the rules both paths share
(:func:`_assemble`). Formulas made of plain columns (numeric ones, and in the
fixed part with an intercept, factors) are built directly by the fast path of
:mod:`jaxmlm._frontend` (whose :func:`~jaxmlm._frontend.build_design` is the
entry); everything else — transforms, interactions, contrasts — by formulaic
in :mod:`jaxmlm._formulaic`. Both paths keep a frozen
:class:`formulaic.ModelSpec` per model matrix that ``predict(newdata)``
reuses (the fast path makes it on first use).

Rows and variables are handled as R's ``model.frame`` does for lme4:

* transforms are evaluated on all rows, then rows with a missing value in any
  variable of the formula — or a NaN made by a transform, such as ``log(-1)``
  — are dropped (so ``scale(x)`` is centred on every row with an ``x``, as in
  R); infinite values in the rows kept are refused;
* strings become factors with sorted levels (by code point, as R sorts in the
  C locale), booleans factors with levels ``FALSE``/``TRUE``, pandas
  Categoricals keep their category order; levels unused in the rows kept are
  dropped (``drop.unused.levels``), so the first *used* level is the reference.

The grouping factors and their level order follow lme4:

* a column's levels are its pandas categories (unused ones dropped), else the
  sorted unique values, labelled as R's ``as.character`` labels them;
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

import copy
import datetime
import difflib
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._errors import (
    DataError,
    DataWarning,
    FormulaError,
    GroupingError,
    RankDeficiencyWarning,
    UnknownColumnError,
    warn_user,
)
from ._covariance import Structure, make_structure
from ._formula import ParsedFormula, RandomTerm, _mask_quoted

__all__ = ["Term", "Block", "Design", "check_levels", "level_rows", "r_column_name", "warn_dropped"]


@dataclass(frozen=True)
class Term:
    """One random-effects term in lme4's order.

    Attributes: ``group`` (grouping factor label, e.g. ``"cask:batch"``),
    ``vc_name`` (label in VarCorr, made unique as R's ``make.unique``),
    ``columns`` (names of the k model-matrix columns), ``block`` (index of
    the engine block holding it), ``offset`` (first column in that block),
    ``cov`` its covariance structure (:mod:`jaxmlm._covariance`).
    """

    group: str
    vc_name: str
    columns: tuple[str, ...]
    block: int
    offset: int
    _spec: object = field(repr=False, compare=False)
    cov: Structure = None  # type: ignore[assignment]  # set in __post_init__ when not given

    def __post_init__(self):
        if self.cov is None:
            object.__setattr__(self, "cov", make_structure("us", len(self.columns)))

    @property
    def k(self) -> int:
        return len(self.columns)

    @property
    def spec(self):
        """formulaic's ModelSpec of the term's model matrix (what ``predict(newdata)`` re-evaluates)."""
        return _resolve(self._spec)


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
        return len(self.columns)

    @property
    def nlev(self) -> int:
        return len(self.levels)


@dataclass(frozen=True)
class Design:
    """The materialized model: everything later stages need, as numpy arrays.

    ``y`` (n,), ``X`` (n, p), ``terms`` in lme4 order, ``blocks`` in engine
    order (decreasing number of levels; blocks[0] is the block-diagonal one).
    ``rows`` are the data's index labels of the rows used; ``n_dropped_na``
    counts the rows dropped for missing values; ``frame`` is a copy of the
    data's rows used and the formula's columns, as given (lme4's model frame),
    from which refits (ML refits for anova, reduced models for ranova) start;
    ``positions`` the rows' positions in the data (None: every row).

    Prior weights and offsets (lme4's ``weights=`` and ``offset=``, and
    ``offset(expr)`` terms): ``weights`` (n,) or None; ``formula_offset`` the
    sum of the ``offset()`` columns (named ``offset_columns`` in
    ``fixed_columns_all``, not in X); ``arg_offset`` the ``offset=``
    argument's values, ``offset_column`` its column name when it was given as one.
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
    _fixed_spec: object = field(repr=False, compare=False)
    fixed_columns_all: tuple[str, ...] = ()
    _frame: object = field(default=None, repr=False, compare=False)
    positions: np.ndarray | None = field(default=None, repr=False)
    offset_columns: tuple[str, ...] = ()
    formula_offset: np.ndarray | None = field(default=None, repr=False)
    weights: np.ndarray | None = field(default=None, repr=False)
    arg_offset: np.ndarray | None = field(default=None, repr=False)
    offset_column: str | None = None
    nobs_total: int | None = None
    fingerprint: int | None = None

    @property
    def held(self) -> bool:
        """Whether the design holds its rows (False for a fit from data in pieces, e.g. a Dask frame:
        then ``y``, ``X`` and the blocks' ``Z`` and ``codes`` are None, ``nobs_total`` counts the rows
        and ``fingerprint`` identifies them: :class:`jaxmlm._partitioned.Structure`)."""
        return self.y is not None

    @property
    def frame(self) -> pd.DataFrame | None:
        """The data's rows used and the formula's columns, as given (lme4's model frame)."""
        return _resolve(self._frame)

    @property
    def fixed_spec(self):
        """formulaic's ModelSpec of the fixed-effects model matrix, before aliased columns are dropped."""
        return _resolve(self._fixed_spec)

    @property
    def offset(self) -> np.ndarray | None:
        """The known part of the linear predictor: ``offset()`` terms plus the ``offset=`` argument (None: none)."""
        parts = [o for o in (self.formula_offset, self.arg_offset) if o is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    @property
    def n(self) -> int:
        return self.y.shape[0] if self.y is not None else self.nobs_total

    @property
    def p(self) -> int:
        return len(self.fixef_names)


_SYNTACTIC = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


# ---- column names ----------------------------------------------------------------------------


def r_column_name(name: str, variables: tuple[str, ...] | list[str] = ()) -> str:
    """formulaic's column name → R's.

    ``Intercept`` → ``(Intercept)``, ``f[T.b]`` → ``fb``, ``poly(x, 2)[1]`` →
    ``poly(x, 2)1``, ``I(x ** 2)`` → ``I(x^2)``; a non-syntactic variable
    among ``variables`` is backquoted as R prints it (```my x```), a
    syntactic one never is.
    """
    if name == "Intercept":
        return "(Intercept)"
    for v in sorted((v for v in variables if not _SYNTACTIC.fullmatch(v)), key=len, reverse=True):
        # formulaic labels a looked-up column by its bare name, delimited by ':' or a level's '['.
        name = re.sub(rf"(^|:){re.escape(v)}(?=$|:|\[)", lambda m: f"{m.group(1)}`{v}`", name)
    name = re.sub(r"`([A-Za-z_.][A-Za-z0-9_.]*)`", r"\1", name)
    name = re.sub(r"\[(?:T\.)?(.*?)\]", r"\1", name)
    return name.replace(" ** ", "^")


# ---- variables of the formula ------------------------------------------------------------------


def _quote_columns(expr: str, columns: set[str]) -> str:
    """Backquote R names with dots that are columns (``Sepal.Length``).

    formulaic evaluates calls as Python, where ``log(Sepal.Length)`` would
    read attribute ``Length`` of a column ``Sepal``.
    """
    masked = _mask_quoted(expr)
    out, last = [], 0
    for m in re.finditer(r"(?<![\w.`])[A-Za-z_.][\w.]*", masked):
        name = m.group(0)
        if "." in name and name in columns and not re.match(r"\s*\(", masked[m.end() :]):
            out += [expr[last : m.start()], f"`{name}`"]
            last = m.end()
    return "".join(out) + expr[last:]


def _unknown_column(name: str, columns: set[str]) -> None:
    cols = sorted(columns)
    close = difflib.get_close_matches(name, cols, n=3, cutoff=0.6)
    if not close:
        close = [c for c in cols if c.lower() == name.lower()]
    raise UnknownColumnError(name, close)


# ---- data preparation ------------------------------------------------------------------------------


def _sorted_levels(values) -> list:
    uniq = list(pd.unique(values))
    try:
        return sorted(uniq)
    except TypeError:  # mixed types: compare as strings
        return sorted(uniq, key=str)


def _prepare(col: pd.Series, response: bool, name: str | None = None) -> pd.Series:
    """One data column as formulaic and R's model.frame should see it (a new Series).

    Numbers stay numbers (nullable ones become float with NaN; integers stay
    integers here, for the grouping labels, and become doubles before formulaic
    evaluates anything: see :func:`_doubles`); booleans become the factor R
    makes of a logical (levels FALSE, TRUE; a response stays 0/1); strings
    become factors with sorted levels; Categoricals are kept. A column mixing
    numbers and text (object dtype) is a factor of R's ``as.character`` labels,
    so ``1`` and ``"1"`` are one level, as in R's character column; with
    ``name`` (the column is a predictor) that draws a :class:`DataWarning`.
    """
    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype) or (isinstance(dtype, np.dtype) and dtype.kind in "iuf"):
        return col  # the common cases, before the costlier inference below
    kind = pd.api.types.infer_dtype(col, skipna=True)
    if pd.api.types.is_bool_dtype(dtype) or kind == "boolean":
        if response:
            return pd.Series(col.to_numpy(dtype=np.float64, na_value=np.nan), index=col.index)
        labels = col.map({True: "TRUE", False: "FALSE"}, na_action="ignore")
        return pd.Series(pd.Categorical(labels, categories=["FALSE", "TRUE"]), index=col.index)
    if pd.api.types.is_numeric_dtype(dtype) or kind in ("integer", "floating", "mixed-integer-float", "decimal"):
        return pd.Series(col.to_numpy(dtype=np.float64, na_value=np.nan), index=col.index)
    if response:
        return col
    if kind == "string":
        return _string_factor(col)
    values = col.to_numpy(dtype=object)
    missing = pd.isna(values)
    if kind in ("mixed-integer", "mixed"):
        if name is not None:
            _warn_mixed(name, values[~missing])
        values = values.copy()
        values[~missing] = [_label(v) for v in values[~missing]]
    present = values[~missing]
    return pd.Series(pd.Categorical(values, categories=_sorted_levels(present)), index=col.index)


def _string_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (−1: missing) and the sorted distinct values of a column of text: R's factor
    of a character vector, by hashing (pandas' factorize) and sorting only the distinct values, as
    data read from a CSV have their group ids (100k rows, 1,000 ids: ~4 ms, against ~45 ms for
    matching every row against the sorted levels)."""
    # The column's own array: pd.factorize(Series) wraps the same call in ~45 µs of dispatch
    # and an Index of the uniques (half of it for sleepstudy's 18 ids under pandas 3).
    codes, uniques = col.array.factorize()
    uniques = np.asarray(uniques, dtype=object)
    order = np.argsort(uniques, kind="stable")  # Python's str order, as sorted()
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[order] = np.arange(len(uniques))
    codes = np.where(codes >= 0, rank[np.maximum(codes, 0)], -1) if len(uniques) else codes.astype(np.int64)
    return codes, uniques[order]


def _is_text(col: pd.Series) -> bool:
    """Whether a column holds text only (pandas' string dtype, or object holding str and missing)."""
    dtype = col.dtype
    if isinstance(dtype, pd.StringDtype):
        return True
    return dtype == object and pd.api.types.infer_dtype(col, skipna=True) == "string"


def _string_factor(col: pd.Series) -> pd.Series:
    """A column of text as a factor with sorted levels (:func:`_string_codes`)."""
    codes, levels = _string_codes(col)
    # The dtype built from an object Index: from a list of levels pandas infers and
    # validates them again (a third of a sleepstudy fit's front end).
    dtype = pd.CategoricalDtype(pd.Index(levels, dtype=object))
    return pd.Series(pd.Categorical.from_codes(codes, dtype=dtype), index=col.index)


@dataclass(frozen=True)
class Coded:
    """A grouping column already coded (:func:`_string_codes`): codes per row (−1: missing) and
    its levels. A text column that only groups never becomes a pandas Categorical — its codes
    are what the design needs, and building the Categorical cost more than coding it (a
    sleepstudy fit with text subject ids: ~0.1 ms of ~1 ms)."""

    codes: np.ndarray
    levels: np.ndarray

    def __getitem__(self, rows: np.ndarray) -> "Coded":
        return Coded(self.codes[rows], self.levels)


@dataclass(frozen=True)
class Plain:
    """A plain numeric column of small data as a private copy of its array (:func:`take_columns`):
    what the design's fast path reads of a Series (``dtype``, ``to_numpy()``, rows by mask)."""

    values: np.ndarray

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def to_numpy(self, dtype=None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype, copy=False)

    def __getitem__(self, rows: np.ndarray) -> "Plain":
        return Plain(self.values[rows])


PLAIN_ROWS = 4096
"""Data of up to this many rows have their plain numeric columns copied (:func:`take_columns`)."""


def take_columns(data: pd.DataFrame, cols) -> dict:
    """The columns ``cols`` of ``data``: for data of up to :data:`PLAIN_ROWS` rows, each plain
    numeric (numpy int, unsigned or float) column as a :class:`Plain` copy of its array, every
    other column as a pandas Series.

    Why: pandas' ``DataFrame.__getitem__`` builds a Series at ~25–30 µs a column when it runs
    between two fits (its code is cold then), ~70 µs of a ~0.8 ms warm sleepstudy fit for three
    columns; reading the array and copying a few thousand numbers costs a few µs. The copy is the
    design's own, so changes to ``data`` after the fit never reach it (a Series is a copy-on-write
    snapshot of the same; larger data keep the Series, which share the frame's memory)."""
    get = getattr(data, "_get_column_array", None)  # pandas' own accessor (not public API)
    columns = data.columns
    if get is None or len(data) > PLAIN_ROWS or type(columns) is not pd.Index or not columns.is_unique:
        return {c: data[c] for c in cols}  # (a name of several columns, or of a MultiIndex: as pandas does)
    out = {}
    for c in cols:
        values = get(columns.get_loc(c))
        is_plain = isinstance(values, np.ndarray) and values.dtype.kind in "iuf" and values.ndim == 1
        out[c] = Plain(values.copy()) if is_plain else data[c]
    return out


def series_of(col, index: pd.Index) -> pd.Series:
    """A column taken by :func:`take_columns` as a Series on ``index``."""
    return pd.Series(col.values, index=index, copy=False) if isinstance(col, Plain) else col


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _warn_mixed(name: str, present: np.ndarray) -> None:
    """Warn that a predictor column mixing numbers and text is fitted as a factor (R reads it as text)."""
    numbers = np.fromiter((_is_number(v) for v in present), dtype=bool, count=len(present))
    if not numbers.any() or numbers.all():
        return
    text = list(pd.unique(present[~numbers]))
    shown = ", ".join(repr(v) for v in text[:5]) + (f" and {len(text) - 5} more" if len(text) > 5 else "")
    warn_user(
        f"column {name!r} mixes numbers and values that are not numbers ({shown}); it is used as a factor "
        "(one coefficient per level, as R does with such a column). If it holds numbers, convert it first, "
        f"e.g. df[{name!r}] = pd.to_numeric(df[{name!r}], errors='coerce') (what is not a number becomes missing)",
        DataWarning,
    )


def _date_like(col: pd.Series) -> str | None:
    """``"dates"`` or ``"time spans"`` when a column holds datetimes/dates or timedeltas, else None."""
    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return None  # an explicit factor of dates is a factor
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "dates"
    if pd.api.types.is_timedelta64_dtype(dtype):
        return "time spans"
    if dtype == object:
        values = col.to_numpy()
        present = pd.notna(values)
        if not present.any():
            return None
        value = values[int(np.argmax(present))]  # the first value tells; infer_dtype (a pass) confirms
        if isinstance(value, (datetime.date, datetime.timedelta, np.datetime64, np.timedelta64)):
            kind = pd.api.types.infer_dtype(col, skipna=True)
            if kind in ("datetime", "datetime64", "date"):
                return "dates"
            if kind in ("timedelta", "timedelta64"):
                return "time spans"
    return None


def _refuse_dates(col: pd.Series, name: str, what: str) -> None:
    """lme4 fits one numeric slope for a Date/difftime predictor; a datetime here would become a factor."""
    kind = _date_like(col)
    if kind is None:
        return
    if kind == "dates":
        how = f"days since the first date: df[{name!r}] = (df[{name!r}] - df[{name!r}].min()).dt.days"
    else:
        how = f"days: df[{name!r}] = df[{name!r}].dt.days (or .dt.total_seconds() for seconds)"
    raise DataError(
        f"column {name!r} in {what} holds {kind} (dtype {col.dtype}), which jaxmlm does not turn into numbers "
        f"(lme4 fits one numeric slope for a Date or difftime; used as they are they would become a factor with "
        f"one level per value). Convert it to numbers, e.g. {how}. (As a grouping factor a date column is fine.)"
    )


def _doubles(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with integer columns as float64 (a new frame when any), for formulaic to evaluate.

    R computes formulas in double; numpy would compute ``I(x*x)`` or ``a:b`` in
    the column's integer type, which overflows silently.
    """
    ints = {c: np.float64 for c, dt in frame.dtypes.items() if isinstance(dt, np.dtype) and dt.kind in "iu"}
    return frame.astype(ints) if ints else frame


def _restrict_levels(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """Categoricals limited to the levels seen in rows ``keep`` (R's drop.unused.levels)."""
    out = {}
    for c in frame.columns:
        s = frame[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            codes = s.cat.codes.to_numpy()
            seen = np.zeros(len(s.cat.categories), dtype=bool)
            seen[codes[keep & (codes >= 0)]] = True
            if not seen.all():
                s = s.cat.set_categories(s.cat.categories[seen])
        out[c] = s
    return pd.DataFrame(out, index=frame.index)


# ---- model matrices --------------------------------------------------------------------------------


def _prune_aliased(X: np.ndarray, names: list[str], tol: float = 1e-7) -> list[int]:
    """Indices of the columns to keep: each column not in the span of those kept before it.

    Mirrors R's pivoting QR (dqrdc2, tol 1e-7) used by lme4's chkRank.drop.cols:
    a column that is (numerically) a combination of earlier ones is dropped,
    so of two aliased columns the later one goes.

    The usual answer — every column clearly independent — is read off the
    Cholesky factor of the p×p Gram matrix (one pass over X); only when some
    column's relative residual is below 1e-3 there, where the Gram matrix's
    squared condition number could blur the 1e-7 threshold, is the decision
    made by Gram-Schmidt (twice) on the columns themselves.
    """
    p = X.shape[1]
    if p == 0:
        return []
    G = X.T @ X
    norms2 = G.diagonal()
    if norms2.min() > 0:
        try:
            Lg = np.linalg.cholesky(G)
        except np.linalg.LinAlgError:
            Lg = None
        if Lg is not None and (Lg.diagonal() ** 2 > 1e-6 * norms2).all():
            return list(range(p))
    keep: list[int] = []
    Q = np.empty((X.shape[0], p), order="F")  # orthonormal basis of the kept columns
    for j in range(p):
        x = X[:, j]
        nrm = np.linalg.norm(x)
        if nrm == 0:
            continue
        B = Q[:, : len(keep)]
        r = x - B @ (B.T @ x)
        r = r - B @ (B.T @ r)
        rn = np.linalg.norm(r)
        if rn / nrm > tol:
            Q[:, len(keep)] = r / rn
            keep.append(j)
    return keep


# ---- grouping factors --------------------------------------------------------------------------------


def _label(value) -> str:
    """A level label as R's ``as.character`` writes it."""
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (float, np.floating)):
        return _r_number(float(value))
    return str(value)


def _r_number(v: float) -> str:
    """R's as.character(<double>): up to 15 significant digits, fixed unless scientific is shorter."""
    if np.isnan(v):
        return "NaN"
    if np.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    target = float(f"{v:.15g}")
    digits = next(d for d in range(1, 16) if float(f"{v:.{d}g}") == target)
    sci = f"{target:.{digits - 1}e}"
    exponent = int(sci.split("e")[1])
    fixed = f"{target:.{max(0, digits - 1 - exponent)}f}"
    return fixed if len(fixed) <= len(sci) else sci


#: Label indexes of integer levels already made, by the levels' bytes (see :func:`_labels`).
_INT_LABELS: dict[tuple[str, bytes], pd.Index] = {}
_INT_LABELS_MAX = 64  # entries kept (the oldest goes first)
_INT_LABELS_LEVELS = 4096  # larger level sets are not kept


def _labels(values) -> pd.Index:
    """Level labels as R's ``as.character`` writes them (vectorized for the common dtypes).

    Integer levels (group ids as read from a CSV file) are the common case, and a refit,
    an ``anova`` or a bootstrap asks for the same levels again: their labels are kept,
    keyed by the levels' bytes, and each design gets a view of them (its own name). Making
    one cost ~35 µs of a ~1 ms sleepstudy fit under pandas 3."""
    kind = getattr(values.dtype, "kind", "O")
    if kind in "iu":
        values = np.asarray(values)
        if len(values) > _INT_LABELS_LEVELS:
            return pd.Index(values.astype(str), dtype=object)
        key = (values.dtype.str, values.tobytes())
        labels = _INT_LABELS.get(key)
        if labels is None:
            labels = pd.Index(values.astype(str), dtype=object)
            if len(_INT_LABELS) >= _INT_LABELS_MAX:
                try:
                    del _INT_LABELS[next(iter(_INT_LABELS))]
                except (KeyError, RuntimeError, StopIteration):  # another thread took it first
                    pass
            _INT_LABELS[key] = labels
        # a new Index on the same (immutable) labels: a name set on a design's levels stays there
        # (``view()``: ~4 µs between two fits, where ``copy()`` took ~14 µs)
        return labels.view()
    items = values.tolist()
    if all(type(v) is str for v in items):
        return pd.Index(items, dtype=object)
    return pd.Index([_label(v) for v in items], dtype=object)


def _factor_codes(col: pd.Series | Coded) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and labels of one grouping column, levels as R's factor()."""
    if isinstance(col, Coded):
        codes, levels = _observed(col.codes, col.levels)
        return codes, pd.Index(levels, dtype=object)  # distinct text: nothing to merge
    if isinstance(col.dtype, pd.CategoricalDtype):
        cat = col.array
        codes, cats = _observed(cat.codes.astype(np.int64), cat.categories)
        return _merge_labels(codes, _labels(cats))
    values = col.to_numpy()
    if values.dtype.kind in "iu" and values.size:
        lo, hi = values.min(), values.max()
        if int(hi) - int(lo) <= 4 * values.size:  # counting instead of sorting
            # Shift in the unsigned type of the column's width: modular arithmetic, exact for
            # 0 <= value - lo < 2**bits (int8 -100..100, uint64 ids >= 2**63 alike).
            unsigned = np.dtype(f"u{values.dtype.itemsize}")
            shifted = values.view(unsigned) - lo.astype(unsigned)
            shifted = shifted.view(np.int64) if unsigned.itemsize == 8 else shifted.astype(np.int64)
            present = np.bincount(shifted, minlength=int(hi) - int(lo) + 1) > 0
            codes = (np.cumsum(present) - 1)[shifted]
            uniques = (np.flatnonzero(present).astype(unsigned) + lo.astype(unsigned)).astype(values.dtype)
            return codes.astype(np.int64), _labels(uniques)
    try:
        uniques, codes = np.unique(values, return_inverse=True)
    except TypeError:  # mixed types: compare as R's labels
        uniques, codes = np.unique(np.asarray([_label(v) for v in values], dtype=object), return_inverse=True)
    return _merge_labels(codes.astype(np.int64).ravel(), _labels(uniques))


def _observed(codes: np.ndarray, levels):
    """Codes and levels without the levels no row uses (R's droplevels); −1 (missing) stays."""
    used = np.bincount(codes[codes >= 0] if codes.size and codes.min() < 0 else codes, minlength=len(levels)) > 0
    if used.all():
        return codes, levels
    return np.where(codes >= 0, np.cumsum(used)[codes] - 1, -1), levels[used]


def _merge_labels(codes: np.ndarray, labels: pd.Index) -> tuple[np.ndarray, pd.Index]:
    """Levels with the same label as one level, as R's factor() matches values by ``as.character``.

    (Doubles 0.1 + 0.2 and 0.3 are both "0.3" at R's 15 significant digits.)
    The first of the merged levels keeps its place; codes of -1 (missing) stay.
    """
    if labels.is_unique:
        return codes, labels
    new, uniques = pd.factorize(np.asarray(labels, dtype=object))
    merged = np.where(codes >= 0, new[np.maximum(codes, 0)], -1) if codes.size else codes
    return merged.astype(np.int64), pd.Index(uniques, dtype=object)


def _grouping(data: pd.DataFrame, factors: tuple[str, ...]) -> tuple[np.ndarray, pd.Index]:
    """Codes and labels of ``factor(f1:f2:...)``: combinations, first slowest, observed only."""
    parts = [_factor_codes(data[f]) for f in factors]
    if len(parts) == 1:
        return parts[0]
    key = np.zeros(len(parts[0][0]), dtype=np.int64)
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


def _check_grouping(raw: list, n: int, glmm: bool = False) -> None:
    """lme4's checkNlevels then checkZdims, in lme4's order and wording (raw is in lme4 term order)."""
    check_levels([(term.group_name, term.expr, len(cols), len(labels)) for term, _, cols, _, labels, _ in raw], n,
                 glmm)


def check_levels(terms: list[tuple[str, str, int, int]], n: int, glmm: bool = False) -> None:
    """lme4's checkNlevels and checkZdims for (group, term text, columns, levels) of each term in
    lme4's order and ``n`` rows: also for data held in pieces, where only the counts are known.
    ``glmm``: glmerControl's defaults, which ignore the counts of levels and random effects
    against observations (an observation-level random effect is a GLMM's overdispersion term)."""
    nlev: dict[str, int] = {}
    for group, _, _, levels in terms:
        nlev.setdefault(group, levels)
    few = [g for g, nl in nlev.items() if nl < 2]
    if few:
        detail = "; ".join(f"{g!r} has {nlev[g]} level{'s' if nlev[g] != 1 else ''}" for g in few)
        raise GroupingError(f"grouping factors must have > 1 sampled level ({detail} after removing missing values)")
    if glmm:
        return
    many = [g for g, nl in nlev.items() if nl >= n]
    if many:
        detail = "; ".join(f"{g!r} has {nlev[g]} levels" for g in many)
        raise GroupingError(
            "number of levels of each grouping factor must be < number of observations "
            f"(problems: {', '.join(many)}): {detail} for {n} observations"
        )
    for group, expr, ncols, levels in terms:
        n_re = levels * ncols
        if n <= n_re:
            raise GroupingError(
                f"number of observations (={n}) <= number of random effects (={n_re}) for term "
                f"({' '.join(expr.split())} | {group}); the random-effects parameters and the "
                "residual variance (or scale parameter) are probably unidentifiable"
            )


def warn_dropped(dropped: tuple[str, ...]) -> None:
    """lme4's warning for aliased fixed-effects columns it drops (chkRank.drop.cols' wording)."""
    warn_user(
        f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
        f"column{'s' if len(dropped) > 1 else ''} / coefficient{'s' if len(dropped) > 1 else ''}: "
        f"{', '.join(dropped)}",
        RankDeficiencyWarning,
    )


def level_rows(codes: np.ndarray, nlev: int) -> list[np.ndarray]:
    """The rows of each level (in row order), from one stable sort of the codes."""
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(nlev + 1))
    return [order[starts[g]:starts[g + 1]] for g in range(nlev)]


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


# ---- the design ------------------------------------------------------------------------------------------


def _term_start(term: RandomTerm) -> int:
    return term.span[0] if term.span else 0


def _nonfinite(matrix: np.ndarray, names, what: str) -> None:
    """Refuse infinite values in the rows used (lme4 stops on them too)."""
    if np.isfinite(matrix).all():
        return
    bad = ~np.isfinite(matrix)
    cols = [f"{names[j]!r} ({int(bad[:, j].sum())} row(s))" for j in range(matrix.shape[1]) if bad[:, j].any()]
    raise DataError(
        f"{what} has infinite values in {', '.join(cols)}, e.g. from log(0) or an infinite value in the "
        "data; remove or recode them before fitting"
    )


class _Deferred:
    """A value computed on first use and kept (formulaic specs of a design built by the fast path)."""

    __slots__ = ("_make", "_value")

    def __init__(self, make):
        self._make = make
        self._value = None

    def get(self):
        if self._make is not None:
            self._value = self._make()
            self._make = None
        return self._value


def _resolve(spec):
    return spec.get() if isinstance(spec, _Deferred) else spec


def _check_ar1(term: RandomTerm, columns: tuple[str, ...], spec) -> None:
    """ar1() needs the indicator columns of one factor (its levels the ordered, equally spaced times)."""
    where = f"ar1({term.expr} | {term.group_name})"
    spec = _resolve(spec)
    kinds = {str(f): state[0] for f, state in spec.encoder_state.items()}
    from formulaic.parser.types import Factor

    factor_terms = [t for t in spec.terms if t.factors and not all(f.expr == "1" for f in t.factors)]
    intercept = any(not t.factors or all(f.expr == "1" for f in t.factors) for t in spec.terms)
    if (intercept or len(factor_terms) != 1 or len(kinds) != 1
            or next(iter(kinds.values())) is not Factor.Kind.CATEGORICAL):
        raise FormulaError(
            f"{where}: ar1() correlates the levels of one factor (times in order), written without an intercept, "
            "e.g. ar1(0 + time | g) with time a factor; for a numeric time use factor(time)")
    state = next(iter(spec.encoder_state.values()))[1]
    levels = [str(v) for v in state.get("categories", [])]
    try:
        values = np.array([float(v) for v in levels])
    except ValueError:
        return  # labels that are not numbers: their order is the time order
    steps = np.diff(values)
    if len(steps) and (np.any(steps <= 0) or not np.allclose(steps, steps[0])):
        raise DataError(
            f"{where}: ar1() needs equally spaced times, but the levels of its factor are {', '.join(levels)}; "
            "add the missing times as levels (pd.Categorical with every time) or use cs() or us()")


def _no_complete_rows() -> DataError:
    return DataError("no complete rows: every row has a missing value in a variable of the formula")


#: pandas ≥ 3 always copies on write; 2.x only with the option set.
_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3 or pd.options.mode.copy_on_write is True


# ---- both paths end here -----------------------------------------------------------------------------


def _assemble(parsed, data, cols, complete, y, X_all, names_all, raw, fixed_spec, series=None,
              template: bool = False) -> Design:
    """lme4's term order and checks, aliased columns, blocks: the design from its matrices.

    ``y`` (n,), ``X_all`` (n, p_all) and each raw term's Z are already cut to
    the ``complete`` rows; ``raw`` holds (term, Z, column names, codes, level
    labels, spec) per random-effects term in formula order; ``series``, if given, the
    columns ``cols`` of ``data`` as Series already taken from it. ``template``: ``data``
    holds one row per combination of levels of a data set held in pieces
    (:mod:`jaxmlm._partitioned`), so the checks that count rows and the aliased-column
    test, which need every row, are left to the caller.
    """
    n = len(y)
    nl = [len(r[4]) for r in raw]
    order = list(range(len(raw)))
    if any(b > a for a, b in zip(nl, nl[1:])):
        order = sorted(range(len(raw)), key=lambda i: nl[i])[::-1]  # rev(order(nl)): Python sort is stable
    raw = [raw[i] for i in order]
    if not template:
        _check_grouping(raw, n, getattr(parsed, "glmm", False))

    # offset() columns are part of the linear predictor with coefficient 1, not of X.
    offsets = [j for j, nm in enumerate(names_all) if nm.startswith("offset(")]
    formula_offset = None
    names_fit = list(names_all)
    if offsets:
        formula_offset = X_all[:, offsets].sum(axis=1)
        rest = [j for j in range(X_all.shape[1]) if j not in offsets]
        X_all, names_fit = X_all[:, rest], [names_all[j] for j in rest]
    # Fixed effects: drop aliased columns as lme4's chkRank.drop.cols does.
    keep = list(range(X_all.shape[1])) if template else _prune_aliased(X_all, names_fit)
    dropped = tuple(nm for j, nm in enumerate(names_fit) if j not in keep)
    if dropped:
        warn_dropped(dropped)
    X = X_all if len(keep) == X_all.shape[1] else X_all[:, keep]

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
            if term.structure == "ar1":
                _check_ar1(term, cols_t, spec)
            terms[i] = Term(g, vc_names[i], cols_t, b, off, spec, make_structure(term.structure, len(cols_t), term.hom))
            off += len(cols_t)
        first = raw[idx[0]]
        blocks.append(
            Block(
                group=g,
                Z=raw[idx[0]][1] if len(idx) == 1 else np.column_stack([raw[i][1] for i in idx]),
                codes=first[3],
                levels=first[4],
                columns=tuple(c for i in idx for c in raw[i][2]),
                terms=tuple(idx),
                factors=first[0].factors,
            )
        )
    every = bool(complete.all())
    if _COPY_ON_WRITE:
        # A shallow copy, or a Series taken from `data`, is a snapshot under copy-on-write:
        # later changes to `data` do not reach it. Cutting it to the formula's columns and
        # rows (pandas' slowest step for small data) waits until a refit asks for the frame.
        if series is not None:
            index, columns = data.index, data.columns  # both immutable
            attrs = copy.deepcopy(data.attrs) if data.attrs else {}

            def from_series():
                out = pd.DataFrame({c: series_of(series[c], index) for c in cols}, index=index, copy=False)
                out.columns = columns[columns.get_indexer(cols)]  # the labels' dtype as in `data`
                out.attrs = attrs
                return out

            snapshot = _Deferred(from_series)
        else:
            shallow = data.copy(deep=False)
            snapshot = _Deferred(lambda: shallow[cols])
        frame = _Deferred(lambda: snapshot.get() if every else snapshot.get().iloc[np.flatnonzero(complete)])
    else:
        frame = data[cols] if every else data[cols].iloc[np.flatnonzero(complete)]
    return Design(
        formula=parsed,
        y=y,
        X=X,
        fixef_names=tuple(names_fit[j] for j in keep),
        dropped_columns=dropped,
        terms=tuple(terms),
        blocks=tuple(blocks),
        rows=data.index if every else data.index[complete],
        n_dropped_na=int(len(data) - n),
        _fixed_spec=fixed_spec,
        fixed_columns_all=tuple(names_all),
        _frame=frame,
        positions=None if every else np.flatnonzero(complete),
        offset_columns=tuple(names_all[j] for j in offsets),
        formula_offset=formula_offset,
    )

"""Stage 2's entry — formula + pandas data → design: the fast path, the formulaic path, prior weights.

:func:`build_design` takes formulas of plain columns through a fast path
built here with numpy (formulaic's specs made only when ``predict`` asks),
everything else through :mod:`jaxmlm._formulaic`; both end in
:func:`jaxmlm._design._assemble`, which holds the rules they share (lme4's
term order, aliased columns, blocks). Prior weights and the ``offset=``
argument are attached to the finished design (:func:`with_prior`).
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
import re

import numpy as np
import pandas as pd

from ._design import (
    Coded,
    Design,
    _assemble,
    _Deferred,
    _grouping,
    _is_number,
    _is_text,
    _no_complete_rows,
    _nonfinite,
    _prepare,
    _restrict_levels,
    _string_codes,
    _unknown_column,
    r_column_name,
    series_of,
    take_columns,
)
from ._errors import DataError, FormulaError
from ._formula import ParsedFormula, parse_formula

__all__ = ["build_design", "with_prior"]


def build_design(formula: str | ParsedFormula, data: pd.DataFrame, weights=None, offset=None,
                 template: bool = False) -> Design:
    """Materialize ``formula`` on ``data`` (rows with missing values dropped; ``data`` is not modified).

    ``weights`` and ``offset`` (lme4's prior weights and offset): a column name of
    ``data`` or an array with one value per row of ``data``; see :func:`with_prior`.

    Formulas made only of plain columns — numeric ones, and with an intercept
    string/categorical ones in the fixed part — take a fast path that builds
    the matrices with numpy and makes formulaic's specs only when asked for
    (``predict``); everything else goes through formulaic. Both give the same
    design (``tests/test_design.py`` builds every case both ways).
    """
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)  # parse_formula refuses non-text
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if parsed.lhs.startswith("cbind("):
        raise FormulaError("a two-column (binomial) response needs glmer, which jaxmlm does not provide yet")
    design = _fast_design(parsed, data, template)
    if design is None:
        # formulaic (~0.3 s to import) only where the fast path does not apply: a first fit
        # of plain columns in a fresh process does without it.
        from ._formulaic import formulaic_design

        design = formulaic_design(parsed, data, template)
    if weights is None and offset is None:
        return design
    return with_prior(design, data, weights, offset)


def _prior_values(value, data: pd.DataFrame, design: Design, what: str) -> tuple[np.ndarray, str | None]:
    """The ``weights=``/``offset=`` argument's values at the rows of the fit, and its column name if any."""
    name = None
    if isinstance(value, str):
        if value not in data.columns:
            _unknown_column(value, {c for c in data.columns if isinstance(c, str)})
        name, col = value, data[value]
        if isinstance(col, pd.DataFrame):
            raise DataError(f"column {value!r} ({what}) appears more than once in the data")
        values = col.to_numpy()
    else:
        if isinstance(value, (pd.DataFrame, dict)) or np.ndim(value) != 1:
            raise DataError(f"{what} must be a column name or one value per row of the data (a 1-d array)")
        values = value.to_numpy() if isinstance(value, pd.Series) else np.asarray(value)
        if len(values) != len(data):
            raise DataError(f"{what} has {len(values)} values but the data have {len(data)} rows; give one value per "
                            "row of the data (rows dropped for missing values are dropped from it too)")
    if values.dtype.kind not in "iuf" and not (values.dtype == object and all(_is_number(v) for v in values)):
        raise DataError(f"{what} must be numeric, got values of dtype {values.dtype}")
    values = np.asarray(values, dtype=np.float64)
    used = values if design.positions is None else values[design.positions]
    bad = ~np.isfinite(used)
    if bad.any():
        rows = design.rows[np.flatnonzero(bad)[:5]].tolist()
        raise DataError(f"{what} is missing or not finite in {int(bad.sum())} row(s) the model uses (data index "
                        f"{rows}{' ...' if bad.sum() > 5 else ''}); give a finite value for every complete row")
    return np.array(used), name


def with_prior(design: Design, data: pd.DataFrame, weights=None, offset=None) -> Design:
    """``design`` with lme4's prior weights and offset argument.

    Prior weights wᵢ ≥ 0 make the residual variance σ²/wᵢ (lme4's ``weights``);
    a row of weight 0 carries no information (it is kept for ``fitted`` and
    ``predict``). The offset is added to the linear predictor with coefficient 1.
    Values are taken at the rows the model uses (rows dropped for missing values
    in the formula's variables are dropped from them too); non-finite values there,
    negative weights or all weights 0 are errors.
    """
    w = arg_offset = name = None
    if weights is not None:
        w, _ = _prior_values(weights, data, design, "weights")
        if (w < 0).any():
            raise DataError(f"weights must be >= 0 (a weight is the inverse of a row's relative residual variance); "
                            f"{int((w < 0).sum())} are negative, e.g. {w[w < 0][0]:g}")
        if not (w > 0).any():
            raise DataError("every weight is 0: no row carries information")
        w.flags.writeable = False
    if offset is not None:
        arg_offset, name = _prior_values(offset, data, design, "offset")
        arg_offset.flags.writeable = False
    return dataclasses.replace(design, weights=w, arg_offset=arg_offset, offset_column=name)


# ---- the fast path: plain columns, no formulaic ------------------------------------------------------

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SIMPLE_RHS = re.compile(r"\s*[+-]?\s*\w+(?:\s*[+-]\s*\w+)*\s*\Z")


@functools.lru_cache(maxsize=1024)
def _simple_terms(rhs: str) -> tuple[bool, tuple[str, ...]] | None:
    """``1 + a + b``, ``a - 1``, ``0 + a`` → (intercept, (names)); None for anything else.
    (Cached: a pure function of the text, and refits ask for the same formulas again.)

    Anything formulaic would read differently from a list of plain columns —
    calls, interactions, repeated or removed names, ``1`` and ``0`` together —
    returns None, and the formula takes the general path.
    """
    if not _SIMPLE_RHS.match(rhs):
        return None
    intercept: bool | None = None
    names: list[str] = []
    for sign, tok in re.findall(r"([+-]?)\s*(\w+)", rhs):
        if tok in ("0", "1"):
            if tok == "0" and sign == "-":
                return None
            want = tok == "1" and sign != "-"
            if intercept is not None and intercept != want:
                return None
            intercept = want
        elif _PLAIN_NAME.match(tok) and not keyword.iskeyword(tok) and sign != "-" and tok not in names:
            names.append(tok)
        else:
            return None
    return (True if intercept is None else intercept), tuple(names)


def _numeric(col: pd.Series) -> bool:
    return isinstance(col.dtype, np.dtype) and col.dtype.kind in "iuf"


def _missing(col: pd.Series | Coded) -> np.ndarray | None:
    """Rows where a prepared column is missing (None: none can be)."""
    if isinstance(col, Coded):
        return col.codes < 0
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.array.codes < 0
    if isinstance(col.dtype, np.dtype):
        if col.dtype.kind in "iub":
            return None
        if col.dtype.kind == "f":
            return np.isnan(col.to_numpy())
    return col.isna().to_numpy()


def _fast_design(parsed: ParsedFormula, data: pd.DataFrame, template: bool = False) -> Design | None:
    """The design of a formula of plain columns, built with numpy; None when the formula needs formulaic.

    Covers the response and random-effects terms made of numeric columns, and
    a fixed part of numeric columns plus (with an intercept) factors, coded
    by treatment contrasts as formulaic and R code them. Rows, levels and
    names follow the general path exactly; the formulaic specs are made on
    first use from the same model frame.
    """
    fixed = _simple_terms(parsed.fixed_rhs)
    rterms = [_simple_terms(t.expr) for t in parsed.random]
    if fixed is None or any(r is None for r in rterms) or not _PLAIN_NAME.match(parsed.lhs):
        return None
    if keyword.iskeyword(parsed.lhs):
        return None
    lhs = parsed.lhs
    numeric_needed = {lhs, *(c for _, names in rterms for c in names)}
    factors = {f for t in parsed.random for f in t.factors}
    needed = numeric_needed | set(fixed[1]) | factors
    # The columns' Index looks names up in its hash table (kept with the frame); listing
    # every label of a wide frame, or of pandas 3's Arrow-backed labels, costs more.
    columns = data.columns
    if type(columns) is not pd.Index or not columns.is_unique or not all(c in columns for c in needed):
        return None  # (a MultiIndex or DatetimeIndex would match names by parts: the general path)
    cols = sorted(needed, key=columns.get_loc)  # in the data's order
    series = take_columns(data, cols)  # one lookup per column: pandas' __getitem__ is slow
    if not all(_numeric(series[c]) for c in numeric_needed):
        return None
    predictors = set(fixed[1])
    grouping_only = factors - predictors - numeric_needed
    frame = {c: Coded(*_string_codes(series[c])) if c in grouping_only and _is_text(series[c])
             else _prepare(series[c], c == lhs, c if c in predictors else None) for c in cols}
    categorical = [c for c in fixed[1] if not _numeric(frame[c])]
    for c in categorical:
        dtype = frame[c].dtype
        if not (fixed[0] and isinstance(dtype, pd.CategoricalDtype)):
            return None
        if not all(isinstance(v, str) and "[" not in v and "]" not in v for v in dtype.categories):
            return None

    nrow = len(data)
    missing = np.zeros(nrow, dtype=bool)
    for c in cols:
        m = _missing(frame[c])
        if m is not None:
            missing |= m
    if missing.all():
        raise _no_complete_rows()
    complete = ~missing
    every = not missing.any()

    def rows(a: np.ndarray) -> np.ndarray:
        return a if every else a[complete]

    n = int(complete.sum())
    y = np.array(rows(frame[lhs].to_numpy()), dtype=np.float64)
    _nonfinite(y[:, None], [lhs], "the response")

    names_all: list[str] = ["(Intercept)"] if fixed[0] else []
    parts: list[np.ndarray] = [np.ones(n)] if fixed[0] else []
    for c in fixed[1]:
        col = frame[c]
        if c not in categorical:
            names_all.append(c)
            parts.append(rows(col.to_numpy()))
            continue
        codes = rows(col.cat.codes.to_numpy())
        used = np.bincount(codes, minlength=len(col.cat.categories)) > 0
        if used.sum() < 2:
            return None  # a one-level factor: let formulaic say what it says
        new = np.cumsum(used)[codes] - 1
        for j, lev in enumerate(col.cat.categories[used][1:], start=1):
            names_all.append(r_column_name(f"{c}[T.{lev}]", cols))
            parts.append(new == j)
    X = np.empty((n, len(parts)), order="F")
    for j, a in enumerate(parts):
        X[:, j] = a
    _nonfinite(X, names_all, "the fixed-effects model matrix")

    specs = _Deferred(lambda: _formulaic_specs(
        parsed, {c: _prepare(series[c], False) if isinstance(v, Coded) else series_of(v, data.index)
                 for c, v in frame.items()},
        data.index, complete, cols))
    kept = {f: frame[f] if every else frame[f][complete] for f in factors}
    groupings: dict[tuple[str, ...], tuple[np.ndarray, pd.Index]] = {}
    raw = []
    for t, (term, (intercept, names)) in enumerate(zip(parsed.random, rterms)):
        cols_t = (("(Intercept)",) if intercept else ()) + tuple(names)
        if not cols_t:
            return None  # `(0 | g)`: the general path raises the error
        Z = np.empty((n, len(cols_t)), order="F")
        if intercept:
            Z[:, 0] = 1.0
        for j, c in enumerate(names, start=int(intercept)):
            Z[:, j] = rows(frame[c].to_numpy())
        _nonfinite(Z, cols_t, f"the random-effects term ({term.expr} | {term.group_name})")
        if term.factors not in groupings:
            groupings[term.factors] = _grouping(kept, term.factors)
        codes, labels_t = groupings[term.factors]
        raw.append((term, Z, cols_t, codes, labels_t, _Deferred(lambda t=t: specs.get()[1][t])))
    fixed_spec = _Deferred(lambda: specs.get()[0])
    return _assemble(parsed, data, cols, complete, y, X, names_all, raw, fixed_spec, series, template)


def _formulaic_specs(parsed: ParsedFormula, frame: dict, index: pd.Index, complete: np.ndarray, cols: list[str]):
    from ._formulaic import formulaic_specs

    return formulaic_specs(parsed, _restrict_levels(pd.DataFrame(frame, index=index), complete), cols)



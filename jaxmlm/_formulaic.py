"""Stage 2, general path — the model matrices through formulaic.

Formulas with transforms, interactions, factors in random-effects terms and
the like are materialized by formulaic on R's model frame (see
:mod:`jaxmlm._design` for the rules on rows, levels and names, shared by
both paths). The frozen :class:`formulaic.ModelSpec` of every model matrix is
kept for ``predict(newdata)``; evaluate it with ``context=FORMULA_CONTEXT``.

A module of its own so that formulaic (a fifth of a second to import) is
imported only when a formula needs it: the fast path in ``_design`` builds
plain-column formulas without it.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import re
import warnings

import formulaic
import numpy as np
import pandas as pd
from formulaic.transforms import TRANSFORMS, C
from formulaic.utils.code import sanitize_variable_names
from formulaic.utils.stateful_transforms import stateful_transform

from ._design import (
    Design,
    _assemble,
    _doubles,
    _grouping,
    _no_complete_rows,
    _nonfinite,
    _prepare,
    _quote_columns,
    _refuse_dates,
    _restrict_levels,
    _term_start,
    _unknown_column,
    r_column_name,
)
from ._errors import DataError, FormulaError, FormulaSyntaxError
from ._formula import ParsedFormula, _plain

__all__ = ["FORMULA_CONTEXT", "formulaic_design", "formulaic_specs"]


# ---- evaluation context: R's names and R's NA handling ---------------------------------------


@stateful_transform
def _scale(data, center=True, scale=True, ddof=1, _state={}):  # noqa: B006 - replaced by stateful_transform
    """R's ``scale()``: like formulaic's, but missing values are skipped (``na.rm``).

    Stores the same state keys as formulaic's ``scale`` (``center``, ``scale``,
    ``ddof``), so a saved spec gives the same columns with either function.
    """
    x = np.asarray(data, dtype=np.float64)
    if "ddof" not in _state:
        _state["ddof"] = ddof
    if "center" not in _state:
        if isinstance(center, bool):
            _state["center"] = np.nanmean(x, axis=0) if center else None
        else:
            _state["center"] = np.asarray(center)
    if _state["center"] is not None:
        x = x - _state["center"]
    if "scale" not in _state:
        if isinstance(scale, bool):
            count = np.sum(~np.isnan(x), axis=0)
            _state["scale"] = np.sqrt(np.nansum(x**2, axis=0) / (count - _state["ddof"])) if scale else None
        else:
            _state["scale"] = np.asarray(scale)
    if _state["scale"] is not None:
        x = x / _state["scale"]
    return x


@stateful_transform
def _center(data, _state={}):  # noqa: B006
    """R's ``scale(x, scale = FALSE)`` with missing values skipped."""
    return _scale(data, scale=False, _state=_state)


def _factor(data, *args, **kwargs):
    """formulaic's ``C``, with whole-number doubles as integers (levels ``1``, ``2``, not ``1.0``, ``2.0``).

    Integer columns reach formulaic as doubles (``_design._doubles``), as R
    computes; R's ``factor()`` labels a double by ``as.character`` (``2``, not
    ``2.0``), which for whole numbers is the integer's label.
    """
    values = data.__wrapped__ if hasattr(data, "__wrapped__") else data
    if isinstance(values, (pd.Series, np.ndarray)) and values.dtype.kind == "f" and values.ndim == 1:
        arr = np.asarray(values)
        ok = ~np.isnan(arr)
        present = arr[ok]
        if present.size and np.all(present == np.round(present)) and np.all(np.abs(present) < 2.0**53):
            obj = np.full(arr.shape, None, dtype=object)
            obj[ok] = present.astype(np.int64).tolist()
            data = pd.Series(obj, index=values.index) if isinstance(values, pd.Series) else obj
    return C(data, *args, **kwargs)


def _offset(data):
    """lme4's ``offset(expr)``: a known part of the linear predictor, one numeric column.

    In the fixed-effects matrix it is a column named ``offset(...)`` that
    :mod:`jaxmlm._design` moves out of X into the model's offset (its
    coefficient is fixed at 1); ``predict(newdata)`` re-evaluates it the same way."""
    values = data.__wrapped__ if hasattr(data, "__wrapped__") else data
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf" or arr.dtype.kind == "b" or arr.ndim != 1:
        raise DataError(f"offset() needs one numeric column, got values of dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64)


#: Names available in formulas besides formulaic's transforms and the data:
#: R spellings (``sqrt``, ``factor``) and NA-skipping ``scale``/``center``.
#: Pass it as ``context=`` when re-evaluating a saved ModelSpec on new data.
FORMULA_CONTEXT: dict[str, object] = {
    "sqrt": np.sqrt,
    "abs": np.abs,
    "log1p": np.log1p,
    "expm1": np.expm1,
    "factor": _factor,
    "C": _factor,
    "scale": _scale,
    "center": _center,
    "offset": _offset,
}
_KNOWN_NAMES = set(TRANSFORMS) | set(FORMULA_CONTEXT)


# ---- variables of the formula ------------------------------------------------------------------


def _align(pos: int, given: str, text: str, start: int) -> int:
    """Map a position in ``given`` (a rewritten piece of the formula) to ``text``, searched from ``start``."""
    sm = difflib.SequenceMatcher(None, given, text[start:], autojunk=False)
    best = start
    for i, j, size in sm.get_matching_blocks():
        if size == 0:
            break
        if i <= pos < i + size:
            return start + j + pos - i
        if i <= pos:
            best = start + j + size
    return best


def _parse_error(exc: BaseException, given: str, text: str, start: int, what: str) -> FormulaSyntaxError:
    """formulaic's (or Python's) syntax error as ours: readable message, caret in the user's formula."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    head, _, context = msg.partition("\n\n")
    pos = start
    if "⧛" in context:
        source = context.replace("⧛", "").replace("⧚", "")
        at = given.find(source)
        if at >= 0:
            pos = _align(at + context.index("⧛"), given, text, start)
    elif isinstance(exc, SyntaxError):
        head = f"invalid Python code ({exc.msg})"
    return FormulaSyntaxError(f"cannot parse {what}: {' '.join(head.split())}", text, pos)


def _formula_factors(expr: str, text: str, start: int, what: str) -> list:
    try:
        spec = formulaic.Formula(expr)
        parts = [spec.lhs, spec.rhs] if hasattr(spec, "lhs") else [spec]
        return [f for part in parts for term in part for f in term.factors]
    except (formulaic.errors.FormulaicError, SyntaxError) as exc:
        raise _parse_error(exc, expr, text, start, what) from None


def _python_names(code: str, columns: set[str]) -> tuple[set[str], set[str], set[str]]:
    """Columns used, unknown names and unknown functions in one Python factor such as ``log(x + 1)``."""
    aliases: dict[str, str] = {}
    tree = ast.parse(sanitize_variable_names(code, {}, aliases), mode="eval")
    used: set[str] = set()
    unknown: set[str] = set()
    functions: set[str] = set()

    def known(name: str) -> bool:
        return name in _KNOWN_NAMES or hasattr(builtins, name)

    def dotted(node) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def visit(node) -> None:
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                name = aliases.get(node.func.id, node.func.id)
                if not known(name):
                    functions.add(name)
            else:
                visit(node.func.value if isinstance(node.func, ast.Attribute) else node.func)
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                visit(arg)
        elif isinstance(node, (ast.Name, ast.Attribute)):
            name = dotted(node)
            if name is None:
                for child in ast.iter_child_nodes(node):
                    visit(child)
            elif name in columns:
                used.add(name)
            elif name.split(".")[0] in columns and hasattr(pd.Series, name.split(".")[1]):
                used.add(name.split(".")[0])  # an attribute of a column, e.g. x.values
            elif not known(name.split(".")[0]):
                unknown.add(name)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child)

    visit(tree)
    return used, unknown, functions


def _variables(
    expr: str, columns: set[str], text: str, start: int, what: str, direct: set[str] | None = None
) -> set[str]:
    """The data columns ``expr`` reads; unknown names and functions are errors.

    Done here rather than with formulaic's ``required_variables``, which
    drops backquoted names inside calls (``log(`my x`)``) and reads
    ``Sepal.Length`` as column ``Sepal``. ``direct``, if given, collects the
    columns used as they are (``x``, ``a:b``), not inside a call.
    """
    used: set[str] = set()
    unknown: set[str] = set()
    functions: set[str] = set()
    for factor in _formula_factors(expr, text, start, what):
        kind = factor.eval_method.name
        if kind == "LOOKUP":
            (used if factor.expr in columns else unknown).add(factor.expr)
            if direct is not None and factor.expr in columns:
                direct.add(factor.expr)
        elif kind == "PYTHON":
            try:
                u, n, f = _python_names(factor.expr, columns)
            except SyntaxError as exc:
                at = text.find(factor.expr, start)
                raise _parse_error(exc, expr, text, at if at >= 0 else start, what) from None
            used |= u
            unknown |= n
            functions |= f
    for name in sorted(unknown):
        _unknown_column(name, columns)
    if functions:
        name = sorted(functions)[0]
        close = difflib.get_close_matches(name, sorted(_KNOWN_NAMES), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise FormulaError(
            f"unknown function {name!r} in {what} of {text!r}.{hint} Formulas can call formulaic's "
            "transforms (log, exp, sqrt, I, poly, scale, center, C or factor, ...) and numpy as np.<name>"
        )
    return used


# ---- model matrices --------------------------------------------------------------------------------


def _model_matrix(expr: str, data: pd.DataFrame, text: str, start: int, what: str):
    try:
        with warnings.catch_warnings():
            # NaN from log(-1) etc. is handled below as R does (the row is dropped).
            warnings.simplefilter("ignore", RuntimeWarning)
            return formulaic.model_matrix(expr, data, na_action="ignore", context=FORMULA_CONTEXT)
    except formulaic.errors.FactorEvaluationError as exc:
        raise DataError(f"evaluating {what} of {text!r} failed: {_plain(exc)}") from None
    except (formulaic.errors.FormulaParsingError, SyntaxError) as exc:
        raise _parse_error(exc, expr, text, start, what) from None
    except formulaic.errors.FormulaicError as exc:
        raise DataError(f"building {what} of {text!r} failed: {_plain(exc)}") from None
    except Exception as exc:  # errors raised by user transforms, e.g. log of a string
        raise DataError(f"evaluating {what} of {text!r} failed: {type(exc).__name__}: {exc}") from None


def _as_float(matrix, what: str) -> np.ndarray:
    try:
        return np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} is not numeric: {exc}") from None


# ---- the design ---------------------------------------------------------------------------------------


def formulaic_design(parsed: ParsedFormula, data: pd.DataFrame, template: bool = False) -> Design:
    """The general path: every model matrix from formulaic, on R's model frame."""
    text = parsed.text
    # Which columns, and are they there?
    columns = {c for c in data.columns if isinstance(c, str)}
    fixed = _quote_columns(parsed.fixed, columns)
    exprs = [_quote_columns(t.expr, columns) for t in parsed.random]
    lhs_cols, predictors, needed, direct = formula_columns(parsed, columns)
    dup = sorted(c for c in needed if list(data.columns).count(c) > 1)
    if dup:
        raise DataError(f"column(s) {dup} appear more than once in the data")
    cols = [c for c in data.columns if c in needed]
    for c in cols:
        if c in direct:
            _refuse_dates(data[c], c, direct[c])

    # The model frame: prepared columns (a new frame; `data` is never modified).
    predictors -= lhs_cols
    frame = pd.DataFrame(
        {c: _prepare(data[c], c in lhs_cols, c if c in predictors else None) for c in cols}, index=data.index
    )
    for c in sorted(lhs_cols):
        s = frame[c]
        if not pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            raise DataError(
                f"the response {parsed.lhs!r} must be numeric, but column {c!r} has dtype {data[c].dtype}; "
                "recode it as numbers (a binary or count response needs a GLMM)"
            )
    complete = ~frame.isna().any(axis=1).to_numpy()

    # Evaluate on all rows (stateful transforms see every row, as in R's model.frame), then
    # drop rows a transform made NaN; repeat if that left a factor level unused.
    while True:
        if not complete.any():
            raise _no_complete_rows()
        model_frame = _restrict_levels(frame, complete)
        doubles = _doubles(model_frame)  # R computes in double: no integer overflow in I(k*k), a:b
        mm = _model_matrix(fixed, doubles, text, 0, "the fixed-effects part")
        y_all = _as_float(mm.lhs, f"the response {parsed.lhs!r}")
        if y_all.ndim != 2 or y_all.shape[1] != 1:
            raise DataError(f"the response {parsed.lhs!r} must be one numeric column")
        X_all = _as_float(mm.rhs, "the fixed-effects model matrix")
        zms = []
        for term, expr in zip(parsed.random, exprs):
            where = f"the random-effects term ({term.expr} | {term.group_name})"
            zm = _model_matrix(expr, doubles, text, _term_start(term), where)
            zms.append((zm, _as_float(zm, where)))
        nan_rows = np.isnan(y_all[:, 0]) | np.isnan(X_all).any(axis=1)
        for _, Z in zms:
            nan_rows |= np.isnan(Z).any(axis=1)
        if not (complete & nan_rows).any():
            break
        complete = complete & ~nan_rows

    variables = tuple(cols)
    names_all = [r_column_name(c, variables) for c in mm.rhs.columns]
    y = y_all[complete, 0]
    _nonfinite(y[:, None], [parsed.lhs], "the response")
    X_all = X_all[complete]
    _nonfinite(X_all, names_all, "the fixed-effects model matrix")
    kept = model_frame.loc[complete]
    raw = []
    for term, (zm, Z_all) in zip(parsed.random, zms):
        cols_t = tuple(r_column_name(c, variables) for c in zm.columns)
        if Z_all.shape[1] == 0:
            raise FormulaError(f"the random-effects term ({term.expr} | {term.group_name}) has no columns")
        Z = Z_all[complete]
        _nonfinite(Z, cols_t, f"the random-effects term ({term.expr} | {term.group_name})")
        codes, labels = _grouping(kept, term.factors)
        raw.append((term, Z, cols_t, codes, labels, zm.model_spec))
    return _assemble(parsed, data, cols, complete, y, X_all, names_all, raw, mm.rhs.model_spec, template=template)


def formula_columns(parsed: ParsedFormula, columns: set[str]) -> tuple[set[str], set[str], set[str], dict[str, str]]:
    """The data columns the formula reads: (response's, predictors (random-effects
    columns included), all needed (grouping factors too), {column used as it is: where}).
    A name that is not a column is an :class:`UnknownColumnError` with close matches."""
    text = parsed.text
    lhs_cols = _variables(_quote_columns(parsed.lhs, columns), columns, text, 0, "the response")
    direct: dict[str, str] = {}  # column used as it is -> where (dates are refused there)
    seen: set[str] = set()
    predictors = _variables(_quote_columns(parsed.fixed, columns), columns, text, 0, "the fixed-effects part", seen)
    direct.update(dict.fromkeys(seen - lhs_cols, "the fixed-effects part"))
    needed = predictors | lhs_cols
    for term in parsed.random:
        where = f"the random-effects term ({term.expr} | {term.group_name})"
        seen = set()
        used = _variables(_quote_columns(term.expr, columns), columns, text, _term_start(term), where, seen)
        for c in seen:
            direct.setdefault(c, where)
        predictors |= used
        needed |= used
        for f in term.factors:
            if f not in columns:
                _unknown_column(f, columns)
            needed.add(f)
    return lhs_cols, predictors, needed, direct


def formulaic_specs(parsed: ParsedFormula, model_frame: pd.DataFrame, cols: list[str]):
    """formulaic's specs for a design built by the fast path, made as the general path makes them."""
    columns = set(cols)
    text = parsed.text
    model_frame = _doubles(model_frame)
    mm = _model_matrix(_quote_columns(parsed.fixed, columns), model_frame, text, 0, "the fixed-effects part")
    terms = []
    for term in parsed.random:
        where = f"the random-effects term ({term.expr} | {term.group_name})"
        expr = _quote_columns(term.expr, columns)
        terms.append(_model_matrix(expr, model_frame, text, _term_start(term), where).model_spec)
    return mm.rhs.model_spec, terms

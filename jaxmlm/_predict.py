"""Predictions from a fitted model, as lme4's ``predict.merMod``.

``predict(model, newdata=None, re_form=None, allow_new_levels=False)`` returns
``X β̂ + Z b̂`` for the rows of ``newdata`` (or the rows of the fit), where
``re_form`` says which random effects are conditioned on:

* ``None`` — all of them (lme4's ``re.form = NULL``);
* ``False`` or ``"~0"`` — none: population-level predictions ``X β̂``
  (lme4's ``re.form = NA`` or ``~0``);
* a one-sided formula of random-effects terms such as ``"~(1 | Subject)"`` —
  only those. A term is matched as lme4's ``mkNewReTrms`` matches it: by its
  grouping factor's label (``cask:batch``, as the model names it) and the
  names of its model-matrix columns, which must be among the columns the
  model estimated for that factor. So ``~(1 | Subject)`` on a
  ``(Days | Subject)`` model uses only the random intercepts, and
  ``~(Days | Subject)`` on a ``(Days || Subject)`` model uses both terms.

New rows are materialized with the *frozen* formulaic specs of the fit
(``design.fixed_spec`` and each ``Term.spec``): contrasts, factor levels and
stateful transforms such as ``scale(x)`` keep the values they had in the fit,
as lme4's ``predvars`` do. Missing values follow lme4's default
``na.action = na.pass``: a row with a missing (or NaN-producing) predictor
predicts NaN, and the result has one value per row of ``newdata``. A
grouping level the fit never saw — including a new combination of known
levels of a nested factor such as ``cask:batch`` — or a missing grouping
value is an error unless ``allow_new_levels=True``, which gives such rows zero
random effects for that factor (lme4's ``allow.new.levels``). A level of a
categorical *fixed* effect that the fit never saw is always an error: no
coefficient exists for it.

References: Bates, Mächler, Bolker & Walker (2015), Fitting linear
mixed-effects models using lme4, J. Stat. Softw. 67(1); lme4's
``?predict.merMod`` (lme4 1.1-31).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import formulaic
import numpy as np
import pandas as pd
from formulaic.parser.types.factor import Factor

from ._design import _doubles, _grouping, _label, _prepare, _quote_columns, _unknown_column
from ._formulaic import FORMULA_CONTEXT, _variables
from ._errors import DataError, FormulaError, FormulaSyntaxError, NewLevelsError, PredictArgumentError
from ._formula import _plain, parse_formula

__all__ = ["predict"]

# How many unseen levels an error message lists per grouping factor before "and N more".
_SHOW_LEVELS = 5
# Placeholder response for parsing a one-sided re_form with the two-sided formula parser.
_RESPONSE = "y__"


@dataclass(frozen=True)
class _Selected:
    """Columns of one model random-effects term that ``re_form`` conditions on.

    ``term`` indexes ``design.terms`` (lme4 order); ``structure`` are the
    selected entries of the term's formulaic spec (each a formula term with
    its model-matrix columns); ``positions`` their column positions within
    the term (and so, shifted by ``Term.offset``, within its block).
    """

    term: int
    structure: tuple
    positions: tuple[int, ...]


# ---- re_form ----------------------------------------------------------------------------------


def _model_terms_text(model) -> str:
    """The model's random-effects terms as lme4 expands them, for error messages."""
    return ", ".join(f"({' '.join(t.expr.split())} | {t.group_name})" for t in model.design.formula.random)


def _all_terms(model) -> tuple[_Selected, ...]:
    """Every column of every random-effects term (``re_form=None``)."""
    return tuple(
        _Selected(t, tuple(term.spec.structure), tuple(range(term.k))) for t, term in enumerate(model.design.terms)
    )


def _is_population(re_form) -> bool:
    """``False`` and ``"~0"`` (any spacing) mean no random effects, as lme4's ``NA`` and ``~0``."""
    if re_form is False:
        return True
    return isinstance(re_form, str) and "".join(re_form.split()) in ("~0", "~-1")


def _parse_re_form(re_form: str):
    """The random-effects terms of a one-sided formula, expanded as in the model formula.

    Reuses the model-formula parser (so ``||`` and ``a/b`` expand exactly as
    they did in the fit); syntax errors point into ``re_form`` itself.
    """
    text = re_form.strip()
    if not text.startswith("~"):
        raise FormulaError(
            f"re_form must be None, False, '~0' or a one-sided formula of random-effects terms such as "
            f"'~(1 | group)', got {re_form!r}"
        )
    shift = len(_RESPONSE) + 1
    try:
        parsed = parse_formula(f"{_RESPONSE} {text}")
    except FormulaSyntaxError as exc:
        message = str(exc).split("\n")[0]
        position = None if exc.position is None else max(0, exc.position - shift)
        raise FormulaSyntaxError(f"in re_form: {message}", text, position) from None
    except FormulaError:
        raise FormulaError(
            f"re_form {re_form!r} has no random-effects term; use '~0' or False for population-level "
            "predictions, or terms such as '~(1 | group)'"
        ) from None
    if "".join(parsed.fixed_rhs.split()) not in ("1", "0", "-1"):
        raise FormulaError(
            f"re_form {re_form!r} may contain only random-effects terms such as '(1 | group)'; fixed "
            "effects always enter the prediction"
        )
    return parsed.random


def _categorical(spec, term) -> bool:
    """Whether a formula term of ``spec`` involves a categorical factor (its coding depends on context)."""
    kinds = {f: state[0] for f, state in spec.encoder_state.items()}
    return any(kinds.get(f.expr) is Factor.Kind.CATEGORICAL for f in term.factors)


def _select(model, re_form) -> tuple[_Selected, ...]:
    """The random-effects columns ``re_form`` conditions on, matched to the model's terms as lme4 does.

    lme4 (``mkNewReTrms``) evaluates each ``re_form`` term and looks its
    grouping factor up among the model's random-effects factors and its
    column names among that factor's columns. Here a term matches when it is
    one of the model's terms (same grouping label, same formula terms), or
    when each of its formula terms is numeric and appears in one of the
    model's terms on that factor (``(1 | g)`` out of ``(1 + x | g)``). A
    categorical term must be written as in the model: its columns depend on
    the intercept and on the other terms, so a partial match could pick
    columns lme4 would code differently.
    """
    if re_form is None:
        return _all_terms(model)
    if _is_population(re_form):
        return ()
    if not isinstance(re_form, str):
        raise PredictArgumentError(
            f"re_form must be None (all random effects), False or '~0' (none), or a formula string such as "
            f"'~(1 | group)', got {type(re_form).__name__} {re_form!r}"
        )
    design = model.design
    groups = {term.group for term in design.terms}
    chosen: dict[int, dict[int, object]] = {}  # term index -> {position in structure: entry}
    for rt in _parse_re_form(re_form):
        label = f"({' '.join(rt.expr.split())} | {rt.group_name})"
        if rt.group_name not in groups:
            raise FormulaError(
                f"re_form term {label} has grouping factor {rt.group_name!r}, which is not a grouping factor of "
                f"the model; the model's random-effects terms are {_model_terms_text(model)}"
            )
        candidates = [t for t, term in enumerate(design.terms) if term.group == rt.group_name]
        wanted = _formula_terms(rt.expr, label, model)
        exact = [t for t in candidates if set(design.terms[t].spec.formula) == set(wanted)]
        picks: list[tuple[int, int]] = []
        if exact:
            t = exact[0]
            picks = [(t, i) for i in range(len(design.terms[t].spec.structure))]
        else:
            for ft in wanted:
                hit = [
                    (t, i)
                    for t in candidates
                    for i, entry in enumerate(design.terms[t].spec.structure)
                    if entry.term == ft
                ]
                what = "the intercept" if not ft.factors else repr(str(ft))
                if not hit:
                    raise FormulaError(
                        f"re_form term {label} uses {what}, which the model has no random effect for on "
                        f"{rt.group_name!r}; the model's random-effects terms are {_model_terms_text(model)}"
                    )
                t, i = hit[0]
                if _categorical(design.terms[t].spec, ft):
                    raise FormulaError(
                        f"re_form term {label} takes {what} out of a random-effects term; a categorical "
                        "random-effects term must be written in re_form exactly as in the model (its columns "
                        f"depend on the other terms); the model's random-effects terms are {_model_terms_text(model)}"
                    )
                picks.append((t, i))
        for t, i in picks:
            if i in chosen.setdefault(t, {}):
                raise FormulaError(
                    f"re_form selects the random effects of {label} more than once (lme4 would add them twice); "
                    "name each random effect once"
                )
            chosen[t][i] = design.terms[t].spec.structure[i]
    out = []
    for t in sorted(chosen):
        spec = design.terms[t].spec
        idx = spec.column_indices
        entries = tuple(chosen[t][i] for i in sorted(chosen[t]))
        positions = tuple(idx[c] for e in entries for c in e.columns)
        out.append(_Selected(t, entries, positions))
    return tuple(out)


def _formula_terms(expr: str, label: str, model) -> list:
    """formulaic's terms of a random-effects term's left-hand side (names quoted as in the fit)."""
    try:
        return list(formulaic.Formula(_quote_columns(expr, _variables_of(model))))
    except (formulaic.errors.FormulaicError, SyntaxError) as exc:
        raise FormulaError(f"cannot parse re_form term {label}: {_plain(exc)}") from None


def _variables_of(model) -> set[str]:
    """Names the model's specs read as variables, so dotted column names are quoted as in the fit."""
    names: set[str] = set()
    for spec in [model.design.fixed_spec, *(t.spec for t in model.design.terms)]:
        for variables in spec.factor_variables.values():
            names |= {str(v) for v in variables}
    return names


# ---- rows of the fit ----------------------------------------------------------------------------


def _predict_fit_rows(model, selected: tuple[_Selected, ...]) -> np.ndarray:
    """Predictions for the rows used in the fit, from the design's own X and Z (lme4 without newdata)."""
    design = model.design
    mu = design.X @ np.asarray(model.fixef)
    if design.offset is not None:
        mu = mu + design.offset
    for sel in selected:
        term = design.terms[sel.term]
        block = design.blocks[term.block]
        cols = [term.offset + p for p in sel.positions]
        b = model.ranef[block.group].to_numpy()[block.codes][:, cols]
        mu = mu + np.einsum("nk,nk->n", block.Z[:, cols], b)
    return mu


# ---- new data ----------------------------------------------------------------------------------


def _check_levels(spec, frame: pd.DataFrame, what: str, why: str) -> None:
    """Refuse categorical levels the fit never saw (formulaic would silently code them as all zeros).

    Checked for each categorical factor of ``spec`` that reads one column
    (``f``, ``C(f)``, ``factor(g)``), comparing R's level labels (so ``101``
    and ``101.0`` are the same level); a factor built from several columns is
    checked through formulaic's mismatch warning instead (see ``_evaluate``).
    """
    for factor, (kind, state) in spec.encoder_state.items():
        if kind is not Factor.Kind.CATEGORICAL:
            continue
        columns = [c for c in _factor_columns(spec, factor) if c in frame.columns]
        if len(columns) != 1:
            continue
        seen = list(state.get("categories", []))
        known = {_label(v) for v in seen}
        present = pd.unique(frame[columns[0]].dropna().astype(object).to_numpy())
        unseen = [v for v in present if _label(v) not in known]
        if unseen:
            raise DataError(
                f"newdata has level(s) of {factor!r} in {what} that the model was not fitted with: "
                f"{_show(unseen)}; the model knows {_show(seen)}. {why}; remove or recode these rows"
            )


def _check_numeric(spec, frame: pd.DataFrame, what: str) -> None:
    """Refuse text in a column the fit used as a number (formulaic would code it as a factor)."""
    for factor, (kind, _) in spec.encoder_state.items():
        name = factor[1:-1] if factor.startswith("`") else factor
        if kind is Factor.Kind.NUMERICAL and name in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[name].dtype) or pd.api.types.is_bool_dtype(frame[name].dtype):
                raise DataError(
                    f"column {name!r} of newdata holds {_newdata_kind(frame[name])}, but {what} of the fit used it "
                    f"as a number; convert it, e.g. with pd.to_numeric(newdata[{name!r}])"
                )


def _newdata_kind(col: pd.Series) -> str:
    """A few words on what a non-numeric column holds, for error messages."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return "text or categories"
    return f"values of dtype {col.dtype}"


def _factor_columns(spec, factor: str) -> list[str]:
    """The data columns a factor of ``spec`` reads (``C(f)`` reads ``f``)."""
    for f, variables in spec.factor_variables.items():
        if f.expr == factor:
            return sorted(str(v) for v in variables)
    return []


def _show(values: list, n: int = _SHOW_LEVELS) -> str:
    """The first ``n`` values quoted, then how many more."""
    shown = ", ".join(repr(str(v)) for v in values[:n])
    more = len(values) - n
    return f"{shown} and {more} more ({len(values)} in all)" if more > 0 else shown


def _evaluate(spec, frame: pd.DataFrame, what: str) -> tuple[np.ndarray, list[str]]:
    """``spec``'s model matrix for ``frame`` (rows kept, NaN where a value is missing) and its column names."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mm = spec.get_model_matrix(frame, context=FORMULA_CONTEXT, na_action="ignore")
        except Exception as exc:  # noqa: BLE001 - formulaic or a transform; the user needs the reason
            raise DataError(
                f"evaluating {what} on newdata failed ({type(exc).__name__}: {exc}); newdata's columns must hold "
                "values of the kinds the fit's data held"
            ) from None
    for w in caught:
        # formulaic casts categories outside the fit's levels to all-zero rows (missing values are
        # handled by the caller); _check_levels has caught single-column factors already.
        if type(w.message).__name__ == "DataMismatchWarning" and _unseen_in_warning(str(w.message)):
            raise DataError(
                f"newdata has categorical levels in {what} that the model was not fitted with "
                f"({_unseen_in_warning(str(w.message))}); remove or recode these rows"
            )
    return np.asarray(mm, dtype=np.float64), list(mm.columns)


def _unseen_in_warning(message: str) -> str:
    """The non-missing categories listed in formulaic's DataMismatchWarning ("" if only NaN)."""
    m = re.search(r"\{(.*)\}", message)
    if not m:
        return ""
    items = [x.strip() for x in m.group(1).split(",")]
    return ", ".join(x for x in items if x not in ("nan", "None", "<NA>", "NaT", ""))


def _needed_columns(model, selected: tuple[_Selected, ...], columns: set[str]) -> tuple[set[str], set[str]]:
    """Columns of ``newdata`` the fixed part reads, and those the selected random terms read.

    Uses the design's own parser of variables (backquoted and dotted names as
    in the fit); a missing column raises :class:`UnknownColumnError` with
    close matches.
    """
    design = model.design
    text = design.formula.text
    fixed = _variables(_quote_columns(design.formula.fixed_rhs, columns), columns, text, 0, "the fixed-effects part")
    random: set[str] = set()
    for sel in selected:
        term = design.terms[sel.term]
        expr = " + ".join(_term_text(e.term) for e in sel.structure)
        where = f"the random-effects term on {term.group!r}"
        random |= _variables(_quote_columns(expr, columns), columns, text, 0, where)
        for f in design.blocks[term.block].factors:
            if f not in columns:
                _unknown_column(f, columns)
            random.add(f)
    return fixed, random


def _term_text(term) -> str:
    """A formulaic term as formula text that parses back: ``x 1:z`` → ```x 1`:z``.

    (``str(term)`` drops the backquotes of a looked-up name such as ```x 1```.)
    """
    return ":".join(factor_text(f) for f in term.factors) or "1"


def factor_text(factor) -> str:
    """A formulaic factor as formula text: a looked-up name that is not an identifier backquoted."""
    name = factor.expr
    looked_up = factor.eval_method.name == "LOOKUP"
    return f"`{name}`" if looked_up and not (name.isidentifier() and name.isascii()) else name


def _level_index(frame: pd.DataFrame, block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's index into ``block.levels`` (-1 for a level the fit never saw), missing mask and label.

    Labels are made by the design's own ``_grouping`` (R's ``as.character``
    and ``a:b`` interaction labels), so ``cask:batch`` is rebuilt from the
    ``cask`` and ``batch`` columns exactly as in the fit.
    """
    parts = frame[list(block.factors)]
    missing = parts.isna().any(axis=1).to_numpy()
    index = np.full(len(frame), -1, dtype=np.int64)
    row_labels = np.full(len(frame), None, dtype=object)
    if (~missing).any():
        codes, labels = _grouping(parts.loc[~missing], tuple(block.factors))
        row_labels[~missing] = np.asarray(labels, dtype=object)[codes]
        index[~missing] = block.levels.get_indexer(pd.Index(row_labels[~missing], dtype=object))
    return index, missing, row_labels


def _new_levels_error(unseen: dict[str, list[str]], missing: dict[str, int]) -> NewLevelsError:
    parts = [f"{g}: {_show(levels)}" for g, levels in unseen.items()]
    parts += [f"{g}: {n} row(s) with a missing value" for g, n in missing.items()]
    message = (
        "newdata has grouping levels the model was not fitted with ("
        + "; ".join(parts)
        + "). Pass allow_new_levels=True to predict these rows with zero random effects for that "
        "grouping factor (as lme4's allow.new.levels = TRUE), or remove them"
    )
    return NewLevelsError(message, unseen, missing)


def _column(col: pd.Series) -> pd.Series:
    """One newdata column as the fit saw its column (``_prepare``); all missing reads as numeric NaN.

    A column of only ``None`` has no type to go by; as NaN it predicts NaN
    (numeric) or counts as missing (grouping factor), as R's NA does.
    """
    if len(col) and col.isna().all():
        return pd.Series(np.full(len(col), np.nan), index=col.index)
    return _prepare(col, False)


def _argument_offset(design, newdata: pd.DataFrame, offset) -> np.ndarray | None:
    """The ``offset=`` argument's values for the rows of ``newdata``.

    A model fitted with ``offset="column"`` reads that column of ``newdata``; one
    fitted with an array needs the new rows' values as ``predict(..., offset=)``.
    (lme4 1.1-31 silently leaves such an offset out of predictions for new data,
    lme4 issue #447; here it is always included.)"""
    if design.arg_offset is None and design.offset_column is None:  # (a fit from pieces keeps only the name)
        if offset is not None:
            raise PredictArgumentError("offset= is for models fitted with an offset= argument; this one has none "
                                       "(offset() terms in the formula are evaluated on newdata)")
        return None
    if offset is None:
        if design.offset_column is None:
            raise PredictArgumentError(
                "the model was fitted with offset= given as values, so predictions for new data need the new rows' "
                "offsets: pass predict(newdata, offset=...) with one value per row (or fit with offset='column')")
        if design.offset_column not in newdata.columns:
            raise PredictArgumentError(f"newdata has no column {design.offset_column!r}, the model's offset")
        values = newdata[design.offset_column]
    else:
        values = offset
    values = np.asarray(values.to_numpy() if isinstance(values, pd.Series) else values)
    if values.ndim != 1 or len(values) != len(newdata) or values.dtype.kind not in "iuf":
        raise PredictArgumentError(f"the offset for newdata must be {len(newdata)} numbers, one per row")
    return values.astype(np.float64)


def _predict_new(model, newdata: pd.DataFrame, selected: tuple[_Selected, ...], allow_new_levels: bool,
                 offset=None) -> np.ndarray:
    """Predictions for the rows of ``newdata`` (lme4's predict with ``newdata``, ``na.action = na.pass``)."""
    design = model.design
    columns = {c for c in newdata.columns if isinstance(c, str)}
    arg_offset = _argument_offset(design, newdata, offset)
    fixed_cols, random_cols = _needed_columns(model, selected, columns)
    needed = fixed_cols | random_cols
    dup = sorted(c for c in needed if list(newdata.columns).count(c) > 1)
    if dup:
        raise DataError(f"column(s) {dup} appear more than once in newdata")
    frame = pd.DataFrame({c: _column(newdata[c]) for c in newdata.columns if c in needed}, index=newdata.index)
    if frame.shape[1] == 0:
        # An intercept-only model reads no column, but formulaic takes the number of rows from the data.
        frame = pd.DataFrame({"__rows__": np.zeros(len(newdata))}, index=newdata.index)

    doubles = _doubles(frame)  # formulaic computes on doubles, as in the fit (and as R does)

    # Fixed part: the frozen spec, then the columns lme4 kept (aliased ones were dropped).
    _check_levels(
        design.fixed_spec,
        frame,
        "the fixed-effects part",
        "A fixed effect has no coefficient for a new level (allow_new_levels applies to grouping factors only)",
    )
    _check_numeric(design.fixed_spec, frame, "the fixed-effects part")
    X_all, _ = _evaluate(design.fixed_spec, doubles, "the fixed-effects part")
    keep = [design.fixed_columns_all.index(nm) for nm in design.fixef_names]
    mu = X_all[:, keep] @ np.asarray(model.fixef)
    offsets = [design.fixed_columns_all.index(nm) for nm in design.offset_columns]
    if offsets:
        mu = mu + X_all[:, offsets].sum(axis=1)
    if arg_offset is not None:
        mu = mu + arg_offset
    if fixed_cols:
        # na.pass: a missing predictor (also a missing factor level, which formulaic codes as zeros) gives NA.
        mu[frame[sorted(fixed_cols)].isna().any(axis=1).to_numpy()] = np.nan

    # Random part: which level each row belongs to, per grouping factor used.
    blocks = sorted({design.terms[s.term].block for s in selected})
    index: dict[int, np.ndarray] = {}
    unseen: dict[str, list[str]] = {}
    missing: dict[str, int] = {}
    for b in blocks:
        block = design.blocks[b]
        idx, miss, labels = _level_index(frame, block)
        index[b] = idx
        new = (idx < 0) & ~miss
        if new.any():
            unseen[block.group] = [str(v) for v in pd.unique(labels[new])]
        if miss.any():
            missing[block.group] = int(miss.sum())
    if (unseen or missing) and not allow_new_levels:
        raise _new_levels_error(unseen, missing)

    for sel in selected:
        term = design.terms[sel.term]
        _check_levels(
            term.spec,
            frame,
            f"the random-effects term on {term.group!r}",
            "The model has no random effect for a new level of a random-effects column (allow_new_levels "
            "applies to grouping factors only)",
        )
        _check_numeric(term.spec, frame, f"the random-effects term on {term.group!r}")
        sub = term.spec.subset([e.term for e in sel.structure])
        Z, names = _evaluate(sub, doubles, f"the random-effects term on {term.group!r}")
        # Columns by formulaic name: the subset may order its terms differently from the model.
        cols = [term.offset + term.spec.column_indices[c] for c in names]
        b_all = model.ranef[design.blocks[term.block].group].to_numpy()[:, cols]
        idx = index[term.block]
        b = np.where((idx >= 0)[:, None], b_all[np.maximum(idx, 0)], 0.0)  # new level or NA: b = 0
        mu = mu + np.einsum("nk,nk->n", Z, b)
    return mu


# ---- entry point --------------------------------------------------------------------------------


def predict(
    model, newdata: pd.DataFrame | None = None, re_form=None, allow_new_levels: bool = False, offset=None, **kwargs
) -> np.ndarray:
    """Predictions ``X β̂ + Z b̂`` as lme4's ``predict.merMod`` (``type = "link"``, the response scale of an LMM).

    ``newdata``: a DataFrame with the predictor and grouping columns (the
    response is not needed); ``None`` predicts the rows used in the fit (with
    ``re_form=None`` these are exactly ``model.fitted``). ``re_form``: ``None``
    conditions on all random effects, ``False`` or ``"~0"`` on none, a formula
    string such as ``"~(1 | Subject)"`` on those terms only.
    ``allow_new_levels``: give grouping levels (and missing grouping values)
    the fit never saw zero random effects instead of raising
    :class:`NewLevelsError`. Returns a float64 numpy array, one value per row
    (NaN where a predictor is missing, as lme4's default ``na.pass``).

    Offsets are part of every prediction: ``offset()`` terms are evaluated on
    ``newdata``; an ``offset=`` argument of the fit is read from ``newdata`` when
    it was a column name, else passed here as ``offset`` (one value per new row).
    """
    if kwargs:
        raise PredictArgumentError(
            f"predict() does not support {', '.join(sorted(kwargs))}; its arguments are newdata, re_form, "
            "allow_new_levels and offset"
        )
    if not isinstance(allow_new_levels, (bool, np.bool_)):
        raise PredictArgumentError(f"allow_new_levels must be True or False, got {allow_new_levels!r}")
    selected = _select(model, re_form)
    if newdata is None:
        if offset is not None:
            raise PredictArgumentError("offset= goes with newdata: the rows of the fit have their offsets")
        if re_form is None:
            return np.array(model.fitted, dtype=np.float64)
        return _predict_fit_rows(model, selected)
    if not isinstance(newdata, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame, got {type(newdata).__name__}")
    return _predict_new(model, newdata, selected, bool(allow_new_levels), offset)

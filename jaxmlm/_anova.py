"""lmerTest's ANOVA table of one model: an F test for each fixed-effects term (types I, II, III).

``anova(m, type=3, ddf="Satterthwaite")`` is lmerTest's ``anova.lmerModLmerTest``
(Kuznetsova, Brockhoff & Christensen 2017, J. Stat. Softw. 82(13), §5): each
term gets a hypothesis matrix L over the fixed effects, tested by
:func:`jaxmlm._inference.contest` (F with Satterthwaite's or Kenward-Roger's
denominator df). The hypotheses are built as lmerTest 3.1-3 builds them:

* **Type I** (sequential): the rows of Lᵀ of the Doolittle factorization
  X'X = L D Lᵀ (``doolittle``, entries below 1e-6 set to 0) belonging to
  the term's columns.
* **Type II**: a term contained in no other term is tested marginally
  (L = its rows of the identity); a term contained in others (same numeric
  variables, a subset of the factors) by Type I with the columns reordered as
  [unrelated, term, containing terms].
* **Type III**: from the full-rank treatment-coded X and the cell-means
  ("rank-deficient") design rdX: L = ginv(X) rdX, its columns for each term
  orthogonalized against those of the terms containing it (higher order
  first), the rows of X's columns kept. Designs coded otherwise (e.g.
  ``C(f, contr.sum)``) are remade with treatment coding and the hypotheses
  mapped back by ginv(X_treatment) X, so the tests do not depend on the
  coding. Empty cells make some hypotheses depend on the coding (SAS's and
  lmerTest's "interpret type III hypotheses with care").

Sum Sq and Mean Sq are lmerTest's: Mean Sq = F·σ̂², Sum Sq = Mean Sq·NumDF
(F before Kenward-Roger's scaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._errors import InferenceError, InferenceWarning, warn_user
from ._present import AnovaTable
from ._rnum import zapsmall

__all__ = ["FixedTerms", "fixed_terms", "anova_table", "hypotheses", "doolittle"]

_TYPES = {1: "1", 2: "2", 3: "3", "1": "1", "2": "2", "3": "3", "I": "1", "II": "2", "III": "3"}
_ROMAN = {"1": "I", "2": "II", "3": "III"}


# ---- the fixed part's terms ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedTerms:
    """The fixed-effects terms of a fit, as R's ``terms`` object describes them.

    ``labels`` R's term labels (``"sx:sector"``), intercept excluded, in model
    order; ``columns`` each term's columns of the fit's X (aliased columns
    dropped); ``factors`` each term's variables (formula factors such as
    ``sex`` or ``log(x)``); ``numeric`` the numeric ones; ``intercept``
    whether the model has one. ``scoped`` each term's encoding as
    formulaic made it: per column group, (factor, reduced) pairs;
    ``levels`` each categorical variable's levels.
    """

    labels: tuple[str, ...]
    columns: tuple[tuple[int, ...], ...]
    factors: tuple[tuple[str, ...], ...]
    numeric: frozenset[str]
    intercept: bool
    scoped: tuple[tuple[tuple[tuple[str, bool], ...], ...], ...]
    levels: dict

    def containment(self) -> dict[str, list[str]]:
        """lmerTest's ``containment``: for each term the terms that contain it.

        F2 contains F1 when F1's variables are a proper subset of F2's and both
        involve the same numeric variables.
        """
        out = {}
        for a, fa in zip(self.labels, self.factors):
            na = {f for f in fa if f in self.numeric}
            out[a] = [
                b
                for b, fb in zip(self.labels, self.factors)
                if set(fa) <= set(fb) and set(fb) - set(fa) and na == {f for f in fb if f in self.numeric}
            ]
        return out


def fixed_terms(design) -> FixedTerms:
    """The :class:`FixedTerms` of a design, read off its frozen formulaic spec."""
    from formulaic.parser.types import Factor

    spec = design.fixed_spec
    kinds = {f: state[0] for f, state in spec.encoder_state.items()}
    kept = {name: j for j, name in enumerate(design.fixef_names)}
    labels, columns, factors, scoped = [], [], [], []
    intercept = False
    for structure in spec.structure:
        term = structure.term
        if not term.factors or all(f.expr == "1" for f in term.factors):
            intercept = True
            continue
        if any(f.expr.startswith("offset(") for f in term.factors):
            continue  # a known part of the linear predictor: nothing to test
        sl = spec.term_slices[term]
        cols = [kept.get(design.fixed_columns_all[j]) for j in range(sl.start, sl.stop)]
        labels.append(str(term))
        columns.append(tuple(c for c in cols if c is not None))
        factors.append(tuple(f.expr for f in term.factors))
        scoped.append(tuple(tuple((sf.factor.expr, bool(sf.reduced)) for sf in st.factors) for st in structure.scoped_terms))
    numeric = frozenset(f for f, k in kinds.items() if k is Factor.Kind.NUMERICAL)
    levels = {f: list(state.get("categories", [])) for f, (kind, state) in spec.encoder_state.items()
              if kind is Factor.Kind.CATEGORICAL}
    return FixedTerms(tuple(labels), tuple(columns), tuple(factors), numeric, intercept, tuple(scoped), levels)


# ---- small matrix helpers, as R computes them --------------------------------------------------------------


def doolittle(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """lmerTest's ``doolittle``: unit-lower-triangular L of x = L D Lᵀ, without pivoting.

    A multiplier is 0 where the pivot is below ``eps``, and entries below
    ``eps`` are set to 0, as lmerTest does (absolute thresholds).
    """
    n = x.shape[0]
    L = np.eye(n)
    U = np.zeros((n, n))
    for i in range(n):
        U[i] = x[i] - L[i, :i] @ U[:i]
        if i + 1 < n:
            v = x[i + 1 :, i] - L[i + 1 :, :i] @ U[:i, i]
            L[i + 1 :, i] = 0.0 if abs(U[i, i]) < eps else v / U[i, i]
    L[np.abs(L) < eps] = 0.0
    return L


def _type1_rows(X: np.ndarray) -> np.ndarray:
    """Lᵀ of the Doolittle factorization of X'X (lmerTest's ``get_contrasts_type1``)."""
    p = X.shape[1]
    return np.ones((1, 1)) if p == 1 else doolittle(X.T @ X).T


# ---- hypotheses ---------------------------------------------------------------------------------------------


def _col_terms(ft: FixedTerms, p: int) -> list[str]:
    out = ["(Intercept)"] * p
    for label, cols in zip(ft.labels, ft.columns):
        for c in cols:
            out[c] = label
    return out


def _type1(ft: FixedTerms, X: np.ndarray) -> dict[str, np.ndarray]:
    L = _type1_rows(X)
    return {label: L[list(cols)] for label, cols in zip(ft.labels, ft.columns)}


def _marginal(ft: FixedTerms, p: int, which) -> dict[str, np.ndarray]:
    eye = np.eye(p)
    return {t: eye[list(ft.columns[ft.labels.index(t)])] for t in which}


def _type2(ft: FixedTerms, X: np.ndarray) -> dict[str, np.ndarray]:
    p = X.shape[1]
    contained = ft.containment()
    col_terms = _col_terms(ft, p)
    out = _marginal(ft, p, [t for t in ft.labels if not contained[t]])
    for t in ft.labels:
        if not contained[t]:
            continue
        cols = [c for u in (t, *contained[t]) for c in ft.columns[ft.labels.index(u)]]
        order = [c for c in range(p) if c not in cols] + cols
        Lc = _type1_rows(X[:, order])
        rows = [i for i, c in enumerate(order) if col_terms[c] == t]
        back = np.argsort(order)
        out[t] = Lc[rows][:, back]
    return {t: out[t] for t in ft.labels}


def _factor_matrices(m, ft: FixedTerms) -> dict[str, np.ndarray]:
    """Each variable of the fixed part on the fit's rows: numeric columns, or one indicator per level."""
    from ._design import _doubles
    from ._formulaic import FORMULA_CONTEXT
    from ._predict import _column, factor_text

    spec = m.design.fixed_spec
    frame = m.design.frame
    frame = _doubles(pd.DataFrame({c: _column(frame[c]) for c in frame.columns}, index=frame.index))
    by_expr = {f.expr: f for term in spec.terms for f in term.factors}
    out = {}
    for f in dict.fromkeys(f for fs in ft.factors for f in fs):
        one = spec.update(formula=f"0 + {factor_text(by_expr[f])}", structure=None)
        mm = one.get_model_matrix(frame, context=FORMULA_CONTEXT, na_action="ignore")
        out[f] = np.asarray(mm, dtype=float)
    return out


def _products(mats: list[np.ndarray], keep: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Row-wise products of the chosen columns of each matrix, the first varying fastest (R's order)."""
    n = mats[0].shape[0] if mats else 0
    cols, keys = [np.ones(n)], [()]
    for M, k in zip(mats, keep):
        cols = [c * M[:, j] for j in k for c in cols]
        keys = [key + (j,) for j in k for key in keys]
    return np.column_stack(cols) if cols else np.zeros((n, 0)), keys


def _type3(m, ft: FixedTerms, X: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
    """lmerTest's ``get_contrasts_type3`` (and ``extract_contrasts_type3``, ``get_rdX``)."""
    from ._design import _prune_aliased

    mats = _factor_matrices(m, ft)
    n = X.shape[0]
    # rdX: intercept, then every cell of each term (indicators of all levels, numeric variables as they are).
    rd_cols, rd_keys = ([np.ones((n, 1))], [("(Intercept)",)]) if ft.intercept else ([], [])
    for t, fs in enumerate(ft.factors):
        M, keys = _products([mats[f] for f in fs], [np.arange(mats[f].shape[1]) for f in fs])
        rd_cols.append(M)
        rd_keys += [(t, k) for k in keys]
    rdX = np.column_stack(rd_cols)
    # The treatment-coded X, built the same way: reduced factors lose their first level.
    xt_cols, xt_keys, xt_term = ([np.ones((n, 1))], [("(Intercept)",)], ["(Intercept)"]) if ft.intercept else ([], [], [])
    for t, (fs, scoped) in enumerate(zip(ft.factors, ft.scoped)):
        for st in scoped:
            reduced = dict(st)
            if set(reduced) != set(fs):
                raise InferenceError(
                    f"type III hypotheses for the term {ft.labels[t]!r} are not available: its coding leaves out a "
                    "variable (a term without its marginal terms); use type=1 or type=2"
                )
            keep = [np.arange(1 if reduced[f] and f not in ft.numeric else 0, mats[f].shape[1]) for f in fs]
            M, keys = _products([mats[f] for f in fs], keep)
            xt_cols.append(M)
            xt_keys += [(t, k) for k in keys]
            xt_term += [ft.labels[t]] * M.shape[1]
    Xt_all = np.column_stack(xt_cols)
    keep_t = _prune_aliased(Xt_all, [str(k) for k in xt_keys])
    Xt = Xt_all[:, keep_t]
    keys_t = [xt_keys[j] for j in keep_t]
    term_t = [xt_term[j] for j in keep_t]
    notes = []
    empty = [k for k, col in zip(rd_keys, rdX.T) if not np.any(col != 0) and k[0] != "(Intercept)"]
    if empty:
        cells = ", ".join(_cell_name(ft, mats, *k) for k in empty)
        notes.append(f"missing cells for {cells}: interpret type III hypotheses with care")

    L = zapsmall(np.linalg.pinv(Xt) @ rdX).T  # (rdX columns, Xt columns)
    cols_of = {t: [j for j, u in enumerate(term_t) if u == t] for t in ft.labels}
    contained = ft.containment()
    order = sorted(range(len(ft.labels)), key=lambda i: -len(ft.factors[i]))
    for i in order:
        t = ft.labels[i]
        if not contained[t] or not cols_of[t]:
            continue
        xcols = [c for u in contained[t] for c in cols_of[u]]
        A, B = L[:, xcols], L[:, cols_of[t]]
        coef = np.linalg.lstsq(A, B, rcond=None)[0] if xcols else np.zeros((0, B.shape[1]))
        L[:, cols_of[t]] = zapsmall(B - A @ coef)
    where = {k: i for i, k in enumerate(rd_keys)}
    L = L[[where[k] for k in keys_t]]
    out = {}
    mapping = None if _same_matrix(Xt, X) else zapsmall(np.linalg.pinv(Xt) @ X)
    for t in ft.labels:
        Lt = L[:, cols_of[t]].T
        Lt = Lt[np.sum(np.abs(Lt), axis=1) > 1e-8]
        out[t] = Lt if mapping is None else Lt @ mapping
    return out, notes


def _cell_name(ft: FixedTerms, mats: dict, term: int, key: tuple[int, ...]) -> str:
    """A cell of a term as R names rdX's column: ``schgendboys:sexF``."""
    parts = []
    for f, j in zip(ft.factors[term], key):
        levels = ft.levels.get(f)
        parts.append(f"{f}{levels[j]}" if levels and mats[f].shape[1] == len(levels) else f)
    return ":".join(parts)


def _same_matrix(A: np.ndarray, B: np.ndarray) -> bool:
    return A.shape == B.shape and bool(np.allclose(A, B, rtol=0, atol=1e-12 * max(1.0, np.max(np.abs(B), initial=0))))


def hypotheses(m, type=3) -> tuple[dict[str, np.ndarray], list[str]]:
    """The hypothesis matrix L of each fixed-effects term (columns: the fit's fixed effects), and notes.

    See the module docstring for the three types; as in lmerTest, types II and
    III fall back to type I for a model with one term or one column.
    """
    key = _TYPES.get(type if not isinstance(type, str) else type.upper())
    if key is None:
        raise InferenceError(f"type must be 1, 2 or 3 (or 'I', 'II', 'III'), got {type!r}")
    ft = fixed_terms(m.design)
    X = m.design.X
    p = X.shape[1]
    if p == 0 or not ft.labels:
        return {}, []
    if key == "1" or p <= 1 or len(ft.labels) <= 1:
        return _type1(ft, X), []
    if key == "2":
        return _type2(ft, X), []
    return _type3(m, ft, X)


# ---- the table -------------------------------------------------------------------------------------------------

_COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]


def anova_table(m, type=3, ddf: str = "Satterthwaite") -> AnovaTable:
    """lmerTest's ``anova(m, type, ddf)``: F test of each fixed-effects term.

    ``type`` 3 (default), 2 or 1 (or "III", "II", "I"); ``ddf``
    "Satterthwaite" (default) or "Kenward-Roger" (REML fits only, as lmerTest).
    Returns a DataFrame indexed by term with columns Sum Sq, Mean Sq, NumDF,
    DenDF, F value, Pr(>F); it prints with lmerTest's heading and
    significance stars. A term whose hypothesis has no testable row (all of
    its columns aliased) gets NA, as in lmerTest.
    """
    from ._inference import _ddf_method, contest

    method = _ddf_method(ddf)
    if method == "none":
        raise InferenceError("anova's ddf must be 'Satterthwaite' or 'Kenward-Roger'")
    if method == "Kenward-Roger" and not m.REML:
        raise InferenceError("Kenward-Roger's method is only available for REML fits (as in lmerTest); "
                             "refit with REML=True or use ddf='Satterthwaite'")
    Ls, notes = hypotheses(m, type)
    for note in notes:  # lmerTest says it (a message) when the table is made
        warn_user(note, InferenceWarning)
    key = _TYPES[type if not isinstance(type, str) else type.upper()]
    rows = []
    names = list(m.design.fixef_names)
    for term, L in Ls.items():
        if L.shape[0] == 0:
            rows.append([np.nan] * 6)
            continue
        use = method
        if method == "Kenward-Roger" and np.linalg.matrix_rank(L) < L.shape[0]:
            warn_user(f"the hypothesis of {term!r} is rank deficient: Kenward-Roger's F test cannot be "
                      "computed, Satterthwaite's is used instead (as lmerTest does)", InferenceWarning)
            use = "Satterthwaite"
        rows.append(contest(m, L, ddf=use).iloc[0].to_list())
    out = pd.DataFrame(np.array(rows, dtype=float).reshape(len(rows), 6), index=list(Ls), columns=_COLUMNS)
    way = "Satterthwaite's" if method == "Satterthwaite" else "Kenward-Roger's"
    out = AnovaTable.of(out, f"Type {_ROMAN[key]} Analysis of Variance Table with {way} method")
    out.attrs["type"] = int(key)
    out.attrs["ddf"] = method
    out.attrs["hypotheses"] = {t: pd.DataFrame(L, columns=names) for t, L in Ls.items()}
    out.attrs["notes"] = notes
    return out

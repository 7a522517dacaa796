"""A known relationship matrix over the levels of a factor: the animal model.

In quantitative genetics the additive genetic values u of animals are correlated
through their pedigree: u ~ N(0, σ²_a A), with A the numerator relationship matrix
(A_ij = twice the coefficient of kinship of animals i and j; Henderson 1976; Mrode,
*Linear Models for the Prediction of Animal Breeding Values*, ch. 2). The model

    y = Xβ + Z u + ε,   u ~ N(0, σ²_a A),   ε ~ N(0, σ² I)

is lme4's ``y ~ x + (1 | animal)`` with A in place of the identity between the
levels of ``animal``. R's pedigreemm (Vazquez, Bates et al. 2010) and lme4qtl
(Ziyatdinov et al. 2018, ``relmat = list(animal = A)``) fit it by writing
A = L Lᵀ and u = L u*, u* ~ N(0, σ²_a I).

jaxmlm fits it through the covariance-structure protocol of :mod:`jaxmlm.core`
(no fitting code of its own): :func:`jaxmlm.core.with_structure` rewrites the
term ``(1 | animal)`` — q levels, one column — as one "level" whose q columns
are the indicators of the animals (times the term's column), and
:class:`RelationshipMatrix` gives that term the relative covariance factor

    T(θ) = θ L,   Σ / σ² = θ² A,   so σ²_a = θ² σ²,

with L a pivoted Cholesky factor of A (LAPACK ``dpstrf``): Pᵀ A P = L Lᵀ with L
lower triangular, which exists for every positive *semi*-definite A (e.g. clones
or identical twins: two equal rows); the columns are taken in the pivot order P,
so T stays lower triangular. The engine's criterion is then the exact REML or ML
criterion of the model above; b̂ (the design's block columns, in that order) are
the best linear unbiased predictions of u (the estimated breeding values).

Levels: A is given with labels (a square DataFrame with the labels as index and
columns, or an array with ``labels``), and is matched to the factor's levels by
label (as R's ``as.character`` writes them), whatever the order. Every level in
the data must be in A. Animals in A without data (ancestors) are allowed and
dropped: the marginal distribution of the observed animals' values is
N(0, σ²_a A_oo) with A_oo the rows and columns of the observed ones, so the
likelihood and the estimates are unchanged (pedigreemm and lme4qtl likewise take
the relationship factor of the levels present); their predictions
E(u_m | y) = A_mo A_oo⁻¹ û_o are not made here.

Cost: the term is one dense q × q block (q = animals with data): memory q² and
time q³ per criterion evaluation — fine for hundreds to a few thousand animals,
not for national evaluations (those use the sparse inverse of A).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.linalg.lapack as lapack

from ._covariance import CovarianceStructure
from ._design import Block, Design, _labels
from ._errors import DataError

__all__ = ["RelationshipMatrix", "apply_relmat"]


def _label_index(values, what: str) -> pd.Index:
    """Labels as the design writes its level labels (R's ``as.character``), refused if duplicated."""
    idx = _labels(pd.Index(values))
    dup = idx[idx.duplicated()]
    if len(dup):
        raise DataError(f"the relationship matrix's {what} are duplicated: {', '.join(map(repr, dup[:5].tolist()))}"
                        f"{' …' if len(dup) > 5 else ''}")
    return idx


class RelationshipMatrix(CovarianceStructure):
    """A known relationship matrix A for the levels of a factor: u ~ N(0, σ²_a A).

    ``RelationshipMatrix(A)`` with A a square pandas DataFrame whose index and columns
    are the labels, or ``RelationshipMatrix(A, labels)`` with A an array. A must be
    symmetric and positive semi-definite. Put it on a one-column term with
    :func:`jaxmlm.core.with_structure`::

        d = core.with_structure(core.design("y ~ 1 + (1 | animal)", data), "animal", RelationshipMatrix(A))

    Its one parameter θ (≥ 0) gives σ²_a = θ² σ² (module docstring of :mod:`jaxmlm._relmat`).
    """

    kind = "relmat"
    hom = True

    def __init__(self, A, labels=None):
        if isinstance(A, pd.DataFrame):
            if labels is not None:
                raise DataError("give the labels either as the DataFrame's index and columns or as labels=, not both")
            rows = _label_index(A.index, "row labels (index)")
            cols = _label_index(A.columns, "column labels")
            if len(rows) != len(cols) or not rows.isin(cols).all():
                raise DataError("the relationship matrix's index and columns must hold the same labels "
                                f"({len(rows)} rows, {len(cols)} columns)")
            values = A.to_numpy()[:, cols.get_indexer(rows)]
        else:
            if labels is None:
                raise DataError("a relationship matrix given as an array needs labels= (the factor's level of "
                                "each row), or give a DataFrame with the labels as index and columns")
            values = np.asarray(A)
            rows = _label_index(labels, "labels")
        try:
            values = np.array(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError("the relationship matrix must hold numbers") from None
        if values.ndim != 2 or values.shape[0] != values.shape[1]:
            raise DataError(f"the relationship matrix must be square, got shape {values.shape}")
        if values.shape[0] != len(rows):
            raise DataError(f"the relationship matrix is {values.shape[0]} × {values.shape[1]} but has "
                            f"{len(rows)} labels")
        if values.shape[0] == 0:
            raise DataError("the relationship matrix is empty")
        if not np.all(np.isfinite(values)):
            raise DataError("the relationship matrix has missing or infinite entries")
        scale = float(np.max(np.abs(values)))
        asym = float(np.max(np.abs(values - values.T)))
        if asym > 1e-10 * max(scale, 1.0):
            i, j = np.unravel_index(np.argmax(np.abs(values - values.T)), values.shape)
            raise DataError(f"the relationship matrix is not symmetric: A[{rows[i]!r}, {rows[j]!r}] = {values[i, j]:.6g} "
                            f"but A[{rows[j]!r}, {rows[i]!r}] = {values[j, i]:.6g}")
        values = (values + values.T) / 2.0
        lam = np.linalg.eigvalsh(values)
        if lam[0] < -_psd_tol(lam[-1], len(lam)):
            raise DataError(f"the relationship matrix is not positive semi-definite (smallest eigenvalue "
                            f"{lam[0]:.3g}): it cannot be a covariance matrix")
        values.flags.writeable = False
        self.A = values
        self.labels = rows
        self.k = 1
        self.levels = None  # the factor's levels in the design's column order, once bound
        self.column = None  # the term's column (e.g. "(Intercept)"), once bound
        self._L = None
        self._key = (values.shape, values.tobytes(), tuple(rows))

    # ---- binding to a term's levels -------------------------------------------------------

    def bind(self, levels: pd.Index, column: str, group: str) -> "RelationshipMatrix":
        """The structure for a factor with ``levels`` (its labels): A_oo of those levels, its
        pivoted Cholesky factor L, and the order of the levels as the term's columns."""
        levels = pd.Index(levels, dtype=object)
        pos = self.labels.get_indexer(levels)
        if np.any(pos < 0):
            missing = levels[pos < 0].tolist()
            raise DataError(f"{len(missing)} level(s) of {group!r} are not in the relationship matrix: "
                            f"{', '.join(map(repr, missing[:5]))}{' …' if len(missing) > 5 else ''} (every level "
                            "with data needs a row and a column of A)")
        Aoo = self.A[np.ix_(pos, pos)]
        L, piv = _pivoted_cholesky(Aoo)
        out = object.__new__(RelationshipMatrix)
        out.A, out.labels = self.A, self.labels
        out.k = len(levels)
        out.levels = pd.Index(levels[piv], dtype=object)
        out.order = piv  # column j of the term is level order[j] of the factor
        out.column = column
        out._L = L
        out._key = self._key + (tuple(out.levels), column)
        return out

    # ---- the structure protocol ---------------------------------------------------------------

    @property
    def nparams(self) -> int:
        return 1

    def scale_mask(self) -> np.ndarray:
        return np.array([True])

    def factor(self, par) -> jnp.ndarray:
        """T = θ L (q × q, lower triangular): Σ/σ² = θ² A."""
        if self._L is None:
            raise DataError("a RelationshipMatrix is put on a term by jaxmlm.core.with_structure (which matches "
                            "its labels to the factor's levels)")
        par = jnp.asarray(par)
        return par[0] * jnp.asarray(self._L, par.dtype)

    @property
    def L(self) -> np.ndarray | None:
        """The pivoted Cholesky factor of A over the bound levels (rows and columns in ``levels`` order)."""
        return self._L

    def param_names(self, columns, group: str) -> list[str]:
        return [f"{group}.{self.column}" if self.column is not None else f"{group}.relmat"]

    def sdcor_labels(self):
        return (("sd", 0, 0),)

    def text(self, expr: str, group: str) -> str:
        return f"relmat({expr} | {group})"

    def shows_covariances(self) -> bool:
        return False

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, RelationshipMatrix) and self._key == other._key

    def __repr__(self) -> str:
        bound = f", bound to {len(self.levels)} levels" if self.levels is not None else ""
        return f"RelationshipMatrix({len(self.labels)} labels{bound})"


def _psd_tol(largest: float, q: int) -> float:
    """How negative an eigenvalue of a positive semi-definite A may come out in floating point."""
    return max(q, 10) * np.finfo(np.float64).eps * 100 * max(abs(largest), 1.0)


def _pivoted_cholesky(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, piv): A[piv][:, piv] = L Lᵀ, L lower triangular with zero columns past A's rank
    (LAPACK dpstrf, complete pivoting; Higham 2002, §10.3)."""
    q = A.shape[0]
    c, piv, rank, info = lapack.dpstrf(A, lower=1, tol=_psd_tol(float(np.max(np.diag(A))), q))
    if info < 0:  # pragma: no cover - a LAPACK argument error
        raise DataError(f"the pivoted Cholesky factorization of the relationship matrix failed (info {info})")
    L = np.tril(c)
    L[:, rank:] = 0.0  # dpstrf leaves the trailing block of a semi-definite A unfactored
    piv = piv - 1
    if not np.allclose(L @ L.T, A[np.ix_(piv, piv)], rtol=0, atol=1e-8 * max(float(np.max(np.abs(A))), 1.0)):
        raise DataError("the relationship matrix of the factor's levels is not positive semi-definite to working "
                        "precision")
    L.flags.writeable = False
    return L, piv


def apply_relmat(design: Design, index: int, structure: RelationshipMatrix) -> Design:
    """``design`` with term ``index`` (one column, alone on its grouping factor) rewritten as one
    level whose columns are the factor's levels, under ``structure`` bound to those levels."""
    t = design.terms[index]
    blk = design.blocks[t.block]
    if t.k != 1 or len(blk.terms) != 1:
        raise DataError(f"a relationship matrix applies to a term of one column alone on its grouping factor, "
                        f"e.g. (1 | {t.group}); the term on {t.group!r} has {t.k} column(s) and its factor "
                        f"{len(blk.terms)} term(s)")
    if structure.levels is not None:
        raise DataError("this RelationshipMatrix is already bound to a term's levels: pass the one you made")
    if not design.held:
        raise DataError("a relationship matrix needs the design's rows (not a design from data in pieces)")
    bound = structure.bind(blk.levels, t.columns[0], t.group)
    where = np.empty(len(bound.order), np.int64)
    where[bound.order] = np.arange(len(bound.order))  # column of each level
    n = len(blk.codes)
    Z = np.zeros((n, bound.k), dtype=blk.Z.dtype)
    Z[np.arange(n), where[blk.codes]] = blk.Z[:, 0]
    labels = tuple(bound.levels)
    new_block = Block(group=blk.group, Z=Z, codes=np.zeros_like(blk.codes), levels=pd.Index(["(all)"], dtype=object),
                      columns=labels, terms=blk.terms, factors=blk.factors)
    new_term = dataclasses.replace(t, columns=labels, cov=bound)
    terms = design.terms[:index] + (new_term,) + design.terms[index + 1:]
    blocks = design.blocks[: t.block] + (new_block,) + design.blocks[t.block + 1:]
    return dataclasses.replace(design, terms=terms, blocks=blocks)

"""jaxmlm.core — the engine's stages as functions of arrays, for research code.

``lmer`` is these stages in a row; here each one is a function you can call, ``jit``,
``grad`` or ``vmap`` yourself::

    formula + data ──design──▶ Design ──schema──▶ Schema ──statistics──▶ Stats ──┐
                                                            merge(Stats, Stats) ◀┘
    Stats ──criterion(θ)──▶ −2 log-likelihood (REML or ML), profiled over β and σ
    Stats ──fit──▶ Fit (θ̂, optimizer record, Solution: β̂, σ̂, vcov, b̂)

* :func:`design` materializes a formula on a pandas frame (lme4's formula language; rows
  with missing values dropped), with prior ``weights`` and an ``offset``.
* :func:`schema` fixes the shapes of the statistics from the grouping structure alone:
  statistics made against one schema merge, whatever rows each holds.
* :func:`statistics` makes the sufficient statistics (Gram blocks of [Z X y]) of all or some
  rows; :func:`merge` combines those of disjoint rows into those of their union (the
  result never depends on how rows were split: the partition test in ``tests/test_core.py``).
* :func:`criterion` is the profiled criterion at any θ — a pure, jit-compiled function of
  arrays, differentiable in θ (``jax.grad``) and in the statistics.
* :func:`response_statistics` swaps in a new response inside traced code, so a criterion
  or a fit ``vmap``s over many responses (simulations) without a new pass over the rows.
* :func:`fit` runs lmer's whole pipeline (Newton from lme4's start, canonical signs,
  boundary snapping, estimates) as one traceable function — differentiable: θ̂'s derivative
  with respect to the statistics comes from the implicit function theorem at the optimum
  (:mod:`jaxmlm._implicit`), the estimates' from autodiff of their explicit formulas. On a
  CPU, ``vmap`` it over at most :func:`batch_limit` replicates at once.
* :func:`row_data` and :func:`statistics_of`: the data → statistics step as a traceable
  function of the rows (y, X, prior weights, offset, Z's values), for derivatives of a fit
  with respect to the data::

      rows = core.row_data(d, s)
      def beta(w):
          return core.fit(core.statistics_of(s, rows._replace(weights=w)), s.layout).solution.beta
      J = jax.jacobian(beta)(rows.weights)              # (p, n): ∂β̂/∂wᵢ
* :func:`with_structure` puts a covariance structure of your own (a
  :class:`CovarianceStructure` subclass: parameters → relative factor) on a term;
  :class:`RelationshipMatrix` is one: a known relationship matrix between the levels of
  a factor (pedigreemm's and lme4qtl's ``relmat``, the animal model).
* Data in pieces (files, partitions, other machines): :func:`structure` of each piece,
  :func:`combine_structures`, one :func:`plan`, each piece's :func:`piece_statistics`,
  :func:`merge`, :func:`without_aliased`, :func:`finish` — what ``lmer`` does with a Dask frame, for any framework::

      parts = [pd.read_parquet(f) for f in files]            # or one at a time, anywhere
      st = functools.reduce(core.combine_structures, [core.structure(formula, d) for d in parts])
      pl = core.plan(st)
      stats = functools.reduce(core.merge, [core.piece_statistics(pl, d) for d in parts])
      if (pl2 := core.without_aliased(pl, stats)) is not pl:   # aliased columns: the statistics again
          pl, stats = pl2, functools.reduce(core.merge, [core.piece_statistics(pl2, d) for d in parts])
      design, layout, stats = core.finish(pl, stats)
      res = core.fit(stats, layout)

θ is lme4's: per random-effects term, the lower triangle of its relative covariance factor
Λ (Σ = σ² Λ Λᵀ) column by column for unstructured terms; other structures (``diag``,
``cs``, ``ar1``) have their own parameters (``Structure`` in :mod:`jaxmlm._covariance`;
:func:`theta_names` says what each entry is). The REML flag is an array argument, so
REML and ML share one compiled program; ``layout`` (hashable) is static.

Example — the criterion, its gradient, and 100 simulated responses at once::

    import jax, jax.numpy as jnp, jaxmlm, jaxmlm.core as core
    d = core.design("Reaction ~ Days + (Days | Subject)", jaxmlm.load_example("sleepstudy"))
    s = core.schema(d)
    st = core.statistics(s, d)
    theta = jnp.array([0.9, 0.02, 0.2])
    f, g = jax.value_and_grad(core.criterion)(theta, st, s.layout)
    res = core.fit(st, s.layout)                       # res.theta, res.solution.beta, ...
    ops = core.response_operators(d, s.layout)
    Y = ...                                             # (100, n) responses
    fits = jax.vmap(lambda y: core.fit(core.response_statistics(st, y, ops, s.layout), s.layout))(Y)
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import _compiled, _x64  # noqa: F401
from ._covariance import CovarianceStructure
from ._design import Design
from ._errors import DataError
from ._fit import Fit
from ._fit import fit as _fit
from ._frontend import build_design
from ._implicit import RowData, active_set, implicit_theta
from ._implicit import row_data as _row_data
from ._implicit import statistics_of as _statistics_of
from ._objective import _deviance
from ._optimize import STATUS, OptState, lme4_start
from ._partitioned import Plan, Structure, columns_of, combine_structure, make_plan, merge_compiled, piece_structure
from ._partitioned import aliased as _aliased
from ._partitioned import finish as _finish
from ._partitioned import without as _without
from ._partitioned import piece_statistics as _piece_statistics
from ._relmat import RelationshipMatrix, apply_relmat
from ._solution import Solution
from ._solution import solve as _solve
from ._stats import (
    Layout,
    ResponseOps,
    Schema,
    Stats,
    accumulate,
    make_schema,
    response_ops,
    response_stats,
    with_response,
)

__all__ = [
    "CovarianceStructure",
    "Design",
    "Fit",
    "Layout",
    "OptState",
    "Plan",
    "ResponseOps",
    "RelationshipMatrix",
    "RowData",
    "STATUS",
    "Schema",
    "Solution",
    "Stats",
    "Structure",
    "batch_limit",
    "combine_structures",
    "criterion",
    "design",
    "finish",
    "fit",
    "merge",
    "piece_statistics",
    "plan",
    "response_operators",
    "response_statistics",
    "row_data",
    "schema",
    "solve",
    "start",
    "statistics",
    "statistics_of",
    "structure",
    "theta_names",
    "with_structure",
    "without_aliased",
]


def design(formula: str, data, *, weights=None, offset=None) -> Design:
    """Formula + pandas frame → :class:`Design` (model matrices, grouping codes, lme4's term order).

    The frame is not modified; rows with a missing value in the formula's variables are
    dropped. ``weights`` and ``offset``: column names or one value per row, as in ``lmer``."""
    return build_design(formula, data, weights=weights, offset=offset)


def schema(design: Design) -> Schema:
    """The :class:`Schema` of ``design``'s statistics: sizes (``schema.layout``) and the sparse
    index of the crossed blocks, from the grouping codes alone (no response, predictor or
    weight values)."""
    return make_schema(design)


def statistics(schema: Schema, design: Design, rows=None) -> Stats:
    """Sufficient statistics of ``rows`` of ``design`` (positions or a boolean mask; None: all),
    in ``schema``'s shapes: one pass over those rows, in chunks of fixed size."""
    return accumulate(schema, design, rows)


def merge(a: Stats, b: Stats) -> Stats:
    """Statistics of the rows of ``a`` and ``b`` together (disjoint rows, one schema).

    Sums, except that each part's response column is centred on its own least-squares
    fit, so both are re-centred on the joint fit first (formulas: ``jaxmlm._stats.merge_stats``).
    Pure JAX, one compiled program: usable in ``jit``, in a tree reduction over devices or a
    cluster's partitions, on device or host (numpy) statistics."""
    return merge_compiled(a, b)


@partial(_compiled.jit, static_argnames="layout")
def criterion(theta, stats: Stats, layout: Layout, REML=True) -> jax.Array:
    """The profiled criterion at θ: −2 × the (restricted) log-likelihood maximized over β and σ.

    d(θ) = log|L_θ|² + reml·log|R_X|² + (n − reml·p)(1 + log(2π r²_θ / (n − reml·p))) − Σ log wᵢ
    (Bates, Mächler, Bolker & Walker 2015, eqs. 34 and 41; lme4's ``devfun``). Differentiable
    in ``theta`` and in the statistics; ``REML`` may be a traced value (1.0 or 0.0)."""
    return _deviance(jnp.asarray(theta, stats.WW.dtype), stats, jnp.asarray(REML, stats.WW.dtype), layout)


@partial(_compiled.jit, static_argnames="layout")
def solve(theta, stats: Stats, layout: Layout, REML=True) -> Solution:
    """Everything at θ: β̂(θ), σ̂(θ), vcov(β̂), the conditional modes b̂ and their conditional
    variances, and the criterion (one factorization)."""
    return _solve(jnp.asarray(theta, stats.WW.dtype), stats, jnp.asarray(REML, stats.WW.dtype), layout)


def start(layout: Layout) -> np.ndarray:
    """lme4's starting θ: 1 on the diagonal of every relative covariance factor, 0 elsewhere."""
    return lme4_start(layout)


@partial(_compiled.jit, static_argnames=("layout", "max_iter", "method"))
def fit(stats: Stats, layout: Layout, REML=True, theta0=None, max_iter: int = 200, method: str = "newton") -> Fit:
    """lmer's fit as one traceable function: Newton on the criterion from ``theta0``
    (default lme4's start), canonical signs, boundary snapping, then the :class:`Solution`.

    ``res.state.status`` says why the optimizer stopped (:data:`STATUS`: 0 and 1 are
    convergence). ``method``: "newton" (Newton's method), "ai" (average information) or
    "bfgs". ``vmap`` it over statistics (e.g. from :func:`response_statistics`) or starts;
    on a CPU, at most :func:`batch_limit` fits at once.

    Differentiable with respect to ``stats`` (``jax.grad``, ``jacobian``, ``jvp``): the
    optimizer runs on stopped statistics and θ̂ gets dθ̂ = −H⁻¹ (∂²f/∂θ∂s) ds, H the exact
    Hessian of the criterion at θ̂ (implicit function theorem); at a boundary fit the
    components held at 0 have derivative 0 and the others use the reduced Hessian
    (:mod:`jaxmlm._implicit`). ``res.solution`` and ``res.objective`` are computed from
    (θ̂, stats) and differentiate by autodiff. Not with respect to ``theta0``."""
    dt = stats.WW.dtype
    theta0 = jnp.asarray(lme4_start(layout) if theta0 is None else theta0, dt)
    reml = jnp.asarray(REML, dt)
    # The optimizer runs on stopped statistics (its iterations are never differentiated);
    # θ̂ gets its derivative from the implicit function theorem (jaxmlm._implicit), and the
    # estimates, explicit functions of (θ̂, stats), theirs from ordinary autodiff.
    res = _fit(theta0, jax.lax.stop_gradient(stats), reml, layout, max_iter=max_iter, method=method,
               with_solution=False)
    theta = implicit_theta(res.theta, stats, reml, active_set(res.theta, layout), layout)
    sol = _solve(theta, stats, reml, layout)
    return res._replace(theta=theta, objective=sol.criterion, solution=sol)


def batch_limit(layout: Layout, wanted: int) -> int:
    """How many fits of ``layout`` to ``vmap`` at once on a CPU: ``wanted``, or fewer where the
    batch's LAPACK calls would grow past the size at which jaxlib splits a batched call over
    XLA's thread pool, where two running at once can deadlock it (jaxlib 0.10;
    ``benchmarks/jax_cpu_deadlock_repro.py``). It counts the criterion's largest LAPACK call
    (a crossed design's fill-in block), the Newton step's gradients taken side by side, and
    the step's eigendecomposition. ``refit_many``, the bootstraps and ``all_fit`` batch this way;
    vmap :func:`fit` over more replicates in chunks of this size. On other backends: ``wanted``.
    """
    from ._optimize import fd_batch
    from ._refit import lapack_safe_batch

    if isinstance(wanted, bool) or not isinstance(wanted, (int, np.integer)) or wanted < 1:
        raise DataError(f"wanted must be a positive whole number of fits, got {wanted!r}")
    return lapack_safe_batch(wanted, layout, points=fd_batch(layout))


def row_data(design: Design, schema: Schema) -> RowData:
    """The design's rows as JAX arrays (:class:`RowData`: X, y, weights, offset, Z's values,
    level codes), for :func:`statistics_of`. Without prior weights ``weights`` is all ones,
    without an offset ``offset`` all zeros."""
    return _row_data(design, schema)


def statistics_of(schema: Schema, data: RowData) -> Stats:
    """:func:`statistics` of ``data``'s rows as a traceable function: differentiate a fit
    with respect to y, the prior weights, X, the offset or Z's values by replacing that leaf,
    e.g. ``statistics_of(s, rows._replace(weights=w))`` inside the function you ``grad``.

    The same cross-product kernel as :func:`statistics`, in one chunk (memory grows with the
    rows); the same statistics up to rounding. Rows of weight 0 carry nothing and have
    derivative 0 (at w = 0 the criterion's count of rows jumps: no derivative exists)."""
    return _statistics_of(schema, data)


def response_operators(design: Design, layout: Layout) -> ResponseOps:
    """The design's arrays that :func:`response_statistics` needs (on the device, once)."""
    return response_ops(design, layout)


def response_statistics(stats: Stats, y, ops: ResponseOps, layout: Layout) -> Stats:
    """``stats`` with the response replaced by ``y`` (n,): every cross-product with y made
    again, the rest kept. Traceable, so it ``vmap``s over a batch of responses."""
    parts = response_stats(jnp.asarray(y)[None, :], ops, layout)[:5]  # without the flatness flag
    return with_response(stats, *(a[0] for a in parts), layout.p)


def theta_names(design: Design) -> list[str]:
    """lme4's names of θ's entries, in order: ``group.column`` on a factor's diagonal,
    ``group.row.column`` below it, and each structure's own parameters (``cs``'s correlation…)."""
    return [nm for term in design.terms for nm in term.cov.param_names(term.columns, term.group)]


def with_structure(design: Design, term, structure: CovarianceStructure) -> Design:
    """``design`` with the covariance structure of one random-effects term replaced by ``structure``.

    ``term``: its position among the random-effects terms (lme4's order) or its grouping
    factor's name when only one term has it. ``structure``: an instance of a
    :class:`CovarianceStructure` subclass (your own, or a built-in one) for the term's k
    columns. The schema, statistics, criterion and fit of the new design use it;
    θ's entries for the term are then the structure's parameters.

    A :class:`RelationshipMatrix` (a known covariance between the *levels* of the term's
    factor: the animal model, u ~ N(0, σ²_a A)) goes on a one-column term alone on its
    factor, e.g. ``(1 | animal)``: the term becomes one block of q columns, one per level
    with data (in the order of A's pivoted Cholesky factor: ``design.terms[i].columns``),
    its relative factor θL (LLᵀ = A over those levels), so σ²_a = θ²σ² and ``b1``/``b_rest``
    hold the predicted values of the levels (:mod:`jaxmlm._relmat`).
    """
    terms = design.terms
    if isinstance(term, str):
        hits = [i for i, t in enumerate(terms) if t.group == term]
        if len(hits) != 1:
            raise DataError(f"{len(hits)} random-effects terms have the grouping factor {term!r}: pass the term's "
                            f"position (0 … {len(terms) - 1}) instead")
        term = hits[0]
    if not isinstance(term, (int, np.integer)) or not 0 <= term < len(terms):
        raise DataError(f"term must be a position 0 … {len(terms) - 1} or a grouping factor's name, got {term!r}")
    if not isinstance(structure, CovarianceStructure):
        raise DataError("structure must be an instance of a CovarianceStructure subclass (jaxmlm.core.CovarianceStructure)")
    if isinstance(structure, RelationshipMatrix):  # a covariance between levels, not within a level
        return apply_relmat(design, int(term), structure)
    t = terms[term]
    if getattr(structure, "k", None) != t.k:
        raise DataError(f"the term on {t.group!r} has {t.k} columns, the structure is for k = "
                        f"{getattr(structure, 'k', None)!r}")
    try:
        hash(structure)
        m = int(structure.nparams)
        T = np.asarray(structure.factor(jnp.asarray(np.where(structure.scale_mask(), 1.0, 0.0))))
    except (TypeError, NotImplementedError) as err:
        raise DataError(f"{type(structure).__name__} does not implement the structure protocol: {err}") from None
    if m < 1 or np.shape(structure.scale_mask()) != (m,) or T.shape != (t.k, t.k):
        raise DataError(f"{type(structure).__name__}: nparams must be ≥ 1, scale_mask() one bool per parameter and "
                        f"factor() a {t.k} × {t.k} matrix (got {T.shape})")
    if not np.all(np.isfinite(T)) or np.linalg.matrix_rank(T @ T.T) < t.k:
        raise DataError(f"{type(structure).__name__}: at the start (1 for scales, 0 otherwise) T Tᵀ must be positive "
                        "definite")
    # The engine's derivatives read only the lower triangle of T (lme4's Λ is lower triangular):
    # an upper entry would be ignored silently, so it is refused here, at the start and at a
    # second, arbitrary point.
    other = np.asarray(structure.factor(jnp.asarray(np.linspace(0.3, 0.9, m))))
    if np.any(np.triu(T, 1) != 0) or np.any(np.triu(other, 1) != 0):
        raise DataError(f"{type(structure).__name__}: factor() must return a lower-triangular T (Σ = σ² T Tᵀ; e.g. "
                        "the Cholesky factor of Σ/σ²), but it has entries above the diagonal")
    new = dataclasses.replace(t, cov=structure)
    return dataclasses.replace(design, terms=terms[:term] + (new,) + terms[term + 1:])


def structure(formula: str, piece: pd.DataFrame, *, weights: str | None = None, offset: str | None = None) -> Structure:
    """The first pass over one piece of data held in pieces: its complete rows' distinct
    combinations of grouping factors and categorical predictors (one row each) and its row
    counts. ``weights`` / ``offset``: column names. Small: its size is set by the levels."""
    return piece_structure(piece, columns_of(formula, piece, weights, offset))


def combine_structures(a: Structure, b: Structure) -> Structure:
    """The :class:`Structure` of the pieces of ``a`` and ``b`` together (associative)."""
    return combine_structure(a, b)


def plan(structure: Structure) -> Plan:
    """The :class:`Plan` (template design without rows, schema, frozen specs) from the structure of
    all pieces: every piece's statistics are made against it (lme4's level checks run here)."""
    return make_plan(structure)


def piece_statistics(plan: Plan, piece: pd.DataFrame) -> Stats:
    """The :class:`Stats` of one piece's complete rows in the plan's shapes (host arrays:
    :func:`merge` them with the other pieces'), on JAX's default device."""
    return _piece_statistics(plan, piece)


def without_aliased(plan: Plan, stats: Stats) -> Plan:
    """``plan`` itself when no fixed-effects column is aliased with earlier ones (judged on the
    merged statistics of all pieces), else a plan without those columns: make the pieces'
    statistics again against it (centring the response on nearly aliased columns loses digits)."""
    drop = _aliased(plan, stats)
    return _without(plan, drop) if drop else plan


def finish(plan: Plan, stats: Stats) -> tuple[Design, Layout, Stats]:
    """The merged statistics of all pieces → (design without rows, layout, statistics) for
    :func:`fit`, with lme4's warning for the columns :func:`without_aliased` dropped."""
    return _finish(plan, stats)

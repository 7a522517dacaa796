"""Derivatives of a fit's estimates with respect to its data: the implicit function theorem at θ̂.

θ̂(s) minimizes the profiled criterion f(θ, s) over θ for statistics s, so ∇_θ f(θ̂(s), s) = 0
for every s near the data's, and differentiating that identity gives

    dθ̂ = −H⁻¹ (∂²f/∂θ∂s) ds,        H = ∇²_θ f(θ̂, s)

(the implicit function theorem; e.g. Blondel et al. 2022, "Efficient and modular implicit
differentiation", NeurIPS, eq. 3). Everything else a fit reports — β̂, σ̂, vcov(β̂), b̂, the
criterion — is an explicit function of (θ̂, s) (:func:`~jaxmlm._solution.solve`), so ordinary
autodiff carries dθ̂ on to them. The optimizer's iterations are never differentiated: they
run on ``stop_gradient`` statistics, and :func:`implicit_theta` attaches the derivative to
their result.

Boundary fits. lme4 constrains each template diagonal to θᵢ ≥ 0, and a fit that ends there
(snapped to 0: a singular fit) sits at a constrained optimum where ∇f need not vanish along
θᵢ. Its derivative is that of the constrained optimum with the active set held: the active
components do not move (dθ_A = 0) and the theorem applies to the free ones with the reduced
Hessian H_FF: dθ_F = −H_FF⁻¹ (∂²f/∂θ_F∂s) ds. This is the one-sided derivative under strict
complementarity (a perturbation small enough keeps the variance at 0, as a refit does; the
finite-difference tests check it on Dyestuff2). H_FF is inverted through its
eigendecomposition in the optimizer's unit-free coordinates (u = θ / c,
:func:`~jaxmlm._optimize.theta_scale`), eigenvalues below ``RCOND`` times the largest
treated as 0: where θ̂ is not identified along some direction (a k × k term with its first
diagonal at 0 leaves the remaining row free to rotate; the likelihood depends on ΛΛᵀ only)
that gives the minimum-norm derivative, which changes no function of ΛΛᵀ (σ̂, β̂, vcov, b̂),
and never an infinity or a NaN.

The data → statistics step is :func:`statistics_of`: the same cross-product kernel as the
pass over the rows (:func:`~jaxmlm._stats._accumulate`), on rows held as JAX arrays
(:class:`RowData`), so y, the prior weights, X, the offset and Z's values are traced
inputs. β₀ (the centring of y on its least-squares fit, see :mod:`jaxmlm._stats`) is held
constant under differentiation: β̂ = β̂' + β₀ is the same function of the data for every
fixed β₀, so its derivative is unaffected.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _x64  # noqa: F401
from ._design import Design
from ._objective import _deviance, blockdiag_fgh, levels_last
from ._optimize import _structured_fgh, diagonal_mask, per_level_formulas, theta_scale
from ._stats import Layout, Schema, Stats, _accumulate, _entries, _rest_index, a22_blocks

__all__ = ["RowData", "row_data", "statistics_of", "implicit_theta", "exact_hessian", "RCOND"]

#: Eigenvalues of the (reduced) Hessian in unit-free coordinates below RCOND × the largest are
#: treated as 0 when it is inverted (module docstring); in float32, 100 ulps.
RCOND = 1e-10


class RowData(NamedTuple):
    """The rows of a design as JAX arrays, for :func:`statistics_of` (a pytree: ``_replace``
    a leaf with a traced value to differentiate with respect to it).

    ``X`` (n, p), ``y`` (n,), ``weights`` (n,) prior weights (ones without them), ``offset``
    (n,) (zeros without one), ``Z1`` (n, k₁) the values of the first block's columns (the
    grouping factor with the most levels) and ``V`` (n, m_r) those of the other blocks — all
    unweighted; ``g1`` (n,) block-1 level codes, ``P`` (n, m_r) positions in Z_r and ``E``
    (n, m_r) entries of A21 (integers, from the grouping structure)."""

    X: jax.Array
    y: jax.Array
    weights: jax.Array
    offset: jax.Array
    Z1: jax.Array
    V: jax.Array
    g1: jax.Array
    P: jax.Array
    E: jax.Array


def row_data(design: Design, schema: Schema, host: bool = False) -> RowData:
    """:class:`RowData` of ``design``'s rows against ``schema`` (the schema of a design holding
    every row; its level codes place each row). ``host``: numpy arrays instead of JAX arrays
    (a jit-compiled function takes either; numpy spares ~0.1 ms per array when the rows are
    passed straight to one)."""
    lay, n = schema.layout, design.n
    if lay.qr:
        P = _rest_index(design, lay.rest)
        E = _entries(schema, design, np.arange(n), P)
        V = np.concatenate([blk.Z for blk in design.blocks[1:]], axis=1).astype(float)
    else:
        P = E = np.zeros((n, 0), np.int32)
        V = np.zeros((n, 0))
    w = np.ones(n) if design.weights is None else np.asarray(design.weights, float)
    off = np.zeros(n) if design.offset is None else np.asarray(design.offset, float)
    b1 = design.blocks[0]
    conv = np.asarray if host else jnp.asarray
    return RowData(*(conv(a) for a in (np.asarray(design.X, float), np.asarray(design.y, float), w, off,
                                        np.asarray(b1.Z, float), V)),
                   conv(b1.codes.astype(np.int32)), conv(P.astype(np.int32)), conv(np.asarray(E, np.int32)))


def _sqrt_weights(w: jax.Array) -> jax.Array:
    """√w, 0 where w ≤ 0, with a finite derivative everywhere (0 at w ≤ 0: there the
    criterion's row count jumps, so no derivative exists; see :func:`statistics_of`)."""
    pos = w > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, w, 1.0)), 0.0)


def statistics_of(schema: Schema, data: RowData) -> Stats:
    """The sufficient statistics of ``data``'s rows, traceable in every float leaf of ``data``.

    The rows of the weighted problem, y* = √w (y − offset), X* = √w X, Z* = √w Z (Bates et al.
    2015, §3.6; :class:`~jaxmlm._stats.WeightedRows`), centred y' = y* − X*β₀ with β₀ their
    least-squares fit (held constant under differentiation), summed by the pass's kernel in
    one chunk; n counts the rows with w > 0 and ``ldw`` = Σ log wᵢ over them. Equal to
    :func:`~jaxmlm.core.statistics` of the design up to rounding. A row of weight 0 carries
    nothing and its derivative is 0: moving it off 0 changes the criterion's n by a whole row."""
    lay = schema.layout
    dt = data.X.dtype
    sw = _sqrt_weights(data.weights)
    X = data.X * sw[:, None]
    y = (data.y - data.offset) * sw
    if lay.p:
        beta0 = jax.lax.stop_gradient(jnp.linalg.lstsq(X, y)[0])
        resid = y - X @ beta0
    else:
        beta0, resid = jnp.zeros(0, dt), y
    W = jnp.concatenate([X, resid[:, None]], axis=1)
    acc = _accumulate(None, W, data.g1, data.Z1 * sw[:, None], data.P, data.V * sw[:, None], data.E,
                      l1=lay.l1, qr=lay.qr, nnz=lay.nnz, kr=a22_blocks(lay))
    pos = data.weights > 0
    n = jax.lax.stop_gradient(jnp.sum(pos).astype(dt))
    ldw = jnp.sum(jnp.where(pos, jnp.log(jnp.where(pos, data.weights, 1.0)), 0.0))
    index = tuple(jnp.asarray(a) for a in schema.index)
    return Stats(n, *acc, *index, beta0, ldw, jnp.asarray(float(lay.p), dt))


def exact_hessian(theta: jax.Array, stats: Stats, reml, layout: Layout) -> jax.Array:
    """∇²_θ f at θ, exact: the optimizer's closed form per level where it has one
    (:func:`~jaxmlm._objective.blockdiag_fgh`, through the structures' chain rule for
    structured terms), else autodiff of the criterion (forward over reverse)."""
    if layout.structured:
        return _structured_fgh(stats, reml, layout)(theta)[2]
    if per_level_formulas(layout):
        A, Z = levels_last(stats.A11, stats.Z1W)
        return blockdiag_fgh(theta, A, Z, stats, reml, layout)[2]
    return jax.hessian(_deviance)(theta, stats, reml, layout)


def _free_solve(H: jax.Array, rhs: jax.Array, free: jax.Array, c: jax.Array) -> jax.Array:
    """H_FF⁻¹ rhs_F on the free components (0 on the others), by the eigendecomposition of
    the reduced Hessian in unit-free coordinates, small eigenvalues dropped (module docstring)."""
    both = free[:, None] & free[None, :]
    Hu = jnp.where(both, H * (c[:, None] * c[None, :]), 0.0)
    w, V = jnp.linalg.eigh(Hu)
    rcond = max(RCOND, 100.0 * float(jnp.finfo(H.dtype).eps))  # float32 mode: rounding noise is larger
    keep = jnp.abs(w) > rcond * jnp.max(jnp.abs(w))
    winv = jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0)
    x = V @ (winv * (V.T @ jnp.where(free, c * rhs, 0.0)))
    return jnp.where(free, c * x, 0.0)


@partial(jax.custom_jvp, nondiff_argnums=(4,))
def implicit_theta(theta: jax.Array, stats: Stats, reml, active: jax.Array, layout: Layout) -> jax.Array:
    """θ itself — an optimum of the criterion for ``stats`` — with the derivative of the
    optimum with respect to ``stats`` (module docstring): dθ = −H_FF⁻¹ (∂²f/∂θ_F∂s) ds on the
    components not ``active`` (bool (m,), diagonals held at their bound 0), 0 on those.
    ``theta`` itself is not differentiated (its tangent is ignored): pass the optimizer's
    result on stopped statistics."""
    return theta


@implicit_theta.defjvp
def _implicit_theta_jvp(layout: Layout, primals, tangents):
    theta, stats, reml, active = primals
    dstats = tangents[1]

    def grad_theta(s):
        return jax.grad(_deviance)(theta, s, reml, layout)

    _, dg = jax.jvp(grad_theta, (stats,), (dstats,))  # (∂²f/∂θ∂s) ds
    H = exact_hessian(theta, stats, reml, layout)
    c = jax.lax.stop_gradient(theta_scale(stats, layout))
    dtheta = -_free_solve(H, dg, ~active, c)
    return theta, dtheta.astype(theta.dtype)


def active_set(theta: jax.Array, layout: Layout) -> jax.Array:
    """Which θ entries sit at their bound: template diagonals (and structures' scales) that are 0."""
    return jnp.asarray(diagonal_mask(layout)) & (theta == 0)

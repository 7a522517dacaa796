"""Stage 6a — from θ̂ to the estimates: β̂, σ̂, vcov(β̂), û, b̂ and Var(b | y).

Built from the same :func:`~jaxmlm._objective.factorize` as the criterion
(Bates et al. 2015, eqs. 19–34):

    β̂ = R_X⁻ᵀ c_β                       σ̂² = r² / (n − p·REML)
    vcov(β̂) = σ̂² (R_X R_Xᵀ)⁻¹           û = L⁻ᵀ (c_u − R_ZX β̂),   b̂ = Λ û
    Var(b | y) = σ̂² Λ (L Lᵀ)⁻¹ Λᵀ       (lme4's condVar; diagonal blocks only)

The off-diagonal part of L⁻¹ (rest rows, block-1 columns) is formed densely,
q_r × l₁k₁: done once per fit, never inside the optimizer.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from . import _x64  # noqa: F401
from ._objective import (
    batched_solve_lower,
    batched_solve_upper_t,
    criterion,
    factorize,
    lam_rest,
    lam_t_rest,
    templates,
)
from ._stats import Layout, Stats

__all__ = ["Solution", "solve"]


class Solution(NamedTuple):
    """Estimates at θ̂. beta (p,); sigma (); vcov (p, p); b1 (l₁, k₁);
    b_rest (q_r,); var1 (l₁, k₁, k₁) and var_rest (list per rest block of
    (l_b, k_b, k_b)): conditional covariances of b; criterion ()."""

    beta: jax.Array
    sigma: jax.Array
    vcov: jax.Array
    b1: jax.Array
    b_rest: jax.Array
    var1: jax.Array
    var_rest: tuple
    criterion: jax.Array


@partial(jax.jit, static_argnames="layout")
def solve(theta: jax.Array, stats: Stats, reml, layout: Layout) -> Solution:
    """All estimates at θ (one factorization)."""
    fac = factorize(theta, stats, layout)
    Ts = templates(theta, layout)
    T1, Rest = Ts[0], Ts[1:]
    p, k1, l1, qr = layout.p, layout.k1, layout.l1, layout.qr
    R = fac.R
    RX, cb, r = R[:p, :p], R[p, :p], R[p, p]
    beta_shifted = solve_triangular(RX.T, cb, lower=False)  # for y' = y − Xβ₀
    sigma2 = r**2 / (stats.n - reml * p)
    dt = R.dtype  # float64, or float32 in float32 mode: constants follow the data
    RXinv = solve_triangular(RX, jnp.eye(p, dtype=dt), lower=True)
    vcov = sigma2 * RXinv.T @ RXinv

    rhs1 = fac.C1[..., p] - fac.C1[..., :p] @ beta_shifted  # (l1, k1)
    L1inv = batched_solve_lower(fac.L1, jnp.broadcast_to(jnp.eye(k1, dtype=dt), fac.L1.shape))
    var1 = jnp.einsum("gki,gkj->gij", L1inv, L1inv)
    var_rest = ()
    if qr:
        rhs2 = fac.C2[:, p] - fac.C2[:, :p] @ beta_shifted
        u2 = solve_triangular(fac.L2.T, rhs2, lower=False)
        w = lam_rest(u2[:, None], Rest, layout)[:, 0]
        # L21ᵀ u2 = Bᵀ Λ_r u2, accumulated per block-1 level.
        back = jax.ops.segment_sum(fac.B * w[stats.pair_a][:, None], stats.pair_g, l1)
        u1 = _solve_lt(fac.L1, rhs1 - back)
        b_rest = w
        # Rows of L⁻¹ below block 1: −L₂⁻¹ Λ_rᵀ B L₁⁻¹ (dense q_r × l₁k₁, once per fit).
        cols = stats.pair_g[:, None] * k1 + jnp.arange(k1)[None, :]
        Bd = jnp.zeros((qr, l1 * k1), dt).at[stats.pair_a[:, None], cols].add(fac.B)
        Y = solve_triangular(fac.L2, lam_t_rest(Bd, Rest, layout), lower=True).reshape(qr, l1, k1)
        Vg = jnp.einsum("agk,gkj->agj", Y, L1inv)
        var1 = var1 + jnp.einsum("agi,agj->gij", Vg, Vg)
        L2inv = solve_triangular(fac.L2, jnp.eye(qr, dtype=dt), lower=True)
        parts = []
        for (off, lev, k), T in zip(layout.rest, Rest):
            blk = L2inv[:, off : off + lev * k].reshape(qr, lev, k)
            vb = jnp.einsum("ali,alj->lij", blk, blk)
            parts.append(sigma2 * jnp.einsum("ij,ljm,km->lik", T, vb, T))
        var_rest = tuple(parts)
    else:
        u1 = _solve_lt(fac.L1, rhs1)
        b_rest = jnp.zeros((0,), dt)
    b1 = jnp.einsum("ij,gj->gi", T1, u1)
    var1 = sigma2 * jnp.einsum("ij,gjm,km->gik", T1, var1, T1)
    return Solution(beta_shifted + stats.beta0, jnp.sqrt(sigma2), vcov, b1, b_rest, var1, var_rest,
                    criterion(fac, stats.n, reml, p))


def _solve_lt(L: jax.Array, x: jax.Array) -> jax.Array:
    """L_g⁻ᵀ x_g for every level g: L (l, k, k) lower, x (l, k)."""
    return batched_solve_upper_t(L, x[..., None])[..., 0]

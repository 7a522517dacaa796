"""Stage 6a — from θ̂ to the estimates: β̂, σ̂, vcov(β̂), û, b̂ and Var(b | y).

Built from the same :func:`~jaxmlm._objective.factorize` as the criterion
(Bates et al. 2015, eqs. 19–34):

    β̂ = R_X⁻ᵀ c_β                       σ̂² = r² / (n − p·REML)
    vcov(β̂) = σ̂² (R_X R_Xᵀ)⁻¹           û = L⁻ᵀ (c_u − R_ZX β̂),   b̂ = Λ û
    Var(b | y) = σ̂² Λ (L Lᵀ)⁻¹ Λᵀ       (lme4's condVar; diagonal blocks only)

Var(b | y) needs only diagonal blocks of (L Lᵀ)⁻¹. With the blocked factor of
:mod:`jaxmlm._objective` (L₂₁ = Λ_rᵀB, B = A21 Λ₁ L₁⁻ᵀ; M₂₂ = L₂L₂ᵀ), those of block 1
are, per level g,

    L_g⁻ᵀL_g⁻¹ + D_gᵀ K D_g,     D_g = B_g L_g⁻¹,   K = Λ_r M₂₂⁻¹ Λ_rᵀ

(B_g: the rows e of B at level g, in rows a_e), and those of the rest blocks are
M₂₂⁻¹'s. So M₂₂⁻¹ is formed once (q_r³, from the factor), and block 1's share is a sum of
D_eᵀ K[a_e, a_e'] D_e' over the pairs (e, e') of rows at the same level: the pair list
of the sparse B Bᵀ (or, where B Bᵀ is formed densely, a product with the dense rows of
B). Done once per fit, never inside the optimizer.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from . import _compiled, _x64  # noqa: F401
from ._objective import (
    _inverse_from_cholesky,
    batched_solve_lower,
    batched_solve_upper_t,
    criterion,
    factorize,
    lam_rest,
    nested_data,
    templates,
)
from ._stats import Layout, Stats, is_nested

__all__ = ["Solution", "solve", "conditional_modes", "conditional_variances"]


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


@partial(_compiled.jit, static_argnames="layout")
def solve(theta: jax.Array, stats: Stats, reml, layout: Layout) -> Solution:
    """All estimates at θ (one factorization)."""
    fac = factorize(theta, stats, layout)
    Ts = templates(theta, layout)
    p = layout.p
    R = fac.R
    RX, cb, r = R[:p, :p], R[p, :p], R[p, p]
    beta_shifted = solve_triangular(RX.T, cb, lower=False)  # for y' = y − Xβ₀
    sigma2 = r**2 / (stats.n - reml * stats.p)
    dt = R.dtype  # float64, or float32 in float32 mode: constants follow the data
    RXinv = solve_triangular(RX, jnp.eye(p, dtype=dt), lower=True)
    vcov = sigma2 * RXinv.T @ RXinv
    _, _, b1, b_rest = conditional_modes(fac, Ts, stats, layout, beta_shifted)
    var1, var_rest = conditional_variances(fac, Ts, stats, layout, sigma2)
    return Solution(beta_shifted + stats.beta0, jnp.sqrt(sigma2), vcov, b1, b_rest, var1, var_rest,
                    criterion(fac, stats, reml, p))


def conditional_modes(fac, Ts: list, stats: Stats, layout: Layout, beta_shifted: jax.Array):
    """û = L⁻ᵀ (c_u − R_ZX β) and b̂ = Λ û at a given β (shifted by the statistics' β₀).

    Returns (u₁ (l₁, k₁), u_r (q_r,), b₁ (l₁, k₁), b_r (q_r,)): the spherical modes û that
    the penalty ‖û‖² needs (PIRLS, :mod:`jaxmlm._pirls`) beside b̂ = Λû. The back
    substitution runs through the blocked factor: L₂ first, then block 1 with L₂₁ᵀ û_r =
    Bᵀ Λ_r û_r accumulated per level."""
    p = layout.p
    T1, Rest = Ts[0], Ts[1:]
    rhs1 = fac.C1[..., p] - fac.C1[..., :p] @ beta_shifted  # (l1, k1)
    if is_nested(layout):
        # Every block is per level (the nested factorization of _objective): block-1 level g
        # meets only its parent's block.
        ((_, lr, kr),) = layout.rest
        parent = nested_data(stats, layout)[0]
        rhs2 = (fac.C2[:, p] - fac.C2[:, :p] @ beta_shifted).reshape(lr, kr)
        u2 = _solve_lt(fac.L2, rhs2)
        w = jnp.einsum("ij,aj->ai", Rest[0], u2)  # Λ_r u₂ per parent level
        u1 = _solve_lt(fac.L1, rhs1 - jnp.einsum("grj,gr->gj", fac.B, w[parent]))
        u2, b_rest = u2.reshape(-1), w.reshape(-1)
    elif layout.qr:
        rhs2 = fac.C2[:, p] - fac.C2[:, :p] @ beta_shifted
        u2 = jax.lax.linalg.triangular_solve(fac.L2, rhs2[:, None], left_side=True, lower=True, transpose_a=True)[:, 0]
        b_rest = lam_rest(u2[:, None], Rest, layout)[:, 0]
        # L21ᵀ u2 = Bᵀ Λ_r u2, accumulated per block-1 level.
        back = jax.ops.segment_sum(fac.B * b_rest[stats.pair_a][:, None], stats.pair_g, layout.l1)
        u1 = _solve_lt(fac.L1, rhs1 - back)
    else:
        u1 = _solve_lt(fac.L1, rhs1)
        u2 = b_rest = jnp.zeros((0,), rhs1.dtype)
    return u1, u2, jnp.einsum("ij,gj->gi", T1, u1), b_rest


def conditional_variances(fac, Ts: list, stats: Stats, layout: Layout, sigma2) -> tuple:
    """Var(b | y) = σ² Λ (L Lᵀ)⁻¹ Λᵀ, its diagonal blocks (module docstring): (var₁ (l₁, k₁, k₁),
    per rest block (l_b, k_b, k_b)). σ² = 1 for a GLMM (lme4's condVar there)."""
    T1, Rest = Ts[0], Ts[1:]
    k1, dt = layout.k1, fac.L1.dtype
    L1inv = batched_solve_lower(fac.L1, jnp.broadcast_to(jnp.eye(k1, dtype=dt), fac.L1.shape))
    var1 = jnp.einsum("gki,gkj->gij", L1inv, L1inv)
    var_rest = ()
    if is_nested(layout):
        ((_, lr, kr),) = layout.rest
        Tr = Rest[0]
        parent = nested_data(stats, layout)[0]
        L2inv = batched_solve_lower(fac.L2, jnp.broadcast_to(jnp.eye(kr, dtype=dt), fac.L2.shape))
        K = jnp.einsum("ij,akj,akl,ml->aim", Tr, L2inv, L2inv, Tr)  # Λ_r M₂₂⁻¹ Λ_rᵀ per level
        D = jnp.einsum("grk,gkj->grj", fac.B, L1inv)  # D_g = B_g L_g⁻¹
        var1 = var1 + jnp.einsum("gri,grs,gsj->gij", D, K[parent], D)
        var_rest = (sigma2 * K,)
    elif layout.qr:
        # Diagonal blocks of (L Lᵀ)⁻¹ (see the module docstring).
        Minv = _inverse_from_cholesky(fac.L2)
        D = jnp.einsum("ek,ekj->ej", fac.B, L1inv[stats.pair_g])
        var1 = var1 + _condvar_rest(Minv, D, Rest, stats, layout)
        parts = []
        for (off, lev, k), T in zip(layout.rest, Rest):
            idx = off + jnp.arange(lev * k).reshape(lev, k)
            vb = Minv[idx[:, :, None], idx[:, None, :]]
            parts.append(sigma2 * jnp.einsum("ij,ljm,km->lik", T, vb, T))
        var_rest = tuple(parts)
    return sigma2 * jnp.einsum("ij,gjm,km->gik", T1, var1, T1), var_rest


def _solve_lt(L: jax.Array, x: jax.Array) -> jax.Array:
    """L_g⁻ᵀ x_g for every level g: L (l, k, k) lower, x (l, k)."""
    return batched_solve_upper_t(L, x[..., None])[..., 0]


def _condvar_rest(Minv: jax.Array, D: jax.Array, Rest, stats: Stats, layout: Layout) -> jax.Array:
    """Σ_{e,e' at level g} D_eᵀ K[a_e, a_e'] D_e' per block-1 level g (l₁, k₁, k₁), K = Λ_r M₂₂⁻¹ Λ_rᵀ.

    D (nnz, k₁) holds the rows D_e = B_e L_g⁻¹ (g = g_e). With the sparse B Bᵀ this is a sum
    over its pair list (pairs e ≥ e' of rows at the same level; the diagonal pairs count
    once), by the row e: S_e = Σ_e' K[a_e, a_e'] D_e', then Σ_e D_eᵀ S_e per level and the
    transpose added. Otherwise through the dense q_r × l₁k₁ matrix of the rows.
    """
    qr, l1, k1 = layout.qr, layout.l1, layout.k1
    scalar = all(k == 1 for _, _, k in layout.rest)
    if scalar:  # Λ_r = diag(λ): fold λ_{a_e} into the rows and use M₂₂⁻¹ itself
        lam = jnp.concatenate([jnp.broadcast_to(T[0, 0], (lev,)) for (_, lev, _), T in zip(layout.rest, Rest)])
        D = D * lam[stats.pair_a][:, None]
        K = Minv
    else:
        K = lam_rest(lam_rest(Minv, Rest, layout).T, Rest, layout).T
    if layout.bbt == "sparse":
        e1, e2 = stats.bb_e1, stats.bb_e2
        # K is symmetric: read K[a_e', a_e] (with the column-major M₂₂⁻¹ that LAPACK returns
        # on CPU, the pairs of one row e then read along a column: a contiguous view).
        w = K.T.reshape(-1)[stats.bb_t]
        w = jnp.where(e1 == e2, 0.5, 1.0).astype(w.dtype) * w
        S = jax.ops.segment_sum(w[:, None] * D[e2], e1, D.shape[0])
        C = jax.ops.segment_sum(D[:, :, None] * S[:, None, :], stats.pair_g, l1)
        return C + jnp.swapaxes(C, 1, 2)
    cols = stats.pair_g[:, None] * k1 + jnp.arange(k1)[None, :]
    Dd = jnp.zeros((qr, l1 * k1), D.dtype).at[stats.pair_a[:, None], cols].add(D)
    KD = (K @ Dd).reshape(qr, l1, k1)
    return jnp.einsum("agi,agj->gij", Dd.reshape(qr, l1, k1), KD)

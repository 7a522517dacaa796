"""Stage 4 — the profiled criterion: one central factorization kernel.

Every evaluation — deviance, REML criterion, gradients, Hessians, β̂, û,
conditional variances — is built from :func:`factorize`, as in
MixedModels.jl. With Λθ block diagonal (one lower-triangular template T_b per
block, repeated over its levels) and the sufficient statistics of
:mod:`jaxmlm._stats` (Bates et al. 2015, *J. Stat. Softw.* 67(1), §3;
MixedModels.jl ``updateL!``):

    L₁L₁ᵀ   = Λ₁ᵀA11Λ₁ + I                    (l₁ independent k₁×k₁ blocks)
    B       = A21 Λ₁ L₁⁻ᵀ                      (sparse, one k₁-row per (a, g) pair)
    L₂L₂ᵀ   = Λ_rᵀ (A22 − B Bᵀ) Λ_r + I        (dense, q_r × q_r; it fills in)
    C₁      = L₁⁻¹ Λ₁ᵀ Z₁ᵀW
    C₂      = L₂⁻¹ Λ_rᵀ (Z_rᵀW − B C₁)
    R Rᵀ    = WᵀW − C₁ᵀC₁ − C₂ᵀC₂              (W = [X y]; R lower triangular)

R = [[R_X, 0], [c_βᵀ, r]] so that r² is the penalized residual sum of
squares, and

    ML:   d(θ)   = log|L|² + n (1 + log(2π r² / n))
    REML: d_R(θ) = log|L|² + log|R_X|² + (n − p)(1 + log(2π r² / (n − p)))

No quantity here depends on the number of rows n except through ``stats.n``.
The objective is even in each column of every template (flipping a column's
sign leaves ΛΛᵀ unchanged), which the optimizer exploits.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from . import _x64  # noqa: F401
from ._stats import Layout, Stats

__all__ = ["Factor", "templates", "factorize", "deviance", "deviance_and_grad"]

_LOG2PI = 1.8378770664093453


class Factor(NamedTuple):
    """Pieces of the blocked Cholesky factor at one θ.

    L1 (l₁, k₁, k₁); B (nnz, k₁); L2 (q_r, q_r); C1 (l₁, k₁, p+1);
    C2 (q_r, p+1); R (p+1, p+1); logdet_L = log|L|².
    """

    L1: jax.Array
    B: jax.Array
    L2: jax.Array
    C1: jax.Array
    C2: jax.Array
    R: jax.Array
    logdet_L: jax.Array


# ---- batched k×k linear algebra for the block-diagonal part ---------------------------------
#
# Block 1 is l₁ independent k₁×k₁ problems with k₁ tiny (1–3 typically) and l₁ up
# to 10⁵+. Unrolled elementwise code over the level axis beats a batched LAPACK
# call per tiny matrix, and it avoids XLA-CPU's batched LAPACK custom calls,
# which deadlocked in a while_loop when two independent batched triangular
# solves ran concurrently (jaxlib 0.10.2; benchmarks/jax_cpu_deadlock_repro.py).
_UNROLL_MAX_K = 6


def batched_cholesky(M: jax.Array) -> jax.Array:
    """Lower Cholesky factors of M (..., k, k), unrolled over the static k when small."""
    k = M.shape[-1]
    if k > _UNROLL_MAX_K:
        return jnp.linalg.cholesky(M)
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        d = jnp.sqrt(M[..., j, j] - sum((L[j][m] ** 2 for m in range(j)), jnp.zeros_like(M[..., j, j])))
        L[j][j] = d
        for i in range(j + 1, k):
            acc = sum((L[i][m] * L[j][m] for m in range(j)), jnp.zeros_like(d))
            L[i][j] = (M[..., i, j] - acc) / d
    zero = jnp.zeros_like(M[..., 0, 0])
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(k)], -1) for i in range(k)], -2)


def batched_solve_lower(L: jax.Array, B: jax.Array) -> jax.Array:
    """L⁻¹ B for lower-triangular L (..., k, k) and B (..., k, m): forward substitution."""
    k = L.shape[-1]
    if k > _UNROLL_MAX_K:
        return solve_triangular(L, B, lower=True)
    X = []
    for i in range(k):
        r = B[..., i, :] - sum((L[..., i, j, None] * X[j] for j in range(i)), jnp.zeros_like(B[..., i, :]))
        X.append(r / L[..., i, i, None])
    return jnp.stack(X, -2)


def batched_solve_upper_t(L: jax.Array, B: jax.Array) -> jax.Array:
    """L⁻ᵀ B for lower-triangular L (..., k, k) and B (..., k, m): back substitution with Lᵀ."""
    k = L.shape[-1]
    if k > _UNROLL_MAX_K:
        return solve_triangular(jnp.swapaxes(L, -1, -2), B, lower=False)
    X = [None] * k
    for i in reversed(range(k)):
        r = B[..., i, :] - sum((L[..., j, i, None] * X[j] for j in range(i + 1, k)), jnp.zeros_like(B[..., i, :]))
        X[i] = r / L[..., i, i, None]
    return jnp.stack(X, -2)


def templates(theta: jax.Array, layout: Layout) -> list[jax.Array]:
    """θ (lme4 order) → the lower-triangular template T_b of every block."""
    out = []
    for kb, pos, idx in layout.templates:
        T = jnp.zeros(kb * kb, theta.dtype).at[jnp.asarray(pos)].set(theta[jnp.asarray(idx)])
        out.append(T.reshape(kb, kb))
    return out


def lam_t_rest(x: jax.Array, Ts: list[jax.Array], layout: Layout) -> jax.Array:
    """Λ_rᵀ x for x of shape (q_r, m): each level's k rows multiplied by T_bᵀ."""
    parts = []
    for (off, lev, k), T in zip(layout.rest, Ts):
        xb = x[off : off + lev * k].reshape(lev, k, -1)
        parts.append(jnp.einsum("ij,lim->ljm", T, xb).reshape(lev * k, -1))
    return jnp.concatenate(parts, axis=0)


def lam_rest(x: jax.Array, Ts: list[jax.Array], layout: Layout) -> jax.Array:
    """Λ_r x for x of shape (q_r, m)."""
    parts = []
    for (off, lev, k), T in zip(layout.rest, Ts):
        xb = x[off : off + lev * k].reshape(lev, k, -1)
        parts.append(jnp.einsum("ij,ljm->lim", T, xb).reshape(lev * k, -1))
    return jnp.concatenate(parts, axis=0)


def _bbt(B: jax.Array, stats: Stats, layout: Layout) -> jax.Array:
    """B Bᵀ (q_r × q_r) from B's sparse rows, by pair scatter or dense GEMM."""
    qr, k1 = layout.qr, layout.k1
    if layout.bbt == "sparse":
        vals = jnp.sum(B[stats.bb_e1] * B[stats.bb_e2], axis=-1)
        low = jax.ops.segment_sum(vals, stats.bb_t, qr * qr).reshape(qr, qr)  # lower triangle
        return low + low.T - jnp.diag(jnp.diagonal(low))
    cols = stats.pair_g[:, None] * k1 + jnp.arange(k1)[None, :]
    Bd = jnp.zeros((qr, layout.l1 * k1), B.dtype).at[stats.pair_a[:, None], cols].add(B)
    return Bd @ Bd.T


def factorize(theta: jax.Array, stats: Stats, layout: Layout) -> Factor:
    """The blocked Cholesky factorization at θ (see the module docstring)."""
    Ts = templates(theta, layout)
    T1 = Ts[0]
    k1 = layout.k1
    M11 = jnp.einsum("ji,gjk,kl->gil", T1, stats.A11, T1) + jnp.eye(k1)
    L1 = batched_cholesky(M11)
    C1 = batched_solve_lower(L1, jnp.einsum("ji,gjm->gim", T1, stats.Z1W))
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L1, axis1=1, axis2=2)))
    S = stats.WW - jnp.einsum("gim,gin->mn", C1, C1)
    if layout.qr:
        # L_g⁻¹ T₁ᵀ per level; B_e = A21_e T₁ L_g⁻ᵀ.
        LiT = batched_solve_lower(L1, jnp.broadcast_to(T1.T, L1.shape))
        B = jnp.einsum("ek,ejk->ej", stats.A21, LiT[stats.pair_g])
        Sr = stats.A22 - _bbt(B, stats, layout)
        Rest = Ts[1:]
        M22 = lam_t_rest(lam_t_rest(Sr, Rest, layout).T, Rest, layout).T + jnp.eye(layout.qr)
        L2 = jnp.linalg.cholesky(M22)
        BC1 = jax.ops.segment_sum(
            jnp.einsum("ej,ejm->em", B, C1[stats.pair_g]), stats.pair_a, layout.qr
        )
        C2 = solve_triangular(L2, lam_t_rest(stats.ZrW - BC1, Rest, layout), lower=True)
        logdet = logdet + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L2)))
        S = S - C2.T @ C2
    else:
        B = jnp.zeros((0, k1))
        L2 = jnp.zeros((0, 0))
        C2 = jnp.zeros((0, stats.WW.shape[0]))
    R = jnp.linalg.cholesky(S)
    return Factor(L1, B, L2, C1, C2, R, logdet)


def criterion(fac: Factor, n: jax.Array, reml: jax.Array, p: int) -> jax.Array:
    """ML deviance (reml = 0) or REML criterion (reml = 1) from a factor."""
    r2 = fac.R[p, p] ** 2
    logdet_rx = 2.0 * jnp.sum(jnp.log(jnp.diagonal(fac.R)[:p]))
    dof = n - reml * p
    return fac.logdet_L + reml * logdet_rx + dof * (1.0 + _LOG2PI + jnp.log(r2 / dof))


def _deviance(theta, stats: Stats, reml, layout: Layout):
    return criterion(factorize(theta, stats, layout), stats.n, reml, layout.p)


deviance = jax.jit(_deviance, static_argnames="layout")
deviance_and_grad = jax.jit(jax.value_and_grad(_deviance), static_argnames="layout")
deviance_hessian = jax.jit(jax.hessian(_deviance), static_argnames="layout")

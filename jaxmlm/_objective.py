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

When block 1's factor is nested in the only other one, B Bᵀ, A22 and L₂ are block
diagonal per level of that factor, and nothing fills in (:func:`is_nested`; "nested
factors" below).

No quantity here depends on the number of rows n except through ``stats.n``.
The objective is even in each column of every template (flipping a column's
sign leaves ΛΛᵀ unchanged), which the optimizer exploits.

Besides :func:`deviance` (and its autodiff derivatives), the optimizer uses two
restatements of the same criterion whose derivatives are much cheaper (see the
comments above each; tests/test_optimize.py checks them against autodiff, finite
differences and a dense computation):

* one grouping factor (q_r = 0): :func:`blockdiag_fgh`, value, gradient and exact
  Hessian in closed form per level;
* two nested scalar terms, ``(1 | a/b)``: :func:`nested_scalar_criterion`, the criterion
  on vectors over the levels, differentiated in forward mode;
* a rest block (q_r > 0): :func:`criterion_rest`, whose reverse pass costs about one
  explicit inverse of the dense fill-in block, :func:`criterion_rest_value_and_grad`, its
  value and gradient with the reverse pass written by hand for scalar terms, and
  :func:`average_information`, a positive semi-definite Hessian approximation that costs a
  few solves.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from . import _compiled, _x64  # noqa: F401
from ._stats import Layout, Stats, is_nested

__all__ = [
    "Factor", "templates", "templates_host", "factorize", "ols_criterion", "nested_data", "nested_scalar", "nested_scalar_data",
    "nested_scalar_criterion", "deviance", "deviance_and_grad", "deviance_hessian",
    "blockdiag_fgh", "blockdiag_derivatives", "criterion_rest", "criterion_rest_value_and_grad",
    "average_information", "pair_data",
]

_LOG2PI = 1.8378770664093453


class Factor(NamedTuple):
    """Pieces of the blocked Cholesky factor at one θ.

    L1 (l₁, k₁, k₁); B (nnz, k₁); L2 (q_r, q_r); C1 (l₁, k₁, p+1);
    C2 (q_r, p+1); R (p+1, p+1); logdet_L = log|L|². In a nested design
    (:func:`is_nested`) B is (l₁, k_r, k₁) and L2 (l_r, k_r, k_r): per-level blocks.
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
# call per tiny matrix. Larger k take a loop over the k columns (rows), each step
# vectorized over the batch — never XLA-CPU's batched LAPACK custom calls: with a
# batch big enough for jaxlib to split it over XLA's thread pool (~200k flops), two
# of them running at once inside the optimizer's while loop deadlock the pool
# (jaxlib 0.10.2; benchmarks/jax_cpu_deadlock_repro.py). A (1 + x1 + … + x6 | g)
# model on 2,000 groups hung in every run that way. One matrix (a relationship
# matrix's block: one level, a column per animal) is never split, and LAPACK's
# blocked factorization is much faster there than k steps of a loop; vmapped fits
# count it in their batch cap (lapack_cost below).
_UNROLL_MAX_K = 6

#: batch × cost (jaxlib's FLOP model, :func:`lapack_cost`) below which a batched LAPACK call
#: is never split over XLA's CPU thread pool (jaxlib splits above 2·10⁵; kept at half).
LAPACK_SAFE = 100_000

#: Replicates per compiled batch of batched refits on a CPU (``jaxmlm._refit._chunk_size``); the
#: fit's differenced Hessian batches its gradients only where such a chunk of them stays below
#: :data:`LAPACK_SAFE` (``jaxmlm._optimize.fd_batch``).
CPU_CHUNK = 16


def lapack_cost(layout: Layout) -> int:
    """Largest cost estimate (jaxlib's FLOP model) of the LAPACK calls in one evaluation of the
    criterion: L₂'s and R's Cholesky factors and triangular solves, and a per-level block
    where it is one large matrix (a relationship matrix's; otherwise unrolled or loops,
    above). A nested design's L₂ is per-level algebra like block 1's
    (:func:`_factorize_nested`). Batched programs keep batch × this below
    :data:`LAPACK_SAFE` on a CPU."""
    p1 = layout.p + 1
    blocks = [(layout.l1, layout.k1)]
    if is_nested(layout):
        blocks.append(layout.rest[0][1:])
        qr = 0
    else:
        qr = layout.qr
    cost = max(qr**3, qr * qr * p1, 5 * p1**3)
    for levels, k in blocks:
        if k > _UNROLL_MAX_K and levels == 1:
            cost = max(cost, k**2 * max(k, p1))
    return cost


def _one_matrix(M: jax.Array) -> bool:
    return math.prod(M.shape[:-2]) == 1


def cholesky_by_columns(M: jax.Array) -> jax.Array:
    """Lower Cholesky factors of M (..., k, k), one column per loop step (Cholesky–Crout):
    L[i, j] = (M[i, j] − Σ_{m<j} L[i, m] L[j, m]) / L[j, j], L[j, j] = √(M[j, j] − Σ_{m<j} L[j, m]²).
    Plain array operations (see the comment above); differentiable (the loop has k steps)."""
    M = jnp.asarray(M)  # (numpy input cannot take the loop's traced index)
    k = M.shape[-1]
    rows = jnp.arange(k)

    def column(j, L):
        v = M[..., :, j] - jnp.einsum("...im,...m->...i", L, L[..., j, :])  # L's columns ≥ j are still 0
        d = jnp.sqrt(v[..., j])
        col = jnp.where(rows > j, v / d[..., None], jnp.where(rows == j, d[..., None], 0.0))
        return L.at[..., :, j].set(col)

    return jax.lax.fori_loop(0, k, column, jnp.zeros_like(M))


def solve_lower_by_rows(L: jax.Array, B: jax.Array, transpose: bool = False) -> jax.Array:
    """L⁻¹B (or, ``transpose``, L⁻ᵀB) for lower-triangular L (..., k, k) and B (..., k, c):
    forward (back) substitution, one row of the solution per loop step."""
    L, B = jnp.asarray(L), jnp.asarray(B)
    k = L.shape[-1]

    def row(s, X):
        i = k - 1 - s if transpose else s
        coef = L[..., :, i] if transpose else L[..., i, :]  # (the row of Lᵀ or of L)
        r = B[..., i, :] - jnp.einsum("...m,...mc->...c", coef, X)  # X's rows not yet solved are 0
        return X.at[..., i, :].set(r / L[..., i, i][..., None])

    return jax.lax.fori_loop(0, k, row, jnp.zeros_like(B))


def batched_cholesky(M: jax.Array) -> jax.Array:
    """Lower Cholesky factors of M (..., k, k), unrolled over the static k when small."""
    k = M.shape[-1]
    if k > _UNROLL_MAX_K:
        return jnp.linalg.cholesky(M) if _one_matrix(M) else cholesky_by_columns(M)
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
        return solve_triangular(L, B, lower=True) if _one_matrix(L) else solve_lower_by_rows(L, B)
    X = []
    for i in range(k):
        r = B[..., i, :] - sum((L[..., i, j, None] * X[j] for j in range(i)), jnp.zeros_like(B[..., i, :]))
        X.append(r / L[..., i, i, None])
    return jnp.stack(X, -2)


def batched_solve_upper_t(L: jax.Array, B: jax.Array) -> jax.Array:
    """L⁻ᵀ B for lower-triangular L (..., k, k) and B (..., k, m): back substitution with Lᵀ."""
    k = L.shape[-1]
    if k > _UNROLL_MAX_K:
        if _one_matrix(L):
            return solve_triangular(jnp.swapaxes(L, -1, -2), B, lower=False)
        return solve_lower_by_rows(L, B, transpose=True)
    X = [None] * k
    for i in reversed(range(k)):
        r = B[..., i, :] - sum((L[..., j, i, None] * X[j] for j in range(i + 1, k)), jnp.zeros_like(B[..., i, :]))
        X[i] = r / L[..., i, i, None]
    return jnp.stack(X, -2)


def templates(theta: jax.Array, layout: Layout) -> list[jax.Array]:
    """θ (lme4 order) → the lower-triangular template T_b of every block: entries of linear
    structures placed, the other terms' blocks made by their structures (:mod:`jaxmlm._covariance`)."""
    theta = jnp.asarray(theta)
    out = []
    for kb, pos, idx in layout.templates:
        T = jnp.zeros(kb * kb, theta.dtype).at[jnp.asarray(pos, dtype=int)].set(theta[jnp.asarray(idx, dtype=int)])
        out.append(T.reshape(kb, kb))
    for b, off, cov, first in layout.structured:
        out[b] = out[b].at[off : off + cov.k, off : off + cov.k].set(cov.factor(theta[first : first + cov.nparams]))
    return out


_templates_program = _compiled.jit(templates, static_argnames="layout")


def templates_host(theta, layout: Layout) -> list[np.ndarray]:
    """:func:`templates` at a θ given on the host, as numpy arrays. Linear templates are
    placed in numpy: a compiled program for them cost ~0.05 s of a fresh process for each
    new layout (every first ``summary()``). With structures (their factors are written in
    jax.numpy), one compiled program: run eagerly, its indexing and scatters compiled a
    dozen one-operation programs the first time."""
    theta = np.asarray(theta, dtype=np.float64)
    if layout.structured:
        return [np.asarray(T) for T in jax.device_get(_templates_program(theta, layout))]
    out = []
    for kb, pos, idx in layout.templates:
        T = np.zeros(kb * kb)
        T[np.asarray(pos, dtype=int)] = theta[np.asarray(idx, dtype=int)]
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
    """Λ_r x for x of shape (q_r, m): Λ_rᵀ with every template transposed."""
    return lam_t_rest(x, [T.T for T in Ts], layout)


#: The dense B Bᵀ is computed in at most this many row blocks of at least _GRAM_MIN_ROWS rows
#: (see :func:`gram_rows`).
_GRAM_BLOCKS = 4
_GRAM_MIN_ROWS = 256


def _row_bounds(q: int, min_rows: int = _GRAM_MIN_ROWS, blocks: int = _GRAM_BLOCKS) -> tuple[int, ...]:
    nb = max(1, min(blocks, q // max(min_rows, 1)))
    return tuple(q * i // nb for i in range(nb + 1))


def gram_rows(Bd: jax.Array, min_rows: int = _GRAM_MIN_ROWS) -> jax.Array:
    """Bd Bdᵀ (symmetric, q × q) for Bd (q, c), by blocks on and below the diagonal.

    Row block i is multiplied by rows 0 … end_i only and the blocks above the diagonal are
    mirrored: (n_b + 1)/(2 n_b) of a full product's flops (62.5 % with 4 blocks), as BLAS's
    syrk would do (XLA has none). The diagonal blocks are whole products, so the result is
    exactly symmetric. Each block's row slice is a copy (XLA:CPU's dot takes no views):
    temporaries of (n_b − 1)/2 times Bd, which is why there are only 4 (1M-row crossed,
    2048 × 5120: 0.86 s against 1.18 s for the full product, 166 MB of temporaries; 8
    blocks are no faster and take 320 MB). Traceable in forward and reverse mode."""
    q = Bd.shape[0]
    bounds = _row_bounds(q, min_rows)
    if len(bounds) == 2:
        return Bd @ Bd.T
    rows = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        C = Bd[lo:hi] @ Bd[:hi].T
        rows.append(jnp.concatenate([C, jnp.zeros((hi - lo, q - hi), C.dtype)], axis=1) if hi < q else C)
    low = jnp.concatenate(rows, axis=0)
    blk = jnp.asarray(np.repeat(np.arange(len(bounds) - 1, dtype=np.int32), np.diff(bounds)))
    return jnp.where(blk[:, None] >= blk[None, :], low, low.T)


@jax.custom_vjp
def _gram_rows_vjp(Bd: jax.Array) -> jax.Array:
    """:func:`gram_rows` with its reverse rule written out: B̄d = (Ḡ + Ḡᵀ) Bd, one product
    (autodiff's transpose of the blocks costs two full ones). Reverse mode only."""
    return gram_rows(Bd)


def _gram_rows_fwd(Bd):
    return gram_rows(Bd), Bd


def _gram_rows_bwd(Bd, G):
    return ((G + G.T) @ Bd,)


_gram_rows_vjp.defvjp(_gram_rows_fwd, _gram_rows_bwd)


def dense_rows(B: jax.Array, stats: Stats, layout: Layout) -> jax.Array:
    """B's sparse rows (nnz, k₁) as the dense q_r × l₁k₁ matrix."""
    qr, k1 = layout.qr, layout.k1
    cols = stats.pair_g[:, None] * k1 + jnp.arange(k1)[None, :]
    return jnp.zeros((qr, layout.l1 * k1), B.dtype).at[stats.pair_a[:, None], cols].add(B)


def _bbt(B: jax.Array, stats: Stats, layout: Layout, reverse_only: bool = False) -> jax.Array:
    """B Bᵀ (q_r × q_r) from B's sparse rows, by pair scatter or dense GEMM.

    ``reverse_only``: the criterion's dense product by blocks (:func:`gram_rows`) with its
    hand-written reverse rule, which has no forward mode. Otherwise one plain product: under
    forward mode (the Satterthwaite table's Hessian, :mod:`jaxmlm._inference`) every tangent
    would copy the blocks' row slices (1M-row crossed design: 2.7 GB of temporaries
    against 1.7 GB)."""
    qr = layout.qr
    if layout.bbt == "sparse":
        vals = jnp.sum(B[stats.bb_e1] * B[stats.bb_e2], axis=-1)
        low = jax.ops.segment_sum(vals, stats.bb_t, qr * qr).reshape(qr, qr)  # lower triangle
        return low + low.T - jnp.diag(jnp.diagonal(low))
    Bd = dense_rows(B, stats, layout)
    return _gram_rows_vjp(Bd) if reverse_only else Bd @ Bd.T


# ---- nested factors: the fill-in stays block diagonal ----------------------------------------
#
# When block 1's factor is nested in the only other one (each class in one school), every row
# of B = A21 Λ₁ L₁⁻ᵀ at a level g of block 1 lies in the rows of g's parent level s(g), so
# B Bᵀ, A22 and hence M₂₂ are block diagonal with one k_r × k_r block per parent level: the
# "fill-in" fills nothing (lme4's sparse Cholesky sees the same). Per parent level a,
#
#     M₂₂,a = T_rᵀ (A22,a − Σ_{g: s(g)=a} B_g B_gᵀ) T_r + I,    B_g = A21_g T₁ L_g⁻ᵀ  (k_r × k₁)
#     C₂,a  = L₂,a⁻¹ T_rᵀ (Z_rᵀW_a − Σ_{s(g)=a} B_g C₁,g)
#
# and the whole factorization is per-level k×k algebra, O(levels) rather than O(q_r³): a
# three-level model costs what a two-level one does. The schema detects nesting from the
# data (``layout.bbt == "nested"``, :func:`jaxmlm._stats.make_schema`).


def nested_data(stats: Stats, layout: Layout):
    """θ-free pieces of the nested factorization: (parent level s(g) of each block-1 level (l₁,),
    A21 per block-1 level as a dense k_r × k₁ block (l₁, k_r, k₁), A22's diagonal blocks
    (l_r, k_r, k_r)). Padding entries of A21 are zero and add nothing; a padded block-1 level
    has parent 0 and a zero block."""
    ((_, lr, kr),) = layout.rest
    lev = stats.pair_a // kr
    parent = jnp.zeros(layout.l1, lev.dtype).at[stats.pair_g].max(lev)
    A21g = jnp.zeros((layout.l1, kr, layout.k1), stats.A21.dtype).at[stats.pair_g, stats.pair_a % kr].add(stats.A21)
    return parent, A21g, stats.A22  # a nested layout's statistics keep A22's blocks only


def _factorize_nested(T1, Tr, L1, C1, stats: Stats, layout: Layout, pieces=None):
    """(B_g (l₁, k_r, k₁), L₂ blocks (l_r, k_r, k_r), C₂ (q_r, p+1), log|L₂|²) of a nested design
    (``pieces``: :func:`nested_data`, if already computed)."""
    ((_, lr, kr),) = layout.rest
    parent, A21g, A22b = nested_data(stats, layout) if pieces is None else pieces
    LiT = batched_solve_lower(L1, jnp.broadcast_to(T1.T, L1.shape))  # L_g⁻¹T₁ᵀ
    B = jnp.einsum("grk,gjk->grj", A21g, LiT)
    BBt = jax.ops.segment_sum(jnp.einsum("grj,gsj->grs", B, B), parent, lr)
    M22 = jnp.einsum("ri,ars,sj->aij", Tr, A22b - BBt, Tr) + jnp.eye(kr, dtype=A22b.dtype)
    L2 = batched_cholesky(M22)
    BC1 = jax.ops.segment_sum(jnp.einsum("grj,gjm->grm", B, C1), parent, lr)
    D = stats.ZrW.reshape(lr, kr, -1) - BC1
    C2 = batched_solve_lower(L2, jnp.einsum("ri,arm->aim", Tr, D))
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L2, axis1=1, axis2=2)))
    return B, L2, C2.reshape(lr * kr, -1), logdet


def nested_scalar(layout: Layout) -> bool:
    """A nested design of two scalar terms, ``(1 | a/b)``: :func:`nested_scalar_criterion` applies."""
    return is_nested(layout) and layout.k1 == 1 and layout.rest[0][2] == 1 and not layout.structured


def nested_scalar_data(stats: Stats, layout: Layout):
    """θ-free vectors of :func:`nested_scalar_criterion`, levels last: (parent (l₁,), A11 (l₁,),
    Z₁ᵀW (p+1, l₁), A21 (l₁,), A22 (l_r,), Z_rᵀW (p+1, l_r))."""
    parent, A21g, A22b = nested_data(stats, layout)
    return parent, stats.A11[:, 0, 0], stats.Z1W[:, 0, :].T, A21g[:, 0, 0], A22b[:, 0, 0], stats.ZrW.T


def nested_scalar_criterion(theta: jax.Array, data, stats: Stats, reml, layout: Layout) -> jax.Array:
    """The criterion of :func:`_deviance` for :func:`nested_scalar` layouts, written on vectors
    over the levels (``data``: :func:`nested_scalar_data`).

    With t = T₁, s = T_r (scalars), per block-1 level g (parent j = s(g)) and rest level j:

        M_g = t²a_g + 1,   w_g = t²/M_g,   N_j = s² (A22_j − Σ_{s(g)=j} c_g² w_g) + 1,
        D_j = Z_rᵀW_j − Σ_{s(g)=j} c_g w_g Z₁ᵀW_g,
        S = WᵀW − Σ_g w_g Z₁ᵀW_gᵀZ₁ᵀW_g − Σ_j (s²/N_j) D_jᵀD_j,
        d = Σ_g log M_g + Σ_j log N_j + φ(S)

    (the nested factorization above with k₁ = k_r = 1: w_g = B-row scale, s²/N_j the rest
    factor's). The same value as :func:`_deviance` (tests/test_objective.py); written so, its
    forward-mode derivatives are a few vector passes (100k rows, 20k levels: (f, ∇f, H) in
    ~1.6 ms against ~6 ms through the general per-level k×k algebra)."""
    parent, a, z, c, A22, Zr = data
    Ts = templates(theta, layout)
    t, s = Ts[0][0, 0], Ts[1][0, 0]
    lr = A22.shape[0]
    M = t * t * a + 1.0
    w = t * t / M
    N = s * s * (A22 - jax.ops.segment_sum(c * c * w, parent, lr)) + 1.0
    D = Zr - jax.ops.segment_sum(((c * w)[None, :] * z).T, parent, lr).T
    S = stats.WW - (w[None, :] * z) @ z.T - ((s * s / N)[None, :] * D) @ D.T
    return jnp.sum(jnp.log(M)) + jnp.sum(jnp.log(N)) + _phi(S, stats, reml, layout.p)


def factorize(theta: jax.Array, stats: Stats, layout: Layout, nested=None) -> Factor:
    """The blocked Cholesky factorization at θ (see the module docstring).

    For a nested design (:func:`is_nested`) L2 holds M₂₂'s diagonal blocks (l_r, k_r, k_r)
    and B the rows of B per block-1 level (l₁, k_r, k₁), the block-diagonal form above;
    ``nested`` is :func:`nested_data`, which an optimizer computes once, outside its loop."""
    Ts = templates(theta, layout)
    T1 = Ts[0]
    k1 = layout.k1
    M11 = jnp.einsum("ji,gjk,kl->gil", T1, stats.A11, T1) + jnp.eye(k1, dtype=stats.A11.dtype)
    L1 = batched_cholesky(M11)
    C1 = batched_solve_lower(L1, jnp.einsum("ji,gjm->gim", T1, stats.Z1W))
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L1, axis1=1, axis2=2)))
    S = stats.WW - jnp.einsum("gim,gin->mn", C1, C1)
    if is_nested(layout):
        B, L2, C2, logdet2 = _factorize_nested(T1, Ts[1], L1, C1, stats, layout, nested)
        logdet = logdet + logdet2
        S = S - C2.T @ C2
    elif layout.qr:
        # L_g⁻¹ T₁ᵀ per level; B_e = A21_e T₁ L_g⁻ᵀ.
        LiT = batched_solve_lower(L1, jnp.broadcast_to(T1.T, L1.shape))
        B = jnp.einsum("ek,ejk->ej", stats.A21, LiT[stats.pair_g])
        Sr = stats.A22 - _bbt(B, stats, layout)
        Rest = Ts[1:]
        M22 = lam_t_rest(lam_t_rest(Sr, Rest, layout).T, Rest, layout).T + jnp.eye(layout.qr, dtype=Sr.dtype)
        L2 = jnp.linalg.cholesky(M22)
        BC1 = jax.ops.segment_sum(
            jnp.einsum("ej,ejm->em", B, C1[stats.pair_g]), stats.pair_a, layout.qr
        )
        C2 = solve_triangular(L2, lam_t_rest(stats.ZrW - BC1, Rest, layout), lower=True)
        logdet = logdet + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L2)))
        S = S - C2.T @ C2
    else:
        B = jnp.zeros((0, k1), S.dtype)
        L2 = jnp.zeros((0, 0), S.dtype)
        C2 = jnp.zeros((0, stats.WW.shape[0]), S.dtype)
    R = jnp.linalg.cholesky(S)
    return Factor(L1, B, L2, C1, C2, R, logdet)


def _phi_from_R(R: jax.Array, stats: Stats, reml, p: int, xp=jnp) -> jax.Array:
    """The criterion less log|L|², from R = [[R_X, 0], [c_βᵀ, r]] (module docstring):
    reml·log|R_X|² + (n − reml·p)(1 + log(2π r² / (n − reml·p))) − Σ log wᵢ.

    The last term is 0 without prior weights; with them it turns the criterion of
    the √w-scaled rows into that of the weighted model (lme4's ``ldW``). ``p`` is W's
    fixed-effects width (static); the count in n − reml·p is ``stats.p``, which leaves out
    padding columns (:func:`~jaxmlm._stats.widen`: each adds a unit diagonal to R_X, log 1 = 0).
    ``xp``: jax.numpy, or numpy for host arrays and numbers (:func:`ols_criterion`)."""
    r2 = R[p, p] ** 2
    logdet_rx = 2.0 * xp.sum(xp.log(xp.diagonal(R)[:p]))
    dof = stats.n - reml * stats.p
    return reml * logdet_rx + dof * (1.0 + _LOG2PI + xp.log(r2 / dof)) - stats.ldw


def ols_criterion(stats: Stats, reml: float) -> float:
    """The criterion at θ = 0, −2 × logLik of the linear model of the same X and y: there L = I
    and R = chol(WᵀW), so it is :func:`_phi_from_R` of that alone. On the host, in numpy (a
    program for it cost a fresh process ~0.1 s for each new shape: ``ranova``, ``lrt_vs_ols``)."""
    WW = np.asarray(stats.WW, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        try:
            R = np.linalg.cholesky(WW)
        except np.linalg.LinAlgError:  # y in the span of X: no factor (the program's gave NaN too)
            return float("nan")
        host = stats._replace(n=float(np.asarray(stats.n)), p=float(np.asarray(stats.p)),
                              ldw=float(np.asarray(stats.ldw)))
        return float(_phi_from_R(R, host, float(reml), WW.shape[0] - 1, xp=np))


def criterion(fac: Factor, stats: Stats, reml: jax.Array, p: int) -> jax.Array:
    """ML deviance (reml = 0) or REML criterion (reml = 1) from a factor."""
    return fac.logdet_L + _phi_from_R(fac.R, stats, reml, p)


def _deviance(theta, stats: Stats, reml, layout: Layout, nested=None):
    return criterion(factorize(theta, stats, layout, nested), stats, reml, layout.p)


deviance = _compiled.jit(_deviance, static_argnames="layout")
deviance_and_grad = _compiled.jit(jax.value_and_grad(_deviance), static_argnames="layout")
deviance_hessian = _compiled.jit(jax.hessian(_deviance), static_argnames="layout")


# ---- single grouping factor (q_r = 0): f, ∇f and ∇²f in closed form per level -------------------
#
# With one block the criterion depends on θ only through per-level k₁×k₁ quantities
# (Bates et al. 2015, eqs. 18 and 34; MixedModels.jl's per-level ``updateL!``). With T = T₁,
# A = A_g = Z₁ᵀZ₁ of level g and Z = Z_g = Z₁ᵀW of level g (k₁ × (p+1)):
#
#     M = TᵀAT + I,  P = M⁻¹,  N = PTᵀ,  U = TN = TM⁻¹Tᵀ,  K = NA,  F = I − UA,  Q = A − AUA
#     d(θ) = Σ_g log|M_g| + φ(S),   S = WᵀW − Σ_g Z_gᵀU_gZ_g,
#     φ(S) = reml·log|R_X|² + dof·(1 + log(2π r²/dof)),  R = chol(S)
#
# (S is factorize's R Rᵀ: C₁ᵀC₁ = ZᵀUZ per level). θᵢ is the template entry (rᵢ, cᵢ), so
# ∂T/∂θᵢ = Eᵢ = e_{rᵢ}e_{cᵢ}ᵀ, and by matrix calculus (∂M = EᵀAT + TᵀAE, ∂P = −P ∂M P):
#
#     ∂ᵢ log|M|   = 2 K[cᵢ,rᵢ]
#     ∂ᵢⱼ log|M|  = 2 P[cᵢ,cⱼ] Q[rᵢ,rⱼ] − 2 K[cⱼ,rᵢ] K[cᵢ,rⱼ]
#     ∂ᵢU         = F Eᵢ N + (F Eᵢ N)ᵀ
#     ⟨Y, ∂ᵢⱼU⟩   = 2 (P[cᵢ,cⱼ] (FᵀYF)[rⱼ,rᵢ] − Q[rⱼ,rᵢ] (NYNᵀ)[cᵢ,cⱼ]
#                      − K[cⱼ,rᵢ] (NYF)[cᵢ,rⱼ] − K[cᵢ,rⱼ] (NYF)[cⱼ,rᵢ])     for symmetric Y
#
# and with S̄ = ∇φ(S) (symmetrized), Y_g = Z_g S̄ Z_gᵀ, ∂ᵢS = −Σ_g Z_gᵀ ∂ᵢU_g Z_g:
#
#     ∂ᵢd  = Σ_g ∂ᵢ log|M_g| + ⟨S̄, ∂ᵢS⟩
#     ∂ᵢⱼd = Σ_g ∂ᵢⱼ log|M_g| − Σ_g ⟨Y_g, ∂ᵢⱼU_g⟩ + ∇²φ[∂ᵢS, ∂ⱼS]
#
# Everything per level is unrolled k₁×k₁ scalar algebra on vectors over the levels (level
# axis last, so XLA fuses it into a few loops); sums over levels of Z-products are matrix
# products. φ, a function of a (p+1)×(p+1) matrix, has its derivatives in closed form (:func:`_psi`). f, ∇f
# and ∇²f together cost a few criterion evaluations, against ~15 for jacfwd ∘ grad at
# 10⁴ levels. tests/test_optimize.py checks them against that autodiff Hessian and finite
# differences.


def _phi(S: jax.Array, stats: Stats, reml: jax.Array, p: int) -> jax.Array:
    """φ(S): the criterion's fixed-effects/residual part from S = R Rᵀ (see above), as
    reml·log|S_XX| + ν·log r² + ν(1 + log(2π/ν)) − Σ log wᵢ, ν = n − reml·p, r² = S's
    Schur complement of S_XX (:func:`_psi` takes the first two terms, with derivatives in
    closed form). A function of S's lower triangle."""
    dof = stats.n - reml * stats.p
    return _psi(S, reml, dof, p) + dof * (1.0 + _LOG2PI - jnp.log(dof)) - stats.ldw


def _cholesky(S: jax.Array) -> jax.Array:
    """S's lower Cholesky factor, from its lower triangle. For small S unrolled
    (:func:`batched_cholesky`): elementwise code that XLA fuses, instead of a LAPACK call for
    a 3 × 3 matrix (a separate step of the Newton loop: a third of a sleepstudy iteration)."""
    if S.shape[-1] <= _UNROLL_MAX_K:
        return batched_cholesky(S)
    return jax.lax.linalg.cholesky(S, symmetrize_input=False)


def _schur(S: jax.Array, p: int):
    """(log|S_XX|, r², S_XX⁻¹, u): for S = [[S_XX, s_Xy], [s_yX, s_yy]] with β = S_XX⁻¹ s_Xy,
    u = (−β, 1) and r² = uᵀ S u = s_yy − s_yXβ, from S's Cholesky factor R (R_X R_Xᵀ = S_XX, R_Xᵀβ = c_β)."""
    R = _cholesky(S)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(R)[:p]))
    if p:
        eye = jnp.eye(p, dtype=S.dtype)
        RXi = batched_solve_lower(R[:p, :p], eye)
        Sinv, beta = RXi.T @ RXi, RXi.T @ R[p, :p]
    else:
        Sinv, beta = jnp.zeros((0, 0), S.dtype), jnp.zeros(0, S.dtype)
    return logdet, R[p, p] ** 2, Sinv, jnp.concatenate([-beta, jnp.ones(1, S.dtype)])


def _lower_sym(V: jax.Array) -> jax.Array:
    """The symmetric matrix with V's lower triangle (φ reads only that triangle of S)."""
    L = jnp.tril(V)
    return L + jnp.tril(V, -1).T


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _psi(S: jax.Array, a, b, p: int) -> jax.Array:
    """ψ(S, a, b) = a·log|S_XX| + b·log r² (:func:`_schur`), with its derivatives in closed form:

        ∂ψ = tr(G dS) + da·log|S_XX| + db·log r²,   G = a·(S_XX⁻¹ ⊕ 0) + (b/r²) u uᵀ

    (dr² = uᵀ dS u because β minimizes the quadratic form; d log|S_XX| = tr(S_XX⁻¹ dS_XX)),
    and G's own derivative in :func:`_psi_grad`. Autodiff through the unrolled Cholesky
    factor gave the same numbers from ~2.5× the program (a one-factor fit's Newton program:
    5,100 → 1,300 operations, compile time halved), most of it from second derivatives."""
    logdet, r2, _, _ = _schur(S, p)
    return a * logdet + b * jnp.log(r2)


@_psi.defjvp
def _psi_jvp(p, primals, tangents):
    S, a, b = primals
    dS, da, db = tangents
    logdet, r2, _, _ = _schur(S, p)
    G = _psi_grad(S, a, b, p)
    return a * logdet + b * jnp.log(r2), jnp.sum(G * _lower_sym(dS)) + da * logdet + db * jnp.log(r2)


def _pad_x(A: jax.Array, m: int) -> jax.Array:
    return jnp.zeros((m, m), A.dtype).at[: A.shape[0], : A.shape[0]].set(A)


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _psi_grad(S: jax.Array, a, b, p: int) -> jax.Array:
    """G = ∂ψ/∂S (:func:`_psi`), symmetric, with its derivative in closed form:

        dG = −a·(S_XX⁻¹ dS_XX S_XX⁻¹ ⊕ 0) − (b·uᵀdSu/r⁴) u uᵀ + (b/r²)(δuᵀ + uδᵀ)
             + da·(S_XX⁻¹ ⊕ 0) + db·u uᵀ/r²,   δ = (−S_XX⁻¹ (dS u)_X, 0)

    (dβ = S_XX⁻¹ (dS u)_X)."""
    _, r2, Sinv, u = _schur(S, p)
    return a * _pad_x(Sinv, S.shape[-1]) + (b / r2) * jnp.outer(u, u)


@_psi_grad.defjvp
def _psi_grad_jvp(p, primals, tangents):
    S, a, b = primals
    dS, da, db = tangents
    return _psi_grad(S, a, b, p), psi_grad_tangent(S, a, b, p, dS, da, db)


def psi_grad_tangent(S: jax.Array, a, b, p: int, dS: jax.Array, da=0.0, db=0.0) -> jax.Array:
    """dG of :func:`_psi_grad` along (dS, da, db) (formula there); linear in the tangents."""
    _, r2, Sinv, u = _schur(S, p)
    m = S.shape[-1]
    V = _lower_sym(dS)
    uu, Sx = jnp.outer(u, u), _pad_x(Sinv, m)
    w = V @ u
    du = jnp.outer(jnp.concatenate([-(Sinv @ w[:p]), jnp.zeros(1, S.dtype)]), u)
    return (-a * _pad_x(Sinv @ V[:p, :p] @ Sinv, m) - (b * (u @ w) / (r2 * r2)) * uu + (b / r2) * (du + du.T)
            + da * Sx + (db / r2) * uu)


def _mm(X, Y, k):
    """Product of two k×k matrices held as nested lists of per-level vectors."""
    return [[sum(X[i][a] * Y[a][j] for a in range(k)) for j in range(k)] for i in range(k)]


def _tr(X, k):
    return [[X[j][i] for j in range(k)] for i in range(k)]


def levels_last(A11: jax.Array, Z1W: jax.Array):
    """A11 (l, k, k) → (k, k, l) and Z1W (l, k, m) → (k, m, l): the layout of :func:`blockdiag_fgh`."""
    return jnp.moveaxis(A11, 0, -1), jnp.moveaxis(Z1W, 0, -1)


def _level_algebra(theta: jax.Array, A: jax.Array, layout: Layout):
    """Per-level k₁×k₁ quantities (nested lists of (l₁,) vectors): T, (r, c) of each θ entry,
    L⁻¹Tᵀ and log|M| summed over levels, and P, N, K, F, Q (see above)."""
    k = layout.k1
    kb, pos, idx = layout.templates[0]
    rc = [None] * layout.ntheta  # (r, c) of every θ entry in T
    zero = jnp.zeros_like(A[0, 0])
    T = [[0.0] * k for _ in range(k)]
    for p_, i_ in zip(pos, idx):
        rc[i_] = (p_ // kb, p_ % kb)
        T[p_ // kb][p_ % kb] = theta[i_]
    Al = [[A[i, j] for j in range(k)] for i in range(k)]
    AT = _mm(Al, T, k)
    M = _mm(_tr(T, k), AT, k)
    M = [[M[i][j] + (1.0 if i == j else 0.0) for j in range(k)] for i in range(k)]
    # Cholesky and L⁻¹ (forward substitution on I), unrolled.
    L = [[zero] * k for _ in range(k)]
    for j in range(k):
        d = jnp.sqrt(M[j][j] - sum((L[j][m] ** 2 for m in range(j)), zero))
        L[j][j] = d
        for i in range(j + 1, k):
            L[i][j] = (M[i][j] - sum((L[i][m] * L[j][m] for m in range(j)), zero)) / d
    Li = [[zero] * k for _ in range(k)]
    for c in range(k):
        for i in range(c, k):
            r = (1.0 if i == c else 0.0) - sum((L[i][j] * Li[j][c] for j in range(c, i)), zero)
            Li[i][c] = r / L[i][i]
    V = _mm(Li, _tr(T, k), k)  # L⁻¹Tᵀ:  C = V Z (factorize's C₁),  U = VᵀV
    logdet = 2.0 * sum(jnp.sum(jnp.log(L[i][i])) for i in range(k))
    P = _mm(_tr(Li, k), Li, k)
    N = _mm(P, _tr(T, k), k)
    U = _mm(T, N, k)
    K = _mm(N, Al, k)
    UA = _mm(U, Al, k)
    F = [[(1.0 if i == j else 0.0) - UA[i][j] for j in range(k)] for i in range(k)]
    ATK = _mm(AT, K, k)
    Q = [[Al[i][j] - ATK[i][j] for j in range(k)] for i in range(k)]
    return {"rc": rc, "V": V, "logdet": logdet, "P": P, "N": N, "K": K, "F": F, "Q": Q}


def _blockdiag_S(V, Z, WW, k):
    """S = WᵀW − Σ_g C_gᵀC_g with C_g = V_g Z_g (one matrix product over levels)."""
    Zl = [Z[a] for a in range(k)]
    C = jnp.concatenate([sum(V[a][b] * Zl[b] for b in range(k)) for a in range(k)], axis=1)
    return WW - C @ C.T


def blockdiag_value(theta: jax.Array, A: jax.Array, Z: jax.Array, stats: Stats, reml, layout: Layout):
    """d(θ) alone by :func:`blockdiag_fgh`'s per-level formulas (q_r = 0; ``A``, ``Z`` level-last):
    log|M| summed over levels + φ(S). For a few values beside the optimizer (boundary
    snapping) it compiles to a smaller program than the general factorization."""
    la = _level_algebra(theta, A, layout)
    return la["logdet"] + _phi(_blockdiag_S(la["V"], Z, stats.WW, layout.k1), stats, reml, layout.p)


def blockdiag_fgh(theta: jax.Array, A: jax.Array, Z: jax.Array, stats: Stats, reml, layout: Layout):
    """(d, ∇d, ∇²d) at θ for a single grouping factor (q_r = 0), by the formulas above.

    ``A`` and ``Z`` are ``stats.A11`` and ``stats.Z1W`` level-last (:func:`levels_last`),
    transposed once by the caller, outside any optimizer loop.
    """
    return blockdiag_derivatives(theta, A, Z, stats, reml, layout)[:3]


def blockdiag_derivatives(theta: jax.Array, A: jax.Array, Z: jax.Array, stats: Stats, reml, layout: Layout):
    """(d, ∇d, ∇²d, S, ∂S) at θ: :func:`blockdiag_fgh`'s values, and S with its derivative
    along each θ entry (t, m, m), from which r², (R_X R_Xᵀ)⁻¹ = S_XX⁻¹ and their first
    derivatives follow (the Satterthwaite pieces of :mod:`jaxmlm._inference`)."""
    assert layout.qr == 0
    p, k = layout.p, layout.k1
    la = _level_algebra(theta, A, layout)
    rc, V, logdet = la["rc"], la["V"], la["logdet"]
    P, N, K, F, Q = la["P"], la["N"], la["K"], la["F"], la["Q"]

    # S = WᵀW − Σ_g CᵀC and ∂ᵢS = −Σ_g (xᵢyᵢᵀ + yᵢxᵢᵀ), xᵢ = ZᵀF[:,rᵢ], yᵢ = ZᵀN[cᵢ,:]ᵀ
    Zl = [Z[a] for a in range(k)]  # (m, l) each
    S = _blockdiag_S(V, Z, stats.WW, k)
    X_ = jnp.stack([sum(F[a][r] * Zl[a] for a in range(k)) for r, c in rc])  # (t, m, l)
    Y_ = jnp.stack([sum(N[c][b] * Zl[b] for b in range(k)) for r, c in rc])
    XY = jnp.einsum("tal,tbl->tab", X_, Y_)
    dS = -(XY + jnp.swapaxes(XY, 1, 2))  # (t, m, m)

    # φ's gradient and Hessian along each ∂ᵢS straight from the closed forms of :func:`_psi`
    # (autodiff through its rules traced a program a third larger).
    dof = stats.n - reml * stats.p
    f_phi, Sbar = _phi(S, stats, reml, p), _psi_grad(S, reml, dof, p)
    HdS = jax.vmap(lambda v: psi_grad_tangent(S, reml, dof, p, v))(dS)

    ZS = [Sbar @ Zl[a] for a in range(k)]
    Y = [[jnp.sum(ZS[a] * Zl[b], axis=0) for b in range(k)] for a in range(k)]
    NY = _mm(N, Y, k)
    NYF, NYN = _mm(NY, F, k), _mm(NY, _tr(N, k), k)
    FYF = _mm(_tr(F, k), _mm(Y, F, k), k)

    m = layout.ntheta
    g = jnp.stack([2.0 * jnp.sum(K[c][r]) for r, c in rc]) + jnp.einsum("ab,tab->t", Sbar, dS)
    H = [[None] * m for _ in range(m)]
    for i in range(m):
        ri, ci = rc[i]
        for j in range(i, m):
            rj, cj = rc[j]
            per = (
                2.0 * P[ci][cj] * Q[ri][rj]
                - 2.0 * K[cj][ri] * K[ci][rj]
                - 2.0 * (P[ci][cj] * FYF[rj][ri] - Q[rj][ri] * NYN[ci][cj]
                         - K[cj][ri] * NYF[ci][rj] - K[ci][rj] * NYF[cj][ri])
            )
            H[i][j] = H[j][i] = jnp.sum(per)
    H = jnp.stack([jnp.stack(row) for row in H]) + jnp.einsum("tab,uab->tu", HdS, dS)
    return logdet + f_phi, g, 0.5 * (H + H.T), S, dS


# ---- large fill-in block (q_r > 0): cheap exact gradients and the average information ------
#
# For crossed designs the rest block fills in: M₂₂ = Λ_rᵀ(A22 − B Bᵀ)Λ_r + I is dense q_r × q_r
# and reverse-mode autodiff through its Cholesky factor and the pair scatter of B Bᵀ costs
# ~7 criterion evaluations. Two changes make ∇d cost about two:
#
# * the dense step is one function h(M, V) = (log|M|, VᵀM⁻¹V) with the derivative rule
#       dh = (tr(M⁻¹ dM),  dVᵀU + UᵀdV − Uᵀ dM U),   U = M⁻¹V
#   (matrix calculus; its transpose is M̄ = a·M⁻¹ − U S̄ Uᵀ): one explicit inverse from
#   the factor (:func:`_inverse_from_cholesky`) instead of differentiating through
#   LAPACK's Cholesky and triangular solve. The rule is written as a VJP: the forward
#   pass of a criterion value alone computes no inverse;
# * B Bᵀ = Σ_pairs A21_e W_g A21_e'ᵀ with W_g = T₁M_g⁻¹T₁ᵀ (k₁×k₁ per level), so θ enters
#   the pair sum only through the l₁ small matrices W_g: the reverse pass is one gather and
#   one segment sum into l₁ bins, not scatters into B. Likewise B C₁ = A21_e W_g Z₁ᵀW_g.
#
# The value is the same as :func:`_deviance`'s (tests/test_optimize.py).


_INVERSE_LEAF = 384  # below this size, M⁻¹ by two triangular solves against I


def _inverse_from_cholesky(L: jax.Array) -> jax.Array:
    """M⁻¹ (symmetric, both triangles) from the lower Cholesky factor L of M.

    Two triangular solves against I cost 2n³ flops (LAPACK's trsm cannot use the zeros of
    the identity); LAPACK's potri, which jaxlib does not expose, n³·2/3. Recursing on the
    2×2 block partition L = [[A, 0], [C, D]] gives (the blocked inverse; Golub & Van Loan
    2013, §3.2.11, applied to M = L Lᵀ)

        M⁻¹₂₂ = (D Dᵀ)⁻¹,   M⁻¹₂₁ = −M⁻¹₂₂ C A⁻¹,   M⁻¹₁₁ = (A Aᵀ)⁻¹ − A⁻ᵀ Cᵀ M⁻¹₂₁

    in n³ flops, mostly GEMM: InstEval's 1166 × 1166 block in ~30 ms instead of ~45.
    The two half-size problems are independent; an optimization barrier runs them one
    after the other (independent LAPACK calls inside a while_loop can deadlock jaxlib
    0.10.2's CPU thread pool, see :func:`batched_cholesky`'s note).
    """
    n = L.shape[0]
    if n <= _INVERSE_LEAF:
        Li = jax.lax.linalg.triangular_solve(L, jnp.eye(n, dtype=L.dtype), left_side=True, lower=True)
        return jax.lax.linalg.triangular_solve(L, Li, left_side=True, lower=True, transpose_a=True)
    h = n // 2
    A, C, D = L[:h, :h], L[h:, :h], L[h:, h:]
    M22 = _inverse_from_cholesky(D)
    M21 = -jax.lax.linalg.triangular_solve(A, M22 @ C, left_side=False, lower=True)
    X = jax.lax.linalg.triangular_solve(A, C.T @ M21, left_side=True, lower=True, transpose_a=True)
    A, X = jax.lax.optimization_barrier((A, X))  # every solve above before any below
    M11 = _inverse_from_cholesky(A) - X
    return jnp.block([[M11, M21.T], [M21, M22]])


@jax.custom_vjp
def _logdet_quad(M: jax.Array, V: jax.Array):
    """(log|M|, VᵀM⁻¹V, L, L⁻¹V) for SPD M given by its lower triangle (the strict upper
    triangle is never read); L and L⁻¹V are returned without derivatives."""
    L = jax.lax.linalg.cholesky(M, symmetrize_input=False)
    C = jax.lax.linalg.triangular_solve(L, V, left_side=True, lower=True)
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L))), C.T @ C, L, C


def _logdet_quad_fwd(M, V):
    out = _logdet_quad(M, V)
    return out, (out[2], V)


def _logdet_quad_bwd(res, cotangents):
    # A function of tril(M): dM acts through its lower triangle as the symmetric
    # tril(dM) + tril(dM)ᵀ − diag(dM). With U = M⁻¹V and S̄ = sym(Q̄), the tangent
    # (tr(M⁻¹dM), dVᵀU + UᵀdV − Uᵀ dM U) transposes to V̄ = 2US̄ and
    # M̄ᵢⱼ = (2 − δᵢⱼ) (ā M⁻¹ − U S̄ Uᵀ)ᵢⱼ for i ≥ j, 0 above the diagonal.
    L, V = res
    abar, Qbar = cotangents[0], cotangents[1]
    n = L.shape[0]
    Minv = _inverse_from_cholesky(L)
    U = Minv @ V  # a product, not a third solve (see _inverse_from_cholesky's note)
    Sbar = 0.5 * (Qbar + Qbar.T)
    US = U @ Sbar
    G = abar * Minv - US @ U.T
    low = jnp.tril(jnp.ones((n, n), bool))
    Mbar = jnp.where(low, jnp.where(jnp.eye(n, dtype=bool), G, 2.0 * G), 0.0)
    return Mbar, 2.0 * US


_logdet_quad.defvjp(_logdet_quad_fwd, _logdet_quad_bwd)


def pair_data(stats: Stats, layout: Layout):
    """θ-free pair data of the sparse B Bᵀ: (A21_eᵀA21_e' (npairs, k₁, k₁), level g of each pair,
    upper-triangle target, class), the class of a pair with lower target (a, a') being
    (β(a)·n_b + β(a'))·2 + [a = a'] for β the rest block of a row (for
    :func:`criterion_rest_value_and_grad`: λ_aλ_a' from a table, no index arithmetic per pair).

    An optimizer computes this once, outside its loop (as arguments, the gathers are not
    hoisted by XLA). Empty unless ``layout.bbt == "sparse"``.
    """
    if layout.bbt != "sparse":
        return None
    a1, a2 = stats.A21[stats.bb_e1], stats.A21[stats.bb_e2]
    qr, nb = layout.qr, len(layout.rest)
    a, a_ = stats.bb_t // qr, stats.bb_t % qr
    t_up = a_ * qr + a  # (a, a') → (a', a): the upper triangle

    def block(r):
        b = jnp.zeros(r.shape, jnp.int32)
        for i, (off, _, _) in enumerate(layout.rest[1:], start=1):
            b = jnp.where(r >= off, i, b)
        return b

    cls = (block(a) * nb + block(a_)) * 2 + (a == a_).astype(jnp.int32)
    cls = cls.astype(jnp.uint8 if 2 * nb * nb <= 256 else jnp.int32)
    return a1[:, :, None] * a2[:, None, :], stats.pair_g[stats.bb_e1], t_up, cls


def _pair_values(W: jax.Array, pairs) -> jax.Array:
    """A21_e W_g A21_e'ᵀ for every pair (e, e') of B Bᵀ's lower triangle."""
    # Indices are in range: no negative-index wrap-around (a select over every pair).
    pp, gp = pairs[0], pairs[1]
    if pp.shape[1] == 1:
        return W[:, 0, 0].at[gp].get(wrap_negative_indices=False) * pp[:, 0, 0]
    return jnp.sum(W.at[gp].get(wrap_negative_indices=False) * pp, axis=(1, 2))


def _pair_bbt_lower(W: jax.Array, stats: Stats, layout: Layout, pairs=None) -> jax.Array:
    """Lower triangle (as a full q_r×q_r array) of B Bᵀ = Σ_pairs A21_e W_g A21_e'ᵀ."""
    qr = layout.qr
    pairs = pair_data(stats, layout) if pairs is None else pairs
    return jax.ops.segment_sum(_pair_values(W, pairs), stats.bb_t, qr * qr).reshape(qr, qr)


def _rest_phi(S: jax.Array, stats: Stats, reml, p: int):
    """(φ(S), R) as :func:`criterion_rest` computes them (R = chol(S) is one of its pieces)."""
    R = jnp.linalg.cholesky(S)
    return _phi_from_R(R, stats, reml, p), R


def _rest_forward(theta: jax.Array, stats: Stats, reml, layout: Layout, pairs):
    """The criterion for q_r > 0, its pieces, and the intermediates a hand-written reverse
    pass needs (shared by :func:`criterion_rest` and :func:`criterion_rest_value_and_grad`,
    so that both give the same value)."""
    p, k1, qr = layout.p, layout.k1, layout.qr
    Ts = templates(theta, layout)
    T1, Rest = Ts[0], Ts[1:]
    M11 = jnp.einsum("ji,gjk,kl->gil", T1, stats.A11, T1) + jnp.eye(k1, dtype=stats.A11.dtype)
    L1 = batched_cholesky(M11)
    N = batched_solve_lower(L1, jnp.broadcast_to(T1.T, L1.shape))  # L_g⁻¹T₁ᵀ
    W = jnp.einsum("gki,gkj->gij", N, N)  # T₁M_g⁻¹T₁ᵀ
    C1 = jnp.einsum("gij,gjm->gim", N, stats.Z1W)
    logdet1 = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L1, axis1=1, axis2=2)))
    S = stats.WW - jnp.einsum("gim,gin->mn", C1, C1)
    scalar = all(k == 1 for _, _, k in layout.rest)
    WZ = jnp.einsum("gij,gjm->gim", W, stats.Z1W)
    BC1 = jax.ops.segment_sum(jnp.einsum("ej,ejm->em", stats.A21, WZ[stats.pair_g]), stats.pair_a, qr)
    D = stats.ZrW - BC1
    V = lam_t_rest(D, Rest, layout)
    lam = None
    if layout.bbt == "sparse" and scalar:
        # Λ_r = diag(λ) and only one triangle is needed: subtract the pair values from A22
        # at the transposed targets (upper triangle) and scale by λλᵀ, in two passes over
        # q_r² entries. Mᵀ (lower triangle valid) is what LAPACK reads, column-major: the
        # transpose costs no copy.
        pairs = pair_data(stats, layout) if pairs is None else pairs
        lam = jnp.concatenate([jnp.broadcast_to(T[0, 0], (lev,)) for (_, lev, _), T in zip(layout.rest, Rest)])
        Sr = stats.A22.reshape(-1).at[pairs[2]].add(-_pair_values(W, pairs), wrap_negative_indices=False)
        Sr = Sr.reshape(qr, qr)  # upper triangle valid
        M22t = (Sr * (lam[:, None] * lam[None, :]) + jnp.eye(qr, dtype=Sr.dtype)).T
    else:
        if layout.bbt == "sparse":
            BBt = _pair_bbt_lower(W, stats, layout, pairs)
            BBt = BBt + BBt.T - jnp.diag(jnp.diagonal(BBt))
        else:
            B = jnp.einsum("ek,ejk->ej", stats.A21, N[stats.pair_g])
            BBt = _bbt(B, stats, layout, reverse_only=True)
        Sr = stats.A22 - BBt
        M22t = lam_t_rest(lam_t_rest(Sr, Rest, layout).T, Rest, layout) + jnp.eye(qr, dtype=Sr.dtype)  # symmetric
    logdet2, Q, L2, C2 = _logdet_quad(M22t, V)
    S = S - Q
    fphi, R = _rest_phi(S, stats, reml, p)
    f = logdet1 + logdet2 + fphi
    sg = jax.lax.stop_gradient
    pieces = {"N": sg(N), "W": sg(W), "C1": sg(C1), "L1": sg(L1), "L2": sg(L2), "C2": sg(C2), "R": sg(R)}
    inter = {"T1": T1, "M11": M11, "D": D, "V": V, "lam": lam, "S": S, "pairs": pairs}
    return f, pieces, inter


def criterion_rest(theta: jax.Array, stats: Stats, reml, layout: Layout, pairs=None):
    """(criterion, pieces) for q_r > 0, with the cheap derivative structure above.

    pieces (not differentiated): N = L₁⁻¹T₁ᵀ per level, W, C1, L1, L2, C2, R. Equals
    :func:`_deviance` in value and in reverse-mode derivatives (the dense step is a custom
    VJP: no forward mode). ``pairs``: :func:`pair_data`, if already computed.
    """
    f, pieces, _ = _rest_forward(theta, stats, reml, layout, pairs)
    return f, pieces


# ---- scalar terms: the whole reverse pass by hand ----------------------------------------------
#
# When every term is a scalar intercept (k₁ = 1 and every rest block k = 1) and B Bᵀ is a pair
# sum, autodiff's transpose of criterion_rest still makes several badly fused passes over the
# q_r² and pair arrays (a gather fused with a transposed producer, scatter-adds into l₁ bins,
# transposes): ~6 criterion evaluations on InstEval. Written by hand it is the explicit inverse
# plus one pass over the pairs and a few q_r-vectors. With t = T₁, λ the per-row rest scale
# (λᵢ = θ_b on the rows of block b), per level g
#
#     M11_g = t²A11_g + 1,  W_g = t²/M11_g,  D = Z_rᵀW − Σ_e A21_e W_g Z₁ᵀW_g,  V = λ ⊙ D,
#     Sr = A22 − P,  P_aa' = Σ_g W_g Σ_{e,e' in g: (a_e, a_e') = (a, a')} A21_e A21_e',
#     M = λλᵀ ⊙ Sr + I,  S = WᵀW − Σ_g W_g Z₁ᵀW_gᵀZ₁ᵀW_g − VᵀM⁻¹V,
#     d = Σ_g log M11_g + log|M| + φ(S).
#
# With S̄ = ∇φ(S), U = M⁻¹V and G = M⁻¹ + U S̄ Uᵀ the differential is (as _logdet_quad's rule)
#
#     dd = Σ_g dM11_g/M11_g − ⟨S̄, Σ_g dW_g Z₁ᵀW_gᵀZ₁ᵀW_g⟩ − 2⟨U S̄, dV⟩ + ⟨G, dM⟩,
#     dM = (dλ λᵀ + λ dλᵀ) ⊙ Sr − λλᵀ ⊙ dP,   dV = dλ ⊙ D − λ ⊙ Σ_e A21_e dW_g Z₁ᵀW_g.
#
# * t enters only through W_g (dW_g/dt = w_g = 2t/M11_g²) and M11_g:
#
#       ∂d/∂t = Σ_g 2tA11_g/M11_g + Σ_g w_g (−Z₁ᵀW_g S̄ Z₁ᵀW_gᵀ + 2 Y_g·Z₁ᵀW_g − Y_g·Ỹ_g)
#               − Σ_{e,e' in g} A21_e A21_e' w_g λ_a λ_a' M⁻¹_aa'     (a = a_e, a' = a_e'),
#
#   Y_g = Σ_{e in g} A21_e λ_a (U S̄)_a, Ỹ_g = Σ_{e in g} A21_e λ_a U_a: the rank-m part U S̄ Uᵀ of
#   G summed over a level's ordered pairs factors into Y_g·Ỹ_g (per entry, not per pair). The
#   ordered pairs are twice the stored ones (a_e ≥ a_e') less those with e = e'. This sum over
#   the pairs gathers M⁻¹ once per pair; the product with w_g needs no segment sum.
# * θ_b scales rows of M and V. Collecting dλᵢ, ∂d/∂θ_b = Σ_{i in b} 2((G ⊙ Sr)λ)ᵢ − 2⟨(U S̄)ᵢ, Dᵢ⟩,
#   and as λᵢ((G ⊙ Sr)λ)ᵢ = (G(M − I))ᵢᵢ = 1 + ⟨(U S̄)ᵢ, Vᵢ⟩ − Gᵢᵢ (GM = I + U S̄ Vᵀ),
#
#       θ_b ∂d/∂θ_b = 2 Σ_{i in b} (1 − Gᵢᵢ),   Gᵢᵢ = M⁻¹ᵢᵢ + ⟨(U S̄)ᵢ, Uᵢ⟩:
#
#   the diagonal of G only, no pass over q_r². But 1 − Gᵢᵢ is O(θ_b²) (the criterion is even in
#   θ_b) taken from O(1) numbers: its relative error grows as 1/θ_b² (InstEval: 3e-11 at
#   θ_b = 1e-4, 4e-10 at 1e-5). Below _IDENTITY_MIN the direct form is used instead, without
#   Sr, which is therefore not kept through the inverse (q_r² more memory): with Sr = A22 − P,
#   ((M⁻¹ ⊙ A22)λ)ᵢ and A22(λ ⊙ U) for the rank-m part, and P's share from the same pass over
#   the pairs (its rank-m part again per entry, as Y_g above).
#
# The pass over the pairs is one fused multi-output reduction (see _sums); λ_aλ_a' comes from a
# table indexed by the pair's class (pair_data), not from the target's row and column.
# tests/test_optimize.py checks f, ∇f and the pieces against autodiff of criterion_rest.

# Smallest |θ_b| of a rest block for the diagonal identity: its relative error is about
# eps/θ_b², so 1e-2 in float64 (~1e-12) and 0.1 in float32 (~1e-5).
_IDENTITY_MIN = {jnp.dtype(jnp.float64): 1e-2, jnp.dtype(jnp.float32): 1e-1}


def _scalar_rest(layout: Layout) -> bool:
    return layout.bbt == "sparse" and layout.k1 == 1 and all(k == 1 for _, _, k in layout.rest)


def _sums(xs: list[jax.Array]) -> list[jax.Array]:
    """Σ of each (equally long) vector in xs, in one multi-output reduction.

    A single-output sum goes to XLA:CPU's YNNPACK fusion, which takes no gathers or
    broadcasts: they would be materialized (8 bytes a pair, and a temporary allocation past
    glibc's 32 MB mmap threshold, paid in page faults on every call). A multi-output reduce
    stays in XLA's loop emitter with its operands fused; reducing rows of R lets it run in
    parallel. A lone vector is therefore summed twice.
    """
    if len(xs) == 1:
        s = _sums([xs[0], xs[0]])
        return [0.5 * (s[0] + s[1])]
    n = xs[0].shape[0]
    R = math.gcd(n, 2048)
    xs = tuple(x.reshape(-1, R) for x in xs)
    rs = jax.lax.reduce(xs, tuple(jnp.zeros((), x.dtype) for x in xs),
                        lambda u, v: tuple(p + q for p, q in zip(u, v)), (1,))
    return [jnp.sum(r) for r in rs]


def criterion_rest_value_and_grad(theta: jax.Array, stats: Stats, reml, layout: Layout, pairs=None):
    """(criterion, ∇criterion, pieces) with criterion and pieces those of :func:`criterion_rest`.

    For scalar terms with the pair-sum B Bᵀ (layout.k1 = 1, every rest block k = 1,
    bbt = "sparse") the gradient is the hand-written reverse pass above, at about one
    criterion evaluation beyond the explicit inverse; otherwise autodiff of
    :func:`criterion_rest`. ``pairs``: :func:`pair_data`, if already computed.
    """
    if not _scalar_rest(layout):
        (f, pieces), g = jax.value_and_grad(criterion_rest, has_aux=True)(theta, stats, reml, layout, pairs)
        return f, g, pieces
    p, qr, l1 = layout.p, layout.qr, layout.l1
    f, pieces, it = _rest_forward(theta, stats, reml, layout, pairs)
    t, M11, D, V, lam, S = (it[k] for k in ("T1", "M11", "D", "V", "lam", "S"))
    t, M11, W = t[0, 0], M11[:, 0, 0], pieces["W"][:, 0, 0]
    pp, gp = it["pairs"][0][:, 0, 0], it["pairs"][1]
    rest_t = jnp.stack([theta[idx[0]] for _, _, idx in layout.templates[1:]])
    _, phi_vjp, _ = jax.vjp(lambda S_: _rest_phi(S_, stats, reml, p), S, has_aux=True)
    Sbar = phi_vjp(jnp.ones_like(f))[0]
    Sbar = 0.5 * (Sbar + Sbar.T)
    # φ's LAPACK calls before the inverse's, never side by side (see _inverse_from_cholesky)
    Sbar, L2 = jax.lax.optimization_barrier((Sbar, pieces["L2"]))
    Minv = _inverse_from_cholesky(L2)
    U = Minv @ V  # a product, not a solve (see _inverse_from_cholesky's note)
    US = U @ Sbar
    m = US.shape[1]
    w = 2.0 * t / M11**2  # dW_g/dt
    a21, ga, gg = stats.A21[:, 0], stats.pair_a, stats.pair_g
    Z = stats.Z1W[:, 0, :]
    YY = jax.ops.segment_sum((a21 * lam[ga])[:, None] * jnp.concatenate([US, U], axis=1)[ga], gg, l1)
    Y, Yt = YY[:, :m], YY[:, m:]
    gt = (jnp.sum(2.0 * t * stats.A11[:, 0, 0] / M11)
          + jnp.sum(w * (jnp.sum(Y * (2.0 * Z - Yt), axis=1) - jnp.einsum("gm,mn,gn->g", Z, Sbar, Z))))
    USD = jnp.sum(US * D, axis=1)
    blocks = [(off, lev) for off, lev, _ in layout.rest]

    def pair_terms(rest_blocks: bool):
        # Per stored pair (lower target (a, a'), a ≥ a'): M⁻¹_aa' times A21_e A21_e'; the sums
        # for ∂d/∂t (all pairs, and those with e = e', a = a') and, for the direct form, per
        # block b the pairs' share of Σ_{i in b} ((M⁻¹ ⊙ P) λ)ᵢ (both orders of a pair, e = e'
        # once). λ_aλ_a' and the block terms come from tables indexed by the pair's class.
        nb = len(blocks)
        cls = it["pairs"][3].astype(jnp.int32)
        get = lambda v, i: v.at[i].get(wrap_negative_indices=False)  # noqa: E731
        x = get(Minv.reshape(-1), stats.bb_t) * pp
        on_diag = (cls & 1) == 1
        ll = jnp.repeat(jnp.outer(rest_t, rest_t).reshape(-1), 2)  # class → λ_aλ_a'
        xt = x * get(w, gp) * get(ll, cls)
        terms = [xt, jnp.where(on_diag, xt, 0.0)]
        if rest_blocks:
            xW = jnp.where(on_diag, 0.5, 1.0) * x * get(W, gp)
            e = jnp.eye(nb, dtype=x.dtype)
            for bi in range(nb):  # class → [β(a) = b] λ_a' + [β(a') = b] λ_a
                tb = e[bi][:, None] * rest_t[None, :] + rest_t[:, None] * e[bi][None, :]
                terms.append(xW * get(jnp.repeat(tb.reshape(-1), 2), cls))
        sums = _sums(terms)
        return -2.0 * sums[0] + sums[1], sums[2:]

    def identity(_):
        gt_pairs, _ = pair_terms(False)
        Gd = jnp.diagonal(Minv) + jnp.sum(US * U, axis=1)
        return gt_pairs, jnp.stack([2.0 * jnp.sum(1.0 - Gd[o : o + n]) / th for (o, n), th in zip(blocks, rest_t)])

    def direct(_):
        gt_pairs, p_sums = pair_terms(True)
        A22 = stats.A22
        AU = A22 @ (lam[:, None] * U)
        Yb = jax.ops.segment_sum(
            jnp.concatenate([jnp.where((ga >= o) & (ga < o + n), a21, 0.0)[:, None] * US[ga] for o, n in blocks], 1),
            gg, l1,
        ).reshape(l1, len(blocks), m)
        # Σ_{i in b} ((M⁻¹ ⊙ A22) λ)ᵢ by masks, not slices (a slice would be a q_r² copy)
        MAl = Minv * A22 * lam[None, :]
        rows = jnp.arange(qr)[:, None]
        a22_sums = _sums([jnp.where((rows >= o) & (rows < o + n), MAl, 0.0).reshape(-1) for o, n in blocks])
        out = []
        for bi, (o, n) in enumerate(blocks):
            a22 = a22_sums[bi] + jnp.sum(US[o : o + n] * AU[o : o + n])
            pair = p_sums[bi] + jnp.sum(W * jnp.sum(Yb[:, bi] * Yt, axis=1))
            out.append(2.0 * (a22 - pair) - 2.0 * jnp.sum(USD[o : o + n]))
        return gt_pairs, jnp.stack(out)

    gt_pairs, grest = jax.lax.cond(jnp.all(jnp.abs(rest_t) >= _IDENTITY_MIN[jnp.dtype(rest_t.dtype)]), identity, direct, None)
    g = jnp.zeros(layout.ntheta, f.dtype).at[layout.templates[0][2][0]].add(gt + gt_pairs)
    for (_, _, idx), gb in zip(layout.templates[1:], grest):
        g = g.at[idx[0]].add(gb)
    return f, g, pieces


def average_information(theta: jax.Array, pieces: dict, stats: Stats, reml, layout: Layout):
    """The average-information matrix of the profiled criterion, and êᵀHᵢê (q_r > 0).

    With H = ZΛΛᵀZᵀ + I, Hᵢ = ∂H/∂θᵢ = Z Gᵢ Zᵀ (Gᵢ = ∂(ΛΛᵀ)/∂θᵢ), P the REML projector
    (Py = ê, the residual y − Xβ̂ − Zb̂) and c = n − reml·p, the criterion
    d = log|H| [+ log|XᵀH⁻¹X|] + c·log r² has

        ∂ᵢd  = tr(P Hᵢ) − (c/r²) êᵀHᵢê,
        ∂ᵢⱼd ≈ AIᵢⱼ = (c/r²) (wᵢᵀ P wⱼ − (wᵢᵀê)(wⱼᵀê)/r²),   wᵢ = Hᵢ ê,

    the average of observed and expected information (Gilmour, Thompson & Cullis 1995,
    *Biometrics* 51; Johnson & Thompson 1995, *J. Dairy Sci.* 78), here with σ² profiled
    out (the second term). It is positive semi-definite, and needs no trace: wᵢ = Z hᵢ with
    hᵢ = Gᵢ Zᵀê, and wᵢᵀPwⱼ is a Schur complement of [X, w] through the existing factor —
    a few solves with L₂, O(q_r²·m), against the O(q_r³) of the criterion. Returns
    (AI (m, m), êᵀHᵢê (m,)).
    """
    p, qr, l1 = layout.p, layout.qr, layout.l1
    Ts = templates(theta, layout)
    T1, Rest = Ts[0], Ts[1:]
    N, W, C1, L1, L2, C2, R = (pieces[k] for k in ("N", "W", "C1", "L1", "L2", "C2", "R"))
    ga, gg = stats.pair_a, stats.pair_g
    RX, r2 = R[:p, :p], R[p, p] ** 2
    beta = solve_triangular(RX.T, R[p, :p], lower=False)  # β̂ − β₀
    # Conditional modes (as _solution.solve): u₂ = L₂⁻ᵀ(c₂ − C₂ₓβ̂), u₁ = L₁⁻ᵀ(c₁ − C₁ₓβ̂ − L₂₁ᵀu₂).
    u2 = solve_triangular(L2.T, C2[:, p] - C2[:, :p] @ beta, lower=False)
    br = lam_rest(u2[:, None], Rest, layout)[:, 0]
    B = jnp.einsum("ek,ejk->ej", stats.A21, N[gg])
    back = jax.ops.segment_sum(B * br[ga][:, None], gg, l1)
    u1 = batched_solve_upper_t(L1, (C1[..., p] - C1[..., :p] @ beta - back)[..., None])[..., 0]
    b1 = jnp.einsum("ij,gj->gi", T1, u1)
    # Zᵀê = Zᵀ(y' − Xβ̂') − ZᵀZ b̂
    cvec = jnp.concatenate([-beta, jnp.ones(1, beta.dtype)])
    z1 = (stats.Z1W @ cvec - jnp.einsum("gij,gj->gi", stats.A11, b1)
          - jax.ops.segment_sum(stats.A21 * br[ga][:, None], gg, l1))
    zr = (stats.ZrW @ cvec - stats.A22 @ br
          - jax.ops.segment_sum(jnp.sum(stats.A21 * b1[gg], axis=1), ga, qr))

    def lamlam(th):  # ΛΛᵀ Zᵀê; its Jacobian in θ holds hᵢ = Gᵢ Zᵀê
        Ts_ = templates(th, layout)
        h1 = jnp.einsum("ij,kj,gk->gi", Ts_[0], Ts_[0], z1)
        hr = lam_rest(lam_t_rest(zr[:, None], Ts_[1:], layout), Ts_[1:], layout)[:, 0]
        return h1, hr

    h1, hr = jax.jacfwd(lamlam)(theta)  # (l₁, k₁, m), (q_r, m)
    ehe = jnp.einsum("gi,git->t", z1, h1) + zr @ hr  # êᵀHᵢê
    # ZᵀZ h, Xᵀw, wᵀw
    Ah1 = (jnp.einsum("gij,gjt->git", stats.A11, h1)
           + jax.ops.segment_sum(stats.A21[:, :, None] * hr[ga][:, None, :], gg, l1))
    Ahr = stats.A22 @ hr + jax.ops.segment_sum(jnp.einsum("ej,ejt->et", stats.A21, h1[gg]), ga, qr)
    Xw = jnp.einsum("gjq,gjt->qt", stats.Z1W[..., :p], h1) + stats.ZrW[:, :p].T @ hr
    ww = jnp.einsum("git,giu->tu", h1, Ah1) + hr.T @ Ahr
    # The factor's columns for w (as C₁, C₂ for W), then the Schur complement of X.
    C1w = jnp.einsum("gij,gjt->git", N, Ah1)
    WAh = jnp.einsum("gij,gjt->git", W, Ah1)
    BC1w = jax.ops.segment_sum(jnp.einsum("ej,ejt->et", stats.A21, WAh[gg]), ga, qr)
    C2w = solve_triangular(L2, lam_t_rest(Ahr - BC1w, Rest, layout), lower=True)
    SXw = Xw - jnp.einsum("giq,git->qt", C1[..., :p], C1w) - C2[:, :p].T @ C2w
    Sww = ww - jnp.einsum("git,giu->tu", C1w, C1w) - C2w.T @ C2w
    Yx = solve_triangular(RX, SXw, lower=True)
    wPw = Sww - Yx.T @ Yx
    c = stats.n - reml * stats.p
    AI = (c / r2) * (wPw - jnp.outer(ehe, ehe) / r2)
    return 0.5 * (AI + AI.T), ehe

"""Stage 3 — design → sufficient statistics (Gram blocks of [Z X y]), in one pass.

Everything the profiled criterion needs is a cross-product of the columns of
``[Z X y]``, so after this pass no objective evaluation touches the n rows
again. The blocks kept, with block 1 the grouping factor with the most levels
(l₁ levels, k₁ columns) and the "rest" all other blocks stacked (q_r scalar
rows), W = [X y] (p + 1 columns):

=========  =====================  ==========================================
name       shape                  meaning
=========  =====================  ==========================================
A11        (l₁, k₁, k₁)           Z₁ᵀZ₁, block diagonal: one k₁×k₁ per level
Z1W        (l₁, k₁, p+1)          Z₁ᵀW per level
WW         (p+1, p+1)             WᵀW
A22        (q_r, q_r)             Z_rᵀZ_r, dense (it fills in when factored)
ZrW        (q_r, p+1)             Z_rᵀW
A21        (nnz, k₁)              Z_rᵀZ₁, sparse: one k₁-row per observed
                                  (rest row a, level g of block 1) pair
=========  =====================  ==========================================

Precision: the criterion takes r² from the Cholesky factor of the Gram matrix,
r² = yᵀy − ‖c_u‖² − ‖c_β‖², which cancels catastrophically when y has a large
mean relative to its spread (y → y + 1000 loses 8 digits of r²). Before the
pass we therefore subtract from y its least-squares fit on X, y' = y − Xβ₀:
θ̂, r², σ̂ and b̂ are unchanged because Xβ₀ lies in the span of X, and
β̂ = β̂' + β₀ (``Stats.beta0``). lme4 avoids the issue by computing the
penalized residual sum of squares from residuals; this is our equivalent.

The pass runs over fixed-size chunks padded with zero rows (a zero row adds
nothing to any cross-product), so memory is flat in n and one compiled kernel
serves every chunk. Level counts and the sparse sizes are padded to buckets
(padded levels are identity blocks in the factor: log|I| = 0), so models of
the same shape share compiled code.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _x64  # noqa: F401
from ._design import Design

__all__ = ["Layout", "Stats", "bucket", "sufficient_stats"]

CHUNK_ROWS = 1 << 16


def bucket(n: int, steps: int = 8) -> int:
    """Smallest value ≥ n on a grid with ``steps`` points per octave (≤ 12.5 % padding)."""
    if n <= 16:
        return max(n, 1)
    e = math.floor(math.log2(n))
    base = 1 << e
    step = max(base // steps, 1)
    return int(-(-n // step) * step)


class Layout(NamedTuple):
    """Static shapes of the engine (hashable: a jit static argument).

    ``rest`` holds (offset, padded levels, k) of each block after the first;
    ``templates`` per block its k, the flat positions (in its k×k template)
    and the indices of the θ entries that fill them; ``bbt`` the method for the sparse
    product B Bᵀ ("none", "sparse" or "dense").
    """

    p: int
    k1: int
    l1: int
    rest: tuple[tuple[int, int, int], ...]
    qr: int
    nnz: int
    npairs: int
    bbt: str
    templates: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]
    ntheta: int


class Stats(NamedTuple):
    """Sufficient statistics (a pytree of arrays; see the module docstring)."""

    n: jax.Array
    A11: jax.Array
    Z1W: jax.Array
    WW: jax.Array
    A22: jax.Array
    ZrW: jax.Array
    A21: jax.Array
    pair_a: jax.Array
    pair_g: jax.Array
    bb_e1: jax.Array
    bb_e2: jax.Array
    bb_t: jax.Array
    beta0: jax.Array


def theta_layout(design: Design) -> tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]:
    """Map θ (lme4 order: terms in order, lower triangle column by column) into block templates."""
    per_block: list[tuple[list[int], list[int]]] = [([], []) for _ in design.blocks]
    t = 0
    for term in design.terms:
        kb = design.blocks[term.block].k
        pos, idx = per_block[term.block]
        for j in range(term.k):
            for i in range(j, term.k):
                pos.append((term.offset + i) * kb + term.offset + j)
                idx.append(t)
                t += 1
    return tuple((blk.k, tuple(p), tuple(i)) for blk, (p, i) in zip(design.blocks, per_block))


def _rest_positions(design: Design, rest: tuple[tuple[int, int, int], ...]):
    """Per row, the scalar rows of Z_r it touches (n, m_r) and the values there."""
    P, V = [], []
    for (off, _, k), blk in zip(rest, design.blocks[1:]):
        base = off + blk.codes[:, None] * k + np.arange(k)[None, :]
        P.append(base)
        V.append(blk.Z)
    return np.concatenate(P, axis=1).astype(np.int32), np.concatenate(V, axis=1)


def _pair_products(pair_a: np.ndarray, pair_g: np.ndarray, qr: int):
    """Pairs (e, e') with the same block-1 level and a_e ≥ a_e', and targets a_e·q_r + a_e'.

    Only the lower triangle of the symmetric B Bᵀ is accumulated (half the
    pairs); the kernel mirrors it.
    """
    order = np.argsort(pair_g, kind="stable")
    gs = pair_g[order]
    counts = np.bincount(gs)
    starts = np.cumsum(counts) - counts
    rep = counts[gs]
    e1 = np.repeat(order, rep)
    offs = np.arange(rep.sum()) - np.repeat(np.cumsum(rep) - rep, rep)
    e2 = order[np.repeat(starts[gs], rep) + offs]
    lower = pair_a[e1] >= pair_a[e2]
    e1, e2 = e1[lower], e2[lower]
    return e1, e2, pair_a[e1].astype(np.int64) * qr + pair_a[e2]


def sufficient_stats(design: Design, chunk_rows: int = CHUNK_ROWS, bbt: str | None = None) -> tuple[Layout, Stats, dict]:
    """One pass over the rows of ``design`` → (layout, statistics, host-side index arrays).

    ``bbt`` ("sparse" or "dense") overrides the cost-based choice of how B Bᵀ is formed
    (for tests of both code paths).
    """
    n, p = design.X.shape
    b1 = design.blocks[0]
    k1, l1 = b1.k, bucket(b1.nlev)
    rest, off = [], 0
    for blk in design.blocks[1:]:
        lp = bucket(blk.nlev)
        rest.append((off, lp, blk.k))
        off += lp * blk.k
    rest = tuple(rest)
    qr = off
    beta0 = np.linalg.lstsq(design.X, design.y, rcond=None)[0] if p else np.zeros(0)
    W = np.column_stack([design.X, design.y - design.X @ beta0])

    if qr:
        P, V = _rest_positions(design, rest)
        keys = P.astype(np.int64) * l1 + b1.codes[:, None]
        uniq, E = np.unique(keys.ravel(), return_inverse=True)
        E = E.reshape(P.shape).astype(np.int32)
        nnz_true = len(uniq)
        nnz = bucket(nnz_true + 1)  # at least one all-zero padding entry
        pair_a = np.zeros(nnz, np.int32)
        pair_g = np.zeros(nnz, np.int32)
        pair_a[:nnz_true] = uniq // l1
        pair_g[:nnz_true] = uniq % l1
        e1, e2, tgt = _pair_products(pair_a[:nnz_true], pair_g[:nnz_true], qr)
        # Sparse B Bᵀ costs a scatter per pair; the dense product q_r²·l₁·k₁ flops of GEMM.
        sparse_cost = 30.0 * len(e1) * k1
        dense_cost = float(qr) * qr * l1 * k1
        if bbt is None:
            bbt = "sparse" if sparse_cost < dense_cost else "dense"
        if bbt == "sparse":
            npairs = bucket(len(e1))
            pad = npairs - len(e1)
            bb_e1 = np.concatenate([e1, np.full(pad, nnz - 1)]).astype(np.int32)
            bb_e2 = np.concatenate([e2, np.full(pad, nnz - 1)]).astype(np.int32)
            bb_t = np.concatenate([tgt, np.zeros(pad, np.int64)]).astype(np.int32)
        else:
            npairs = 0
            bb_e1 = bb_e2 = bb_t = np.zeros(0, np.int32)
    else:
        P = np.zeros((n, 0), np.int32)
        V = np.zeros((n, 0))
        E = np.zeros((n, 0), np.int32)
        nnz, npairs, bbt = 0, 0, "none"
        pair_a = pair_g = bb_e1 = bb_e2 = bb_t = np.zeros(0, np.int32)

    templates = theta_layout(design)
    layout = Layout(
        p=p, k1=k1, l1=l1, rest=rest, qr=qr, nnz=nnz, npairs=npairs, bbt=bbt,
        templates=templates, ntheta=sum(len(t[2]) for t in templates),
    )

    c = min(chunk_rows, max(256, 1 << (n - 1).bit_length()))
    acc = (
        jnp.zeros((l1, k1, k1)),
        jnp.zeros((l1, k1, p + 1)),
        jnp.zeros((p + 1, p + 1)),
        jnp.zeros((qr, qr)),
        jnp.zeros((qr, p + 1)),
        jnp.zeros((nnz, k1)),
    )
    g1 = b1.codes.astype(np.int32)
    for start in range(0, n, c):
        stop = min(start + c, n)
        acc = _chunk_stats(
            acc,
            _pad(W[start:stop], c),
            _pad(g1[start:stop], c),
            _pad(b1.Z[start:stop], c),
            _pad(P[start:stop], c),
            _pad(V[start:stop], c),
            _pad(E[start:stop], c),
            l1=l1, qr=qr, nnz=nnz,
        )
    stats = Stats(
        jnp.asarray(float(n)), *acc,
        jnp.asarray(pair_a), jnp.asarray(pair_g),
        jnp.asarray(bb_e1), jnp.asarray(bb_e2), jnp.asarray(bb_t),
        jnp.asarray(beta0),
    )
    host = {"P": P, "V": V}
    return layout, stats, host


def _pad(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    pad = [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
    return np.pad(a, pad)


@partial(jax.jit, static_argnames=("l1", "qr", "nnz"), donate_argnums=(0,))
def _chunk_stats(acc, W, g1, Z1, P, V, E, *, l1: int, qr: int, nnz: int):
    """Add one chunk's cross-products to the accumulators. Shapes: W (c, p+1),
    g1 (c,), Z1 (c, k₁), P/V/E (c, m_r)."""
    A11, Z1W, WW, A22, ZrW, A21 = acc
    seg = jax.ops.segment_sum
    A11 = A11 + seg(Z1[:, :, None] * Z1[:, None, :], g1, l1)
    Z1W = Z1W + seg(Z1[:, :, None] * W[:, None, :], g1, l1)
    WW = WW + W.T @ W
    if qr:
        flat = (P[:, :, None] * qr + P[:, None, :]).reshape(-1)
        A22 = A22 + seg((V[:, :, None] * V[:, None, :]).reshape(-1), flat, qr * qr).reshape(qr, qr)
        ZrW = ZrW + seg((V[:, :, None] * W[:, None, :]).reshape(-1, W.shape[1]), P.reshape(-1), qr)
        A21 = A21 + seg((V[:, :, None] * Z1[:, None, :]).reshape(-1, Z1.shape[1]), E.reshape(-1), nnz)
    return A11, Z1W, WW, A22, ZrW, A21

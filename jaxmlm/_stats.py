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

from . import _programs, _x64  # noqa: F401
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


def _pair_count(pair_g: np.ndarray) -> int:
    """Number of pairs :func:`_pair_products` makes: Σ_g c_g(c_g + 1)/2 over the level counts."""
    c = np.bincount(pair_g).astype(np.int64)
    return int(np.sum(c * (c + 1) // 2))


def _pair_products(pair_a: np.ndarray, pair_g: np.ndarray, qr: int, size: int | None = None, pad: int = 0):
    """Pairs (e, e') with the same block-1 level and a_e ≥ a_e', and targets a_e·q_r + a_e'.

    Only the lower triangle of the symmetric B Bᵀ is accumulated (half the
    pairs); the kernel mirrors it. The rows e are distinct (a, g) entries, so
    within a level, sorted by a, the pairs of the element of rank r are the r + 1
    elements up to and including itself: the list is made in that order (by g,
    then a_e, then a_e') without forming and filtering all c_g² pairs. Outputs are
    int32 (targets int64 if q_r² does not fit); with ``size`` they are padded to that
    length with (e, e', target) = (``pad``, ``pad``, 0).
    """
    m = len(pair_g)
    small = m == 0 or max(int(pair_a.max()), int(pair_g.max())) < 2**16
    keys = (pair_a, pair_g) if not small else (pair_a.astype(np.uint16), pair_g.astype(np.uint16))
    order = np.lexsort(keys).astype(np.int32)  # by g, then a (16-bit keys: numpy's radix sort)
    gs = pair_g[order]
    counts = np.bincount(gs, minlength=1)
    starts = (np.cumsum(counts) - counts).astype(np.int32)
    first = starts[gs]  # sorted position where each element's level starts
    rep = np.arange(m, dtype=np.int32) - first + 1  # pairs per element: its rank + 1
    total = int(rep.sum(dtype=np.int64))
    n_out = total if size is None else size
    # Sorted position of e' for element i runs first_i, first_i + 1, …, i: a cumulative sum
    # of ones, with a jump at the start of each run (the previous run ended at i − 1).
    step = np.ones(total, np.int32)
    step[np.cumsum(rep) - rep] = first - np.arange(m, dtype=np.int32) + 1
    step[:1] = 0  # element 0's run starts at position 0
    pos2 = np.cumsum(step, dtype=np.int32)
    it = np.int32 if qr * qr < 2**31 else np.int64
    a_sorted = pair_a[order].astype(it)
    e1 = np.full(n_out, pad, np.int32)
    e2 = np.full(n_out, pad, np.int32)
    tgt = np.zeros(n_out, it)
    e1[:total] = np.repeat(order, rep)
    np.take(order, pos2, out=e2[:total])  # np.take: about twice as fast as order[pos2]
    np.add(np.repeat(a_sorted * it(qr), rep), np.take(a_sorted, pos2), out=tgt[:total])
    return e1, e2, tgt


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
    else:
        P = np.zeros((n, 0), np.int32)
        V = np.zeros((n, 0))
        E = np.zeros((n, 0), np.int32)
        nnz = 0
        pair_a = pair_g = np.zeros(0, np.int32)

    c = min(chunk_rows, max(256, 1 << (n - 1).bit_length()))
    acc = None  # the first chunk starts the accumulators inside the compiled kernel
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
    # The pass above runs asynchronously; meanwhile the host makes B Bᵀ's pair list.
    if qr:
        npairs_true = _pair_count(pair_g[:nnz_true])
        # Sparse B Bᵀ costs a scatter per pair; the dense product q_r²·l₁·k₁ flops of GEMM.
        sparse_cost = 30.0 * npairs_true * k1
        dense_cost = float(qr) * qr * l1 * k1
        if bbt is None:
            bbt = "sparse" if sparse_cost < dense_cost else "dense"
        if bbt == "sparse":
            npairs = bucket(npairs_true)
            bb_e1, bb_e2, bb_t = _pair_products(pair_a[:nnz_true], pair_g[:nnz_true], qr, size=npairs, pad=nnz - 1)
        else:
            npairs = 0
            bb_e1 = bb_e2 = bb_t = np.zeros(0, np.int32)
    else:
        npairs, bbt = 0, "none"
        bb_e1 = bb_e2 = bb_t = np.zeros(0, np.int32)
    templates = theta_layout(design)
    layout = Layout(
        p=p, k1=k1, l1=l1, rest=rest, qr=qr, nnz=nnz, npairs=npairs, bbt=bbt,
        templates=templates, ntheta=sum(len(t[2]) for t in templates),
    )
    # One transfer for the host-made arrays (each jnp.asarray outside jit is a program of its own).
    index = _to_device((np.asarray(float(n)), pair_a, pair_g, bb_e1, bb_e2, bb_t, beta0))
    stats = Stats(index[0], *acc, *index[1:])
    host = {"P": P, "V": V}
    return layout, stats, host


@jax.jit
def _identity(arrays):
    return arrays


def _to_device(arrays: tuple) -> tuple:
    """Host arrays → device arrays in one transfer. Small ones through a jitted identity:
    its C++ argument path takes ~20 µs where ``jax.device_put`` of a tuple takes ~110 µs (a
    fifth of a sleepstudy fit); large ones by ``device_put``, which copies them only once.
    Not in a process that caches exported programs (the command line): there every program
    traced costs more than the transfer saves."""
    if sum(a.nbytes for a in arrays) < (1 << 20) and not _programs.enabled():
        return _identity(arrays)
    return jax.device_put(arrays)


def _pad(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    out = np.zeros((rows, *a.shape[1:]), a.dtype)  # np.pad costs ~20 µs a call: a lot for small data
    out[: a.shape[0]] = a
    return out


@partial(jax.jit, static_argnames=("l1", "qr", "nnz"), donate_argnums=(0,))
def _chunk_stats(acc, W, g1, Z1, P, V, E, *, l1: int, qr: int, nnz: int):
    """Add one chunk's cross-products to the accumulators (None: start them). Shapes:
    W (c, p+1), g1 (c,), Z1 (c, k₁), P/V/E (c, m_r)."""
    if acc is None:
        acc = (
            jnp.zeros((l1, Z1.shape[1], Z1.shape[1]), W.dtype),
            jnp.zeros((l1, Z1.shape[1], W.shape[1]), W.dtype),
            jnp.zeros((W.shape[1], W.shape[1]), W.dtype),
            jnp.zeros((qr, qr), W.dtype),
            jnp.zeros((qr, W.shape[1]), W.dtype),
            jnp.zeros((nnz, Z1.shape[1]), W.dtype),
        )
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

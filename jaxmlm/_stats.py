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
from ._errors import DataError

__all__ = ["Layout", "ONE_PROGRAM_ROWS", "OneChunk", "Stats", "WeightedRows", "bucket", "one_chunk",
           "stats_from_chunk", "sufficient_stats", "weighted_rows", "weights_constant"]

CHUNK_ROWS = 1 << 16


#: Points per octave of the grid for sizes whose cost is linear (levels of the block-diagonal
#: block, pair lists): ≤ 25 % padding, so data of nearly the same size — a subset, a few rows
#: dropped for missing values — share one compiled program. Sizes of the dense block (cubic
#: cost) keep ``bucket``'s default, 8 (≤ 12.5 %).
LINEAR_STEPS = 4


def bucket(n: int, steps: int = 8) -> int:
    """Smallest value ≥ n on a grid with ``steps`` points per octave (≤ 1/steps padding)."""
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
    and the indices of the θ entries that fill them; ``structured`` the terms whose
    structure is not linear in θ (see :func:`theta_layout`); ``bbt`` the method for the sparse
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
    structured: tuple = ()


class Stats(NamedTuple):
    """Sufficient statistics (a pytree of arrays; see the module docstring).

    ``n`` counts the rows that carry information (weight > 0) and ``ldw`` is
    Σ log wᵢ over them (0 without prior weights): the criterion's constant."""

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
    ldw: jax.Array


def theta_layout(design: Design):
    """Map θ (lme4 order: each term's parameters in turn) into block templates.

    Returns (templates, structured): per block (k, flat positions, θ indices) of the
    parameters of *linear* structures (each one entry of the template: for us, the
    lower triangle column by column, lme4's θ), and (block, offset, structure, first θ
    index) of every other term, whose template block its structure computes
    (:mod:`jaxmlm._covariance`)."""
    per_block: list[tuple[list[int], list[int]]] = [([], []) for _ in design.blocks]
    structured = []
    t = 0
    for term in design.terms:
        kb = design.blocks[term.block].k
        cov = term.cov
        if cov.linear:
            pos, idx = per_block[term.block]
            for flat in cov.positions():
                i, j = divmod(flat, term.k)
                pos.append((term.offset + i) * kb + term.offset + j)
                idx.append(t)
                t += 1
        else:
            structured.append((term.block, term.offset, cov, t))
            t += cov.nparams
    templates = tuple((blk.k, tuple(p), tuple(i)) for blk, (p, i) in zip(design.blocks, per_block))
    return templates, tuple(structured)


class WeightedRows(NamedTuple):
    """The rows of the problem the engine solves: each row times √wᵢ, the response less its offset.

    With prior weights wᵢ (residual variance σ²/wᵢ) and offset oᵢ, the model
    y = Xβ + Zb + o + ε is the unweighted one for y* = √w (y − o), X* = √w X,
    Z* = √w Z, whose likelihood differs by the constant ½ Σ log wᵢ (lme4's
    ``ldW``; Bates et al. 2015, §3.6). ``sw`` is √w (None without weights)."""

    X: np.ndarray
    y: np.ndarray
    Z: tuple
    sw: np.ndarray | None


def weighted_rows(design: Design) -> WeightedRows:
    """:class:`WeightedRows` of ``design`` (its own arrays where there are no weights and no offset)."""
    y = design.y if design.offset is None else design.y - design.offset
    if design.weights is None:
        return WeightedRows(design.X, y, tuple(blk.Z for blk in design.blocks), None)
    sw = np.sqrt(design.weights)
    return WeightedRows(design.X * sw[:, None], y * sw, tuple(blk.Z * sw[:, None] for blk in design.blocks), sw)


def weights_constant(design: Design) -> tuple[float, float]:
    """(n, Σ log wᵢ) over the rows that carry information (wᵢ > 0): the criterion's n and constant."""
    if design.weights is None:
        return float(design.n), 0.0
    pos = design.weights[design.weights > 0]
    return float(len(pos)), float(np.sum(np.log(pos)))


def _rest_positions(design: Design, rest: tuple[tuple[int, int, int], ...], Z: tuple | None = None):
    """Per row, the scalar rows of Z_r it touches (n, m_r) and the values there (``Z``: the
    blocks' matrices to use, default the design's)."""
    P, V = [], []
    Z = tuple(blk.Z for blk in design.blocks) if Z is None else Z
    for (off, _, k), blk, Zb in zip(rest, design.blocks[1:], Z[1:]):
        base = off + blk.codes[:, None] * k + np.arange(k)[None, :]
        P.append(base)
        V.append(Zb)
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


class _PassInputs(NamedTuple):
    """The host side of the pass: its row arrays (unpadded) and the engine sizes known before it."""

    W: np.ndarray  # (n, p+1): X and y − Xβ₀ (weighted rows: :class:`WeightedRows`)
    g1: np.ndarray  # (n,) block-1 codes
    Z1: np.ndarray  # (n, k₁)
    P: np.ndarray  # (n, m_r) positions in Z_r
    V: np.ndarray  # (n, m_r) values there
    E: np.ndarray  # (n, m_r) entries of A21
    beta0: np.ndarray
    chunk: int  # rows per chunk
    l1: int
    rest: tuple
    qr: int
    nnz: int
    nnz_true: int
    pair_a: np.ndarray
    pair_g: np.ndarray
    n_info: float
    ldw: float


def _check_response_varies(design: Design, resid: np.ndarray) -> None:
    """Refuse a response with nothing left after its least-squares fit on X (constant, or exactly linear).

    Nothing is left for random effects or the residual to explain: the criterion has no
    minimum (σ → 0), and lme4 returns σ ≈ 1e-16 with convergence warnings.
    """
    y = design.y if design.offset is None else design.y - design.offset
    if design.weights is not None:
        y = y * np.sqrt(design.weights)
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    if y.size and np.max(np.abs(resid)) > 1e-10 * scale:
        return
    name = design.formula.lhs
    if y.size and np.all(y == y[0]):
        what = f"is constant (every value is {y[0]:.6g})"
    else:
        what = "is an exact linear function of the fixed-effects columns (the residuals of its least-squares fit are 0)"
    raise DataError(
        f"the response {name!r} {what}: nothing is left for random effects or residuals to explain, so the model "
        "has no maximum-likelihood estimate; check the response column (and whether it was computed from the predictors)"
    )


def _pass_inputs(design: Design, chunk_rows: int, response: bool = True) -> _PassInputs:
    n, p = design.X.shape
    b1 = design.blocks[0]
    l1 = bucket(b1.nlev, LINEAR_STEPS)
    rest, off = [], 0
    for blk in design.blocks[1:]:
        lp = bucket(blk.nlev)
        rest.append((off, lp, blk.k))
        off += lp * blk.k
    qr = off
    rows = weighted_rows(design)
    beta0 = np.linalg.lstsq(rows.X, rows.y, rcond=None)[0] if p else np.zeros(0)
    resid = rows.y - rows.X @ beta0
    if response:
        _check_response_varies(design, resid)
    W = np.column_stack([rows.X, resid])
    if qr:
        P, V = _rest_positions(design, tuple(rest), rows.Z)
        keys = P.astype(np.int64) * l1 + b1.codes[:, None]
        uniq, E = np.unique(keys.ravel(), return_inverse=True)
        E = E.reshape(P.shape).astype(np.int32)
        nnz_true = len(uniq)
        nnz = bucket(nnz_true + 1, LINEAR_STEPS)  # at least one all-zero padding entry
        pair_a = np.zeros(nnz, np.int32)
        pair_g = np.zeros(nnz, np.int32)
        pair_a[:nnz_true] = uniq // l1
        pair_g[:nnz_true] = uniq % l1
    else:
        P, V, E = np.zeros((n, 0), np.int32), np.zeros((n, 0)), np.zeros((n, 0), np.int32)
        nnz = nnz_true = 0
        pair_a = pair_g = np.zeros(0, np.int32)
    chunk = min(chunk_rows, max(256, 1 << (n - 1).bit_length()))
    n_info, ldw = weights_constant(design)
    return _PassInputs(W, b1.codes.astype(np.int32), rows.Z[0], P, V, E, beta0, chunk, l1, tuple(rest), qr, nnz,
                       nnz_true, pair_a, pair_g, n_info, ldw)


def _chunks(inp: _PassInputs):
    """The pass's chunks, each padded to ``inp.chunk`` rows: (W, g1, Z1, P, V, E)."""
    n, c = len(inp.W), inp.chunk
    for start in range(0, n, c):
        stop = min(start + c, n)
        yield tuple(_pad(a[start:stop], c) for a in (inp.W, inp.g1, inp.Z1, inp.P, inp.V, inp.E))


def _layout_and_index(design: Design, inp: _PassInputs, bbt: str | None) -> tuple[Layout, tuple]:
    """The layout and the statistics made on the host (n, pair lists, β₀), as host arrays."""
    k1, qr, nnz_true = design.blocks[0].k, inp.qr, inp.nnz_true
    if qr:
        npairs_true = _pair_count(inp.pair_g[:nnz_true])
        # Sparse B Bᵀ costs a scatter per pair; the dense product q_r²·l₁·k₁ flops of GEMM.
        sparse_cost = 30.0 * npairs_true * k1
        dense_cost = float(qr) * qr * inp.l1 * k1
        if bbt is None:
            bbt = "sparse" if sparse_cost < dense_cost else "dense"
        if bbt == "sparse":
            npairs = bucket(npairs_true, LINEAR_STEPS)
            bb_e1, bb_e2, bb_t = _pair_products(inp.pair_a[:nnz_true], inp.pair_g[:nnz_true], qr, size=npairs,
                                                pad=inp.nnz - 1)
        else:
            npairs = 0
            bb_e1 = bb_e2 = bb_t = np.zeros(0, np.int32)
    else:
        npairs, bbt = 0, "none"
        bb_e1 = bb_e2 = bb_t = np.zeros(0, np.int32)
    templates, structured = theta_layout(design)
    layout = Layout(
        p=design.X.shape[1], k1=k1, l1=inp.l1, rest=inp.rest, qr=qr, nnz=inp.nnz, npairs=npairs, bbt=bbt,
        templates=templates, ntheta=sum(len(t[2]) for t in templates) + sum(s[2].nparams for s in structured),
        structured=structured,
    )
    index = (np.asarray(inp.n_info), inp.pair_a, inp.pair_g, bb_e1, bb_e2, bb_t, inp.beta0, np.asarray(inp.ldw))
    return layout, index


def sufficient_stats(design: Design, chunk_rows: int = CHUNK_ROWS, bbt: str | None = None,
                     response: bool = True) -> tuple[Layout, Stats, dict]:
    """One pass over the rows of ``design`` → (layout, statistics, host-side index arrays).

    ``bbt`` ("sparse" or "dense") overrides the cost-based choice of how B Bᵀ is formed
    (for tests of both code paths). ``response=False``: the design's y is a placeholder
    (a design to simulate from), not checked for having anything to explain.
    """
    inp = _pass_inputs(design, chunk_rows, response)
    acc = None  # the first chunk starts the accumulators inside the compiled kernel
    for chunk in _chunks(inp):
        acc = _chunk_stats(acc, *chunk, l1=inp.l1, qr=inp.qr, nnz=inp.nnz)
    # The pass above runs asynchronously; meanwhile the host makes B Bᵀ's pair list.
    layout, index = _layout_and_index(design, inp, bbt)
    index = _to_device(index)
    return layout, Stats(index[0], *acc, *index[1:]), {"P": inp.P, "V": inp.V}


class OneChunk(NamedTuple):
    """Data that fit in one chunk, ready for a program that runs the pass itself
    (:func:`stats_from_chunk`): one program for the pass and what follows it, and its
    inputs in two arrays, ``floats`` and ``ints`` (each input flattened, in ``spec``'s order).

    For small data every program launched and every host array passed costs more than
    the arithmetic (sleepstudy, 2 cores: a program of its own for the pass ~70 µs, each
    host argument ~3 µs, of a ~0.7 ms fit)."""

    layout: Layout
    floats: np.ndarray  # float64
    ints: np.ndarray
    spec: tuple  # static: (dtype, shape) of (W, g1, Z1, P, V, E) padded, then n, pair lists, β₀


#: Data of at most this many rows are fitted by one program (:class:`OneChunk`), their
#: chunk padded to exactly this size: one program per layout, whatever the number of rows.
#: (Padded to the usual power-of-two chunk instead, every other data size would compile
#: the whole fit again: ~2 s for sleepstudy's model, against ~0.1 s for the pass alone.)
ONE_PROGRAM_ROWS = 256


def one_chunk(design: Design, rows: int = ONE_PROGRAM_ROWS) -> OneChunk | None:
    """The inputs of :func:`stats_from_chunk`, in a chunk of ``rows`` rows, if the data fit
    in it, else None."""
    if design.n > rows:
        return None
    inp = _pass_inputs(design, rows)._replace(chunk=rows)
    layout, index = _layout_and_index(design, inp, None)
    arrays = (*next(_chunks(inp)), *index)
    floats = np.concatenate([a.ravel() for a in arrays if a.dtype.kind == "f"])
    ints = np.concatenate([a.ravel() for a in arrays if a.dtype.kind != "f"])
    return OneChunk(layout, floats, ints, tuple((a.dtype.str, a.shape) for a in arrays))


def stats_from_chunk(floats, ints, spec: tuple, layout: Layout) -> Stats:
    """The statistics of :class:`OneChunk`'s inputs (traceable: inside a caller's program)."""
    arrays, at = [], {"f": 0, "i": 0}
    for dt, shape in spec:
        kind = "f" if np.dtype(dt).kind == "f" else "i"
        src, size = (floats if kind == "f" else ints), math.prod(shape)
        arrays.append(src[at[kind] : at[kind] + size].reshape(shape).astype(dt))
        at[kind] += size
    acc = _accumulate(None, *arrays[:6], l1=layout.l1, qr=layout.qr, nnz=layout.nnz)
    return Stats(arrays[6], *acc, *arrays[7:])


def _to_device(arrays: tuple) -> tuple:
    """Host arrays for the statistics: large ones (the pair lists of crossed designs) moved to
    the device once, by ``jax.device_put``; small ones left on the host (read-only, as device
    arrays are). Each program call copies those along with its other arguments, which costs
    less than a transfer of its own (~20 µs for sleepstudy's, before small data got a
    program of their own: :class:`OneChunk`) and traces nothing new in a fresh process."""
    if sum(a.nbytes for a in arrays) < (1 << 20):
        for a in arrays:
            a.flags.writeable = False
        return arrays
    return jax.device_put(arrays)


def _pad(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    out = np.zeros((rows, *a.shape[1:]), a.dtype)  # np.pad costs ~20 µs a call: a lot for small data
    out[: a.shape[0]] = a
    return out


def _accumulate(acc, W, g1, Z1, P, V, E, *, l1: int, qr: int, nnz: int):
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


_chunk_stats = partial(jax.jit, static_argnames=("l1", "qr", "nnz"), donate_argnums=(0,))(_accumulate)

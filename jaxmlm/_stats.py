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
A22        (q_r, q_r)             Z_rᵀZ_r, dense (it fills in when factored);
                                  (l_r, k_r, k_r) diagonal blocks when nested
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

from . import _compiled, _x64  # noqa: F401
from ._design import Design
from ._errors import DataError

__all__ = ["Layout", "is_nested", "a22_blocks", "a22_dense", "a22_diagonal", "ONE_PROGRAM_ROWS", "ONE_PROGRAM_CHUNKS", "PAIR_BYTES_MAX", "choose_bbt", "OneChunk", "Schema", "Stats", "WeightedRows", "accumulate", "bucket",
           "make_schema", "merge_stats", "one_chunk", "ResponseOps", "response_ops", "response_stats", "stats_from_chunk",
           "sufficient_stats", "weighted_rows", "weights_constant", "with_response", "fixed_width", "narrow", "widen", "zeroed_chunk"]

CHUNK_ROWS = 1 << 16

#: Most numbers one chunk's outer products may hold (2²³ float64: 64 MiB); see :func:`_pass_inputs`.
PASS_ELEMENTS_MAX = 1 << 23


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
    product B Bᵀ ("none", "sparse" or "dense"; "nested" where it is block diagonal per level of
    the one rest factor: :func:`is_nested`).
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
    Σ log wᵢ over them (0 without prior weights): the criterion's constant. ``p`` is the
    number of fixed-effect columns (float): W may hold padding columns after them
    (:func:`widen`), so the criterion's n − REML·p takes p from here, not from the shapes."""

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
    p: jax.Array


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


def weights_constant(weights: np.ndarray | None, n: int) -> tuple[float, float]:
    """(n, Σ log wᵢ) over the rows that carry information (wᵢ > 0): the criterion's n and constant
    (``weights`` None: n rows of weight 1)."""
    if weights is None:
        return float(n), 0.0
    pos = weights[weights > 0]
    return float(len(pos)), float(np.sum(np.log(pos)))


def _nested(pair_a: np.ndarray, pair_g: np.ndarray, rest: tuple) -> bool:
    """Whether block 1's factor is nested in the only rest factor: every block-1 level meets
    the rows of one level of it (the schema then records bbt "nested": :func:`is_nested`)."""
    if len(rest) != 1:
        return False
    lev = pair_a // rest[0][2]
    seen = np.zeros(int(pair_g.max(initial=0)) + 1, lev.dtype)
    seen[pair_g] = lev  # one of each level's parents; nested if every pair agrees with it
    return bool(np.all(seen[pair_g] == lev))


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


#: Most memory the sparse B Bᵀ's pair list may take before the dense product is used instead
#: (when that takes less): see :func:`choose_bbt`.
PAIR_BYTES_MAX = 256 << 20


def pair_bytes(npairs: int, k1: int) -> int:
    """Memory of the sparse B Bᵀ's pair list: per pair, (e, e', target) as int32 in the
    statistics and the criterion's θ-free pair data (:func:`jaxmlm._objective.pair_data`:
    A21_eᵀA21_e' as k₁×k₁ float64, level and target as int32, a one-byte class)."""
    return npairs * (12 + 8 * k1 * k1 + 9)


def dense_bytes(qr: int, l1: int, k1: int) -> int:
    """Memory of the dense B Bᵀ's working arrays: B as a dense q_r × l₁k₁ matrix, its
    cotangent and the scatter that forms it (three copies)."""
    return 3 * 8 * qr * l1 * k1


def choose_bbt(npairs: int, qr: int, l1: int, k1: int, budget: int | None = None) -> str:
    """"sparse" or "dense": how B Bᵀ is formed, by time and then memory.

    Time: the sparse sum costs a gather and a scatter per pair (~30 flops of GEMM each),
    the dense product q_r²·l₁·k₁ multiply-adds (5/8 of them in the criterion, by blocks:
    :func:`jaxmlm._objective.gram_rows`). Memory: the pair list grows with
    Σ_g c_g(c_g + 1)/2 over block-1 levels with c_g partners each, the dense product with
    q_r·l₁k₁. A 1M-row crossed design with 5,000 × 2,000 levels has 10⁸ pairs (~3 GB of pair
    list), against 84 MB for one dense copy of B: where the pair list would pass ``budget``
    (:data:`PAIR_BYTES_MAX`) and the dense arrays take less, the dense product is used.
    """
    budget = PAIR_BYTES_MAX if budget is None else budget
    fast = "sparse" if 30.0 * npairs * k1 < float(qr) * qr * l1 * k1 else "dense"
    if fast == "sparse" and pair_bytes(npairs, k1) > budget and dense_bytes(qr, l1, k1) < pair_bytes(npairs, k1):
        return "dense"
    return fast


class Schema(NamedTuple):
    """What the statistics of a design look like, without its rows' values: the engine's
    sizes (``layout``) and the sparse index of A21 and of B Bᵀ's pair list.

    It is made from the grouping structure alone — each factor's levels and which
    (Z_r row, block-1 level) pairs occur — never from X, y, Z's values or the weights,
    so it is known before any rows are summed. Every :class:`Stats` accumulated against
    one schema has the same shapes and index arrays, so statistics of any partition of
    the rows merge (:func:`merge_stats`) into those of the whole.

    ``keys`` (sorted) names the A21 rows: key = a·l₁ + g for Z_r row a and block-1
    level g; ``index`` holds (pair_a, pair_g, bb_e1, bb_e2, bb_t) as host arrays.
    """

    layout: Layout
    keys: np.ndarray
    index: tuple


class _PassInputs(NamedTuple):
    """The host side of the pass over some rows: the row arrays (unpadded) and the sizes."""

    W: np.ndarray  # (n, p+1): X and y − Xβ₀ (weighted rows: :class:`WeightedRows`)
    g1: np.ndarray  # (n,) block-1 codes
    Z1: np.ndarray  # (n, k₁)
    P: np.ndarray  # (n, m_r) positions in Z_r
    V: np.ndarray  # (n, m_r) values there
    E: np.ndarray  # (n, m_r) entries of A21
    beta0: np.ndarray
    chunk: int  # rows per chunk
    l1: int
    qr: int
    nnz: int
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
    if y.size and np.abs(resid).max() > 1e-10 * np.abs(y).max():
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


def _sizes(design: Design) -> tuple[int, tuple[tuple[int, int, int], ...], int]:
    """(l₁, rest, q_r): block 1's padded level count, (offset, padded levels, k) of each other block, Z_r's rows."""
    l1 = bucket(design.blocks[0].nlev, LINEAR_STEPS)
    rest, off = [], 0
    for blk in design.blocks[1:]:
        lp = bucket(blk.nlev)
        rest.append((off, lp, blk.k))
        off += lp * blk.k
    return l1, tuple(rest), off


def _rest_index(design: Design, rest: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """Per row, the rows of Z_r it touches (n, m_r), from the grouping codes alone."""
    P = [off + blk.codes[:, None] * k + np.arange(k)[None, :] for (off, _, k), blk in zip(rest, design.blocks[1:])]
    return np.concatenate(P, axis=1).astype(np.int32)


def _rest_positions(design: Design, rest: tuple[tuple[int, int, int], ...], Z: tuple | None = None):
    """Per row, the scalar rows of Z_r it touches (n, m_r) and the values there (``Z``: the
    blocks' matrices to use, default the design's)."""
    Z = tuple(blk.Z for blk in design.blocks) if Z is None else Z
    return _rest_index(design, rest), np.concatenate(Z[1:], axis=1)


def _make_schema(design: Design, bbt: str | None) -> tuple[Schema, np.ndarray, np.ndarray]:
    """The :class:`Schema` of ``design``, with its rows' Z_r positions P and A21 entries E
    (by-products that spare the pass over all rows a lookup)."""
    l1, rest, qr = _sizes(design)
    b1 = design.blocks[0]
    k1 = b1.k
    if qr:
        P = _rest_index(design, rest)
        uniq, E = np.unique(P.astype(np.int64) * l1 + b1.codes[:, None], return_inverse=True)
        E = E.reshape(P.shape).astype(np.int32)
        nnz_true = len(uniq)
        nnz = bucket(nnz_true + 1, LINEAR_STEPS)  # at least one all-zero padding entry
        pair_a = np.zeros(nnz, np.int32)
        pair_g = np.zeros(nnz, np.int32)
        pair_a[:nnz_true] = uniq // l1
        pair_g[:nnz_true] = uniq % l1
        npairs_true = _pair_count(pair_g[:nnz_true])
        if bbt is None:
            bbt = "nested" if _nested(pair_a[:nnz_true], pair_g[:nnz_true], rest) else choose_bbt(npairs_true, qr, l1, k1)
        if bbt == "sparse":
            npairs = bucket(npairs_true, LINEAR_STEPS)
            bb_e1, bb_e2, bb_t = _pair_products(pair_a[:nnz_true], pair_g[:nnz_true], qr, size=npairs, pad=nnz - 1)
        else:
            npairs = 0
            bb_e1 = bb_e2 = bb_t = np.zeros(0, np.int32)
    else:
        n = design.n
        P, E = np.zeros((n, 0), np.int32), np.zeros((n, 0), np.int32)
        uniq = np.zeros(0, np.int64)
        nnz = npairs = 0
        bbt = "none"
        pair_a = pair_g = bb_e1 = bb_e2 = bb_t = np.zeros(0, np.int32)
    templates, structured = theta_layout(design)
    layout = Layout(
        p=design.X.shape[1], k1=k1, l1=l1, rest=rest, qr=qr, nnz=nnz, npairs=npairs, bbt=bbt,
        templates=templates, ntheta=sum(len(t[2]) for t in templates) + sum(s[2].nparams for s in structured),
        structured=structured,
    )
    return Schema(layout, uniq, (pair_a, pair_g, bb_e1, bb_e2, bb_t)), P, E


def make_schema(design: Design, bbt: str | None = None) -> Schema:
    """The :class:`Schema` of ``design``'s statistics (``bbt``: force "sparse" or "dense" B Bᵀ)."""
    return _make_schema(design, bbt)[0]


def _entries(schema: Schema, design: Design, rows: np.ndarray, P: np.ndarray) -> np.ndarray:
    """The A21 entry of each (row, Z_r position) of ``rows``: its key's place in ``schema.keys``."""
    keys = P.astype(np.int64) * schema.layout.l1 + design.blocks[0].codes[rows, None]
    E = np.searchsorted(schema.keys, keys)
    found = E < len(schema.keys)
    if not np.all(found) or not np.array_equal(schema.keys[np.where(found, E, 0)], keys):
        raise DataError("these rows pair a level of one grouping factor with a level of another that the schema "
                        "does not have: make the schema from a design holding every row (make_schema)")
    return E.astype(np.int32)


def _pass_inputs(design: Design, chunk_rows: int, response: bool = True, schema: Schema | None = None,
                 rows: np.ndarray | None = None, width=None) -> tuple[Schema, _PassInputs]:
    """(schema, the pass's inputs) for ``rows`` of ``design`` (positions; None: all rows).
    ``width(layout)``: X padded with zero columns to that many (before y, as :func:`widen`
    puts them; β₀ with zeros), for :func:`one_chunk`.

    Without a ``schema`` it is made from the design (with the rows' A21 entries as a
    by-product). Each set of rows is centred on its own least-squares fit (y − Xβ₀ with
    β₀ of these rows: see the module docstring); :func:`merge_stats` re-centres when it
    adds statistics. ``response``: refuse a response with nothing to explain.
    """
    if schema is None:
        schema, P, E = _make_schema(design, None)
        if rows is not None:
            P, E = P[rows], E[rows]
    else:
        P = _rest_index(design, schema.layout.rest) if schema.layout.qr else np.zeros((design.n, 0), np.int32)
        P = P if rows is None else P[rows]
        E = _entries(schema, design, np.arange(design.n) if rows is None else rows, P) if schema.layout.qr else P
    lay = schema.layout
    take = (lambda a: a) if rows is None else (lambda a: a[rows])
    w = weighted_rows(design)
    X, y, Z = take(w.X), take(w.y), tuple(take(z) for z in w.Z)
    V = np.concatenate(Z[1:], axis=1) if lay.qr else np.zeros((len(y), 0))
    beta0 = np.linalg.lstsq(X, y, rcond=None)[0] if lay.p and len(y) else np.zeros(lay.p)
    resid = y - X @ beta0
    if response:
        _check_response_varies(design, resid)
    n_info, ldw = weights_constant(None if design.weights is None else take(design.weights), len(y))
    chunk = min(chunk_rows, max(256, 1 << (max(len(y), 1) - 1).bit_length()))
    # Each chunk forms every row's outer products (c × (m_r² + m_r·k₁) numbers when block 1 has
    # one level: _accumulate): a block of many columns (a relationship matrix's, one column per
    # level: jaxmlm._relmat) gets fewer rows per chunk, so that the chunk's products stay under
    # PASS_ELEMENTS_MAX. Ordinary layouts keep their chunks (and their benchmarked programs).
    k1, mr = Z[0].shape[1], P.shape[1]
    while lay.l1 == 1 and chunk > 1 and chunk * (mr * mr + mr * k1) > PASS_ELEMENTS_MAX:
        chunk //= 2
    pw = lay.p if width is None else width(lay)
    W = np.zeros((len(y), pw + 1))
    W[:, : lay.p], W[:, pw] = X, resid
    beta0 = np.concatenate([beta0, np.zeros(pw - lay.p)]) if pw > lay.p else beta0
    inp = _PassInputs(W, take(design.blocks[0].codes).astype(np.int32), Z[0], P, V, E,
                      beta0, chunk, lay.l1, lay.qr, lay.nnz, n_info, ldw)
    return schema, inp


def _chunks(inp: _PassInputs):
    """The pass's chunks, each padded to ``inp.chunk`` rows: (W, g1, Z1, P, V, E)."""
    n, c = len(inp.W), inp.chunk
    for start in range(0, n, c):
        stop = min(start + c, n)
        yield tuple(_pad(a[start:stop], c) for a in (inp.W, inp.g1, inp.Z1, inp.P, inp.V, inp.E))


def _host_stats(schema: Schema, inp: _PassInputs) -> tuple:
    """The statistics that are not sums over chunks, in :class:`Stats` order: n, then (pair lists, β₀, ldw, p)
    (p the design's, whatever padding β₀ carries: :func:`one_chunk`)."""
    return (np.asarray(inp.n_info), *schema.index, inp.beta0, np.asarray(inp.ldw), np.asarray(float(schema.layout.p)))


def accumulate(schema: Schema, design: Design, rows=None, chunk_rows: int = CHUNK_ROWS) -> Stats:
    """The statistics of ``rows`` of ``design`` (positions; None: all rows), in ``schema``'s shapes.

    The pass over the rows, for any subset: statistics of the parts of a partition of the
    rows, combined by :func:`merge_stats`, are those of all rows. Levels a subset lacks
    are empty (zero) blocks, as padded levels are.
    """
    if rows is not None:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or rows.dtype.kind not in "iu" or (rows.size and (rows.min() < 0 or rows.max() >= design.n)):
            raise DataError(f"rows must be positions 0 … {design.n - 1} of the design's rows (or a boolean mask)")
    _, inp = _pass_inputs(design, chunk_rows, response=False, schema=schema, rows=rows)
    return _run_pass(schema, inp)


def _run_pass(schema: Schema, inp: _PassInputs) -> Stats:
    lay = schema.layout
    if len(inp.W) == 0:
        acc = _accumulate(None, *(_pad(a, 1) for a in (inp.W, inp.g1, inp.Z1, inp.P, inp.V, inp.E)),
                          l1=lay.l1, qr=lay.qr, nnz=lay.nnz, kr=a22_blocks(lay))
    else:
        acc = None  # the first chunk starts the accumulators inside the compiled kernel
        for chunk in _chunks(inp):
            acc = _chunk_stats(acc, *chunk, l1=lay.l1, qr=lay.qr, nnz=lay.nnz, kr=a22_blocks(lay))
    index = _to_device(_host_stats(schema, inp))
    return Stats(index[0], *acc, *index[1:])


def sufficient_stats(design: Design, chunk_rows: int = CHUNK_ROWS, bbt: str | None = None,
                     response: bool = True) -> tuple[Layout, Stats, dict]:
    """One pass over the rows of ``design`` → (layout, statistics, host-side index arrays).

    ``bbt`` ("sparse" or "dense") overrides the cost-based choice of how B Bᵀ is formed
    (for tests of both code paths). ``response=False``: the design's y is a placeholder
    (a design to simulate from), not checked for having anything to explain.
    """
    schema, inp = _pass_inputs(design, chunk_rows, response) if bbt is None else \
        _pass_inputs(design, chunk_rows, response, schema=make_schema(design, bbt))
    return schema.layout, _run_pass(schema, inp), {"P": inp.P, "V": inp.V}


def merge_stats(a: Stats, b: Stats) -> Stats:
    """The statistics of the rows of ``a`` and of ``b`` together (both made against one :class:`Schema`).

    Cross-products add, except those with the response column, which each part holds
    centred on its own least-squares fit: rᵢ = y − Xβᵢ. Both are re-centred on the
    fit of all rows, β = (XᵀX)⁺ Σᵢ (XᵀXᵢ βᵢ + Xᵀrᵢ), before adding: with
    dᵢ = βᵢ − β, r = rᵢ + X dᵢ, so Zᵀr = Zᵀrᵢ + ZᵀX dᵢ, Xᵀr = Xᵀrᵢ + XᵀXᵢ dᵢ and
    rᵀr = rᵢᵀrᵢ + 2 dᵢᵀXᵀrᵢ + dᵢᵀXᵀXᵢ dᵢ. The dᵢ are differences between fits of
    parts of one data set, small next to y, so this keeps the precision the centring
    is for. The index arrays (pair lists) come from the schema and must be equal.
    Pure JAX: a traced reduction for partitions on devices or a cluster.
    """
    p = a.WW.shape[0] - 1
    XX = a.WW[:p, :p] + b.WW[:p, :p]
    if p:
        # β relative to a's: δ = β − β_a solves XᵀX δ = XᵀX_b (β_b − β_a) + Xᵀr_a + Xᵀr_b. The
        # pseudo-inverse: the rows of two small parts may not determine β (any solution will do).
        rhs = b.WW[:p, :p] @ (b.beta0 - a.beta0) + a.WW[:p, p] + b.WW[:p, p]
        delta = jnp.linalg.pinv(XX, hermitian=True) @ rhs
        beta = a.beta0 + delta
    else:
        delta, beta = a.beta0, a.beta0

    def recentre(s: Stats, d):
        xr = s.WW[:p, p] + s.WW[:p, :p] @ d
        rr = s.WW[p, p] + 2.0 * d @ s.WW[:p, p] + d @ s.WW[:p, :p] @ d
        # (jnp.asarray: a model's statistics may be host arrays, narrow's)
        WW = jnp.asarray(s.WW).at[:p, p].set(xr).at[p, :p].set(xr).at[p, p].set(rr)
        Z1W = jnp.asarray(s.Z1W).at[..., p].add(s.Z1W[..., :p] @ d)
        ZrW = jnp.asarray(s.ZrW).at[:, p].add(s.ZrW[:, :p] @ d)
        return WW, Z1W, ZrW

    WWa, Z1Wa, ZrWa = recentre(a, -delta) if p else (a.WW, a.Z1W, a.ZrW)
    WWb, Z1Wb, ZrWb = recentre(b, (b.beta0 - a.beta0) - delta) if p else (b.WW, b.Z1W, b.ZrW)
    return a._replace(
        n=a.n + b.n, ldw=a.ldw + b.ldw, beta0=beta,
        A11=a.A11 + b.A11, Z1W=Z1Wa + Z1Wb, WW=WWa + WWb, A22=a.A22 + b.A22, ZrW=ZrWa + ZrWb, A21=a.A21 + b.A21,
    )


class OneChunk(NamedTuple):
    """Data that fit in one chunk, ready for a program that runs the pass itself
    (:func:`stats_from_chunk`): one program for the pass and what follows it, and its
    inputs in two arrays, ``floats`` and ``ints`` (each input flattened, in ``spec``'s order).

    For small data every program launched and every host array passed costs more than
    the arithmetic (sleepstudy, 2 cores: a program of its own for the pass ~70 µs, each
    host argument ~3 µs, of a ~0.7 ms fit).

    Above the smallest chunk, and for a nested design (whose fit costs ~1 ms or more), X
    comes padded with zero columns to :func:`fixed_width` (as
    :func:`widen` pads the statistics; :func:`stats_from_chunk` adds their unit diagonal), so
    that models that differ only in their fixed effects share the program (the classroom
    models of a course session: one program, not one per set of covariates): ``layout`` is
    the data's, ``wide`` the program's, and :func:`narrow` takes the program's statistics
    back to ``layout``. Other data in the smallest chunk keep X's width: padding and
    narrowing cost ~55 µs, 7 % of a sleepstudy fit."""

    layout: Layout
    wide: Layout
    floats: np.ndarray  # float64
    ints: np.ndarray
    spec: tuple  # static: (dtype, shape) of (W, g1, Z1, P, V, E) padded, then n, pair lists, β₀


#: Data of at most this many rows are fitted by one program (:class:`OneChunk`), their
#: chunk padded to the smallest of :data:`ONE_PROGRAM_CHUNKS` that holds them: one program
#: per layout and chunk, whatever the number of rows. (Padded to the usual power-of-two
#: chunk instead, every other data size would compile the whole fit again: ~2 s for
#: sleepstudy's model, against ~0.1 s for the pass alone.)
ONE_PROGRAM_ROWS = 2048

#: The chunk sizes of one-program fits: sleepstudy-sized data keep a pass over 256 rows; up
#: to 2,048 rows (the classroom data's 1,190) the pass, the optimizer and the solve are one
#: program instead of a pass, a widening and a fit program, and a nested design's moment
#: start a fourth (issue 12: the classroom fit 3.1 → 1.8 ms). A third chunk of 8,192 rows
#: (Hsb82's 7,185) compiled at full optimization (its arguments are over
#: SMALL_PROGRAM_BYTES) and took a course session's Hsb82 step from 2.4 to 4.2 s.
ONE_PROGRAM_CHUNKS = (256, ONE_PROGRAM_ROWS)


def one_chunk(design: Design, rows: int | None = None) -> OneChunk | None:
    """The inputs of :func:`stats_from_chunk`, in a chunk of ``rows`` rows (default: the
    smallest of :data:`ONE_PROGRAM_CHUNKS` that holds the data), if the data fit in it,
    else None."""
    if rows is None:
        rows = next((size for size in ONE_PROGRAM_CHUNKS if design.n <= size), 0)
    if design.n > rows:
        return None

    def width(layout: Layout) -> int:  # X's width in the program (OneChunk)
        return fixed_width(layout.p) if rows > ONE_PROGRAM_CHUNKS[0] or is_nested(layout) else layout.p

    schema, inp = _pass_inputs(design, rows, width=width)
    if inp.chunk < design.n:  # rows whose products PASS_ELEMENTS_MAX splits: the pass in chunks
        return None
    layout = schema.layout
    pw = inp.W.shape[1] - 1
    inp = inp._replace(chunk=rows)
    arrays = (*next(_chunks(inp)), *_host_stats(schema, inp))
    floats = np.concatenate([a.ravel() for a in arrays if a.dtype.kind == "f"])
    ints = np.concatenate([a.ravel() for a in arrays if a.dtype.kind != "f"])
    return OneChunk(layout, layout._replace(p=pw), floats, ints, tuple((a.dtype.str, a.shape) for a in arrays))


def _unpacked(floats, ints, spec: tuple) -> list:
    """:class:`OneChunk`'s inputs taken apart, in ``spec``'s order: (W, g1, Z1, P, V, E) padded,
    then n, pair lists, β₀, ldw, p (reshaped slices: views for numpy arrays; traceable)."""
    arrays, at = [], {"f": 0, "i": 0}
    for dt, shape in spec:
        kind = "f" if np.dtype(dt).kind == "f" else "i"
        src, size = (floats if kind == "f" else ints), math.prod(shape)
        arrays.append(src[at[kind] : at[kind] + size].reshape(shape))
        at[kind] += size
    return arrays


def zeroed_chunk(one: OneChunk, columns) -> OneChunk:
    """``one`` with the Z columns ``columns`` ((block, column) pairs) set to 0 in its rows: the
    pass over them makes the statistics of the model without those columns (sums of zeros),
    as ``jaxmlm._compare.zero_columns`` makes them from the statistics."""
    floats = one.floats.copy()
    _, _, Z1, _, V, *_ = _unpacked(floats, one.ints, one.spec)  # views into the copy
    for b, c in columns:
        if b == 0:
            Z1[:, c] = 0.0
        else:  # V holds the other blocks' columns side by side, in the layout's order
            V[:, sum(k for _, _, k in one.layout.rest[: b - 1]) + c] = 0.0
    return one._replace(floats=floats)


def stats_from_chunk(floats, ints, spec: tuple, layout: Layout) -> Stats:
    """The statistics of :class:`OneChunk`'s inputs (traceable: inside a caller's program)."""
    arrays = [a.astype(dt) for a, (dt, _) in zip(_unpacked(floats, ints, spec), spec)]
    acc = _accumulate(None, *arrays[:6], l1=layout.l1, qr=layout.qr, nnz=layout.nnz, kr=a22_blocks(layout))
    stats = Stats(arrays[6], *acc, *arrays[7:])
    # X's padding columns (one_chunk), after its p columns: a unit diagonal in WᵀW, as widen gives them
    j = jnp.arange(stats.WW.shape[0])
    unit = (j >= stats.p) & (j < stats.WW.shape[0] - 1)
    return stats._replace(WW=stats.WW + jnp.diag(unit.astype(stats.WW.dtype)))


class ResponseOps(NamedTuple):
    """Design arrays the y-dependent statistics need, in the weighted rows of
    :func:`weighted_rows`: X (n, p), X⁺ (p, n), block-1 codes g1 (n,) and
    values Z1 (n, k₁), the rest blocks' positions P and values V (n, m_r); and how a
    response becomes a weighted one, y* = √w (y − offset): sw = √w (n,), offset (n,)."""

    X: jax.Array
    Xpinv: jax.Array
    g1: jax.Array
    Z1: jax.Array
    P: jax.Array
    V: jax.Array
    sw: jax.Array
    offset: jax.Array


def response_ops(design: Design, layout: Layout) -> ResponseOps:
    """The design arrays :func:`response_stats` needs (see :class:`ResponseOps`), on the device."""
    rows = weighted_rows(design)
    X = np.asarray(rows.X, float)
    if layout.qr:
        P, V = _rest_positions(design, layout.rest, rows.Z)
    else:
        P, V = np.zeros((design.n, 0), np.int32), np.zeros((design.n, 0))
    b1 = design.blocks[0]
    Xpinv = np.linalg.pinv(X) if X.shape[1] else np.zeros((0, design.n))
    sw = np.ones(design.n) if rows.sw is None else rows.sw
    offset = np.zeros(design.n) if design.offset is None else design.offset
    return ResponseOps(jnp.asarray(X), jnp.asarray(Xpinv), jnp.asarray(b1.codes.astype(np.int32)),
                       jnp.asarray(np.asarray(rows.Z[0], float)), jnp.asarray(P), jnp.asarray(np.asarray(V, float)),
                       jnp.asarray(sw), jnp.asarray(offset, float))


def response_stats(Y: jax.Array, ops: ResponseOps, layout: Layout):
    """The y-dependent sufficient statistics of every row of Y (c, n), as batched products.

    β₀ = X⁺y (any β₀ leaves θ̂, r² and σ̂ unchanged; subtracting a good one keeps
    the cross-products from cancelling, as in the pass), y' = y − Xβ₀,
    then Xᵀy' (c, p), y'ᵀy' (c,), Z₁ᵀy' per level (c, l₁, k₁), Z_rᵀy' (c, q_r), and
    whether y' is flat (c,): max|y'| ≤ 1e-10·max|y|, lmer's test for a response with nothing
    left after its fit on X (``_check_response_varies``; lmer refuses it).
    """
    # Rows of weight 0 carry nothing (a simulated one is NaN: its variance is infinite).
    Y = jnp.where(ops.sw > 0, (Y - ops.offset) * ops.sw, 0.0)
    beta0 = Y @ ops.Xpinv.T
    Yc = Y - beta0 @ ops.X.T
    xy = Yc @ ops.X
    yy = jnp.sum(Yc * Yc, axis=1)
    # segment_sum reduces the leading axis: rows first, (n, k₁, c) → (l₁, k₁, c).
    zy1 = jax.ops.segment_sum(ops.Z1[:, :, None] * Yc.T[:, None, :], ops.g1, layout.l1)
    zy1 = jnp.transpose(zy1, (2, 0, 1))
    if layout.qr:
        vals = (ops.V[:, :, None] * Yc.T[:, None, :]).reshape(-1, Y.shape[0])
        zry = jax.ops.segment_sum(vals, ops.P.reshape(-1), layout.qr).T
    else:
        zry = jnp.zeros((Y.shape[0], 0))
    flat = jnp.max(jnp.abs(Yc), axis=1) <= 1e-10 * jnp.max(jnp.abs(Y), axis=1)
    return zy1, xy, yy, zry, beta0, flat


def with_response(base: Stats, zy1, xy, yy, zry, beta0, p: int) -> Stats:
    """``base`` with the y-column of W = [X y'] replaced by one replicate's statistics."""
    Z1W, WW, ZrW = (jnp.asarray(a) for a in (base.Z1W, base.WW, base.ZrW))  # host arrays too (narrow's)
    WW = WW.at[:p, p].set(xy).at[p, :p].set(xy).at[p, p].set(yy)
    return base._replace(Z1W=Z1W.at[..., p].set(zy1), WW=WW, ZrW=ZrW.at[:, p].set(zry), beta0=beta0)


def fixed_width(p: int) -> int:
    """The fixed-effects width p_w ≥ p of the fit's programs for p columns of X: W's p + 1
    columns padded to a power of two, at least 4 (p_w = 3, 7 or 15), up to 16 columns;
    wider designs keep p. Models that differ only in their fixed effects — a covariate
    added, a term dropped, the null model — then share one compiled program (a course
    session's Hsb82, nlschools and classroom models: 8 fit programs → 4)."""
    if p + 1 > 16:
        return p
    return max(4, 1 << p.bit_length()) - 1


def widen(stats: Stats, layout: Layout) -> tuple[Stats, Layout]:
    """``stats`` and ``layout`` with zero columns added to X (after its p columns, before y)
    up to :func:`fixed_width`, each with a unit diagonal in WᵀW.

    A padding column is orthogonal to every column of Z, X and y, so the factor of the
    padded system is that of the real one with a unit diagonal added to R_X: log|R_X|²,
    r², θ̂, σ̂ and b̂ are unchanged, the padding β̂ are 0, and the real columns' β̂ and
    vcov(β̂) are the leading p entries. The count p in the criterion's n − REML·p is
    ``stats.p``, which stays p. Only statistics of at most
    :data:`~jaxmlm._compiled.SMALL_PROGRAM_BYTES` are widened: their programs are cheap to
    run and costly to compile; larger ones keep their width (and their run time). A small
    program of its own, so that a fit's statistics need not wait on the host for the pass
    that makes them (read on the host, a warm Hsb82 fit took 0.6 ms longer); statistics on
    the host already (:func:`narrow`'s) are widened there."""
    p, pw = layout.p, fixed_width(layout.p)
    if pw == p or _compiled.nbytes_of((a.shape, a.dtype) for a in stats) > _compiled.SMALL_PROGRAM_BYTES:
        return stats, layout
    arrays = (stats.Z1W, stats.WW, stats.ZrW, stats.beta0)
    if all(isinstance(a, np.ndarray) for a in arrays):  # on the host already (narrow's): no program
        Z1W, WW, ZrW, beta0 = _padded(np, *arrays, pw=pw)
    elif any(isinstance(a, jax.ShapeDtypeStruct) for a in arrays):  # shapes only (stats_shapes')
        Z1W, WW, ZrW, beta0 = jax.eval_shape(partial(_padded, jnp, pw=pw), *arrays)
    else:
        Z1W, WW, ZrW, beta0 = _widen_arrays(*arrays, pw=pw)
    return stats._replace(Z1W=Z1W, WW=WW, ZrW=ZrW, beta0=beta0), layout._replace(p=pw)


def narrow(stats: Stats, layout: Layout) -> Stats:
    """:func:`widen` undone: statistics with X's ``layout.p`` columns, as host arrays, from
    statistics whose X carries padding columns after them (a :class:`OneChunk` program's)."""
    pw = stats.WW.shape[0] - 1
    if pw == layout.p:
        return stats
    # (np.asarray: jax.device_get costs ~10x more for these small arrays)
    out = _narrowed(np, *(np.asarray(a) for a in (stats.Z1W, stats.WW, stats.ZrW, stats.beta0)), p=layout.p)
    for a in out:
        a.flags.writeable = False  # read-only, as the device arrays beside them
    return stats._replace(Z1W=out[0], WW=out[1], ZrW=out[2], beta0=out[3])


def _narrowed(xp, Z1W, WW, ZrW, beta0, p: int):
    """:func:`narrow`'s arrays, with ``xp`` numpy (host arrays) or jax.numpy (traced)."""
    pw = WW.shape[0] - 1

    def cols(a):  # (..., p_w + 1) → (..., p + 1): X's columns and y's
        return xp.concatenate([a[..., :p], a[..., pw:]], axis=-1)

    return cols(Z1W), cols(cols(WW).T), cols(ZrW), beta0[:p].copy()


def stats_shapes(one: OneChunk, layout: Layout) -> Stats:
    """The shapes and dtypes (``jax.ShapeDtypeStruct``) of the statistics that ``lmer`` keeps
    for a model fitted by one program (:func:`stats_from_chunk` on ``one``, then
    :func:`narrow`), found by tracing the pass, without running it."""

    def kept(floats, ints):
        stats = stats_from_chunk(floats, ints, one.spec, one.wide)
        if one.wide.p == layout.p:
            return stats
        Z1W, WW, ZrW, beta0 = _narrowed(jnp, stats.Z1W, stats.WW, stats.ZrW, stats.beta0, p=layout.p)
        return stats._replace(Z1W=Z1W, WW=WW, ZrW=ZrW, beta0=beta0)

    return jax.eval_shape(kept, one.floats, one.ints)


def _padded(xp, Z1W, WW, ZrW, beta0, pw: int):
    """:func:`widen`'s arrays, with ``xp`` numpy (host arrays) or jax.numpy (in a program)."""
    p = WW.shape[0] - 1

    def cols(a):  # (..., p + 1) → (..., p_w + 1): X's columns, zeros, y's column
        pad = xp.zeros((*a.shape[:-1], pw - p), a.dtype)
        return xp.concatenate([a[..., :p], pad, a[..., p:]], axis=-1)

    j = xp.arange(pw + 1)
    unit = ((j >= p) & (j < pw)).astype(WW.dtype)
    WW = cols(cols(WW).T) + xp.diag(unit)  # WᵀW is symmetric: widen its columns, then its rows
    return cols(Z1W), WW, cols(ZrW), xp.concatenate([beta0, xp.zeros(pw - p, beta0.dtype)])


@partial(_compiled.jit, static_argnames="pw")
def _widen_arrays(Z1W, WW, ZrW, beta0, pw: int):
    return _padded(jnp, Z1W, WW, ZrW, beta0, pw)


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


def is_nested(layout: Layout) -> bool:
    """Whether block 1's factor is nested in the only rest factor (:func:`_nested`): B Bᵀ, A22
    and the factor of the rest block are block diagonal per level of it."""
    return layout.bbt == "nested"


def a22_blocks(layout: Layout) -> int:
    """k_r when A22 is kept as its diagonal blocks (l_r, k_r, k_r) — a nested layout, whose
    A22 is block diagonal like everything of the rest factor — else 0 (dense q_r × q_r)."""
    return layout.rest[0][2] if is_nested(layout) else 0


def a22_diagonal(A22: jax.Array, xp=jnp) -> jax.Array:
    """The diagonal (q_r,) of A22, kept dense or as diagonal blocks (``xp``: jax.numpy, or numpy on the host)."""
    A22 = A22 if xp is jnp else np.asarray(A22)
    return xp.diagonal(A22) if A22.ndim == 2 else xp.diagonal(A22, axis1=1, axis2=2).reshape(-1)


def a22_dense(A22: jax.Array) -> jax.Array:
    """A22 as the dense q_r × q_r matrix (block diagonal, if kept as blocks)."""
    if A22.ndim == 2:
        return A22
    lr, kr, _ = A22.shape
    return jnp.einsum("ab,aij->aibj", jnp.eye(lr, dtype=A22.dtype), A22).reshape(lr * kr, lr * kr)


def _accumulate(acc, W, g1, Z1, P, V, E, *, l1: int, qr: int, nnz: int, kr: int = 0):
    """Add one chunk's cross-products to the accumulators (None: start them). Shapes:
    W (c, p+1), g1 (c,), Z1 (c, k₁), P/V/E (c, m_r). ``kr`` (:func:`a22_blocks`): A22 as
    diagonal blocks of k_r × k_r (a row's m_r = k_r positions are those of one level)."""
    if acc is None:
        acc = (
            jnp.zeros((l1, Z1.shape[1], Z1.shape[1]), W.dtype),
            jnp.zeros((l1, Z1.shape[1], W.shape[1]), W.dtype),
            jnp.zeros((W.shape[1], W.shape[1]), W.dtype),
            jnp.zeros((qr // kr, kr, kr) if kr else (qr, qr), W.dtype),
            jnp.zeros((qr, W.shape[1]), W.dtype),
            jnp.zeros((nnz, Z1.shape[1]), W.dtype),
        )
    A11, Z1W, WW, A22, ZrW, A21 = acc
    seg = jax.ops.segment_sum
    if l1 == 1:  # one level (a relationship matrix's block: many columns): products, no c × k₁² array
        A11 = A11 + (Z1.T @ Z1)[None]
        Z1W = Z1W + (Z1.T @ W)[None]
    else:
        A11 = A11 + seg(Z1[:, :, None] * Z1[:, None, :], g1, l1)
        Z1W = Z1W + seg(Z1[:, :, None] * W[:, None, :], g1, l1)
    WW = WW + W.T @ W
    if qr:
        VV = (V[:, :, None] * V[:, None, :]).reshape(-1)
        if kr:
            j = P % kr
            flat = (P[:, :1, None] // kr * (kr * kr) + j[:, :, None] * kr + j[:, None, :]).reshape(-1)
            A22 = A22 + seg(VV, flat, qr * kr).reshape(A22.shape)
        else:
            flat = (P[:, :, None] * qr + P[:, None, :]).reshape(-1)
            A22 = A22 + seg(VV, flat, qr * qr).reshape(qr, qr)
        ZrW = ZrW + seg((V[:, :, None] * W[:, None, :]).reshape(-1, W.shape[1]), P.reshape(-1), qr)
        A21 = A21 + seg((V[:, :, None] * Z1[:, None, :]).reshape(-1, Z1.shape[1]), E.reshape(-1), nnz)
    return A11, Z1W, WW, A22, ZrW, A21


_chunk_stats = partial(_compiled.jit, static_argnames=("l1", "qr", "nnz", "kr"), donate_argnums=(0,))(_accumulate)

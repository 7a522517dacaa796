"""The criterion and the fit of a linear model with a residual structure (:mod:`jaxmlm.residuals`).

With R = D C D (block diagonal over the structure's groups, D the variance function's SD
ratios) the model for the whitened rows [Z X y]* = L⁻¹ D⁻¹ [Z X y], R's Cholesky factor
per group L, has iid errors. So the criterion is the engine's profiled criterion of the
whitened rows' statistics plus log|R|:

    d(θ, ρ) = d_engine(θ; stats([Z X y]*(ρ))) + log|R(ρ)|,

log|R| entering as the prior weights' constant does (``Stats.ldw`` = −log|R|; lme4's
weighted criterion has −Σ log wᵢ, Bates et al. 2015 §3.6). Without random effects (gls) the
same whitened rows give generalized least squares with σ and β profiled out:

    ML:   n (1 + log(2π r²/n)) + log|R|
    REML: (n − p)(1 + log(2π r²/(n − p))) + log|X*ᵀX*| + log|R|,   r² = ‖y* − X*β̂‖²

(Pinheiro & Bates 2000, §5.1.1; nlme's ``gls`` — its REML constant is lme4's, which the
reference cases confirm).

Whitening mixes the rows of a group. A random-effects factor that is constant within each
group keeps one level per whitened row; a factor that varies within groups (items crossed
with subjects, the residual group a subject) gets, in each whitened row, the columns of
every row of its group (row r of Z_g* = Σ_s (L⁻¹)_{rs} Z_s; any W with WᵀW = C⁻¹ serves as
L⁻¹ for the statistics, and compound symmetry takes its symmetric root): its values, positions and A21
entries are widened to m per column. That needs block 1 — the factor with the most levels,
whose Gram block is kept diagonal — to be constant within groups, and the rest blocks dense.

The fit is modified Newton (:func:`~jaxmlm._optimize._newton`) over x = (θ / c, ρ_u) with
the Hessian by autodiff through the whitening and the statistics, in one compiled program.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _compiled, _x64  # noqa: F401  (float64 before any array exists)
from ._implicit import RowData
from ._objective import _deviance
from ._fit import snap
from ._optimize import NEAR, OptState, _diagonals, _fgh_ad, _newton, canonical_theta_jax, diagonal_mask, theta_scale
from ._solution import Solution, solve
from ._stats import Layout, Stats, _accumulate, a22_blocks
from .residuals import _phi_power, correlation_whiten, log_sd_ratio

__all__ = ["Spec", "Arrangement", "Basis", "arrange", "make_basis", "whiten_rows", "whitened_stats", "criterion",
           "gls_criterion", "fit_program", "fit_and_solve", "pack_inputs", "unpack_inputs", "unpack", "Fitted", "split", "refit_batch", "scale_at"]


class Spec(NamedTuple):
    """The static description of a residual structure (hashable: a jit static argument).
    ``cor``/``var``: the structure objects (None without one); ``m``: rows of the largest group;
    ``ncor``/``nvar``: parameter counts; ``vary``: the rest columns (of Z_r's per-row values)
    whose factor varies within groups; ``nstrata``: the variance function's strata."""

    cor: object
    var: object
    m: int
    ncor: int
    nvar: int
    vary: tuple[int, ...]
    nstrata: int


class Arrangement(NamedTuple):
    """The rows in groups (arrays; a pytree): ``idx`` (G, m) row numbers (n: padding, a zero
    row), ``mask`` (G, m) 1 for a row, ``time`` (G, m) and ``coords`` (G, m, d) for the
    correlation, ``x`` (n,) and ``strata`` (n,) for the variance function, ``beta0`` (p,) the
    centring of y (:func:`whitened_stats`)."""

    idx: jax.Array
    mask: jax.Array
    time: jax.Array
    coords: jax.Array
    x: jax.Array
    strata: jax.Array
    beta0: jax.Array
    basis: object = None


class Basis(NamedTuple):
    """The n-free form of AR(1)/CAR(1), compound symmetry and ``varIdent`` (and ``varFixed``,
    prior weights): the whitened rows' statistics are Σ_j w_j(φ, δ) S_j over statistics S_j of
    row classes (:func:`make_basis` sorts the rows into classes; :func:`with_response` sums them,
    once per fit). ``stats``: the S_j stacked on a leading axis (value leaves only);
    per class ``part`` (0 a group's first rows, 1 rows r, 2 rows r − 1, 3 their sums), ``gap`` (index
    into ``gaps``, the distinct time steps), ``s``/``s2`` the strata of rows r and r − 1; the counts
    of rows per gap and per stratum and the constant part of log|R| give log|R|. ``scale`` (the
    rows' pre-scaling), ``cur``/``prev`` (row numbers of rows r and r − 1) and ``masks`` (class
    membership) remake ``stats`` for another response (:func:`with_response`).

    Compound symmetry has no rows r − 1: ``prev`` is empty, part 2 stands for the sum of a
    group's rows (held at its first row), ``gaps`` are the distinct group sizes and ``cnt_gap``
    the groups of each size."""

    stats: Stats
    scale: jax.Array
    cur: jax.Array
    prev: jax.Array
    masks: jax.Array
    part: jax.Array
    gap: jax.Array
    s: jax.Array
    s2: jax.Array
    gaps: jax.Array
    cnt_gap: jax.Array
    cnt_strata: jax.Array
    const: jax.Array


#: At most this many distinct time steps (AR(1)/CAR(1), three statistics each) or group sizes
#: (compound symmetry, two each) for the n-free form.
MAX_GAPS = 8


def arrange(bound_cor, bound_var, n: int, beta0: np.ndarray) -> tuple[int, Arrangement]:
    """Host: the :class:`Arrangement` of n rows (each row its own group without a correlation)."""
    if bound_cor is None:
        codes, order = np.arange(n), np.arange(n)
    else:
        codes, order = bound_cor.codes, bound_cor.order
    counts = np.bincount(codes[order] if n else codes, minlength=0)
    sizes = counts[counts > 0]
    G, m = len(sizes), int(sizes.max()) if n else 1
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))  # (np.r_ costs ~10 µs a call)
    pos = np.arange(n) - np.repeat(starts, sizes)
    grp = np.repeat(np.arange(G), sizes)
    idx = np.full((G, m), n, np.int32)
    idx[grp, pos] = order
    mask = np.zeros((G, m))
    mask[grp, pos] = 1.0
    time = np.zeros((G, m))
    coords = np.zeros((G, m, 1))
    if bound_cor is not None and bound_cor.time is not None:
        time[grp, pos] = bound_cor.time[order]
    if bound_cor is not None and bound_cor.coords is not None:
        coords = np.zeros((G, m, bound_cor.coords.shape[1]))
        coords[grp, pos] = bound_cor.coords[order]
    x = bound_var.x if bound_var is not None else np.zeros(n)
    strata = bound_var.strata if bound_var is not None else np.zeros(n, np.int64)
    return m, Arrangement(idx, mask, time, coords, np.asarray(x, float), strata.astype(np.int32),
                          np.asarray(beta0, float))


def split(u: jax.Array, spec: Spec):
    """(natural correlation parameters, natural variance parameters) from unconstrained u."""
    uc, uv = u[: spec.ncor], u[spec.ncor : spec.ncor + spec.nvar]
    nat_c = spec.cor.natural(uc, spec.m) if spec.cor is not None else uc
    nat_v = spec.var.natural(uv) if spec.var is not None else uv
    return nat_c, nat_v


def _whiten(spec: Spec, nat_c, arr: Arrangement, A):
    if spec.cor is None:
        return A, jnp.zeros((), A.dtype)
    return correlation_whiten(spec.cor.kind, getattr(spec.cor, "nugget", False), nat_c, arr.time, arr.coords,
                              arr.mask, A)


def _root_whiten(spec: Spec, nat_c, arr: Arrangement, A):
    """(W A, log|C|) with any W such that WᵀW = C⁻¹ in each group: what the statistics need.
    Compound symmetry takes the symmetric root W = (I − c 11ᵀ/m)/√(1 − ρ), (1 − c)² = (1 − ρ)/
    (1 + (m − 1)ρ), in closed form: O(n), where a Cholesky factor per group costs O(n m²)
    (Orthodont with ``varIdent``: 30–57 → 9–13 ms a fit). The other structures whiten by L⁻¹
    (:func:`~jaxmlm.residuals.correlation_whiten`)."""
    if spec.cor is None or spec.cor.kind != "cs":
        return _whiten(spec, nat_c, arr, A)
    rho, mask = nat_c[0], arr.mask
    size = jnp.sum(mask, axis=1)
    c = 1.0 - jnp.sqrt((1.0 - rho) / (1.0 + (size - 1.0) * rho))
    mean = jnp.sum(mask[..., None] * A, axis=1) / jnp.maximum(size, 1.0)[:, None]
    out = (A - (c[:, None, None] * mask[..., None]) * mean[:, None, :]) / jnp.sqrt(1.0 - rho)
    return out, jnp.sum((size - 1.0) * jnp.log1p(-rho) + jnp.log1p((size - 1.0) * rho))


def whiten_rows(u: jax.Array, rows: RowData, arr: Arrangement, spec: Spec) -> tuple[RowData, jax.Array]:
    """The whitened rows (G·m of them, padding rows of weight 0) and log|R| at unconstrained u."""
    nat_c, nat_v = split(u, spec)
    dt = rows.X.dtype
    logd = log_sd_ratio(spec.var.kind, nat_v, arr.x, arr.strata) if spec.var is not None else jnp.zeros_like(rows.y)
    # prior weights multiply the precision: dᵢ² / wᵢ is row i's variance ratio
    s = jnp.sqrt(rows.weights) * jnp.exp(-logd)
    logdet = jnp.sum(2.0 * logd - jnp.log(rows.weights))
    p, k1, mr = rows.X.shape[1], rows.Z1.shape[1], rows.V.shape[1]
    D = jnp.concatenate([rows.X, (rows.y - rows.offset)[:, None], rows.Z1, rows.V], axis=1) * s[:, None]
    D = jnp.concatenate([D, jnp.zeros((1, D.shape[1]), dt)])
    G, m = arr.idx.shape
    Dw, logc = _root_whiten(spec, nat_c, arr, D[arr.idx])
    flat = Dw.reshape(G * m, -1)
    X, y, Z1, V = flat[:, :p], flat[:, p], flat[:, p + 1 : p + 1 + k1], flat[:, p + 1 + k1 :]
    pad = lambda a: jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)])  # noqa: E731
    g1 = pad(rows.g1)[arr.idx].reshape(-1)
    P, E = pad(rows.P)[arr.idx], pad(rows.E)[arr.idx]
    if spec.vary:
        keep = np.setdiff1d(np.arange(mr), spec.vary)
        vary = np.asarray(spec.vary)
        Linv, _ = _root_whiten(spec, nat_c, arr, jnp.broadcast_to(jnp.eye(m, dtype=dt), (G, m, m)))
        Vs = (D[:, p + 1 + k1 :])[arr.idx][..., vary]  # (G, m, v): scaled, not whitened
        Vx = (Linv[:, :, :, None] * Vs[:, None, :, :]).reshape(G * m, m * len(vary))
        Px = jnp.broadcast_to(P[..., vary][:, None], (G, m, m, len(vary))).reshape(G * m, -1)
        Ex = jnp.broadcast_to(E[..., vary][:, None], (G, m, m, len(vary))).reshape(G * m, -1)
        V = jnp.concatenate([V[:, keep], Vx], axis=1)
        P = jnp.concatenate([P.reshape(G * m, mr)[:, keep], Px], axis=1)
        E = jnp.concatenate([E.reshape(G * m, mr)[:, keep], Ex], axis=1)
    else:
        P, E = P.reshape(G * m, mr), E.reshape(G * m, mr)
    w = arr.mask.reshape(-1).astype(dt)
    out = RowData(X, y, w, jnp.zeros_like(y), Z1, V, g1, P, E)
    return out, logdet + logc


def criterion(x: jax.Array, c: jax.Array, rows: RowData, index: tuple, arr: Arrangement, reml, layout: Layout,
              spec: Spec):
    """d(θ, ρ) at x = (θ / c, ρ_u) (module docstring), with the whitened statistics."""
    nt = layout.ntheta
    theta, u = c * x[:nt], x[nt:]
    stats = whitened_stats(u, rows, index, arr, layout, spec)
    return _deviance(theta, stats, reml, layout)


def whitened_stats(u, rows: RowData, index: tuple, arr: Arrangement, layout: Layout, spec: Spec):
    """The engine's statistics of the whitened rows, log|R| in ``ldw``: from the n-free basis
    when the arrangement has one (:func:`basis_stats`), else by a pass over the whitened rows.

    y is centred on β₀, the least-squares fit of the unwhitened rows (``arr.beta0``, computed
    once): whitening is linear, so (y − Xβ₀)* = y* − X*β₀, and any fixed β₀ near β̂ keeps r²
    free of cancellation (:mod:`jaxmlm._stats`) — no least-squares solve per evaluation."""
    if arr.basis is not None:
        return basis_stats(u, arr.basis, spec)
    wr, logdet = whiten_rows(u, rows, arr, spec)
    dt = wr.X.dtype
    beta0 = jnp.asarray(arr.beta0, dt)
    W = jnp.concatenate([wr.X, (wr.y - wr.X @ beta0)[:, None]], axis=1)
    acc = _accumulate(None, W, wr.g1, wr.Z1, wr.P, wr.V, wr.E, l1=layout.l1, qr=layout.qr, nnz=layout.nnz,
                      kr=a22_blocks(layout))
    n = jnp.sum(wr.weights)
    return Stats(n, *acc, *index, beta0, -logdet, jnp.asarray(float(layout.p), dt))


_VALUES = ("A11", "Z1W", "WW", "A22", "ZrW", "A21")


def basis_stats(u, b: Basis, spec: Spec) -> Stats:
    """Σ_j w_j S_j and log|R| at unconstrained u. A row r after its group's first, time step Δ
    from row r − 1, strata s and s′ (SD ratios d, d′) whitens to (e_r/d − ρ e_{r−1}/d′)/√(1 − ρ²),
    ρ = φ^Δ, so its products are wA e_r e_rᵀ + wB (e_r e_{r−1}ᵀ + e_{r−1} e_rᵀ) + wC e_{r−1} e_{r−1}ᵀ
    with wA = 1/(d²(1−ρ²)), wB = −ρ/(d d′(1−ρ²)), wC = ρ²/(d′²(1−ρ²)); the cross term is the sum
    rows' products less the two others. A first row has weight 1/d²."""
    nat_c, nat_v = split(u, spec)
    dt = b.const.dtype
    if spec.cor is not None and spec.cor.kind == "cs":
        w, logdet = _cs_weights(nat_c[0], b)
        return _combine(b, w, logdet)
    if spec.cor is not None:
        rho = _phi_power(nat_c[0], b.gaps, spec.cor.kind)
    else:
        rho = jnp.zeros_like(b.gaps)
    if spec.var is not None and spec.var.kind == "ident":
        logd = jnp.concatenate([jnp.zeros(1, dt), jnp.log(nat_v)])
    else:
        logd = jnp.zeros(max(b.cnt_strata.shape[0], 1), dt)
    d, d2 = jnp.exp(logd[b.s]), jnp.exp(logd[b.s2])
    r = rho[b.gap]
    den = 1.0 - r**2
    wa, wb, wc = 1.0 / (d * d * den), -r / (d * d2 * den), r * r / (d2 * d2 * den)
    w = jnp.select([b.part == 0, b.part == 1, b.part == 2], [1.0 / (d * d), wa - wb, wc - wb], wb)
    logdet = b.const + 2.0 * jnp.sum(b.cnt_strata * logd[: b.cnt_strata.shape[0]]) + jnp.sum(b.cnt_gap * jnp.log1p(-(rho**2)))
    return _combine(b, w, logdet)


def _combine(b: Basis, w, logdet) -> Stats:
    """Σ_j w_j S_j of the class statistics, log|R| as ``ldw`` = −log|R|."""
    combined = {k: jnp.tensordot(w, getattr(b.stats, k), axes=1) for k in _VALUES}
    return b.stats._replace(**combined, ldw=-logdet)


def _cs_weights(rho, b: Basis):
    """Compound symmetry's class weights w_j and log|R|. A group of m rows has C = (1 − ρ)I + ρ11ᵀ, so
    C⁻¹ = (I − ρ/(1 + (m − 1)ρ) 11ᵀ)/(1 − ρ) and |C| = (1 − ρ)^(m−1) (1 + (m − 1)ρ): the whitened
    products are the rows' own products over 1 − ρ less ρ/((1 − ρ)(1 + (m − 1)ρ)) times the
    product of the group's sum with itself (Pinheiro & Bates 2000, §5.3.1)."""
    m = b.gaps[b.gap]
    w = jnp.where(b.part == 1, 1.0, -rho / (1.0 + (m - 1.0) * rho)) / (1.0 - rho)
    return w, b.const + jnp.sum(b.cnt_gap * ((b.gaps - 1.0) * jnp.log1p(-rho) + jnp.log1p((b.gaps - 1.0) * rho)))


def _cs_classes(mask: np.ndarray):
    """Compound symmetry's row classes: per group size, its groups' rows (part 1) and their sums
    (part 2, at each group's first row); None past ``MAX_GAPS`` sizes."""
    size = mask.sum(axis=1)
    sizes, cnt = np.unique(size, return_counts=True)
    if len(sizes) > MAX_GAPS:
        return None
    first = np.zeros_like(mask)
    first[:, 0] = mask[:, 0]
    masks, part = [], []
    for m in sizes:
        of_size = (size == m)[:, None]
        masks += [mask & of_size, first & of_size]
        part += [1, 2]
    zero = np.zeros(len(part), np.int32)
    gap = np.repeat(np.arange(len(sizes), dtype=np.int32), 2)
    return masks, np.array(part, np.int32), gap, zero, zero, sizes.astype(float), cnt.astype(float), np.zeros(1)


def make_basis(rows: RowData, arr: Arrangement, spec: Spec, layout: Layout, index: tuple) -> Basis | None:
    """Host: the :class:`Basis` of the arrangement's rows, or None where the structure has no
    n-free form (corExp, varPower, varExp; compound symmetry with ``varIdent``; a random-effects
    factor varying within groups, whose lag products or group sums fall outside the statistics'
    sparsity; more than ``MAX_GAPS`` distinct time steps or group sizes)."""
    kind = spec.cor.kind if spec.cor is not None else None
    if spec.vary or kind not in (None, "ar1", "car1", "cs"):
        return None
    if spec.var is not None and spec.var.kind not in ("ident", "fixed"):
        return None
    if kind == "cs" and spec.var is not None and spec.var.kind == "ident":
        return None  # strata within a group's sum: a statistic per pair of strata and size (not done)
    idx = np.asarray(arr.idx)
    mask = np.asarray(arr.mask) > 0
    n = rows.X.shape[0]
    if kind == "cs":
        found = _cs_classes(mask)
        prev = np.zeros(0, idx.dtype)  # no rows r − 1: part 2 is the group's sum
    else:
        prev = np.concatenate([np.full((idx.shape[0], 1), n, idx.dtype), idx[:, :-1]], axis=1).reshape(-1)
        found = _markov_classes(arr, idx, mask, prev.reshape(idx.shape), spec)
    if found is None:
        return None
    masks, part, gap, s_a, s_b, gaps, cnt_gap, cnt_strata = found
    # rows pre-scaled by √w / d for prior weights and a fixed variance function
    w = np.asarray(rows.weights, float)
    logd_fixed = 0.5 * np.log(np.asarray(arr.x)) if spec.var is not None and spec.var.kind == "fixed" else 0.0
    scale = np.sqrt(w) * np.exp(-logd_fixed)
    const = float(np.sum(2.0 * logd_fixed - np.log(w)))
    # the statistics themselves are made inside the fit's program (with_response): stats=None here
    return Basis(None, scale, idx.reshape(-1), prev, np.stack(masks).reshape(len(masks), -1).astype(float),
                 part, gap, s_a, s_b, np.asarray(gaps, float), cnt_gap, cnt_strata, np.asarray(const))


def _markov_classes(arr: Arrangement, idx: np.ndarray, mask: np.ndarray, prev: np.ndarray, spec: Spec):
    """AR(1)/CAR(1) and ``varIdent``'s row classes: a group's first rows per stratum; per time
    step and pair of strata, rows r, rows r − 1 and their sums (parts 1–3); None past
    ``MAX_GAPS`` steps."""
    G, m = idx.shape
    first = np.zeros((G, m), bool)
    first[:, 0] = True
    first &= mask
    step = np.zeros((G, m))
    step[:, 1:] = np.asarray(arr.time)[:, 1:] - np.asarray(arr.time)[:, :-1]
    later = mask & ~first
    gaps = np.unique(step[later]) if spec.cor is not None else np.zeros(0)
    if spec.cor is None:
        first, later = mask, np.zeros_like(mask)
    if len(gaps) > MAX_GAPS:
        return None
    strata = np.append(np.asarray(arr.strata), 0)
    ns = int(spec.nstrata) if spec.var is not None and spec.var.kind == "ident" else 1
    s_cur = strata[idx] if ns > 1 else np.zeros((G, m), int)
    s_prev = strata[prev] if ns > 1 else np.zeros((G, m), int)
    g_idx = np.searchsorted(gaps, step) if len(gaps) else np.zeros((G, m), int)
    classes, masks = [], []
    for s_ in range(ns):
        sel = first & (s_cur == s_)
        if sel.any():
            classes.append((0, 0, s_, s_))
            masks.append(sel)
    for k in range(len(gaps)):
        for s_ in range(ns):
            for s2 in range(ns):
                sel = later & (g_idx == k) & (s_cur == s_) & (s_prev == s2)
                if sel.any():
                    for part in (1, 2, 3):
                        classes.append((part, k, s_, s2))
                        masks.append(sel)
    part, gap, s_a, s_b = (np.array(c, np.int32) for c in zip(*classes))
    cnt_gap = np.array([np.sum(later & (g_idx == k)) for k in range(len(gaps))], float)
    if not len(gaps):  # no correlation: one unused step keeps the arrays non-empty
        gaps, cnt_gap = np.ones(1), np.zeros(1)
    cnt_strata = np.array([np.sum(mask & (s_cur == s_)) for s_ in range(ns)], float) if ns > 1 else np.zeros(1)
    return masks, part, gap, s_a, s_b, gaps, cnt_gap, cnt_strata


def with_response(arr: Arrangement, rows: RowData, index: tuple, layout: Layout) -> Arrangement:
    """The arrangement with the basis's statistics made from ``rows`` (their response;
    traceable): every program that evaluates the criterion starts here."""
    if arr.basis is None:
        return arr
    b = arr.basis
    stats = basis_statistics(rows, b.scale, b.cur, b.prev, b.masks, b.part, arr.beta0, jnp.sum(arr.mask), index,
                             layout, arr.idx.shape)
    return arr._replace(basis=b._replace(stats=stats))


def basis_statistics(rows: RowData, scale, cur, prev, masks, part, beta0, nrows, index: tuple, layout: Layout,
                     groups: tuple[int, int]) -> Stats:
    """The statistics of every class (rows r, rows r − 1, or their sums, within the class's mask),
    stacked on a leading axis: one pass over the rows per class, once per fit. ``groups``: the
    arrangement's (G, m); with ``prev`` empty (compound symmetry) the second rows are each
    group's sum, at its first row."""
    dt = rows.X.dtype
    p = rows.X.shape[1]
    yc = rows.y - rows.offset - rows.X @ beta0
    D = jnp.concatenate([rows.X, yc[:, None], rows.Z1, rows.V], axis=1) * scale[:, None]
    D = jnp.concatenate([D, jnp.zeros((1, D.shape[1]), dt)])
    pad = lambda a: jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)])  # noqa: E731
    g1, P, E = pad(rows.g1)[cur], pad(rows.P)[cur], pad(rows.E)[cur]
    Dc = D[cur]
    if prev.shape[0]:
        Dp = D[prev]
    else:
        G, m = groups
        sums = Dc.reshape(G, m, -1).sum(axis=1)  # padding rows are zero
        Dp = jnp.zeros((G, m, D.shape[1]), dt).at[:, 0].set(sums).reshape(G * m, -1)
    k1 = rows.Z1.shape[1]

    def one(mk, pt):
        a = jnp.where((pt == 0) | (pt == 1) | (pt == 3), 1.0, 0.0)
        b = jnp.where((pt == 2) | (pt == 3), 1.0, 0.0)
        R = mk[:, None] * (a * Dc + b * Dp)
        return _accumulate(None, R[:, : p + 1], g1, R[:, p + 1 : p + 1 + k1], P, R[:, p + 1 + k1 :], E, l1=layout.l1,
                           qr=layout.qr, nnz=layout.nnz, kr=a22_blocks(layout))

    acc = jax.vmap(one)(masks, part)
    return Stats(jnp.asarray(nrows, dt), *acc, *index, beta0.astype(dt), jnp.zeros((), dt), jnp.asarray(float(layout.p), dt))


def gls_parts(u, rows: RowData, arr: Arrangement, spec: Spec):
    """(β̂, r², X*ᵀX*, log|R|, n) of generalized least squares at unconstrained u."""
    wr, logdet = whiten_rows(u, rows, arr, spec)
    X, y = wr.X, wr.y
    beta0 = jnp.asarray(arr.beta0, X.dtype)  # centring: r² without cancellation (whitened_stats)
    r = y - X @ beta0
    XtX = X.T @ X
    L = jnp.linalg.cholesky(XtX)
    cvec = jax.scipy.linalg.solve_triangular(L, X.T @ r, lower=True)
    r2 = r @ r - cvec @ cvec
    beta = beta0 + jax.scipy.linalg.solve_triangular(L.T, cvec, lower=False)
    n = jnp.sum(wr.weights)
    return beta, r2, L, logdet, n


def gls_criterion(u, rows: RowData, arr: Arrangement, reml, spec: Spec):
    """−2 log-likelihood (ML) or −2 restricted log-likelihood (REML) of gls, σ and β profiled."""
    _, r2, L, logdet, n = gls_parts(u, rows, arr, spec)
    p = rows.X.shape[1]
    dof = n - reml * p
    return (dof * (1.0 + jnp.log(2.0 * jnp.pi * r2 / dof)) + reml * 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
            + logdet)


def _value(x, c, rows, index, arr, reml, layout, spec):
    if layout is None:
        return gls_criterion(x, rows, arr, reml, spec)
    return criterion(x, c, rows, index, arr, reml, layout, spec)


def sign_sensitive_diagonals(layout: Layout) -> np.ndarray:
    """The template diagonals whose steps Newton must clip (:func:`~jaxmlm._optimize._newton`'s
    ``diag``): all but those alone in their column. A lone diagonal θ enters ΛΛᵀ only as θ², so
    the criterion is even in it and a step across 0 is harmless (canonical signs flip it back);
    unclipped, Newton reaches a variance at 0 in a step or two where the clip takes one step per
    tenfold shrink (sleepstudy with AR(1): 11 steps → 7)."""
    mask = diagonal_mask(layout).copy()
    structured = np.zeros(layout.ntheta, bool)
    for _, _, cov, first in layout.structured:
        structured[first : first + cov.nparams] = True
    for d, column in _diagonals(layout)[1]:
        if len(column) == 1 and not structured[d]:
            mask[d] = False
    return mask


@partial(_compiled.jit, static_argnames=("layout", "spec", "max_iter"))
def fit_program(x0, rows: RowData, index: tuple, arr: Arrangement, reml, layout: Layout | None, spec: Spec,
                max_iter: int = 200):
    """Modified Newton over x from x0 (exact autodiff Hessian): (the optimizer's state, the
    Hessian at its x, c). x = (θ / c, ρ_u) with c = :func:`~jaxmlm._optimize.theta_scale` of the
    whitened statistics at the start's ρ; ``layout`` None: gls (x = ρ_u, c empty)."""
    diag = np.zeros(len(x0), bool)
    if layout is not None:
        diag[: layout.ntheta] = sign_sensitive_diagonals(layout)
        c = theta_scale(whitened_stats(x0[layout.ntheta :], rows, index, arr, layout, spec), layout)
    else:
        c = jnp.zeros(0, x0.dtype)

    def f(x):
        return _value(x, c, rows, index, arr, reml, layout, spec)

    ad = _fgh_ad(f)

    def fgh(x):  # the Hessian rides along as the kept point's extra value (the result's H)
        fx, g, H = ad(x)
        return fx, g, H, H

    # Every trial point gets (f, ∇f, H): an accepted full step then needs no second evaluation
    # (sleepstudy with AR(1): 24 evaluations → 13, ~10 % less time). Stopping within NEAR of the
    # minimum saves one more (10 → 9; its program 1.18 → 1.11 ms, corCompSymm's 4.6 → 4.0 ms).
    st, H = _newton(None, x0, max_iter, 1e-10, 1e-8, fgh=fgh, diag=jnp.asarray(diag), trial_fgh=True,
                    aux0=jnp.zeros((len(x0), len(x0)), x0.dtype), near=NEAR)
    return st, H, c


def _fit_and_solve(x0, rows: RowData, index: tuple, arr: Arrangement, reml, layout: Layout, spec: Spec,
                   max_iter: int = 200):
    """The whole fit (traceable): the n-free basis (if any) from the rows, Newton from x0, θ's
    canonical signs, lmer's snapping of θ with ρ at its estimate (a θ-only question once ρ is
    fixed: :func:`~jaxmlm._fit.snap` on the whitened statistics), and the estimates. Returns
    (optimizer state, Hessian, c, θ̂, snapped, the :class:`~jaxmlm._solution.Solution`, the
    whitened statistics at ρ̂, the structure's natural parameters)."""
    arr = with_response(arr, rows, index, layout)
    st, H, c = fit_program.fn(x0, rows, index, arr, reml, layout, spec, max_iter)
    nt = layout.ntheta
    stats = whitened_stats(st.x[nt:], rows, index, arr, layout, spec)
    theta, _, snapped = snap(canonical_theta_jax(c * st.x[:nt], layout), st.f, stats, reml, layout)
    return st, H, c, theta, snapped, solve.fn(theta, stats, reml, layout), stats, split(st.x[nt:], spec)


class Fitted(NamedTuple):
    """The host side of :func:`fit_and_solve` (numpy; ``stats`` stays on the device)."""

    state: OptState
    hessian: np.ndarray
    c: np.ndarray
    theta: np.ndarray
    snapped: np.ndarray
    solution: Solution
    stats: Stats
    natural: tuple


def pack_inputs(tree) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Host: a pytree of arrays as one float64 and one int32 vector, and the (hashable) recipe
    to rebuild it (:func:`unpack_inputs`). Each array handed to a program is a transfer of its
    own (~10 µs on a CPU, more than a small model's Newton step): two instead of ~35."""
    leaves, treedef = jax.tree.flatten(tree)
    floats, ints, recipe = [], [], []
    nf = ni = 0
    for a in leaves:
        a = np.asarray(a)
        if a.dtype.kind in "iub":
            ints.append(a.astype(np.int32, copy=False).ravel())
            recipe.append(("i", ni, a.shape))
            ni += a.size
        else:
            floats.append(a.astype(np.float64, copy=False).ravel())
            recipe.append(("f", nf, a.shape))
            nf += a.size
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
    return cat(floats, np.float64), cat(ints, np.int32), (treedef, tuple(recipe))


def unpack_inputs(floats, ints, meta):
    """The pytree :func:`pack_inputs` packed (traceable: static slices of the two vectors)."""
    treedef, recipe = meta
    leaves = []
    for kind, at, shape in recipe:
        src = floats if kind == "f" else ints
        size = math.prod(shape)
        leaves.append(src[at : at + size].reshape(shape))
    return jax.tree.unflatten(treedef, leaves)


@partial(_compiled.jit, static_argnames=("meta", "layout", "spec", "max_iter"))
def fit_and_solve(floats, ints, meta, layout: Layout, spec: Spec, max_iter: int = 200):
    """:func:`_fit_and_solve` as one program, its inputs (x0, rows, index, arrangement, REML)
    packed by :func:`pack_inputs` and its small outputs packed in one float64 vector
    (:func:`unpack`): every array moved between host and device costs ~10 µs, as much as several
    Newton steps of a small model. The statistics stay on the device."""
    x0, rows, index, arr, reml = unpack_inputs(floats, ints, meta)
    st, H, c, theta, snapped, sol, stats, nat = _fit_and_solve(x0, rows, index, arr, reml, layout, spec, max_iter)
    parts = [st.x, st.f, st.g, st.it, st.nfev, st.status, H, c, theta, snapped, *jax.tree.leaves(sol), *nat]
    return jnp.concatenate([jnp.ravel(a).astype(jnp.float64) for a in parts]), stats


def unpack(packed, stats, layout: Layout, spec: Spec) -> Fitted:
    """Host: :func:`fit_and_solve`'s vector taken apart (shapes from the layout and the spec)."""
    nt, p, nx = layout.ntheta, layout.p, layout.ntheta + spec.ncor + spec.nvar
    shapes = [(nx,), (), (nx,), (), (), (), (nx, nx), (nt,), (nt,), (nt,),
              (p,), (), (p, p), (layout.l1, layout.k1), (layout.qr,), (layout.l1, layout.k1, layout.k1)]
    shapes += [(lev, k, k) for _, lev, k in layout.rest] + [(), (spec.ncor,), (spec.nvar,)]
    v = np.asarray(packed)
    out, at = [], 0
    for sh in shapes:
        size = math.prod(sh)  # (np.prod costs ~5 µs a call, 19 calls a fit)
        out.append(v[at : at + size].reshape(sh))
        at += size
    if at != v.size:
        raise AssertionError(f"packed fit of {v.size} numbers, expected {at}")
    x, f, g, it, nfev, status, H, c, theta, snapped, beta, sigma, vcov, b1, b_rest, var1 = out[:16]
    nrest = len(layout.rest)
    var_rest, crit, nat_c, nat_v = tuple(out[16 : 16 + nrest]), out[16 + nrest], out[-2], out[-1]
    st = OptState(x, f, g, it.astype(np.int64), nfev.astype(np.int64), status.astype(np.int64))
    sol = Solution(beta, sigma, vcov, b1, b_rest, var1, var_rest, crit)
    return Fitted(st, H, c, theta, snapped > 0, sol, stats, (nat_c, nat_v))


@partial(_compiled.jit, static_argnames=("spec",))
def gls_estimates(u, rows: RowData, arr: Arrangement, reml, spec: Spec):
    """(β̂, σ̂, vcov(β̂), criterion) of gls at u: σ̂² = r²/(n − p) (REML) or r²/n (ML), and
    vcov(β̂) = r²/(n − p) (X*ᵀX*)⁻¹ either way, as nlme's ``gls``."""
    beta, r2, L, logdet, n = gls_parts(u, rows, arr, spec)
    p = rows.X.shape[1]
    sigma2 = r2 / (n - reml * p)
    Linv = jax.scipy.linalg.solve_triangular(L, jnp.eye(p, dtype=L.dtype), lower=True)
    # nlme's gls scales vcov(β̂) by the unbiased r²/(n − p) for ML fits too (σ̂ itself stays r²/n)
    return beta, jnp.sqrt(sigma2), r2 / (n - p) * Linv.T @ Linv, gls_criterion(u, rows, arr, reml, spec)


@partial(_compiled.jit, static_argnames=("layout", "spec"))
def scale_at(u, rows: RowData, index: tuple, arr: Arrangement, layout: Layout, spec: Spec):
    """c = :func:`~jaxmlm._optimize.theta_scale` of the whitened statistics at u (x's θ units)."""
    arr = with_response(arr, rows, index, layout)
    return theta_scale(whitened_stats(u, rows, index, arr, layout, spec), layout)


def _refit_one(x0, y, rows: RowData, index: tuple, arr: Arrangement, reml, layout: Layout, spec: Spec, max_iter):
    """One refit to response y, exactly as the single fit (:func:`fit_and_solve`)."""
    st, _, _, theta, _, sol, _, _ = _fit_and_solve(x0, rows._replace(y=y), index, arr, reml, layout, spec, max_iter)
    return (theta, st.x[layout.ntheta :], sol.beta, sol.sigma, sol.vcov, sol.criterion, st.status, st.it, st.nfev,
            jnp.max(jnp.abs(st.g)))


@partial(_compiled.jit, static_argnames=("layout", "spec", "max_iter"))
def refit_batch(x0, Y, rows: RowData, index: tuple, arr: Arrangement, reml, layout: Layout, spec: Spec,
                max_iter: int = 200):
    """:func:`_refit_one` over a batch of responses Y (B, n), in one program."""
    return jax.vmap(lambda y: _refit_one(x0, y, rows, index, arr, reml, layout, spec, max_iter))(Y)



@partial(_compiled.jit, static_argnames=("spec",))
def gls_hessian(sigma, u, rows: RowData, arr: Arrangement, reml, spec: Spec):
    """∇² of gls's criterion in (σ, ρ_u) with β profiled and σ not:
    d = (n − REML·p) log(2πσ²) + r²(u)/σ² + REML·log|X*ᵀX*| + log|R| (at σ̂ the profiled one)."""
    p = rows.X.shape[1]

    def dev(v):
        _, r2, L, logdet, n = gls_parts(v[1:], rows, arr, spec)
        dof = n - reml * p
        return (dof * jnp.log(2.0 * jnp.pi * v[0] ** 2) + r2 / v[0] ** 2
                + reml * 2.0 * jnp.sum(jnp.log(jnp.diagonal(L))) + logdet)

    return jax.hessian(dev)(jnp.concatenate([jnp.atleast_1d(sigma), u]))

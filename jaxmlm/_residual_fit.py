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
every row of its group (row r of Z_g* = Σ_s (L⁻¹)_{rs} Z_s): its values, positions and A21
entries are widened to m per column. That needs block 1 — the factor with the most levels,
whose Gram block is kept diagonal — to be constant within groups, and the rest blocks dense.

The fit is modified Newton (:func:`~jaxmlm._optimize._newton`) over x = (θ / c, ρ_u) with
the Hessian by autodiff through the whitening and the statistics, in one compiled program.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _compiled, _x64  # noqa: F401  (float64 before any array exists)
from ._implicit import RowData, statistics_of
from ._objective import _deviance
from ._optimize import _newton, diagonal_mask, theta_scale
from ._solution import solve
from ._stats import Layout, Schema, a22_blocks
from .residuals import correlation_whiten, log_sd_ratio

__all__ = ["Spec", "Arrangement", "arrange", "whiten_rows", "criterion", "gls_criterion", "fit_program",
           "estimates", "split"]


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
    correlation, ``x`` (n,) and ``strata`` (n,) for the variance function."""

    idx: jax.Array
    mask: jax.Array
    time: jax.Array
    coords: jax.Array
    x: jax.Array
    strata: jax.Array


def arrange(bound_cor, bound_var, n: int) -> tuple[np.ndarray, Arrangement]:
    """Host: the :class:`Arrangement` of n rows (each row its own group without a correlation)."""
    if bound_cor is None:
        codes, order = np.arange(n), np.arange(n)
    else:
        codes, order = bound_cor.codes, bound_cor.order
    counts = np.bincount(codes[order] if n else codes, minlength=0)
    sizes = counts[counts > 0]
    G, m = len(sizes), int(sizes.max()) if n else 1
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
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
    return m, Arrangement(idx, mask, time, coords, np.asarray(x, float), strata.astype(np.int32))


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
    Dw, logc = _whiten(spec, nat_c, arr, D[arr.idx])
    flat = Dw.reshape(G * m, -1)
    X, y, Z1, V = flat[:, :p], flat[:, p], flat[:, p + 1 : p + 1 + k1], flat[:, p + 1 + k1 :]
    pad = lambda a: jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)])  # noqa: E731
    g1 = pad(rows.g1)[arr.idx].reshape(-1)
    P, E = pad(rows.P)[arr.idx], pad(rows.E)[arr.idx]
    if spec.vary:
        keep = np.setdiff1d(np.arange(mr), spec.vary)
        vary = np.asarray(spec.vary)
        Linv, _ = _whiten(spec, nat_c, arr, jnp.broadcast_to(jnp.eye(m, dtype=dt), (G, m, m)))
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
    """The engine's statistics of the whitened rows, log|R| in ``ldw``."""
    wr, logdet = whiten_rows(u, rows, arr, spec)
    stats = statistics_of(Schema(layout, None, index), wr)
    return stats._replace(ldw=-logdet)


def gls_parts(u, rows: RowData, arr: Arrangement, spec: Spec):
    """(β̂, r², X*ᵀX*, log|R|, n) of generalized least squares at unconstrained u."""
    wr, logdet = whiten_rows(u, rows, arr, spec)
    X, y = wr.X, wr.y
    beta0 = jax.lax.stop_gradient(jnp.linalg.lstsq(X, y)[0])  # centring: r² without cancellation
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


@partial(_compiled.jit, static_argnames=("layout", "spec", "max_iter"))
def fit_program(x0, rows: RowData, index: tuple, arr: Arrangement, reml, layout: Layout | None, spec: Spec,
                max_iter: int = 200):
    """Modified Newton over x from x0 (exact autodiff Hessian): (the optimizer's state, the
    Hessian at its x, c). x = (θ / c, ρ_u) with c = :func:`~jaxmlm._optimize.theta_scale` of the
    whitened statistics at the start's ρ; ``layout`` None: gls (x = ρ_u, c empty)."""
    diag = np.zeros(len(x0), bool)
    if layout is not None:
        diag[: layout.ntheta] = diagonal_mask(layout)
        c = theta_scale(whitened_stats(x0[layout.ntheta :], rows, index, arr, layout, spec), layout)
    else:
        c = jnp.zeros(0, x0.dtype)

    def f(x):
        return _value(x, c, rows, index, arr, reml, layout, spec)

    st, H = _newton(f, x0, max_iter, 1e-10, 1e-8, diag=jnp.asarray(diag), with_hessian=True)
    return st, H, c


@partial(_compiled.jit, static_argnames=("layout", "spec"))
def value_at(x, c, rows: RowData, index: tuple, arr: Arrangement, reml, layout: Layout | None, spec: Spec):
    """The criterion at x (boundary snapping's candidates; the tests' dense comparisons)."""
    return _value(x, c, rows, index, arr, reml, layout, spec)


@partial(_compiled.jit, static_argnames=("layout", "spec"))
def estimates(theta, u, rows: RowData, index: tuple, arr: Arrangement, reml, layout: Layout, spec: Spec):
    """(the engine's :class:`~jaxmlm._solution.Solution` at (θ, ρ), the whitened statistics)."""
    stats = whitened_stats(u, rows, index, arr, layout, spec)
    return solve(theta, stats, reml, layout), stats


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


def check_layout(layout: Layout) -> None:
    """Widened (varying) columns need the rest blocks' Gram kept dense."""
    if a22_blocks(layout):
        raise AssertionError("a factor varying within residual groups with a nested rest block")

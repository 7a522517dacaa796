"""Simulation and batched refits: simulate, refit_many, bootstrap, power, pb_test.

Simulation studies refit one design to many response vectors. Everything but
the response is shared, so the sufficient statistics split in two:

* the parts that depend only on X and Z (Z₁ᵀZ₁, Z₁ᵀX, XᵀX, Z_rᵀZ_r, Z_rᵀX,
  Z_rᵀZ₁) are computed once, by the fit of the model itself;
* the parts that depend on y — Z₁ᵀy', Xᵀy', y'ᵀy', Z_rᵀy' and β₀ (y' = y − Xβ₀,
  see :mod:`jaxmlm._stats`) — are computed for a whole batch of responses
  at once by matrix products and segment sums (:func:`response_stats`).

One compiled program then fits every replicate of a chunk: ``jax.vmap`` over
the optimizer's Newton loop (:func:`jaxmlm._optimize.fit_theta`), the sign
canonicalization and boundary snapping that :func:`~jaxmlm._results.lmer`
applies, and β̂, σ̂, vcov(β̂) by :func:`~jaxmlm._solution.solve`'s formulas.
The criterion is :func:`jaxmlm._objective.factorize`'s (block 1's tiny
Cholesky factors are unrolled there, which batches well on a CPU). Batches run in chunks of one fixed size (the last chunk padded), so every
chunk reuses the program. A replicate that fails (non-finite criterion, no
convergence) is flagged; vmap keeps replicates independent, so it cannot
spoil the others. tests/test_refit.py checks every replicate against an
individual :func:`~jaxmlm._results.lmer` fit of the same response.

Sources: lme4's ``simulate.merMod`` and ``refit`` (Bates et al. 2015,
*J. Stat. Softw.* 67(1)); lme4's ``bootMer`` / ``confint(method = "boot")``
with boot's percentile interval (Davison & Hinkley 1997, §5.3); pbkrtest's
``PBmodcomp`` (Halekoh & Højsgaard 2014, *J. Stat. Softw.* 59(9)); simr's
``powerSim`` (Green & MacLeod 2016, *Methods Ecol. Evol.* 7(4)).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import _compiled, _programs, _x64  # noqa: F401
from ._errors import ConvergenceError, DataError, InferenceError
from ._objective import (
    CPU_CHUNK,
    LAPACK_SAFE,
    Factor,
    batched_solve_lower,
    criterion,
    factorize,
    lapack_cost,
    templates,
    templates_host,
)
from ._fit import fit, fit_jit
from ._optimize import STATUS, canonical_theta, diagonal_mask, fd_batch, lme4_start, theta_scale_host
from ._stats import (
    CHUNK_ROWS,
    Layout,
    ResponseOps,
    Stats,
    _accumulate,
    _pass_inputs,
    _run_pass,
    a22_blocks,
    bucket,
    is_nested,
    response_ops,
    response_stats,
    sufficient_stats,
    with_response,
)

__all__ = [
    "simulate",
    "refit_many",
    "RefitResult",
    "bootstrap",
    "BootstrapResult",
    "power",
    "PowerResult",
    "pb_test",
    "PBTestResult",
]

# Start diagonals at least here, in the optimizer's unit-free coordinates (θᵢ ≥ 0.1·cᵢ,
# c = theta_scale): at θᵢ = 0 the criterion is flat (gradient 0).
_START_FLOOR = 0.1
_MAX_CHUNK = 1024  # replicates per compiled batch (GPU)
_NESTED_CHUNK = 4  # replicates per compiled batch of a nested design on a CPU (see _chunk_size)
_CHUNK_CELLS = 1 << 24  # cap on chunk × nobs: a chunk's responses stay ~ 130 MB
# The batched programs compile with XLA's default options. Setting XLA:CPU's experimental
# options here (turning off the YNNPACK fusion and the concurrency-optimized scheduler) made
# the compiler segfault once in a full test run, so they are left alone; the deadlock of
# benchmarks/jax_cpu_deadlock_repro.py is kept away by the chunk cap of _chunk_size.
_XLA_OPTIONS: dict = {}


# ---- the y-dependent statistics of a batch of responses -----------------------------------------


# ---- one replicate's fit, as lmer does it, in traceable form ------------------------------------


class _Batch(NamedTuple):
    """Per-replicate results of one chunk (leading axis: replicate)."""

    theta: jax.Array
    beta: jax.Array
    sigma: jax.Array
    vcov: jax.Array
    objective: jax.Array
    status: jax.Array
    iterations: jax.Array
    evaluations: jax.Array
    max_abs_gradient: jax.Array


def _estimates(fac: Factor, stats: Stats, reml, p: int):
    """β̂, σ̂ and vcov(β̂) from the factor's last block, as :func:`jaxmlm._solution.solve`
    computes them: β̂ = R_X⁻ᵀ c_β + β₀, σ̂² = r² / (n − p·REML), vcov = σ̂² R_X⁻ᵀ R_X⁻¹."""
    R = fac.R
    sigma2 = R[p, p] ** 2 / (stats.n - reml * stats.p)
    if p == 0:
        return stats.beta0, jnp.sqrt(sigma2), jnp.zeros((0, 0))
    RXinv = batched_solve_lower(R[:p, :p], jnp.eye(p))
    beta = jnp.sum(RXinv * R[p, :p, None], axis=0) + stats.beta0
    vcov = sigma2 * jnp.sum(RXinv[:, :, None] * RXinv[:, None, :], axis=0)
    return beta, jnp.sqrt(sigma2), vcov


def _fit_one(theta0, base: Stats, zy1, xy, yy, zry, beta0, flat, reml, layout: Layout, max_iter, ftol,
             gtol) -> _Batch:
    """One replicate: lmer's pipeline (Newton, canonical signs, snapping), then β̂, σ̂, vcov
    and the criterion.

    A ``flat`` response (nothing left after its fit on X) has r² = 0 and a criterion of −∞
    at every θ; in floating point r² is rounding noise of either sign, so the optimizer
    may see a finite value. Its status is set to 4 (non-finite criterion) whatever the
    noise did."""
    st = with_response(base, zy1, xy, yy, zry, beta0, layout.p)
    return _fit_stats(theta0, st, flat, reml, layout, max_iter, ftol, gtol)


def _fit_stats(theta0, st: Stats, flat, reml, layout: Layout, max_iter, ftol, gtol) -> _Batch:
    """One replicate's fit on its own statistics ``st`` (the part of :func:`_fit_one` after the
    statistics; ``flat`` forces status 4)."""
    res = fit(theta0, st, reml, layout, max_iter=max_iter, ftol=ftol, gtol=gtol, method="newton", with_solution=False)
    opt, theta = res.state, res.theta
    fac = factorize(theta, st, layout)
    beta, sigma, vcov = _estimates(fac, st, reml, layout.p)
    gmax = jnp.max(jnp.abs(opt.g))
    status = jnp.where(flat, 4, opt.status)
    return _Batch(theta, beta, sigma, vcov, criterion(fac, st, reml, layout.p), status, opt.it, opt.nfev, gmax)


@partial(_compiled.jit, static_argnames=("layout", "max_iter"), compiler_options=_XLA_OPTIONS, tiered=False)
def _refit_chunk(Y, theta0, base: Stats, ops: ResponseOps, reml, layout: Layout, max_iter: int = 200,
                 ftol=1e-10, gtol=1e-8) -> _Batch:
    """Fit every row of Y (c, n) with the design of ``base``/``ops``, starting at ``theta0``.

    One compiled program per (layout, c, n, max_iter); responses, data and REML/ML
    are arguments, so new responses or ML instead of REML do not recompile.
    Tolerances are :func:`jaxmlm._optimize.fit_theta`'s.
    """
    zy1, xy, yy, zry, beta0, flat = response_stats(Y, ops, layout)
    one = partial(_fit_one, layout=layout, max_iter=max_iter, ftol=ftol, gtol=gtol)
    return jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0, 0, 0, None))(theta0, base, zy1, xy, yy, zry, beta0, flat,
                                                                       reml)


class RowOps(NamedTuple):
    """The rows of a design as the statistics of reweighted data need them (:func:`case_weight_stats`):
    the weighted rows W = [X*, y* − X*β₀] (n, p+1) with β₀ = ``base.beta0`` (the full data's; any
    β₀ leaves θ̂, r² and σ̂ unchanged), block-1 codes g1 and values Z1, the rest blocks' positions
    P, values V and A21 entries E, and per row whether its prior weight is positive (``pos``) and
    log wᵢ (0 where there are no weights or wᵢ = 0)."""

    W: jax.Array
    g1: jax.Array
    Z1: jax.Array
    P: jax.Array
    V: jax.Array
    E: jax.Array
    pos: jax.Array
    logw: jax.Array


def row_ops(design, schema) -> tuple[RowOps, Stats]:
    """(:class:`RowOps`, the full data's statistics) of ``design`` against ``schema``."""
    _, inp = _pass_inputs(design, CHUNK_ROWS, response=False, schema=schema)
    base = _run_pass(schema, inp)
    w = design.weights
    pos = np.ones(design.n, bool) if w is None else w > 0
    logw = np.zeros(design.n) if w is None else np.log(np.where(pos, w, 1.0))
    ops = RowOps(*(jnp.asarray(a) for a in (inp.W, inp.g1, inp.Z1, inp.P, inp.V, inp.E)), jnp.asarray(pos, float),
                 jnp.asarray(logw))
    return ops, base


def case_weight_stats(c, base: Stats, ops: RowOps, layout: Layout) -> Stats:
    """The statistics of the data with row i's prior weight multiplied by cᵢ ≥ 0 (traceable, vmap-able).

    Each weighted row is scaled by √cᵢ, so a row with cᵢ = 0 adds nothing to any
    cross-product: its group's random effect meets no data (an empty block, as a padded level),
    which is the model fitted to the data without those rows. The criterion's row count and
    Σ log wᵢ are interpolated linearly, n(c) = Σ cᵢ·[wᵢ > 0] and Σ cᵢ log wᵢ: exact at cᵢ ∈ {0, 1}
    (the deleted and the full data), and smooth in between, for derivatives in c. The response stays centred on the full
    data's β₀ (``base.beta0``)."""
    s = jnp.sqrt(c)
    acc = _accumulate(None, ops.W * s[:, None], ops.g1, ops.Z1 * s[:, None], ops.P, ops.V * s[:, None], ops.E,
                      l1=layout.l1, qr=layout.qr, nnz=layout.nnz, kr=a22_blocks(layout))
    A11, Z1W, WW, A22, ZrW, A21 = acc
    return base._replace(n=jnp.sum(c * ops.pos), ldw=jnp.sum(c * ops.logw), A11=A11, Z1W=Z1W, WW=WW, A22=A22, ZrW=ZrW,
                         A21=A21)


@partial(_compiled.jit, static_argnames=("layout", "max_iter"), compiler_options=_XLA_OPTIONS, tiered=False)
def _weights_chunk(C, theta0, base: Stats, ops: RowOps, reml, layout: Layout, max_iter: int = 200, ftol=1e-10,
                   gtol=1e-8) -> _Batch:
    """Fit the design of ``base``/``ops`` with the prior weights multiplied by every row of C (c, n),
    starting at ``theta0``: :func:`case_weight_stats` then :func:`_fit_stats`, vmapped."""

    def one(cw):
        return _fit_stats(theta0, case_weight_stats(cw, base, ops, layout), jnp.asarray(False), reml, layout,
                          max_iter, ftol, gtol)

    return jax.vmap(one)(C)


# ---- the model as simulation and refits need it -------------------------------------------------


class _Spec(NamedTuple):
    """What simulation and refits need from a model (host side).

    design, layout; stats: sufficient statistics of the design (only the parts
    that do not depend on y are used); reml; beta (p,), theta (m,), sigma: the
    parameters to simulate from; b: conditional modes per engine block (for
    ``use_u``) or None; objective: the criterion of the fit (NaN if none).
    """

    design: object
    layout: Layout
    stats: Stats
    reml: bool
    beta: np.ndarray
    theta: np.ndarray
    sigma: float
    b: tuple | None
    objective: float


def _spec(m) -> _Spec:
    return _Spec(m.design, m.layout, m.stats, bool(m.REML), np.asarray(m._beta, float),
                 np.asarray(m.theta, float), float(m.sigma), tuple(m._b), float(m.objective))


def _start(spec: _Spec, start) -> np.ndarray:
    """Starting θ of the refits: the fitted θ̂ (as lme4's refit) with diagonals raised to
    0.1·cᵢ (at a zero diagonal the criterion is flat and Newton would not move; c =
    :func:`~jaxmlm._optimize.theta_scale`, so the floor means the same in any units),
    lmer's default (c ⊙ lme4's start: diagonals cᵢ, others 0) for ``"default"``, or the
    array given."""
    mask = diagonal_mask(spec.layout)
    if start is None or (isinstance(start, str) and start in ("fit", "default")):
        scale = theta_scale_host(spec.stats, spec.layout)
        if start == "default":
            return lme4_start(spec.layout) * scale
        th = canonical_theta(spec.theta, spec.layout)
        return np.where(mask, np.maximum(np.nan_to_num(th, nan=1.0), _START_FLOOR * scale), np.nan_to_num(th))
    if isinstance(start, str):
        raise DataError(f"start must be 'fit', 'default' or an array of {len(mask)} numbers, got {start!r}")
    th = np.asarray(start, float).ravel()
    if th.shape != mask.shape or not np.all(np.isfinite(th)):
        raise DataError(f"start must hold {len(mask)} finite numbers (θ in lme4's order), got {start!r}")
    return th


# ---- simulate -------------------------------------------------------------------------------------


def _is_jax_key(seed) -> bool:
    if not isinstance(seed, jax.Array):
        return False
    return jnp.issubdtype(seed.dtype, jax.dtypes.prng_key) or (seed.dtype == jnp.uint32 and seed.shape == (2,))


def _normals(seed, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Standard normal arrays of the given shapes, in order, from a seed.

    ``seed``: None, an int or SeedSequence (numpy's default_rng), a numpy
    Generator (drawn from, so its state advances), or a JAX PRNG key.
    """
    if _is_jax_key(seed):
        keys = jax.random.split(seed, len(shapes))
        return [np.asarray(jax.random.normal(k, s, dtype=jnp.float64)) for k, s in zip(keys, shapes)]
    try:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise DataError(
            f"seed must be None, an int, a numpy Generator or a JAX PRNG key, got {seed!r}"
        ) from e
    return [rng.standard_normal(s) for s in shapes]


@partial(_compiled.jit, compiler_options=_XLA_OPTIONS, tiered=False)
def _sim_kernel(mu, sigma, Ts, Zs, codes, U, E):
    """y* = μ + σ (Σ_b Z_b (T_b u_b) + ε) for every replicate: μ (n,), U per block
    (nsim, levels, k), E (nsim, n); b_l = T u_l per level, Z_b's rows pick their level."""
    y = mu[None, :] + sigma * E
    for T, Z, g, u in zip(Ts, Zs, codes, U):
        b = jnp.sum(u[:, :, None, :] * T[None, None, :, :], axis=-1)  # (nsim, l, k): T u_l
        y = y + sigma * jnp.sum(Z[None, :, :] * b[:, g, :], axis=-1)
    return y


def _simulate_spec(spec: _Spec, nsim: int, seed, use_u: bool) -> np.ndarray:
    d = spec.design
    n = d.n
    mu = d.X @ spec.beta
    if d.offset is not None:
        mu = mu + d.offset
    if use_u:
        if spec.b is None:
            raise DataError("use_u=True needs the conditional modes of a fitted model")
        for blk, b in zip(d.blocks, spec.b):
            mu = mu + np.einsum("nk,nk->n", blk.Z, b[blk.codes])
        (E,) = _normals(seed, [(nsim, n)])
        return np.asarray(mu[None, :] + spec.sigma * _residual_scale(d) * E)
    shapes = [(nsim, blk.nlev, blk.k) for blk in d.blocks] + [(nsim, n)]
    *U, E = _normals(seed, shapes)
    Ts = templates_host(spec.theta, spec.layout)
    y = _sim_kernel(
        jnp.asarray(mu), jnp.asarray(spec.sigma), tuple(Ts),
        tuple(jnp.asarray(np.asarray(b.Z, float)) for b in d.blocks),
        tuple(jnp.asarray(b.codes.astype(np.int32)) for b in d.blocks),
        tuple(jnp.asarray(u) for u in U), jnp.asarray(E * _residual_scale(d)),
    )
    return np.asarray(y)


def _residual_scale(design) -> np.ndarray | float:
    """1/√wᵢ: each row's residual SD relative to σ (NaN for a weight of 0: no finite variance)."""
    if design.weights is None:
        return 1.0
    w = design.weights
    return np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), np.nan)


def _check_nsim(nsim) -> int:
    if isinstance(nsim, (bool, np.bool_)) or not isinstance(nsim, (int, np.integer)) or nsim < 1:
        raise DataError(f"nsim must be a positive integer, got {nsim!r}")
    return int(nsim)


def simulate(m, nsim: int = 1, seed=None, use_u: bool = False) -> np.ndarray:
    """Responses simulated from a fitted model, (nsim, nobs), as lme4's ``simulate.merMod``.

    y* = Xβ̂ + Z b* + ε* with ε* ~ N(0, σ̂²I) and, for ``use_u=False`` (lme4's
    default ``use.u = FALSE``), new random effects b* = Λ(θ̂) u*, u* ~ N(0, σ̂²I);
    for ``use_u=True`` the conditional modes are kept, b* = b̂ (so y* = fitted + ε*).
    Rows are the observations used in the fit, in data order.

    ``seed``: None, an int, a numpy Generator or a JAX PRNG key; the same seed
    gives the same responses. Normals are drawn per grouping factor (engine
    order: most levels first; levels × coefficients per replicate) and then
    the residuals, so R's streams are not reproduced.
    """
    return _simulate_spec(_spec(m), _check_nsim(nsim), seed, bool(use_u))


# ---- refit_many ------------------------------------------------------------------------------------


def _vc_params(design) -> list[tuple[str, int, int, int]]:
    """lme4's names of the sd/cor parameters (``profnames(oldNames = FALSE)`` without σ), with
    (term, i, j): per term its structure's natural parameters (for us, its lower triangle
    column by column — the order of θ)."""
    out = []
    for t, term in enumerate(design.terms):
        names = term.cov.sdcor_names(term.columns, term.group)
        out += [(nm, t, i, j) for nm, (_, i, j) in zip(names, term.cov.sdcor_labels())]
    return out


def _sdcor(theta: np.ndarray, sigma: np.ndarray, design, layout: Layout) -> np.ndarray:
    """θ (r, m), σ (r,) → the sd/cor parameters (r, len(_vc_params)) of every replicate:
    per term Σ = σ² T Tᵀ and its structure's SDs and correlations."""
    theta = np.atleast_2d(theta)
    sigma = np.asarray(sigma, float).reshape(-1)
    Ts = [np.asarray(T) for T in jax.vmap(lambda th: templates(th, layout))(jnp.asarray(theta, dtype=jnp.float64))]
    out = []
    for term in design.terms:
        sl = slice(term.offset, term.offset + term.k)
        T = Ts[term.block][:, sl, sl]
        S = sigma[:, None, None] ** 2 * T @ np.swapaxes(T, 1, 2)
        out.append(term.cov.sdcor(S))
    return np.concatenate(out, axis=1) if out else np.zeros((theta.shape[0], 0))


def _theta_names(design) -> list[str]:
    """θ's names: lme4's ``group.column`` on the diagonal, ``group.row.column`` below it (see
    :meth:`jaxmlm._covariance.Structure.param_names` for the other structures)."""
    return [nm for term in design.terms for nm in term.cov.param_names(term.columns, term.group)]


def _readonly(a, dtype=float) -> np.ndarray:
    a = np.array(a, dtype=dtype)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class RefitResult:
    """Refits of one design to many responses (:func:`refit_many`); row r is replicate r.

    Arrays (read-only): ``theta`` (nsim, m) in lme4's order after sign
    canonicalization and boundary snapping; ``sigma``, ``objective`` (REML
    criterion or ML deviance, as ``LinearMixedModel.objective``) (nsim,);
    ``vcov`` (nsim, p, p); ``status`` (codes of :data:`jaxmlm._optimize.STATUS`),
    ``iterations``, ``evaluations``, ``max_abs_gradient`` (as lmer's
    ``FitRecord``: in the optimizer's unit-free coordinates); ``converged`` (status
    0 or 1); ``ok``: converged with finite estimates — failed replicates hold
    NaN or flags and never affect the others. ``fixef``, ``se``, ``sdcor``:
    DataFrames with lme4's names. ``seconds``: wall time (compilation included
    the first time a shape is seen).
    """

    REML: bool
    fixef_names: tuple[str, ...]
    theta_names: tuple[str, ...]
    sdcor_names: tuple[str, ...]
    beta: np.ndarray
    theta: np.ndarray
    sigma: np.ndarray
    objective: np.ndarray
    vcov: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray
    max_abs_gradient: np.ndarray
    sdcor_values: np.ndarray
    seconds: float

    @property
    def nsim(self) -> int:
        return self.beta.shape[0]

    def __len__(self) -> int:
        return self.nsim

    @property
    def fixef(self) -> pd.DataFrame:
        """β̂ per replicate (nsim × p), columns named as lme4's ``fixef``."""
        return pd.DataFrame(self.beta, columns=list(self.fixef_names))

    @property
    def se(self) -> pd.DataFrame:
        """Standard errors of β̂ per replicate (nsim × p)."""
        return pd.DataFrame(np.sqrt(np.diagonal(self.vcov, axis1=1, axis2=2)), columns=list(self.fixef_names))

    @property
    def sdcor(self) -> pd.DataFrame:
        """Random-effect SDs and correlations and σ per replicate, with lme4's
        ``confint(oldNames = FALSE)`` names (``sd_(Intercept)|Subject``,
        ``cor_Days.(Intercept)|Subject``, ..., ``sigma``)."""
        return pd.DataFrame(self.sdcor_values, columns=list(self.sdcor_names))

    @property
    def converged(self) -> np.ndarray:
        return _readonly(np.isin(self.status, (0, 1)), bool)

    @property
    def ok(self) -> np.ndarray:
        """Converged, and every estimate finite."""
        fin = np.isfinite(self.objective) & np.isfinite(self.sigma) & np.all(np.isfinite(self.beta), axis=1)
        fin &= np.all(np.isfinite(self.theta), axis=1)
        return _readonly(self.converged & fin, bool)

    @property
    def messages(self) -> list[str]:
        """The optimizer's status message of every replicate."""
        return [STATUS.get(int(s), "unknown status") for s in self.status]

    def __repr__(self) -> str:
        return (f"RefitResult({self.nsim} {'REML' if self.REML else 'ML'} refits, {int(self.ok.sum())} ok, "
                f"{int((~self.converged).sum())} not converged, {self.seconds:.3g} s)")


def _lapack_cost(layout: Layout, hessian: int = 0, points: int = 1) -> int:
    """Largest per-replicate cost estimate (jaxlib's FLOP model) of the LAPACK calls left in
    a batched program: the criterion's (:func:`~jaxmlm._objective.lapack_cost`), batched
    ``points`` times where a replicate's differenced Hessian takes its gradients side by side
    (:func:`~jaxmlm._optimize.fd_batch`), and Newton's eigh (of ``hessian`` parameters where
    the optimizer has more than θ: a GLMM's β, a residual structure's)."""
    m = max(layout.ntheta, hessian)
    return max(lapack_cost(layout) * points, 10 * m**3)


def lapack_safe_batch(wanted: int, layout: Layout, hessian: int = 0, points: int = 1) -> int:
    """At most ``wanted`` fits per vmapped batch, so that on a CPU every batched LAPACK call of
    the batch stays below jaxlib's threshold for splitting it over XLA's thread pool (batch ×
    cost 2·10⁵ FLOP; kept below half that): split there, two calls running at once can
    deadlock the pool (benchmarks/jax_cpu_deadlock_repro.py). Elsewhere ``wanted``."""
    if jax.default_backend() != "cpu":
        return int(wanted)
    return int(max(1, min(wanted, LAPACK_SAFE // _lapack_cost(layout, hessian, points))))


def _chunk_size(nsim: int, n: int, chunk_size, layout: Layout, hessian: int = 0, points: int = 1) -> int:
    """Replicates per compiled batch.

    On a CPU, small batches are fastest (1000 sleepstudy refits: 0.13 s in chunks of 16,
    0.5 s in one chunk of 1024: the arrays of a small batch stay in cache, and a batch
    iterates as long as its slowest replicate), and they must stay small: jaxlib 0.10
    splits a batched LAPACK call whose batch × cost exceeds 2·10⁵ FLOP over XLA's thread
    pool and can deadlock there (see benchmarks/jax_cpu_deadlock_repro.py), so chunks are
    capped to keep every call below 10⁵ (a user's ``chunk_size`` too), counting the
    ``points`` at which each replicate evaluates its criterion side by side (a differenced
    Hessian, :func:`~jaxmlm._optimize.fd_batch`). A nested design's chunk is 4
    (``_NESTED_CHUNK``): its replicates are hundreds of levels each, and the first call
    compiled slower in chunks of 16 (200 refits, first call and warm, s: classroom
    ``(1 | schoolid/classid)`` with five covariates 3.6–4.0 / 0.29–0.33 in chunks of 1,
    3.8–3.9 / 0.25–0.27 of 4, 4.6–4.8 / 0.23–0.24 of 16; ``(ses | schoolid/classid)`` 6.9 /
    1.6 of 1, 6.1 / 1.2 of 4, 10.3 / 2.0 of 16). Elsewhere (GPU), up to 1024 replicates and
    ~16 M response cells. A fixed size means one compiled program per model, whatever ``nsim``.
    """
    if chunk_size is not None:
        if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise DataError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    cap = max(1, min(_MAX_CHUNK, _CHUNK_CELLS // max(n, 1)))
    if jax.default_backend() == "cpu":
        wanted = chunk_size or (_NESTED_CHUNK if is_nested(layout) else CPU_CHUNK)
        return min(lapack_safe_batch(wanted, layout, hessian, points), cap)
    return int(chunk_size) if chunk_size is not None else min(bucket(nsim), cap)


def _progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar if ``enabled`` and tqdm is installed (it is optional), else None."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="fit", leave=False)


def _as_responses(Y, n: int) -> np.ndarray:
    try:
        Y = np.asarray(Y, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError("Y must be a numeric array of shape (nsim, nobs)") from e
    if Y.ndim == 1:
        Y = Y[None, :]
    if Y.ndim != 2 or Y.shape[1] != n or Y.shape[0] < 1:
        raise DataError(
            f"Y must have shape (nsim, nobs) with nobs = {n} (the rows used in the fit, in data order), "
            f"got shape {Y.shape}"
        )
    return Y


def _run_chunks(n: int, c: int, launch, bar=None):
    """Run ``launch(lo)`` (one compiled chunk of ``c`` replicates from ``lo``) over ``n``
    replicates, dispatching the next chunk before reading this one (JAX runs them
    asynchronously); the chunks' first ``n`` replicates, concatenated (each chunk a pytree
    of arrays with a leading replicate axis)."""
    parts: list = []
    starts = list(range(0, n, c))
    pending = launch(starts[0])
    for i, lo in enumerate(starts):
        nxt = launch(starts[i + 1]) if i + 1 < len(starts) else None
        got = jax.tree_util.tree_map(np.asarray, pending)
        take = min(c, n - lo)
        parts.append(jax.tree_util.tree_map(lambda a: a[:take], got))
        if bar is not None:
            bar.update(take)
        pending = nxt
    if bar is not None:
        bar.close()
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)


def _padded(blk: np.ndarray, c: int) -> np.ndarray:
    """A chunk's rows, the last chunk padded to ``c`` with copies of its first row."""
    if blk.shape[0] < c:
        blk = np.concatenate([blk, np.repeat(blk[:1], c - blk.shape[0], axis=0)])
    return blk


def _refit_spec(spec: _Spec, Y: np.ndarray, *, reml: bool, progress: bool = True, chunk_size=None,
                start=None, max_iter: int = 200, desc: str = "refits") -> RefitResult:
    """Batched refits of ``spec``'s design to the rows of Y (nsim, n); see :func:`refit_many`."""
    t0 = time.perf_counter()
    d, layout = spec.design, spec.layout
    nsim, n = Y.shape
    c = _chunk_size(nsim, n, chunk_size, layout, points=fd_batch(layout))
    ops = response_ops(d, layout)
    theta0 = jnp.asarray(_start(spec, start))
    reml_a = jnp.asarray(1.0 if reml else 0.0)

    def launch(lo):
        blk = _padded(Y[lo : lo + c], c)
        return _refit_chunk(jnp.asarray(blk), theta0, spec.stats, ops, reml_a, layout, max_iter=int(max_iter))

    cat = _run_chunks(nsim, c, launch, _progress_bar(nsim, progress, desc))
    return _result(spec, cat, reml, t0)


class Deletions:
    """Case weights of leave-one-set-out refits without the (sets × rows) matrix: row r of it is
    1 except 0 on the rows of set r (``codes``: each row's set, 0 … nsets − 1). Slicing a range
    of sets gives those rows as an array, so a chunk's weights are made when it runs (rows
    left out one at a time would otherwise take n² numbers)."""

    def __init__(self, codes: np.ndarray, nsets: int):
        self.codes = np.asarray(codes)
        self.shape = (int(nsets), len(self.codes))

    def __getitem__(self, sl: slice) -> np.ndarray:
        sets = np.arange(self.shape[0])[sl]
        return (self.codes[None, :] != sets[:, None]).astype(np.float64)


def refit_weights(m, C: np.ndarray, *, REML: bool | None = None, progress: bool = False, chunk_size=None,
                  start=None, max_iter: int = 200, desc: str = "refits", sdcor: bool = True) -> RefitResult:
    """Refits of ``m``'s design with its prior weights multiplied by every row of C (nsim, nobs),
    cᵢ ≥ 0, in one compiled program (chunks as :func:`refit_many`'s). A row with cᵢ = 0 is a
    row deleted from the data (:func:`case_weight_stats`): leave-one-group-out refits are the
    rows of C that are 0 on one group and 1 elsewhere. Started at the fit's θ̂ (as
    :func:`refit_many`). ``sdcor=False`` leaves the SDs and correlations NaN (their
    computation traces a program of its own: ~0.2 s in a fresh process)."""
    from ._stats import make_schema

    t0 = time.perf_counter()
    spec = _spec(m)
    reml = spec.reml if REML is None else _check_bool(REML, "REML")
    d = spec.design
    if isinstance(C, Deletions):
        if C.shape[1] != d.n:
            raise DataError(f"the deletions are for {C.shape[1]} rows, the model has {d.n}")
    else:
        C = np.asarray(C, dtype=np.float64)
        if C.ndim != 2 or C.shape[1] != d.n or not np.all(np.isfinite(C)) or np.any(C < 0):
            raise DataError(f"case weights must be a (nsim, {d.n}) array of finite values ≥ 0, got shape {C.shape}")
    schema = make_schema(d)
    layout = schema.layout
    ops, base = row_ops(d, schema)
    spec = spec._replace(layout=layout, stats=base)
    nsim = C.shape[0]
    c = _chunk_size(nsim, d.n, chunk_size, layout, points=fd_batch(layout))
    theta0 = jnp.asarray(_start(spec, start))
    reml_a = jnp.asarray(1.0 if reml else 0.0)

    def launch(lo):
        # through the program cache: a later process runs the program without tracing it again
        return _programs.call(_weights_chunk, (jnp.asarray(_padded(C[lo : lo + c], c)), theta0, base, ops, reml_a),
                              dict(layout=layout, max_iter=int(max_iter)), compiler_options=_XLA_OPTIONS)

    cat = _run_chunks(nsim, c, launch, _progress_bar(nsim, progress, desc))
    return _result(spec, cat, reml, t0, sdcor)


def _result(spec: _Spec, cat: _Batch, reml: bool, t0: float, with_sdcor: bool = True) -> RefitResult:
    d, layout = spec.design, spec.layout
    names = tuple(p[0] for p in _vc_params(d)) + ("sigma",)
    if with_sdcor:
        sdcor = np.column_stack([_sdcor(cat.theta, cat.sigma, d, layout), cat.sigma])
    else:
        sdcor = np.column_stack([np.full((len(cat.sigma), len(names) - 1), np.nan), cat.sigma])
    return RefitResult(
        REML=bool(reml),
        fixef_names=tuple(d.fixef_names),
        theta_names=tuple(_theta_names(d)),
        sdcor_names=names,
        beta=_readonly(cat.beta),
        theta=_readonly(cat.theta),
        sigma=_readonly(cat.sigma),
        objective=_readonly(cat.objective),
        vcov=_readonly(cat.vcov),
        status=_readonly(cat.status, np.int64),
        iterations=_readonly(cat.iterations, np.int64),
        evaluations=_readonly(cat.evaluations, np.int64),
        max_abs_gradient=_readonly(cat.max_abs_gradient),
        sdcor_values=_readonly(sdcor),
        seconds=time.perf_counter() - t0,
    )


def refit_many(m, Y, progress: bool = True, chunk_size: int | None = None, *, REML: bool | None = None,
               start=None, max_iter: int = 200) -> RefitResult:
    """Fit the design of ``m`` to every row of Y (nsim, nobs) in one batched computation.

    The batched counterpart of lme4's ``refit(m, newresp = y)``: same formula,
    same rows, same REML/ML setting (``REML`` overrides it), each replicate
    optimized as :func:`~jaxmlm._results.lmer` does (Newton iterations, sign
    canonicalization, snapping of near-zero variances) and started, like
    ``refit``, at the model's θ̂ (diagonals raised to at least 0.1 in the optimizer's
    unit-free coordinates, 0.1 / rms of the column; ``start="default"`` uses lmer's start,
    lme4's θ = 1 on the diagonals in those coordinates, or pass θ). Rows of Y are responses for the
    observations used in the fit, in data order (``m.design.y`` is the observed one).

    Replicates are fitted ``chunk_size`` at a time by one compiled program
    (default: 16 on a CPU, fewer for models whose dense blocks are large, all up to
    1024 on a GPU; see :func:`_chunk_size`); ``progress`` shows a tqdm bar when
    tqdm is installed. Returns a :class:`RefitResult`; replicates that fail are
    flagged (``converged``, ``ok``, ``status``) and leave the others intact.
    """
    spec = _spec(m)
    Y = _as_responses(Y, spec.design.n)
    reml = spec.reml if REML is None else _check_bool(REML, "REML")
    return _refit_spec(spec, Y, reml=reml, progress=progress, chunk_size=chunk_size, start=start, max_iter=max_iter)


def _check_bool(v, what: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise DataError(f"{what} must be True or False, got {v!r}")
    return bool(v)


# ---- bootstrap ---------------------------------------------------------------------------------


def _norm_inter(t: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """boot's ``norm.inter``: quantiles of the finite values of t at levels ``alpha`` by
    interpolation on the normal scale between order statistics (R+1)α (Davison &
    Hinkley 1997, eq. 5.8); the end points when (R+1)α falls outside [1, R]."""
    from scipy.stats import norm

    t = np.sort(t[np.isfinite(t)])
    R = len(t)
    out = np.full(len(alpha), np.nan)
    if R == 0:
        return out
    for q, a in enumerate(alpha):
        rk = (R + 1) * a
        k = int(math.trunc(rk))
        if k == rk and 1 <= k <= R:
            out[q] = t[k - 1]
        elif k <= 0:
            out[q] = t[0]
        elif k >= R:
            out[q] = t[R - 1]
        else:
            z1, z2, z3 = norm.ppf(a), norm.ppf(k / (R + 1)), norm.ppf((k + 1) / (R + 1))
            out[q] = t[k - 1] + (z1 - z2) / (z3 - z2) * (t[k] - t[k - 1])
    return out


def _check_level(level) -> float:
    if not isinstance(level, (int, float, np.floating)) or not 0 < float(level) < 1:
        raise DataError(f"level must be a number between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """A parametric bootstrap (:func:`bootstrap`).

    ``t0``: the model's estimates and ``replicates`` (nsim rows) the refits',
    with lme4's ``confint(oldNames = FALSE)`` names: random-effect SDs and
    correlations, ``sigma``, then the fixed effects. ``refits``: the
    :class:`RefitResult`; replicates whose refit did not converge are NaN in
    ``replicates`` and left out of every summary. ``confint(level)`` gives
    percentile intervals as lme4's ``confint(m, method = "boot", boot.type = "perc")``.
    """

    t0: pd.Series
    replicates: pd.DataFrame
    refits: RefitResult
    level: float
    seed: object = None

    @property
    def nsim(self) -> int:
        return len(self.replicates)

    def confint(self, level: float | None = None) -> pd.DataFrame:
        """Percentile intervals (boot's ``perc``: normal-scale interpolation of the order
        statistics, non-finite replicates dropped per parameter); columns lower, upper."""
        level = self.level if level is None else _check_level(level)
        a = np.array([(1 - level) / 2, (1 + level) / 2])
        rows = [_norm_inter(self.replicates[c].to_numpy(), a) for c in self.replicates.columns]
        return pd.DataFrame(rows, index=self.replicates.columns, columns=["lower", "upper"])

    def table(self) -> pd.DataFrame:
        """original, bias (mean − original) and std_error (SD) of every parameter, as
        print(bootMer) shows them (over the replicates with finite values)."""
        rep = self.replicates
        return pd.DataFrame({
            "original": self.t0,
            "bias": rep.mean(skipna=True) - self.t0,
            "std_error": rep.std(ddof=1, skipna=True),
        })

    def __repr__(self) -> str:
        return f"BootstrapResult({self.nsim} replicates, {int(self.refits.ok.sum())} ok)"


def bootstrap(m, nsim: int, seed=None, level: float = 0.95, progress: bool = True,
              chunk_size: int | None = None, use_u: bool = False) -> BootstrapResult:
    """Parametric bootstrap of fixed effects and variance components (lme4's ``bootMer``
    with the function of ``confint(method = "boot")``).

    ``nsim`` responses are simulated from ``m`` (:func:`simulate`, new random
    effects unless ``use_u``) and refitted in one batch (:func:`refit_many`, by
    the model's REML/ML setting). Returns a :class:`BootstrapResult` whose
    ``confint()`` holds percentile intervals at ``level``.
    """
    nsim = _check_nsim(nsim)
    level = _check_level(level)
    spec = _spec(m)
    Y = _simulate_spec(spec, nsim, seed, bool(use_u))
    res = _refit_spec(spec, Y, reml=spec.reml, progress=progress, chunk_size=chunk_size, desc="bootstrap")
    names = list(res.sdcor_names) + list(res.fixef_names)
    vals = np.column_stack([res.sdcor_values, res.beta])
    vals[~res.ok] = np.nan
    sdcor0 = _sdcor(spec.theta[None], np.array([spec.sigma]), spec.design, spec.layout)[0]
    t0_vals = np.concatenate([sdcor0, [spec.sigma], spec.beta])
    return BootstrapResult(
        t0=pd.Series(t0_vals, index=names, name="original"),
        replicates=pd.DataFrame(vals, columns=names),
        refits=res,
        level=level,
        seed=seed,
    )


# ---- power ---------------------------------------------------------------------------------------


def _chol_psd(S: np.ndarray) -> np.ndarray:
    """Lower-triangular T with T Tᵀ = S for positive semi-definite S (zero pivots allowed)."""
    k = S.shape[0]
    T = np.zeros((k, k))
    scale = max(float(np.max(np.abs(np.diag(S)))), 1e-300)
    for j in range(k):
        d = S[j, j] - T[j, :j] @ T[j, :j]
        if d < -1e-10 * scale:
            raise DataError("a covariance matrix in varcorr is not positive semi-definite")
        if d <= 1e-14 * scale:
            continue  # zero variance: the column stays 0
        T[j, j] = math.sqrt(d)
        for i in range(j + 1, k):
            T[i, j] = (S[i, j] - T[i, :j] @ T[j, :j]) / T[j, j]
    return T


def _with_parameters(spec: _Spec, fixef=None, theta=None, varcorr=None, sigma=None) -> _Spec:
    """``spec`` with some parameters replaced (for simulation).

    fixef: mapping of fixed-effect name → value; sigma: residual SD; theta: all
    of θ (relative to σ, lme4's order); varcorr: mapping of VarCorr name (the
    ``grp`` column of ``m.varcorr``) → variance (one-column term) or
    covariance matrix. A new σ alone keeps the random effects' variances.
    """
    d = spec.design
    beta, th, sig = spec.beta.copy(), spec.theta.copy(), spec.sigma
    if fixef is not None:
        if not isinstance(fixef, Mapping) and not isinstance(fixef, pd.Series):
            raise DataError("fixef must be a mapping of fixed-effect names to values, e.g. {'Days': 5.0}")
        for k, v in dict(fixef).items():
            if k not in d.fixef_names:
                raise DataError(
                    f"fixef: {k!r} is not a fixed effect of the model; its fixed effects are {list(d.fixef_names)}"
                )
            beta[d.fixef_names.index(k)] = float(v)
    if sigma is not None:
        if not np.isfinite(sigma) or sigma <= 0:
            raise DataError(f"sigma must be a positive number, got {sigma!r}")
        if theta is None and np.isfinite(sig) and sig > 0:
            th = th * (sig / float(sigma))  # same random-effect variances, new residual SD
        sig = float(sigma)
    if theta is not None:
        t = np.asarray(theta, float).ravel()
        if t.shape != th.shape or not np.all(np.isfinite(t)):
            raise DataError(f"theta must hold {len(th)} finite numbers (lme4's order: {_theta_names(d)})")
        th = t
    if varcorr is not None:
        if not isinstance(varcorr, Mapping):
            raise DataError("varcorr must be a mapping of VarCorr group names to variances or covariance matrices")
        names = [t.vc_name for t in d.terms]
        offs = np.cumsum([0] + [t.k * (t.k + 1) // 2 for t in d.terms])
        for key, val in varcorr.items():
            if key not in names:
                raise DataError(f"varcorr: {key!r} is not a random-effects term; the terms are {names}")
            t = names.index(key)
            k = d.terms[t].k
            S = np.atleast_2d(np.asarray(val, float))
            if S.shape != (k, k) or not np.all(np.isfinite(S)) or not np.allclose(S, S.T):
                raise DataError(f"varcorr[{key!r}] must be a symmetric {k}×{k} covariance matrix"
                                f"{' (or one variance)' if k == 1 else ''} for columns {list(d.terms[t].columns)}")
            T = _chol_psd(S) / sig
            th[offs[t] : offs[t + 1]] = [T[i, j] for j in range(k) for i in range(j, k)]
    return spec._replace(beta=beta, theta=th, sigma=sig, b=None)


def _spec_from_formula(formula: str, data: pd.DataFrame, REML: bool) -> _Spec:
    """A design without fitted parameters, for simulation from given values. A response
    column missing from ``data`` is added as a placeholder (its values are never used)."""
    from ._frontend import build_design
    from ._formula import parse_formula

    if not isinstance(data, pd.DataFrame):
        raise DataError("power(formula, ...) needs data=: the data frame of the design to simulate")
    lhs = parse_formula(formula).lhs.strip()
    if lhs not in data.columns and lhs.isidentifier():
        data = data.assign(**{lhs: 0.0})
    design = build_design(formula, data)
    layout, stats, _ = sufficient_stats(design, response=False)
    m = layout.ntheta
    return _Spec(design, layout, stats, bool(REML), np.full(design.p, np.nan), np.full(m, np.nan), float("nan"), None,
                 float("nan"))


def _clopper_pearson(x: int, n: int, level: float) -> tuple[float, float]:
    """Exact binomial interval (R's ``binom.test``, as simr reports)."""
    from scipy.stats import beta

    a = 1 - level
    lo = 0.0 if x == 0 else float(beta.ppf(a / 2, x, n - x + 1))
    hi = 1.0 if x == n else float(beta.ppf(1 - a / 2, x + 1, n - x))
    return lo, hi


def _wilson(x: int, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = x / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


_TESTS = {
    "z": "Wald z-test (normal reference distribution)",
    "t": "Wald t-test with n - p residual degrees of freedom",
    "lr": "likelihood-ratio test (ML refits of the model with and without the term, chi-squared reference)",
}


@dataclass(frozen=True, eq=False)
class PowerResult:
    """A simulation-based power estimate (:func:`power`), as simr's ``powerSim`` reports it.

    ``power`` = successes / trials (replicates with p < alpha among those whose
    refits succeeded), with a ``level`` Monte-Carlo interval ``lower``–``upper``;
    ``pvalues`` and ``estimates`` per replicate (NaN where a refit failed).
    """

    term: str
    effect: float
    test: str
    alpha: float
    level: float
    interval: str
    successes: int
    trials: int
    nsim: int
    power: float
    lower: float
    upper: float
    pvalues: np.ndarray
    estimates: np.ndarray
    seconds: float

    @property
    def failures(self) -> int:
        """Replicates left out because a refit failed or did not converge."""
        return self.nsim - self.trials

    def __str__(self) -> str:
        return (
            f"Power for predictor '{self.term}', ({100 * self.level:.0f}% confidence interval):\n"
            f"      {100 * self.power:.2f}% ({100 * self.lower:.2f}, {100 * self.upper:.2f})\n\n"
            f"Test: {_TESTS[self.test]}\n"
            f"Effect size for {self.term} is {self.effect:.4g}\n\n"
            f"Based on {self.nsim} simulations ({self.failures} failed refits), alpha = {self.alpha:g}"
        )

    def __repr__(self) -> str:
        return (f"PowerResult(term={self.term!r}, power={self.power:.4f} "
                f"[{self.lower:.4f}, {self.upper:.4f}], nsim={self.nsim})")


def _drop_fixef(spec: _Spec, j: int) -> _Spec:
    """The same model without fixed-effect column j (for the likelihood-ratio test)."""
    d = spec.design
    keep = [i for i in range(d.p) if i != j]
    d2 = dataclasses.replace(d, X=d.X[:, keep], fixef_names=tuple(d.fixef_names[i] for i in keep))
    layout, stats, _ = sufficient_stats(d2, response=False)
    return spec._replace(design=d2, layout=layout, stats=stats, beta=spec.beta[keep], b=None)


def power(m, term: str, effect: float | None = None, nsim: int = 200, alpha: float = 0.05, seed=None, *,
          data: pd.DataFrame | None = None, fixef=None, varcorr=None, theta=None, sigma=None,
          test: str = "z", level: float = 0.95, interval: str = "clopper-pearson", REML: bool | None = None,
          progress: bool = True, chunk_size: int | None = None) -> PowerResult:
    """Power to detect fixed effect ``term`` by simulation, as simr's ``powerSim``.

    ``nsim`` responses are simulated from the model ``m`` — a fitted model, or
    a formula with ``data``, ``fixef`` (every coefficient), ``varcorr`` (or
    ``theta``) and ``sigma`` — with any parameters replaced: ``effect`` sets the
    coefficient of ``term`` (simr's ``fixef(m)["x"] <- effect``), ``fixef`` any
    coefficients (``{"Days": 5.0}``), ``varcorr`` a term's variance or
    covariance matrix by its VarCorr name, ``theta`` all of θ, ``sigma`` the
    residual SD (a new σ alone keeps the random-effect variances). Every
    response is refitted in one batch and ``term`` is tested at ``alpha``:

    * ``test="z"`` (default): Wald z = β̂/SE(β̂) against N(0, 1), the refits by
      the model's REML/ML setting (``REML`` overrides). Anti-conservative in
      small samples (it ignores the uncertainty of SE);
    * ``"t"``: the same statistic against t with n − p degrees of freedom
      (lmerTest-style Satterthwaite degrees of freedom are a later addition);
    * ``"lr"``: likelihood ratio of ML refits with and without the term, χ²₁.

    Power = share of replicates with p < alpha among those whose refits
    succeeded, with an exact Clopper–Pearson interval (simr's) or ``interval=
    "wilson"``. Returns a :class:`PowerResult`.
    """
    from scipy import stats as sps

    nsim = _check_nsim(nsim)
    if getattr(m, "residual", None) is not None:
        raise InferenceError("power() does not simulate residual structures yet; fit the model without "
                             "correlation=/variance= for a power analysis")
    if hasattr(m, "family"):  # a GLMM: Wald z tests of its refits (GeneralizedLinearMixedModel.power)
        if test != "z" or any(v is not None for v in (data, varcorr, theta, sigma, REML)):
            raise DataError("power of a GLMM takes term, effect, nsim, alpha, seed, fixef, level and interval; "
                            "its test is Wald z (simr's default for GLMMs)")
        return m.power(term, effect, nsim, alpha, seed, fixef=fixef, level=level, interval=interval)
    level = _check_level(level)
    if not isinstance(alpha, (int, float, np.floating)) or not 0 < alpha < 1:
        raise DataError(f"alpha must be between 0 and 1, got {alpha!r}")
    if test not in _TESTS:
        raise DataError(f"test must be one of {sorted(_TESTS)}, got {test!r}")
    if interval not in ("clopper-pearson", "wilson"):
        raise DataError(f"interval must be 'clopper-pearson' or 'wilson', got {interval!r}")
    if isinstance(m, str):
        spec = _spec_from_formula(m, data, True if REML is None else _check_bool(REML, "REML"))
    else:
        spec = _spec(m)
    names = list(spec.design.fixef_names)
    if term not in names:
        raise DataError(f"term {term!r} is not a fixed effect of the model; its fixed effects are {names}")
    j = names.index(term)
    fx = dict(fixef or {})
    if effect is not None:
        fx[term] = float(effect)
    spec = _with_parameters(spec, fixef=fx, theta=theta, varcorr=varcorr, sigma=sigma)
    missing = [nm for nm, b in zip(names, spec.beta) if not np.isfinite(b)]
    if missing or not np.all(np.isfinite(spec.theta)) or not np.isfinite(spec.sigma):
        raise DataError(
            "simulating from a formula needs every parameter: fixef= for "
            f"{missing or 'all fixed effects'}, varcorr= (or theta=) for every term and sigma="
        )
    reml = spec.reml if REML is None else _check_bool(REML, "REML")
    t0 = time.perf_counter()
    Y = _simulate_spec(spec, nsim, seed, False)
    if test == "lr":
        full = _refit_spec(spec, Y, reml=False, progress=progress, chunk_size=chunk_size, desc="power (full)")
        red = _refit_spec(_drop_fixef(spec, j), Y, reml=False, progress=progress, chunk_size=chunk_size,
                          desc="power (reduced)")
        ok = full.ok & red.ok
        stat = np.maximum(red.objective - full.objective, 0.0)
        p = sps.chi2.sf(stat, 1)
        est = full.beta[:, j]
    else:
        full = _refit_spec(spec, Y, reml=reml, progress=progress, chunk_size=chunk_size, desc="power")
        ok = full.ok
        est = full.beta[:, j]
        z = est / np.sqrt(full.vcov[:, j, j])
        dfres = spec.design.n - spec.design.p
        p = 2 * sps.norm.sf(np.abs(z)) if test == "z" else 2 * sps.t.sf(np.abs(z), dfres)
    p = np.where(ok, p, np.nan)
    est = np.where(ok, est, np.nan)
    trials = int(ok.sum())
    if trials == 0:
        raise ConvergenceError("every refit failed; check the parameters given (a zero residual SD?)")
    x = int(np.sum(p[ok] < alpha))
    lo, hi = (_clopper_pearson if interval == "clopper-pearson" else _wilson)(x, trials, level)
    return PowerResult(
        term=term, effect=float(spec.beta[j]), test=test, alpha=float(alpha), level=level, interval=interval,
        successes=x, trials=trials, nsim=nsim, power=x / trials, lower=lo, upper=hi,
        pvalues=_readonly(p), estimates=_readonly(est), seconds=time.perf_counter() - t0,
    )


# ---- parametric-bootstrap likelihood-ratio test -----------------------------------------------------


@dataclass(frozen=True, eq=False)
class PBTestResult:
    """Parametric-bootstrap likelihood-ratio test (:func:`pb_test`), as pbkrtest's ``PBmodcomp``.

    ``stat``: LRT = deviance(m0) − deviance(m1), both by ML; ``df`` the
    difference in parameters; ``p_chisq``: its χ²_df p-value; ``p_value``: the
    bootstrap p-value (1 + #{LRT* ≥ LRT}) / (1 + n_valid); ``ref``: the LRT*
    of every replicate (NaN where a refit failed); ``p_value_pbkrtest``:
    pbkrtest's variant, which drops LRT* ≤ 0 from the reference set
    ((1 + #{LRT* > LRT}) / (1 + #{LRT* > 0})).
    """

    stat: float
    df: int
    p_chisq: float
    p_value: float
    p_value_pbkrtest: float
    nsim: int
    n_valid: int
    n_extreme: int
    ref: np.ndarray
    deviance0: float
    deviance1: float
    seconds: float

    def table(self) -> pd.DataFrame:
        """PBmodcomp's test table: rows LRT and PBtest; columns stat, df, p_value."""
        return pd.DataFrame(
            {"stat": [self.stat, self.stat], "df": [float(self.df), np.nan], "p_value": [self.p_chisq, self.p_value]},
            index=["LRT", "PBtest"],
        )

    def __repr__(self) -> str:
        return (f"PBTestResult(LRT={self.stat:.4g}, df={self.df}, p_PB={self.p_value:.4g} "
                f"({self.n_valid} of {self.nsim} replicates), p_chisq={self.p_chisq:.4g})")


def _ml_spec(m) -> _Spec:
    """The ML fit of ``m``'s model to its data: ``m`` itself if fitted by ML, else the fit
    ``lmer(m.formula, data, REML = False)`` would give (lme4's ``update(m, REML = FALSE)``),
    made from ``m``'s statistics with lmer's steps (Newton from lme4's start, signs,
    snapping) and compiled programs (for large crossed designs lmer would use the "ai"
    optimizer from moment estimates instead: the same optimum, reached more slowly here)."""
    spec = _spec(m)
    if not spec.reml:
        return spec
    layout, stats, zero = spec.layout, spec.stats, jnp.asarray(0.0)
    theta0 = lme4_start(layout) * theta_scale_host(stats, layout)
    res = jax.device_get(fit_jit(jnp.asarray(theta0), stats, zero, layout))
    status = int(res.state.status)
    if status not in (0, 1) or not np.isfinite(float(res.objective)):
        raise ConvergenceError(f"the ML refit of {m.formula!r} did not converge ({STATUS[status]})")
    theta, sol = np.asarray(res.theta, dtype=np.float64), res.solution
    return spec._replace(reml=False, beta=np.asarray(sol.beta), theta=theta, sigma=float(sol.sigma), b=None,
                         objective=float(sol.criterion))


def pb_test(m0, m1, nsim: int = 1000, seed=None, progress: bool = True, chunk_size: int | None = None) -> PBTestResult:
    """Parametric-bootstrap likelihood-ratio test of the smaller model ``m0`` against ``m1``
    (pbkrtest's ``PBmodcomp(m1, m0)``).

    Both models are refitted by ML when they were fitted by REML (as PBmodcomp
    does); LRT = dev₀ − dev₁ on the data. ``nsim`` responses are simulated from
    the ML fit of ``m0``, both models refitted by ML to each (one batch per
    model), LRT* = max(dev₀* − dev₁*, 0) per replicate, and
    p = (1 + #{LRT* ≥ LRT}) / (1 + number of replicates whose refits both
    converged). m0 and m1 must be fitted to the same response on the same rows. GLMMs (by ML
    already) are simulated with their ``simulate`` and refitted with ``refit_many``.
    """
    from scipy import stats as sps

    nsim = _check_nsim(nsim)
    if any(getattr(m, "residual", None) is not None for m in (m0, m1)):
        raise InferenceError("the parametric-bootstrap test does not simulate residual structures yet; use the "
                             "likelihood-ratio test (method='lrt')")
    d0, d1 = m0.design, m1.design
    if d0.n != d1.n or not np.array_equal(d0.y, d1.y) or not d0.rows.equals(d1.rows):
        raise DataError(
            "m0 and m1 must be fitted to the same response on the same rows; refit them on a data "
            "frame without missing values in the variables of either formula"
        )
    df = int(m1.npar - m0.npar)
    if df <= 0:
        raise DataError(
            f"m0 must be the smaller model: it has {m0.npar} parameters and m1 {m1.npar}; swap them"
        )
    t0 = time.perf_counter()
    if hasattr(m0, "family"):  # GLMMs: simulate from m0, refit both in one batch each (refit_many)
        dev0, dev1 = float(m0.objective), float(m1.objective)
        stat = max(dev0 - dev1, 0.0)
        Y = m0.simulate(nsim, seed)
        f0, f1 = m0.refit_many(Y), m1.refit_many(Y)
        ok = f0["converged"].to_numpy() & f1["converged"].to_numpy()
        ref = np.where(ok, np.maximum(2.0 * (f1["loglik"].to_numpy() - f0["loglik"].to_numpy()), 0.0), np.nan)
    else:
        s0, s1 = _ml_spec(m0), _ml_spec(m1)
        dev0, dev1 = float(s0.objective), float(s1.objective)
        stat = max(dev0 - dev1, 0.0)
        Y = _simulate_spec(s0, nsim, seed, False)
        r0 = _refit_spec(s0, Y, reml=False, progress=progress, chunk_size=chunk_size, desc="PB test (m0)")
        r1 = _refit_spec(s1, Y, reml=False, progress=progress, chunk_size=chunk_size, desc="PB test (m1)")
        ok = r0.ok & r1.ok
        ref = np.where(ok, np.maximum(r0.objective - r1.objective, 0.0), np.nan)
    valid = ref[ok]
    n_ext = int(np.sum(valid >= stat))
    pos = valid[valid > 0]
    return PBTestResult(
        stat=float(stat),
        df=df,
        p_chisq=float(sps.chi2.sf(stat, df)),
        p_value=(1 + n_ext) / (1 + len(valid)),
        p_value_pbkrtest=(1 + int(np.sum(pos > stat))) / (1 + len(pos)),
        nsim=nsim,
        n_valid=int(len(valid)),
        n_extreme=n_ext,
        ref=_readonly(ref),
        deviance0=dev0,
        deviance1=dev1,
        seconds=time.perf_counter() - t0,
    )

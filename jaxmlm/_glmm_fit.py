"""Stage 5 for GLMMs — the fit: lme4's two stages, each a Newton optimization with exact derivatives.

As lme4's ``glmer`` (Bates et al. 2015; lme4's ``optimizeGlmer``):

1. a GLM fit of the fixed effects (PIRLS with θ = 0) gives β's start;
2. ``nAGQ = 0``: stage 1 minimizes the ``nAGQ = 0`` deviance over θ (β and u both from
   PIRLS) from lme4's start (1 on template diagonals, 0 below);
3. ``nAGQ ≥ 1``: stage 2 minimizes the Laplace or quadrature deviance over (θ, β) — and,
   for the negative binomial, over log φ too (lme4's ``glmer.nb`` alternates a
   one-dimensional search over φ with refits; the joint optimum is the same). lme4 starts
   it from stage 1's optimum; Newton with exact derivatives converges from lme4's θ₀ and
   the GLM's β as well (on every reference case), so stage 1 is not run: one program less
   to compile.

Each stage is :func:`~jaxmlm._optimize._newton` (modified Newton, Armijo backtracking)
with the gradient and Hessian by autodiff through :func:`~jaxmlm._pirls.laplace_deviance`.
The deviance is even in each column of every template (flip u's sign with it), so θ's
diagonals are free and made positive afterwards; a diagonal that ends near 0 is set to 0
when that does not raise the deviance (lmer's snapping), and stage 2 then runs again
from there (a diagonal at 0 stays there: its gradient and cross-derivatives vanish).

Every stage is one compiled program per (layout, family, nAGQ): the data, starts and
tolerances are arguments.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _compiled, _x64  # noqa: F401
from ._fit import snap_host
from ._implicit import RowData
from ._objective import templates
from ._optimize import NEAR, OptState, _newton, canonical_theta, diagonal_mask, lme4_start
from ._pirls import Modes, _b, _re_eta, laplace_deviance, linear_predictor, pirls, pirls_step
from ._solution import conditional_variances
from ._stats import Layout
from .families import Family

__all__ = ["GlmmFit", "fit_glmm", "glm_start"]


class GlmmFit(NamedTuple):
    """Host results of a GLMM fit (numpy): θ̂, β̂, φ̂ (nan without one), the deviance, the
    modes, b̂ and Var(b | y) in engine blocks, vcov(β̂), the optimizer state of stage 1
    (nAGQ = 0; else None) or stage 2, PIRLS's record, snapped diagonals, the starts, and the
    linear predictor η̂ and fitted means μ̂ per row."""

    theta: np.ndarray
    beta: np.ndarray
    phi: float
    deviance: float
    modes: Modes
    b1: np.ndarray
    b_rest: np.ndarray
    var1: np.ndarray
    var_rest: tuple
    vcov: np.ndarray
    hessian: np.ndarray | None
    stage1: OptState
    stage2: OptState | None
    snapped: tuple
    theta_start: np.ndarray
    beta_start: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    float32: OptState | None = None


def _u_layout(layout: Layout) -> Layout:
    return layout._replace(p=0)


@partial(_compiled.jit, static_argnames=("layout", "family"))
def glm_start(rows: RowData, index: tuple, phi, layout: Layout, family: Family) -> Modes:
    """β of the GLM without random effects (PIRLS at θ = 0 from R's ``mustart``), u = 0."""
    dt = rows.X.dtype
    eta0 = family.linkfun(family.mustart(rows.y, rows.weights))
    theta0 = jnp.zeros(layout.ntheta, dt)
    u1 = jnp.zeros((layout.l1, layout.k1), dt)
    u2 = jnp.zeros((layout.qr,), dt)
    beta, *_ = pirls_step(theta0, jnp.zeros(layout.p, dt), eta0, rows, index, layout, family, phi, True)
    m = pirls(theta0, beta, u1, u2, linear_predictor(theta0, beta, u1, u2, rows, layout), rows, index, layout,
              family, phi, True)
    return Modes(m.beta, u1, u2, m.pdev, m.iterations, m.converged)


def nb_start(rows: RowData, index: tuple, layout: Layout):
    """The negative binomial θ's start, MASS's ``theta.ml`` start n / Σ (y/μ − 1)² at the Poisson
    GLM's μ (traceable: a batched refit makes it per replicate)."""
    from .families import Poisson

    g = glm_start(rows, index, jnp.zeros((), rows.X.dtype), layout, Poisson())
    mu = jnp.exp(rows.offset + rows.X @ g.beta)
    return rows.y.shape[0] / jnp.maximum(jnp.sum((rows.y / mu - 1.0) ** 2), 1e-8)


def _newton_once(f, x0, start: Modes, max_iter, ftol, gtol, mask, near=None):
    """:func:`~jaxmlm._optimize._newton` on ``f(x, modes) -> (deviance, modes)`` with (f, ∇f, ∇²f) by
    autodiff at every trial point (``trial_fgh``: one copy of the deviance and its PIRLS loop
    in the program instead of a value copy for the line search beside the derivative copy —
    half the compile time; crossed_bern's stage 2: 24 → 11 s), each trial's PIRLS started
    from the last accepted point's modes; ``near`` as :func:`~jaxmlm._optimize._newton`'s.
    Returns (state, (∇²f, modes) at the state's x)."""

    def fgh(x, kept):
        def value(v):
            dev, m = f(v, kept[1])
            return dev, m

        def grad_aux(v):
            (dev, m), g = jax.value_and_grad(value, has_aux=True)(v)
            return g, (g, dev, m)

        H, (g, dev, m) = jax.jacfwd(grad_aux, has_aux=True)(x)
        return dev, g, H, (H, m)

    aux0 = (jnp.zeros((len(x0), len(x0)), x0.dtype), start)
    return _newton(None, x0, max_iter, ftol, gtol, fgh=fgh, diag=jnp.asarray(mask), trial_fgh=True, aux0=aux0,
                   aux_in=True, near=near)


def _split(x, layout: Layout, family: Family):
    m, p = layout.ntheta, layout.p
    theta, beta = x[:m], x[m : m + p]
    if family.estimates_phi:
        phi = jnp.exp(x[m + p])
    else:  # a fixed negative binomial θ, or no φ at all
        phi = jnp.asarray(family.fixed_phi, x.dtype)
    return theta, beta, phi


@partial(_compiled.jit, static_argnames=("layout", "family", "max_iter"))
def stage1(theta0, start: Modes, rows: RowData, index: tuple, phi, layout: Layout, family: Family,
           max_iter: int = 200, ftol=1e-10, gtol=1e-6) -> tuple[OptState, Modes]:
    """Minimize the nAGQ = 0 deviance over θ: (optimizer state, PIRLS modes at its θ)."""

    def f(theta, modes):
        return laplace_deviance(theta, start.beta, phi, modes, rows, index, layout, family, 1, joint=True)

    st, (_, m) = _newton_once(f, theta0, start, max_iter, ftol, gtol, diagonal_mask(layout), NEAR)
    return st, m


@partial(_compiled.jit, static_argnames=("layout", "family", "nagq", "max_iter"))
def stage2(x0, start: Modes, rows: RowData, index: tuple, layout: Layout, family: Family, nagq: int,
           max_iter: int = 200, ftol=1e-10, gtol=1e-6) -> tuple[OptState, Modes, jax.Array]:
    """Minimize the Laplace / quadrature deviance over x = (θ, β[, log φ]): (optimizer state, PIRLS
    modes, the deviance's exact Hessian at the optimizer's x — in its coordinates, with
    the raw θ signs: flipping a template column's sign flips those rows and columns only)."""
    lay_u = _u_layout(layout)
    mask = np.concatenate([diagonal_mask(layout), np.zeros(len(x0) - layout.ntheta, bool)])

    def f(x, modes):
        theta, beta, phi = _split(x, layout, family)
        return laplace_deviance(theta, beta, phi, modes, rows, index, lay_u, family, nagq)

    st, (H, m) = _newton_once(f, x0, start, max_iter, ftol, gtol, mask, NEAR)
    return st, m, H


@partial(_compiled.jit, static_argnames=("layout", "family", "nagq", "joint"))
def deviance_at(x, start: Modes, rows: RowData, index: tuple, layout: Layout, family: Family, nagq: int,
                joint: bool = False):
    """The deviance at x = (θ, β[, log φ]) (``joint``: x = θ, the nAGQ = 0 deviance)."""
    if joint:
        return laplace_deviance(x, start.beta, jnp.asarray(family.fixed_phi, x.dtype), start, rows, index, layout,
                                family, 1,
                                joint=True)[0]
    theta, beta, phi = _split(x, layout, family)
    return laplace_deviance(theta, beta, phi, start, rows, index, _u_layout(layout), family, nagq)[0]


@partial(_compiled.jit, static_argnames=("layout", "family", "joint"))
def estimates(theta, beta, phi, m: Modes, rows: RowData, index: tuple, layout: Layout, family: Family,
              joint: bool):
    """At the optimum: b̂ = Λû, Var(b | y) (σ² = 1, lme4's condVar) from the factor at û's weights,
    and (RXᵀRX)⁻¹ of the joint system (nAGQ = 0's vcov; NaN otherwise)."""
    b1, b_rest = _b(theta, m.u1, m.u2, layout)
    eta = rows.offset + rows.X @ beta + _re_eta(b1, b_rest, rows)
    lay = layout if joint else _u_layout(layout)
    step = pirls_step(theta, beta, eta, rows, index, lay, family, phi, joint)
    var1, var_rest = conditional_variances(step.fac, templates(theta, layout), step.stats, lay, 1.0)
    p = layout.p
    if joint:  # vcov of nAGQ = 0: (R_Xᵀ R_X)⁻¹ of the joint system at û
        RX = step.fac.R[:p, :p]
        RXinv = jax.scipy.linalg.solve_triangular(RX, jnp.eye(p, dtype=RX.dtype), lower=True)
        vcov = RXinv.T @ RXinv
    else:  # nAGQ ≥ 1 takes vcov from the deviance's Hessian (fit_glmm)
        vcov = jnp.full((p, p), jnp.nan, eta.dtype)
    return b1, b_rest, var1, var_rest, vcov, eta, family.linkinv(eta)


@partial(_compiled.jit, static_argnames=("layout", "family", "nagq", "max_iter", "from_glm"))
def fit_program(x0, start: Modes, rows: RowData, index: tuple, phi0, layout: Layout, family: Family, nagq: int,
                 max_iter: int, from_glm: bool):
    """The whole fit as one program (one dispatch, one transfer back; the pieces are the jitted
    functions above, inlined): the GLM start (``from_glm``; else ``start`` as given), the stage
    that ``nagq`` calls for from x0 (θ₀ for nAGQ = 0; else (θ₀, β₀[, log φ₀]), β₀ replaced by
    the GLM's when ``from_glm``), and the estimates at its optimum."""
    m_theta = layout.ntheta
    if from_glm:
        start = glm_start(rows, index, phi0, layout, family)
        if nagq > 0:
            x0 = x0.at[m_theta : m_theta + layout.p].set(start.beta)
    if nagq == 0:
        st, m = stage1(x0, start, rows, index, phi0, layout, family, max_iter)
        theta, beta, phi, H = st.x, m.beta, phi0, jnp.zeros((m_theta, m_theta), x0.dtype)
    else:
        st, m, H = stage2(x0, start, rows, index, layout, family, nagq, max_iter)
        theta, beta, phi = _split(st.x, layout, family)
    est = estimates(theta, beta, phi, m, rows, index, layout, family, nagq == 0)
    return start.beta, st, m, H, beta, phi, est


def _as(tree, dtype):
    """The tree's floating-point leaves as ``dtype`` (numpy; integer and boolean leaves unchanged)."""
    def cast(a):
        if isinstance(a, float):  # a host scalar stays one
            return a
        return np.asarray(a, dtype) if np.asarray(a).dtype.kind == "f" else a

    return jax.tree.map(cast, tree)


def fit_glmm(rows: RowData, index: tuple, layout: Layout, family: Family, nagq: int = 1, max_iter: int = 200,
             phi0: float | None = None, dtype: str = "float64", polish: bool = True) -> GlmmFit:
    """lme4's glmer fit (module docstring) of the rows: :func:`fit_program`, then on the host θ's
    canonical signs and lmer's boundary snapping (a snapped fit runs the stage again from
    there, started at the first fit's modes).

    ``dtype="float32"``: the program runs on the rows rounded to float32 (the arithmetic an
    accelerator is fast at); with ``polish`` the same program in float64 then continues from
    its optimum and modes (usually one or two Newton steps), so the estimates are those of a
    float64 fit; without, they stay float32's (accuracy: benchmarks/results/float32_accuracy.md).
    ``float32`` of the result is the float32 stage's optimizer state."""
    dt = np.float64
    phi_start = np.asarray(phi0 if phi0 is not None else 1.0 if family.estimates_phi else family.fixed_phi, dt)
    theta0 = np.asarray(lme4_start(layout), dt)
    ntheta, p = layout.ntheta, layout.p
    extra = [np.log(float(phi_start))] if family.estimates_phi else []
    x0 = theta0 if nagq == 0 else np.concatenate([theta0, np.zeros(p), extra])
    st32 = None
    if dtype == "float32":
        f32 = np.float32
        out = jax.device_get(fit_program(x0.astype(f32), None, _as(rows, f32), index, phi_start.astype(f32), layout,
                                         family, nagq, max_iter, True))
        st32 = _as(out[1], dt)
        if polish and int(st32.status) == 4:  # float32 failed (overflow): the float64 fit from the start
            out = jax.device_get(fit_program(x0, None, rows, index, phi_start, layout, family, nagq, max_iter, True))
        elif polish:
            beta_start = np.asarray(out[0], dt)
            out = jax.device_get(fit_program(np.asarray(st32.x, dt), _as(out[2], dt), rows, index, phi_start, layout,
                                             family, nagq, max_iter, False))
            out = (beta_start, *out[1:])
        else:  # everything after runs in float32 too
            dt, rows, phi_start = f32, _as(rows, f32), phi_start.astype(f32)
    else:
        out = jax.device_get(fit_program(x0, None, rows, index, phi_start, layout, family, nagq, max_iter, True))
    beta_start, st, m, H, beta, phi, est = out
    x = np.array(st.x, dtype=dt)
    x[:ntheta] = canonical_theta(x[:ntheta], layout)
    f = float(st.f)

    def crit(t):
        xt = x.copy()
        xt[:ntheta] = t
        return float(deviance_at(jnp.asarray(xt), m, rows, index, layout, family, nagq, nagq == 0)), None

    # in float32 a candidate's deviance is known to its rounding noise only
    noise = 64 * float(np.finfo(np.float32).eps) * max(1.0, abs(f)) if dt == np.float32 else 0.0
    theta, _, snapped, _ = snap_host(x[:ntheta], f, np.ones(ntheta, dt), layout, crit, noise)
    if snapped:
        x[:ntheta] = theta
        out = jax.device_get(fit_program(x, m, rows, index, phi_start, layout, family, nagq, max_iter, False))
        _, st, m, H, beta, phi, est = out
        x = np.array(st.x, dtype=dt)
        x[:ntheta] = canonical_theta(x[:ntheta], layout)
        f = float(st.f)
    theta = x[:ntheta]
    b1, b_rest, var1, var_rest, vcov0, eta, mu = est
    if nagq == 0:
        vcov = np.asarray(vcov0)
        H = None
        st1, st2 = st, None
    else:
        # lme4: vcov(β̂) from the Hessian of the deviance in (θ, β): the β block of 2 H⁻¹. The
        # optimizer's H is at its raw θ; a sign flip of a θ column is an orthogonal similarity
        # that leaves the β rows and columns of H⁻¹ alone.
        H = np.asarray(H, np.float64)
        # conditional on the negative binomial's θ, as lme4 (its glmer.nb refits at a fixed θ)
        Hb = H[: ntheta + p, : ntheta + p]
        vcov = np.linalg.pinv(0.5 * Hb)[ntheta : ntheta + p, ntheta : ntheta + p]
        st1, st2 = None, st
    fit = GlmmFit(theta, np.asarray(beta), float(phi) if family.has_phi else float("nan"), f, m,
                   np.asarray(b1), np.asarray(b_rest), np.asarray(var1), tuple(np.asarray(v) for v in var_rest),
                   vcov, H, st1, st2, tuple(snapped), theta0, np.asarray(beta_start), np.asarray(eta), np.asarray(mu),
                   st32)
    return fit if dt == np.float64 else _as(fit, np.float64)


class Refits(NamedTuple):
    """Batched refits (arrays with a leading replicate axis): θ̂ (raw, signs as the optimizer left
    them), β̂, the deviance, the optimizer's status of the last stage, PIRLS's convergence, and
    whether any fitted mean sits on the link's clamp (a binomial probability numerically 0
    or 1: separation's sign), SE(β̂) from the deviance's Hessian (NaN for nAGQ = 0; for the
    negative binomial conditional on its θ, as lme4), and φ̂ (the negative binomial's θ where
    estimated, else the family's fixed value)."""

    theta: jax.Array
    beta: jax.Array
    deviance: jax.Array
    status: jax.Array
    pirls_converged: jax.Array
    edge: jax.Array
    se: jax.Array
    phi: jax.Array


@partial(_compiled.jit, static_argnames=("layout", "family", "nagq", "max_iter"))
def refit_batch(Y, rows: RowData, index: tuple, layout: Layout, family: Family, nagq: int,
                max_iter: int = 100) -> Refits:
    """The whole glmer fit (GLM start, stage 1, stage 2) of every response in Y (nsim, n) as one
    vmapped program: every replicate runs the same iterations as an individual fit, and one
    that fails (a non-finite deviance: separation, overflow) ends with status 4 without
    touching the others."""
    dt = rows.X.dtype
    phi = jnp.asarray(family.fixed_phi, dt)  # a fixed negative binomial θ
    theta0 = jnp.asarray(lme4_start(layout), dt)
    m = layout.ntheta

    def one(y):
        r = rows._replace(y=y)
        phi0 = nb_start(r, index, layout) if family.estimates_phi else phi
        start = glm_start(r, index, phi0, layout, family)
        p = layout.p
        if nagq == 0:
            st, mm = stage1(theta0, start, r, index, phi, layout, family, max_iter)
            theta, beta, phi_hat = st.x, mm.beta, phi
            se = jnp.full(p, jnp.nan, dt)
        else:
            extra = [jnp.log(phi0)[None]] if family.estimates_phi else []
            x0 = jnp.concatenate([theta0, start.beta, *extra])
            st, mm, H = stage2(x0, start, r, index, layout, family, nagq, max_iter)
            theta, beta, phi_hat = _split(st.x, layout, family)
            se = jnp.sqrt(jnp.diagonal(jnp.linalg.pinv(0.5 * H[: m + p, : m + p]))[m:])
        mu = family.linkinv(linear_predictor(theta, beta, mm.u1, mm.u2, r, layout))
        edge = jnp.any((mu < 1e-8) | (mu > 1 - 1e-8)) if family.name == "binomial" else jnp.asarray(False)
        return Refits(theta, beta, st.f, st.status, mm.converged, edge, se, jnp.asarray(phi_hat, dt))

    return jax.vmap(one)(Y)

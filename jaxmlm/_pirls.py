"""Stage 4 for GLMMs — PIRLS and the Laplace / adaptive Gauss–Hermite deviance.

The conditional modes û of a GLMM at (θ, β) minimize the penalized deviance

    P(u) = Σᵢ aᵢ(yᵢ, μᵢ) + ‖u‖²,     μ = g⁻¹(η),  η = o + Xβ + ZΛu

(aᵢ = −2 log p(yᵢ | μᵢ) with every constant: the family's ``aic_terms``). Penalized
iteratively reweighted least squares (PIRLS; Bates et al. 2015, lme4's vignette
"Computational methods", and MixedModels.jl's ``pirls!``) minimizes it by Fisher scoring:
each step is a weighted linear mixed model with working weights wᵢ = pᵢ μ'ᵢ² / V(μᵢ)
(p the prior weights) and working response zᵢ = ηᵢ − oᵢ + (yᵢ − μᵢ)/μ'ᵢ — exactly the
statistics, factorization and back substitution of the linear engine
(:mod:`jaxmlm._stats`, :func:`~jaxmlm._objective.factorize`,
:func:`~jaxmlm._solution.conditional_modes`), accumulated again from the rows inside the
compiled loop. With β fixed the step has no fixed-effects columns (a layout with p = 0 and
Xβ in the offset); lme4's ``nAGQ = 0`` updates β and u together (the layout's own X).

The Laplace approximation to −2 log-likelihood (lme4's ``glmerLaplace``) is

    d(θ, β) = Σᵢ aᵢ(yᵢ, μ̂ᵢ) + ‖û‖² + log|L|²,    L Lᵀ = ΛᵀZᵀWZΛ + I  at û's weights;

with ``nAGQ = 0`` the same at (β̂, û) of the joint PIRLS. For one scalar random-effects
term, adaptive Gauss–Hermite quadrature (``nAGQ = k``) replaces each level's Laplace term
by k nodes about its mode, with the conditional SD 1/L_g as scale (Pinheiro & Bates 1995,
*J. Comput. Graph. Stat.* 4:12–35; lme4's ``glmerAGQ``):

    d_g = −2 log σ_g − 2 log Σ_k ω_k exp(−(P_g(û_g + σ_g z_k) − z_k²)/2)

with (z_k, ω_k) the Gauss–Hermite rule for the standard normal density (Σ ω_k = 1).
k = 1 is the Laplace term.

Exact derivatives in (θ, β) without differentiating through the iteration: PIRLS runs
to convergence with its inputs' gradients stopped, and a few more Fisher-scoring steps
are taken from that û inside the differentiated function. At the fixed point a Newton step
has zero derivative with respect to its starting point, so one step gives û's exact first
derivatives and two its exact second ones — for canonical links, where Fisher scoring is
Newton's method (logit, Poisson's log). For other links (probit, cloglog, the negative
binomial) each step shrinks the derivatives' error by the contraction factor of Fisher
scoring, and more steps are taken (:data:`STEPS_NONCANONICAL`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from . import _x64  # noqa: F401
from ._implicit import RowData
from ._objective import factorize, lam_rest, templates
from ._solution import conditional_modes
from ._stats import Layout, Stats, a22_blocks, _accumulate
from .families import Family

__all__ = ["Modes", "pirls", "pirls_step", "laplace_deviance", "gh_rule", "STEPS_CANONICAL",
           "STEPS_NONCANONICAL", "working_stats", "Step", "linear_predictor"]

#: Fisher-scoring steps taken inside the differentiated function (module docstring).
STEPS_CANONICAL = 2
STEPS_NONCANONICAL = 8
#: PIRLS's convergence: |ΔP| ≤ PIRLS_TOL·(1 + |P|) between steps, at most PIRLS_MAX_ITER steps.
PIRLS_TOL = 1e-12
#: The same in float32 (glmer's ``dtype="float32"``), where P's rounding noise is ~1e-7 of P.
PIRLS_TOL_32 = 1e-6
PIRLS_MAX_ITER = 60
#: Step halvings when a PIRLS step raises P (lme4 and MixedModels.jl halve up to 10 times).
MAX_HALVINGS = 10


class Modes(NamedTuple):
    """A PIRLS iterate: β (p,), the spherical modes u₁ (l₁, k₁) and u_r (q_r,), P there, and
    how the loop ended (iterations, converged)."""

    beta: jax.Array
    u1: jax.Array
    u2: jax.Array
    pdev: jax.Array
    iterations: jax.Array
    converged: jax.Array


def gh_rule(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes and weights for ∫ f(z) φ(z) dz (φ the standard normal density):
    numpy's probabilists' rule, weights normalized to sum 1."""
    z, w = np.polynomial.hermite_e.hermegauss(k)
    return z, w / w.sum()


def _re_eta(b1: jax.Array, b_rest: jax.Array, rows: RowData) -> jax.Array:
    """Z b for b = Λu: block 1's columns at each row's level, and the other blocks' entries."""
    eta = jnp.sum(rows.Z1 * b1[rows.g1], axis=1)
    if rows.V.shape[1]:
        eta = eta + jnp.sum(rows.V * b_rest[rows.P], axis=1)
    return eta


def _b(theta, u1, u2, layout: Layout):
    """b = Λu per block: (b₁ (l₁, k₁), b_r (q_r,))."""
    Ts = templates(theta, layout)
    b1 = jnp.einsum("ij,gj->gi", Ts[0], u1)
    b_rest = lam_rest(u2[:, None], Ts[1:], layout)[:, 0] if layout.qr else u2
    return b1, b_rest


def linear_predictor(theta, beta, u1, u2, rows: RowData, layout: Layout) -> jax.Array:
    """η = o + Xβ + ZΛu."""
    b1, b_rest = _b(theta, u1, u2, layout)
    return rows.offset + rows.X @ beta + _re_eta(b1, b_rest, rows)


def working_stats(index: tuple, layout: Layout, rows: RowData, X: jax.Array, z: jax.Array, w: jax.Array) -> Stats:
    """The linear engine's statistics of the working problem: rows √w·[Z X z] (prior weights
    and working weights in w), no centring (β₀ = 0)."""
    dt = X.dtype
    sw = jnp.sqrt(jnp.maximum(w, 0.0))
    W = jnp.concatenate([X * sw[:, None], (z * sw)[:, None]], axis=1)
    acc = _accumulate(None, W, rows.g1, rows.Z1 * sw[:, None], rows.P, rows.V * sw[:, None], rows.E,
                      l1=layout.l1, qr=layout.qr, nnz=layout.nnz, kr=a22_blocks(layout))
    n = jnp.sum(w > 0).astype(dt)
    return Stats(n, *acc, *index, jnp.zeros(X.shape[1], dt), jnp.zeros((), dt), jnp.asarray(float(X.shape[1]), dt))


def _working(family: Family, eta, rows: RowData, phi):
    mu = family.linkinv(eta)
    d = family.mu_eta(eta)
    w = rows.weights * d**2 / family.variance(mu, phi)
    z = eta - rows.offset + (rows.y - mu) / d
    return mu, w, z


def penalized_deviance(family: Family, eta, u1, u2, rows: RowData, phi):
    """P = Σ aᵢ(yᵢ, μᵢ) + ‖u‖² (aᵢ with its constants: P differs from lme4's Σ devresid + ‖u‖²
    by a constant of the data)."""
    mu = family.linkinv(eta)
    return jnp.sum(family.aic_terms(rows.y, mu, rows.weights, phi)) + jnp.sum(u1**2) + jnp.sum(u2**2)


class Step(NamedTuple):
    """One PIRLS step's result: β, u₁, u_r, and the factor and statistics it solved with
    (at the step's starting weights)."""

    beta: jax.Array
    u1: jax.Array
    u2: jax.Array
    fac: object
    stats: Stats


def pirls_step(theta, beta, eta, rows: RowData, index: tuple, layout: Layout, family: Family, phi, joint: bool):
    """One Fisher-scoring step from the linear predictor η (a :class:`Step`).

    ``joint``: β and u together (``layout`` with its X); else u alone at the given β
    (``layout`` must then have p = 0: Xβ moves into the offset)."""
    mu, w, z = _working(family, eta, rows, phi)
    if joint:
        stats = working_stats(index, layout, rows, rows.X, z, w)
        fac = factorize(theta, stats, layout)
        p = layout.p
        R = fac.R
        beta = solve_triangular(R[:p, :p].T, R[p, :p], lower=False)
    else:
        X0 = rows.X[:, :0]
        stats = working_stats(index, layout, rows, X0, z - rows.X @ beta, w)
        fac = factorize(theta, stats, layout)
    u1, u2, _, _ = conditional_modes(fac, templates(theta, layout), stats, layout,
                                     beta if joint else jnp.zeros(0, eta.dtype))
    return Step(beta, u1, u2, fac, stats)


def pirls(theta, beta, u1, u2, eta0, rows: RowData, index: tuple, layout: Layout, family: Family, phi,
          joint: bool) -> Modes:
    """PIRLS to convergence from ``eta0`` (the first step's working weights) with step halving
    on P (a step that raises P is halved, at most :data:`MAX_HALVINGS` times). Traceable and
    ``vmap``-able; gradients are not taken through it (see the module docstring)."""

    def pdev(b, v1, v2):
        eta = linear_predictor(theta, b, v1, v2, rows, layout)
        return penalized_deviance(family, eta, v1, v2, rows, phi), eta

    b_new, v1, v2, *_ = pirls_step(theta, beta, eta0, rows, index, layout, family, phi, joint)
    p_new, eta_new = pdev(b_new, v1, v2)
    p_old, eta_old = pdev(beta, u1, u2)
    # The first step comes from eta0, not from (β, u): keep whichever is better.
    better = p_new <= p_old
    pick = lambda a, b: jnp.where(better, a, b)  # noqa: E731
    beta0 = pick(b_new, beta) if joint else beta
    st = (beta0, pick(v1, u1), pick(v2, u2), jnp.minimum(p_new, p_old), pick(eta_new, eta_old),
          jnp.asarray(0), jnp.asarray(False))

    # a step may raise P by rounding noise and still be taken
    tol, rise = (PIRLS_TOL, 1e-10) if eta0.dtype == jnp.float64 else (PIRLS_TOL_32, 1e-6)

    def cond(s):
        return (s[5] < PIRLS_MAX_ITER) & ~s[6]

    def body(s):
        b, v1, v2, p, eta, it, _ = s
        bn, n1, n2, *_ = pirls_step(theta, b, eta, rows, index, layout, family, phi, joint)

        def toward(a):  # the point a of the way from (b, v) to the step's result
            return b + a * (bn - b), v1 + a * (n1 - v1), v2 + a * (n2 - v2)

        def accepted(pn):
            return jnp.isfinite(pn) & (pn <= p + rise * jnp.abs(p))

        def halve(c):  # (step fraction, P and η there, halvings so far)
            a, _, _, k = c
            return (0.5 * a, *pdev(*toward(0.5 * a)), k + 1)

        pn, en = pdev(bn, n1, n2)
        a, pn, en, _ = jax.lax.while_loop(lambda c: ~accepted(c[1]) & (c[3] < MAX_HALVINGS), halve,
                                          (jnp.asarray(1.0, p.dtype), pn, en, 0))
        ok = accepted(pn)
        bt, t1, t2 = toward(a)
        conv = jnp.abs(p - pn) <= tol * (1.0 + jnp.abs(pn))
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return (keep(bt, b), keep(t1, v1), keep(t2, v2), keep(pn, p), keep(en, eta), it + 1, conv | ~ok)

    b, v1, v2, p, _, it, done = jax.lax.while_loop(cond, body, st)
    return Modes(b, v1, v2, p, it, done & (it < PIRLS_MAX_ITER))


def _agq_terms(theta, beta, u1, fac, rows: RowData, layout: Layout, family: Family, phi, nagq: int):
    """Σ_g d_g of the module docstring for one scalar term (k₁ = 1, no other blocks)."""
    z, w = gh_rule(nagq)
    dt = u1.dtype
    lam = templates(theta, layout)[0][0, 0]
    sd = 1.0 / fac.L1[:, 0, 0]  # conditional SD of u_g
    base = rows.offset + rows.X @ beta
    l1 = layout.l1

    def level_dev(zk):
        ug = u1[:, 0] + zk * sd
        eta = base + rows.Z1[:, 0] * lam * ug[rows.g1]
        a = family.aic_terms(rows.y, family.linkinv(eta), rows.weights, phi)
        return jax.ops.segment_sum(a, rows.g1, l1) + ug**2 - zk**2

    D = jax.vmap(level_dev)(jnp.asarray(z, dt))  # (k, l1)
    logw = jnp.log(jnp.asarray(w, dt))[:, None]
    return jnp.sum(2.0 * jnp.log(fac.L1[:, 0, 0]) - 2.0 * jax.nn.logsumexp(logw - 0.5 * D, axis=0))


def laplace_deviance(theta, beta, phi, start: Modes, rows: RowData, index: tuple, layout: Layout, family: Family,
                     nagq: int = 1, joint: bool = False):
    """The Laplace (``nagq`` = 1), quadrature (``nagq`` > 1) or ``nAGQ = 0`` (``joint``: β from
    PIRLS, the given β only its start) deviance, −2 log-likelihood, and the PIRLS result.

    ``layout``: p = 0 unless ``joint``. Differentiable in θ, β (not with ``joint``) and φ:
    PIRLS runs with stopped gradients from ``start``, then the extra Fisher-scoring steps of
    the module docstring run inside the differentiated function."""
    sg = jax.lax.stop_gradient
    ts, bs, ps = sg(theta), sg(beta), sg(phi)
    eta0 = linear_predictor(ts, start.beta if joint else bs, start.u1, start.u2, rows, layout)
    m = pirls(ts, start.beta if joint else bs, start.u1, start.u2, eta0, rows, index, layout, family, ps, joint)
    m = jax.tree.map(sg, m)
    b, u1, u2 = (m.beta if joint else beta), m.u1, m.u2
    steps = STEPS_CANONICAL if family.is_canonical else STEPS_NONCANONICAL

    def step(_, c):
        b, u1, u2 = c
        eta = linear_predictor(theta, b, u1, u2, rows, layout)
        b_new, u1, u2, *_ = pirls_step(theta, b, eta, rows, index, layout, family, phi, joint)
        return (b_new if joint else b), u1, u2

    # The canonical links' two steps are written out: their Hessian by forward over reverse
    # runs in a third less time than through a loop (crossed Bernoulli benchmark, fit 122–147
    # → 96–107 ms), and compiles no slower. The other links' eight stay a loop: written out,
    # they run in a third less time too but compile 50 % longer (probit: 20 → 30 s).
    b, u1, u2 = jax.lax.fori_loop(0, steps, step, (b, u1, u2), unroll=family.is_canonical)
    eta = linear_predictor(theta, b, u1, u2, rows, layout)
    fac = pirls_step(theta, b, eta, rows, index, layout, family, phi, joint).fac
    if nagq > 1:
        dev = _agq_terms(theta, b, u1, fac, rows, layout, family, phi, nagq)
    else:
        dev = penalized_deviance(family, eta, u1, u2, rows, phi) + fac.logdet_L
    return dev, m._replace(beta=b)

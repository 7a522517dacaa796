"""Stage 6b — inference: t-tests with Satterthwaite or Kenward-Roger degrees of
freedom (as lmerTest), F-tests of contrasts, and standard errors and Wald
intervals of the variance components (as Stata's ``mixed``).

First derivatives here are exact (autodiff or closed forms) where lmerTest and pbkrtest use
finite differences (numDeriv) or explicit n × n matrices; second derivatives are exact for one
grouping factor of up to three columns and for structured terms, and central differences of
exact first derivatives otherwise (:func:`theta_derivatives`).

**Satterthwaite** (Kuznetsova, Brockhoff & Christensen 2017, *J. Stat. Softw.*
82(13), §3.1 and lmerTest's ``devfun_vp`` / ``get_covbeta``). The variance
parameters are varpar = (θ, σ) — θ in lme4's parametrization, σ the residual
SD, *not* profiled out. With β at its conditional estimate β̂(θ),

    ML:   d(θ, σ) = log|L|² + r²(θ)/σ² + n log(2πσ²)
    REML: d_R(θ, σ) = d(θ, σ) + log|R_X|² − p log(2πσ²)

(the criterion the model was fitted with), H = ∇²d at (θ̂, σ̂),
A = 2 H⁺ (the Moore-Penrose inverse over eigenvalues > 1e-8, as lmerTest) and
V(θ, σ) = σ² (R_X R_Xᵀ)⁻¹ = vcov(β̂). For a contrast l,

    ν = 2 (lᵀ V l)² / (gᵀ A g),    g_i = lᵀ (∂V/∂varpar_i) l.

σ enters d and V explicitly, so one kernel (:func:`theta_derivatives`: the
per-level closed forms of the fit for one grouping factor, else forward-mode
autodiff through the blocked factorization, differenced once more) gives the θ-derivatives of the profiled
criterion (first and second), r²(θ) and (R_X R_Xᵀ)⁻¹(θ) (first), and
:func:`varpar_derivatives` assembles the Hessian in (θ, σ) at σ̂ in closed form.

**Kenward-Roger** (Kenward & Roger 1997, *Biometrics* 53: 983–997, as
pbkrtest: Halekoh & Højsgaard 2014, *J. Stat. Softw.* 59(9), ``vcovAdj`` and
``Lb_ddf``). Σ = Σᵢ γᵢ Gᵢ is linear in γ = (the lower triangle of each term's
covariance matrix, σ²), so the second-derivative term R_ij of KR vanishes.
With Φ = (XᵀΣ⁻¹X)⁻¹,

    Pᵢ   = ∂(XᵀΣ⁻¹X)/∂γᵢ = −XᵀΣ⁻¹GᵢΣ⁻¹X
    Q_ij = XᵀΣ⁻¹GᵢΣ⁻¹G_jΣ⁻¹X,  Q_ij + Q_ji = ∂²(XᵀΣ⁻¹X)/∂γᵢ∂γ_j
    I_ij = ½ tr(P_Σ Gᵢ P_Σ G_j) = −½ ∂²h/∂γᵢ∂γ_j,   h = log|Σ| + log|XᵀΣ⁻¹X|
    W    = I⁻¹     (pbkrtest: 2 · IE2⁻¹ with IE2 = 2I)
    Φ_A  = Φ + 2 Φ [Σ_ij W_ij (Q_ij − Pᵢ Φ P_j)] Φ

and the F approximation of KR97 §3 (pbkrtest's ``Lb_ddf``) gives the df.
Instead of pbkrtest's n × n Σ⁻¹ we work in the q-dimensional random-effects
space (Woodbury): with G = Cov(b) (allowed singular) and the Gram blocks of
[Z X],

    log|Σ|  = (n − q) log σ² + log|σ² I_q + G ZᵀZ|
    XᵀΣ⁻¹X  = (XᵀX − XᵀZ (σ² I_q + G ZᵀZ)⁻¹ G ZᵀX) / σ²

and every derivative above comes from autodiff of these two functions. Dense
q × q matrices, one per pair of second-order tangents: the memory grows as q² m²
(m = len(γ)); beyond ``KR_MAX_BYTES`` the computation is refused with advice.

**Variance components** (as Stata's ``mixed``: delta method and Wald
intervals on the log-SD / Fisher-z scale). The same criterion d(θ, σ) as for
Satterthwaite, written in η = (log SD of each random effect, atanh of each
correlation, log σ) through Cov_t = D_t R_t D_t, T_t = D_t chol(R_t) / σ;
Cov(η̂) = 2 [∇²d(η̂)]⁻¹ (d = −2 log-likelihood, ML or REML as fitted), and

    se(sd) = sd · se(log sd),   se(sd²) = 2 sd² · se(log sd),
    se(ρ) = (1 − ρ²) · se(atanh ρ),
    CI: exp(log sd ± z se), its square for the variance, tanh(atanh ρ ± z se).

A term whose template has a zero diagonal (a singular fit) has no SE: its
rows get NaN and the table's ``attrs["notes"]`` says so; the other
parameters' SEs are then conditional on that term fixed at its estimate.
"""

from __future__ import annotations

import inspect
import math
import weakref
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.linalg import solve_triangular

from . import _compiled, _programs, _x64  # noqa: F401
from ._errors import InferenceError, InferenceWarning, warn_user
from ._objective import _schur, blockdiag_derivatives, factorize, levels_last
from ._optimize import central_points, per_level_formulas, theta_scale
from ._stats import Layout, Stats, a22_dense, widen

__all__ = [
    "InferenceError",
    "InferenceWarning",
    "coef_table",
    "contest",
    "variance_components",
    "satterthwaite_df",
    "kr_ddf",
    "kenward_roger",
    "KR_MAX_BYTES",
]

_LOG2PI = 1.8378770664093453
EIG_TOL = 1e-8  # lmerTest's as_lmerModLT(tol = 1e-8): eigenvalues of H treated as zero
KR_MAX_BYTES = 4e9  # estimated working memory above which the dense Kenward-Roger form is refused
BOUNDARY_TOL = 1e-4  # lme4's isSingular(tol = 1e-4) on template diagonals
# The inference kernels run once per model, in milliseconds; their (second-order)
# programs take seconds to compile. XLA's backend optimization level 0 cuts the compile
# time by about 40 % and leaves the results unchanged (with the quick tier's other options).
_ONE_SHOT = _compiled.QUICK_COMPILE


_ONE_SHOT_OPTIONS = _ONE_SHOT if "compiler_options" in inspect.signature(jax.jit).parameters else None


def _one_shot_jit(**kwargs):
    """:func:`jaxmlm._compiled.jit` with :data:`_ONE_SHOT` compiler options (where this JAX accepts them)."""
    if _ONE_SHOT_OPTIONS is not None:
        kwargs["compiler_options"] = _ONE_SHOT_OPTIONS
    return partial(_compiled.jit, **kwargs)


# =============================================================================================
# Kernels (pure functions of arrays; jit-compiled once per shape)
# =============================================================================================


def varpar_deviance(varpar: jax.Array, stats: Stats, reml, layout: Layout) -> jax.Array:
    """lmerTest's ``devfun_vp``: the ML deviance or REML criterion at varpar = (θ, σ), β profiled.

    ML: log|L|² + r²/σ² + n log(2πσ²) − Σ log wᵢ; REML adds log|R_X|² − p log(2πσ²).
    At σ = σ̂(θ) it equals the profiled criterion of :mod:`jaxmlm._objective`.
    """
    theta, sigma = varpar[:-1], varpar[-1]
    fac = factorize(theta, stats, layout)
    p = layout.p
    s2 = sigma**2
    r2 = fac.R[p, p] ** 2
    log2pis2 = _LOG2PI + jnp.log(s2)
    dev = fac.logdet_L + r2 / s2 + stats.n * log2pis2 - stats.ldw  # ldw: prior weights' constant
    logdet_rx = 2.0 * jnp.sum(jnp.log(jnp.diagonal(fac.R)[:p]))
    return dev + reml * (logdet_rx - stats.p * log2pis2)


@_one_shot_jit(static_argnames=("layout", "spec"))
def varpar_hessian(theta, sigma, u, rows, index: tuple, arr, reml, layout: Layout, spec):
    """(∇d, ∇²d, V, ∂V) over varpar = (θ, σ, ρ_u) at the estimates, by autodiff: lmerTest's
    Satterthwaite ingredients (:func:`varpar_deviance`, ``get_covbeta``) with
    the residual structure's parameters among the variance parameters, so that the df carry
    their uncertainty too. d is the unprofiled criterion of the whitened statistics (log|R| in
    it), V = σ² (R_X R_Xᵀ)⁻¹ = vcov(β̂). The df are invariant to how the parameters are written."""
    from ._residual_fit import whitened_stats, with_response

    arr = with_response(arr, rows, index, layout)
    nt, p = layout.ntheta, layout.p

    def dev(v):
        stats = whitened_stats(v[nt + 1 :], rows, index, arr, layout, spec)
        return varpar_deviance(v[: nt + 1], stats, reml, layout)

    def vcov(v):
        stats = whitened_stats(v[nt + 1 :], rows, index, arr, layout, spec)
        R = factorize(v[:nt], stats, layout).R
        RXinv = jax.scipy.linalg.solve_triangular(R[:p, :p], jnp.eye(p, dtype=R.dtype), lower=True)
        return v[nt] ** 2 * RXinv.T @ RXinv

    v0 = jnp.concatenate([theta, jnp.atleast_1d(sigma), u])
    J = jnp.moveaxis(jax.jacfwd(vcov)(v0), -1, 0)
    return jax.grad(dev)(v0), jax.hessian(dev)(v0), vcov(v0), J


def structured_varpar(m):
    """:func:`varpar_hessian` at a fitted model with a residual structure (numpy)."""
    r = m.residual
    out = varpar_hessian(np.asarray(m.theta, float), np.asarray(m.sigma, float), np.asarray(r.u, float), r.rows,
                         r.index, r.arr, np.asarray(1.0 if m.REML else 0.0), m.layout, r.spec)
    g, H, V, J = (np.asarray(a, float) for a in jax.device_get(out))
    return g, 0.5 * (H + H.T), V, J


def theta_pieces(theta: jax.Array, stats: Stats, reml, layout: Layout) -> jax.Array:
    """[a(θ), r²(θ), vec((R_X R_Xᵀ)⁻¹(θ))] with a = log|L|² + REML · log|R_X|², from the
    blocked factorization: everything of d(θ, σ) and V(θ, σ) that depends on θ,
    d = a + r²/σ² + (n − REML·p) log(2πσ²) and V = σ² (R_X R_Xᵀ)⁻¹."""
    fac = factorize(theta, stats, layout)
    p = layout.p
    a = fac.logdet_L + reml * 2.0 * jnp.sum(jnp.log(jnp.diagonal(fac.R)[:p]))
    RXinv = solve_triangular(fac.R[:p, :p], jnp.eye(p), lower=True)
    return jnp.concatenate([jnp.stack([a, fac.R[p, p] ** 2]), (RXinv.T @ RXinv).ravel()])


@_one_shot_jit(static_argnames="layout")
def theta_derivatives(theta, stats: Stats, reml, layout: Layout):
    """(r², ∇r², ∇d, ∇²d, Vᵣ, ∂Vᵣ (m, p, p)) at θ: d the profiled criterion, r² the
    penalized residual sum of squares, Vᵣ = (R_X R_Xᵀ)⁻¹ — all :func:`varpar_derivatives` needs.

    One grouping factor (the fit's per-level formulas, :func:`~jaxmlm._optimize.per_level_formulas`):
    ∇d and ∇²d in closed form (:func:`~jaxmlm._objective.blockdiag_derivatives`), and from S
    and its first derivatives dS, with u = (−β̂, 1),

        dr² = uᵀ dS u   (β̂ minimizes the quadratic form),   dVᵣ = −Vᵣ dS_XX Vᵣ.

    Otherwise (several grouping factors, or one over more than three columns) the first
    derivatives of :func:`theta_pieces` by forward-mode autodiff through the factorization
    (θ has a handful of entries), and the second derivatives of a and r² by central
    differences of those exact first derivatives (:func:`~jaxmlm._optimize.central_points`),
    d = a + ν log r² + const assembled from them. Differentiating twice by autodiff (forward over forward)
    traced and compiled a program twice the size: Penicillin's took 2.4 s to make, against
    1.1 s, the classroom three-level model's 2.1 against 1.1 s (issue 12); ∇²d agrees with it
    to ~1e-7 relative, where lmerTest's Hessian is numDeriv's. Layouts with structured terms
    keep forward over forward: a structure's parameters have no scale to set a step by.
    The closed forms trace in a third to half the time (Hsb82's programs 0.37–0.43 → 0.11–0.19 s).
    """
    p, m = layout.p, theta.shape[0]
    if per_level_formulas(layout):
        A, Z = levels_last(stats.A11, stats.Z1W)
        _, g, H, S, dS = blockdiag_derivatives(theta, A, Z, stats, reml, layout)
        _, r2, Vr, u = _schur(S, p)
        dr2 = jnp.einsum("i,tij,j->t", u, dS, u)
        dVr = -jnp.einsum("ab,tbc,cd->tad", Vr, dS[:, :p, :p], Vr)
        return r2, dr2, g, H, Vr, dVr

    if layout.structured:
        def jac(t):
            J = jax.jacfwd(theta_pieces)(t, stats, reml, layout)
            return J[:2], J

        (Ha, Hr2), J = jax.jacfwd(jac, has_aux=True)(theta)
    else:
        pts, h = central_points(theta, theta_scale(stats, layout))
        Js = jax.lax.map(lambda t: jax.jacfwd(theta_pieces)(t, stats, reml, layout), pts)  # (2m + 1, pieces, m)
        D2 = (Js[1:m + 1, :2] - Js[m + 1:, :2]) / (2.0 * h[:, None, None])  # (i, a or r², j)
        Ha, Hr2 = (0.5 * (D2[:, k] + D2[:, k].T) for k in (0, 1))
        J = Js[0]
    v = theta_pieces(theta, stats, reml, layout)
    r2, da, dr2 = v[1], J[0], J[1]
    nu = stats.n - reml * stats.p
    g = da + nu * dr2 / r2
    H = Ha + nu * (Hr2 / r2 - jnp.outer(dr2, dr2) / r2**2)
    return r2, dr2, g, H, v[2:].reshape(p, p), jnp.moveaxis(J[2:].reshape(p, p, m), -1, 0)


def derivatives_ahead(stats, layout: Layout) -> bool:
    """Prepare the program of :func:`theta_derivatives` that ``summary()`` (and every
    Satterthwaite table) of a model with statistics like ``stats()`` (arrays or
    ``jax.ShapeDtypeStruct``s, made on the worker) and ``layout`` will run, on a background
    thread (:func:`jaxmlm._programs.ahead`): ``lmer`` asks for it before the fit, so that a
    new model shape's two largest compiles, the fit's and this one, run side by side on two
    cores instead of one after the other. True if queued."""

    def arguments():
        f64 = np.dtype(np.float64)
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), stats())
        shapes, wide = widen(shapes, layout)  # as _varpar widens them
        return (jax.ShapeDtypeStruct((wide.ntheta,), f64), shapes, jax.ShapeDtypeStruct((), f64)), {"layout": wide}

    return _programs.ahead(theta_derivatives, arguments, compiler_options=_ONE_SHOT_OPTIONS)


def varpar_derivatives(r2, dr2, g, H, Vr, dVr, n: float, p: int, reml: bool):
    """From :func:`theta_derivatives` to varpar = (θ, σ) at σ = σ̂(θ): the gradient and Hessian
    of d(θ, σ) = a(θ) + r²(θ)/σ² + ν log(2πσ²) (a = log|L|² + REML·log|R_X|², ν = n − REML·p),
    V and ∂V/∂varpar (m + 1, p, p).

    The profiled criterion is d(θ) = d(θ, σ̂(θ)) = a + ν log r² + const (σ̂² = r²/ν), so
    ∇d = ∇a + ν∇r²/r² and ∇²d = ∇²a + ν∇²r²/r² − ν∇r²∇r²ᵀ/r⁴. At σ = σ̂ (the fit's σ):

        ∂²d/∂θ² = ∇²d + ν ∇r²∇r²ᵀ/r⁴   ∂²d/∂θ∂σ = −2∇r²/σ³   ∂²d/∂σ² = 4ν/σ²
        ∂d/∂θ = ∇d                       ∂d/∂σ = 0
        V = σ² Vᵣ                        ∂V/∂θ = σ² ∂Vᵣ       ∂V/∂σ = 2σ Vᵣ
    """
    r2, dr2, g, H, Vr, dVr = (np.asarray(x, dtype=float) for x in (r2, dr2, g, H, Vr, dVr))
    nu = n - (p if reml else 0)
    s = math.sqrt(r2 / nu)
    m = len(g)
    Hv = np.empty((m + 1, m + 1))
    Hv[:m, :m] = H + nu * np.outer(dr2, dr2) / r2**2
    Hv[:m, m] = Hv[m, :m] = -2.0 * dr2 / s**3
    Hv[m, m] = 4.0 * nu / s**2
    gv = np.append(g, 0.0)
    J = np.concatenate([s**2 * dVr, (2.0 * s * Vr)[None]], axis=0)
    return gv, 0.5 * (Hv + Hv.T), s**2 * Vr, J


def _dense_gram(stats: Stats, layout: Layout):
    """ZᵀZ (q, q), ZᵀX (q, p), XᵀX (p, p) as dense arrays from the blocked statistics."""
    p, k1, l1, qr = layout.p, layout.k1, layout.l1, layout.qr
    q1 = l1 * k1
    eye = jnp.eye(l1)
    Z1Z1 = jnp.einsum("gh,gij->gihj", eye, stats.A11).reshape(q1, q1)
    Z1X = stats.Z1W[..., :p].reshape(q1, p)
    if not qr:
        return Z1Z1, Z1X, stats.WW[:p, :p]
    cols = stats.pair_g[:, None] * k1 + jnp.arange(k1)[None, :]
    ZrZ1 = jnp.zeros((qr, q1)).at[stats.pair_a[:, None], cols].add(stats.A21)
    ZtZ = jnp.block([[Z1Z1, ZrZ1.T], [ZrZ1, a22_dense(stats.A22)]])
    ZtX = jnp.concatenate([Z1X, stats.ZrW[:, :p]], axis=0)
    return ZtZ, ZtX, stats.WW[:p, :p]


def _kr_functions(gamma, ZtZ, ZtX, XtX, n, rows, cols, pidx):
    """h(γ) = log|Σ| + log|XᵀΣ⁻¹X| and XᵀΣ⁻¹X at γ, by Woodbury in the q-space."""
    q = ZtZ.shape[0]
    s2 = gamma[-1]
    G = jnp.zeros((q, q)).at[rows, cols].add(gamma[pidx])
    M = s2 * jnp.eye(q) + G @ ZtZ  # similar to σ²I + G^½ ZᵀZ G^½: eigenvalues ≥ σ²
    S = jnp.linalg.solve(M, G @ ZtX)
    Finv = (XtX - ZtX.T @ S) / s2
    Finv = 0.5 * (Finv + Finv.T)
    logdet_sigma = (n - q) * jnp.log(s2) + jnp.linalg.slogdet(M)[1]
    return logdet_sigma + jnp.linalg.slogdet(Finv)[1], Finv


@_one_shot_jit(static_argnames="layout")
def kr_parts(gamma, stats: Stats, rows, cols, pidx, layout: Layout):
    """(XᵀΣ⁻¹X, P (m, p, p), ∂²XᵀΣ⁻¹X (m, m, p, p), ∇²h (m, m)) at γ, forward over forward."""
    ZtZ, ZtX, XtX = _dense_gram(stats, layout)
    p = layout.p

    def f(g):
        h, Finv = _kr_functions(g, ZtZ, ZtX, XtX, stats.n, rows, cols, pidx)
        return jnp.concatenate([h[None], Finv.ravel()])

    def jac(g):
        J = jax.jacfwd(f)(g)
        return J, J

    H, J = jax.jacfwd(jac, has_aux=True)(gamma)
    m = gamma.shape[0]
    Finv = f(gamma)[1:].reshape(p, p)
    P = jnp.moveaxis(J[1:].reshape(p, p, m), -1, 0)
    D2 = jnp.moveaxis(H[1:].reshape(p, p, m, m), (-2, -1), (0, 1))
    return Finv, P, D2, H[0]


def _theta_from_eta(eta, theta_hat, spec):
    """η (log SDs, atanh correlations per free term; log σ last) → (θ, σ).

    ``spec`` (static): per free term (structure, offset in η, offset in θ). Terms not
    listed keep θ̂. Each structure maps its SDs and correlations back to its
    parameters (:meth:`jaxmlm._covariance.Structure.params_from_sdcor`; for us,
    T = D chol(R) / σ: exactly lme4's template).
    """
    sigma = jnp.exp(eta[-1])
    theta = theta_hat
    for cov, eo, to in spec:
        labels = cov.sdcor_labels()
        ns = sum(kind == "sd" for kind, _, _ in labels)
        sd = jnp.exp(eta[eo : eo + ns])
        cor = jnp.tanh(eta[eo + ns : eo + len(labels)])
        theta = theta.at[to : to + cov.nparams].set(cov.params_from_sdcor(sd, cor, sigma))
    return theta, sigma


def vc_deviance(eta, theta_hat, stats: Stats, reml, layout: Layout, spec):
    """d(θ, σ) of :func:`varpar_deviance` as a function of η (see :func:`_theta_from_eta`)."""
    theta, sigma = _theta_from_eta(eta, theta_hat, spec)
    return varpar_deviance(jnp.concatenate([theta, sigma[None]]), stats, reml, layout)


def _varpar_from_eta(eta, theta_hat, spec):
    theta, sigma = _theta_from_eta(eta, theta_hat, spec)
    return jnp.concatenate([theta, sigma[None]])


@_one_shot_jit(static_argnames="spec")
def eta_map_derivatives(eta, theta_hat, spec):
    """Jacobian (m+1, k) and Hessian (m+1, k, k) of η ↦ varpar = (θ, σ) (no data: cheap)."""
    return (jax.jacfwd(_varpar_from_eta)(eta, theta_hat, spec),
            jax.hessian(_varpar_from_eta)(eta, theta_hat, spec))


varpar_deviance_jit = _compiled.jit(varpar_deviance, static_argnames="layout")
vc_deviance_jit = _compiled.jit(vc_deviance, static_argnames=("layout", "spec"))


# =============================================================================================
# Per-model pieces (computed once per model, kept while the model lives)
# =============================================================================================

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached(m, key, fn):
    d = _CACHE.setdefault(m, {})
    if key not in d:
        d[key] = fn()
    return d[key]


def _reml(m):
    # NumPy, not jnp.asarray: outside jit, jnp.asarray is itself a small compiled program.
    return np.asarray(1.0 if m.REML else 0.0)


def _varpar(m):
    """(g, H, V, ∂V) of d(θ, σ) at the fit (see :func:`varpar_derivatives`); with a residual
    structure, of d(θ, σ, ρ) (:func:`~jaxmlm._residual_fit.varpar_hessian`)."""
    if getattr(m, "residual", None) is not None:
        return _cached(m, "varpar", lambda: structured_varpar(m))

    def compute():
        # On statistics widened as the fit's (one program for models that differ only in
        # their fixed effects); the padding block of (R_X R_Xᵀ)⁻¹ is I, left out here.
        # Widened on the host (widen's program would be one more compile for a new shape).
        st = m.stats
        stats, layout = widen(st._replace(Z1W=np.asarray(st.Z1W), WW=np.asarray(st.WW), ZrW=np.asarray(st.ZrW),
                                          beta0=np.asarray(st.beta0)), m.layout)
        out = _programs.call(
            theta_derivatives,
            (np.asarray(m.theta, dtype=float), stats, _reml(m)),
            {"layout": layout},
            compiler_options=_ONE_SHOT_OPTIONS,
        )
        r2, dr2, g, H, Vr, dVr = (np.asarray(x) for x in out)
        p = m.layout.p
        # n as in the criterion: rows of positive weight (m.nobs also counts zero-weight rows)
        n = float(np.asarray(m.stats.n))
        return varpar_derivatives(r2, dr2, g, H, Vr[:p, :p], dVr[:, :p, :p], n=n, p=p, reml=m.REML)

    return _cached(m, "varpar", compute)


def _satterthwaite(m):
    """(V, ∂V (m, p, p), A = 2 H⁺, eigenvalues of H) at the fit, as lmerTest's ``as_lmerModLT``."""

    def compute():
        _, H, V, J = _varpar(m)
        evals, evecs = np.linalg.eigh(H)
        pos = evals > EIG_TOL
        A = 2.0 * (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
        return V, J, A, evals

    return _cached(m, "satterthwaite", compute)


def _gamma_index(m):
    """Host-side scatter indices mapping γ (term covariances' lower triangles, σ²) into Cov(b).

    Blocks are laid out as in :func:`_dense_gram` (block 1 first, then the rest
    blocks at their offsets), every (padded) level of a block repeating its
    terms' covariance matrices. Order of γ: terms in lme4 order, each lower
    triangle column by column (as pbkrtest's ``lower.tri(VarCorr)``), σ² last.
    """
    lay, design = m.layout, m.design
    base = [0] + [lay.l1 * lay.k1 + off for off, _, _ in lay.rest]
    levs = [lay.l1] + [lev for _, lev, _ in lay.rest]
    rows, cols, pidx, gamma = [], [], [], []
    for t, term in enumerate(design.terms):
        S = m._term_cov(t)
        kb = design.blocks[term.block].k
        start = base[term.block] + np.arange(levs[term.block]) * kb + term.offset
        for j in range(term.k):
            for i in range(j, term.k):
                idx = len(gamma)
                gamma.append(S[i, j])
                pairs = [(i, j)] if i == j else [(i, j), (j, i)]
                for a, b in pairs:
                    rows.append(start + a)
                    cols.append(start + b)
                    pidx.append(np.full(levs[term.block], idx))
    gamma.append(m.sigma**2)
    cat = lambda xs: np.concatenate(xs).astype(np.int32)  # noqa: E731
    return np.asarray(gamma), cat(rows), cat(cols), cat(pidx)


def kr_bytes(m) -> float:
    """Working memory of :func:`kenward_roger`: dense q × q tangents of G, σ²I + G ZᵀZ and its LU, per pair."""
    q = m.layout.l1 * m.layout.k1 + m.layout.qr
    npar = len(m.theta) + 1
    return 8.0 * q * q * ((npar + 1) ** 2 + 4)


def kenward_roger(m):
    """pbkrtest's ``vcovAdj``: (Φ, Φ_A, P (m, p, p), W (m, m)) at the fit (REML fits only)."""
    if getattr(m, "residual", None) is not None:
        raise InferenceError("Kenward-Roger degrees of freedom are not available with a residual structure (its "
                             "covariance is not linear in the parameters); use ddf='Satterthwaite'")
    if not m.REML:
        raise InferenceError(
            "Kenward-Roger degrees of freedom are defined for REML fits (as in lmerTest/pbkrtest); "
            "refit with REML=True, or use ddf='Satterthwaite'"
        )
    q = m.layout.l1 * m.layout.k1 + m.layout.qr
    need = kr_bytes(m)
    if need > KR_MAX_BYTES:
        raise InferenceError(
            f"Kenward-Roger needs dense {q} x {q} matrices (one row per random effect; about "
            f"{need / 1e9:.0f} GB here, limit {KR_MAX_BYTES / 1e9:.0f} GB); use ddf='Satterthwaite', "
            "which has no dense algebra and the same large-sample behaviour"
        )

    def compute():
        gamma, rows, cols, pidx = _gamma_index(m)
        Finv, P, D2, Hh = (
            np.asarray(a) for a in kr_parts(jnp.asarray(gamma), m.stats, rows, cols, pidx, m.layout)
        )
        Phi = np.linalg.inv(Finv)
        Phi = 0.5 * (Phi + Phi.T)
        IE2 = -Hh  # tr(P_Σ G_i P_Σ G_j) = 2 × the expected REML information
        IE2 = 0.5 * (IE2 + IE2.T)
        # pbkrtest: solve() when the smallest |eigenvalue| exceeds 1e-10, else MASS::ginv.
        condi = np.min(np.abs(np.linalg.eigvalsh(IE2)))
        W = 2.0 * (np.linalg.inv(IE2) if condi > 1e-10 else np.linalg.pinv(IE2))
        W = 0.5 * (W + W.T)
        U = 0.5 * np.einsum("ij,ijab->ab", W, D2) - np.einsum("ij,iab,bc,jcd->ad", W, P, Phi, P)
        PhiA = Phi + 2.0 * Phi @ U @ Phi
        return Phi, 0.5 * (PhiA + PhiA.T), P, W

    return _cached(m, "kenward_roger", compute)


# =============================================================================================
# Degrees of freedom (host side, small matrices)
# =============================================================================================


def satterthwaite_df(m, L) -> np.ndarray:
    """Satterthwaite's df of each row l of L: 2 (lᵀVl)² / (gᵀ A g), g_i = lᵀ ∂_iV l (lmerTest)."""
    V, J, A, _ = _satterthwaite(m)
    L = np.atleast_2d(np.asarray(L, dtype=float))
    var = np.einsum("cp,pq,cq->c", L, V, L)
    g = np.einsum("cp,mpq,cq->cm", L, J, L)
    denom = np.einsum("cm,mn,cn->c", g, A, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * var**2 / denom


def kr_ddf(L, Phi, P, W) -> float:
    """pbkrtest's ``Lb_ddf`` (Kenward & Roger 1997, §3): the F-test's denominator df for L β.

    Θ = Lᵀ(LΦLᵀ)⁻¹L; A₁ = Σ W_ij tr(ΘΦPᵢΦ) tr(ΘΦP_jΦ); A₂ = Σ W_ij tr(ΘΦPᵢΦΘΦP_jΦ);
    B = (A₁ + 6A₂)/(2q); g = ((q+1)A₁ − (q+4)A₂)/((q+2)A₂); c₁, c₂, c₃ as KR97 eq. 3.11;
    ρ = (1 − A₂/q)² / (q (1 − c₂B)²) · (1 + c₁B)/(1 − c₃B);  ν = 4 + (q + 2)/(qρ − 1).
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    q = L.shape[0]  # pbkrtest's Lb_ddf: nrow(L)
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    u = np.einsum("ab,bc,mcd,de->mae", Theta, Phi, P, Phi)  # ΘΦPᵢΦ
    tr = np.einsum("maa->m", u)
    A1 = float(np.einsum("ij,i,j->", W, tr, tr))
    A2 = float(np.einsum("ij,iab,jba->", W, u, u))
    B = (A1 + 6.0 * A2) / (2.0 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3.0 * q + 2.0 * (1.0 - g)
    c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
    V0 = 1.0 + c1 * B
    V0 = 0.0 if abs(V0) < 1e-10 else V0
    V1, V2 = 1.0 - c2 * B, 1.0 - c3 * B
    x = 1.0 - A2 / q
    ratio = 1.0 if (abs(x) < 1e-14 and abs(V1) < 1e-14) else x / V1  # pbkrtest's .divZero
    rho = ratio**2 * V0 / (q * V2)
    return 4.0 + (q + 2.0) / (q * rho - 1.0)


def _kr_fscale(L, Phi, P, W) -> float:
    """pbkrtest's F.scaling = ν (1 − A₂/q) / (ν − 2) (1 when ν ≈ 2)."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    q = L.shape[0]
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    u = np.einsum("ab,bc,mcd,de->mae", Theta, Phi, P, Phi)
    A2 = float(np.einsum("ij,iab,jba->", W, u, u))
    nu = kr_ddf(L, Phi, P, W)
    return 1.0 if abs(nu - 2.0) < 1e-2 else nu * (1.0 - A2 / q) / (nu - 2.0)


# =============================================================================================
# Public tables
# =============================================================================================

_DDF = {
    "satterthwaite": "Satterthwaite",
    "kenward-roger": "Kenward-Roger",
    "kenward_roger": "Kenward-Roger",
    "kr": "Kenward-Roger",
    "none": "none",
}


# ---- Student t tail probabilities ------------------------------------------------------------
# scipy.stats takes about 0.4 s to import (and scipy.special 0.1 s), a large share of a command-
# line fit; the t-tests' p-values need only the regularized incomplete beta function
# I_x(df/2, 1/2), evaluated here for df ≤ _T_DF_MAX to a relative accuracy of ~1e-13
# (tests/test_inference.py compares with scipy.stats.t.sf over a grid of t and df).

_EPS = 2.220446049250313e-16
# Above this df the continued fraction below loses digits to cancellation (relative error grows
# like df · 1e-16 near |t| ≈ 2): larger df are left to scipy.special.stdtr.
_T_DF_MAX = 5000.0
_TINY = 1e-300
_STIRLING = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156)


def _stirling_corr(z: float) -> float:
    """lgamma(z) − [(z − ½) log z − z + ½ log 2π] for z ≥ 10 (error < 1e-17)."""
    z2 = 1.0 / (z * z)
    acc = 0.0
    for c in reversed(_STIRLING):
        acc = acc * z2 + c
    return acc / z


def _lbeta_half(a: float) -> float:
    """log B(a, ½), accurate for every a > 0 (lgamma(a) − lgamma(a + ½) by Stirling for large a)."""
    b = 0.5
    if a < 10.0:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    s = a + b
    diff = -(a - 0.5) * math.log1p(b / a) - b * math.log(s) + b + _stirling_corr(a) - _stirling_corr(s)
    return math.lgamma(b) + diff


def _betacf(a: float, b: float, x: float, d0: float) -> float | None:
    """The continued fraction of I_x(a, b) (modified Lentz; Numerical Recipes' betacf), or None.

    ``d0`` = 1 − (a + b) x / (a + 1), passed in because the caller can form it without cancellation.
    """
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = d0
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for k in range(1, 100_000):
        k2 = 2.0 * k
        aa = k * (b - k) * x / ((qam + k2) * (a + k2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + k) * (qab + k) * x / ((a + k2) * (qap + k2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) <= _EPS:
            return h
    return None


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom (normal for df = inf).

    Equals ``2 * scipy.stats.t.sf(abs(t), df)`` (``2 * norm.sf(abs(t))`` for df = inf) to a
    relative ~1e-14; NaN where either argument is NaN or df ≤ 0.
    """
    t, df = abs(float(t)), float(df)
    if math.isnan(t) or math.isnan(df) or df <= 0.0:
        return math.nan
    if math.isinf(df):  # scipy's 2 * ndtr(-|t|)
        z = t / math.sqrt(2.0)
        return 1.0 - math.erf(z) if t < 1.0 else math.erfc(z)
    if t == 0.0:
        return 1.0
    if df > _T_DF_MAX:
        return _scipy_t_two_sided(t, df)
    y = (t / df) * t  # t²/df; x = df/(df + t²) = 1/(1 + y), 1 − x = y/(1 + y)
    if math.isinf(y) or math.isinf(t):
        return 0.0
    a, b = 0.5 * df, 0.5
    log_x = -math.log1p(y)
    log_1mx = math.log(y) + log_x
    x, one_minus_x = 1.0 / (1.0 + y), y / (1.0 + y)
    # p = I_x(a, ½). The continued fraction converges fast for x < (a + 1)/(a + b + 2);
    # beyond it use I_x(a, b) = 1 − I_{1−x}(b, a).
    front = math.exp(a * log_x + b * log_1mx - _lbeta_half(a))
    if x < (a + 1.0) / (a + b + 2.0):
        # 1 − (a + ½) x/(a + 1) with x = 1/(1 + y), without cancellation
        cf = _betacf(a, b, x, (0.5 + (a + 1.0) * y) / ((a + 1.0) * (1.0 + y)))
        p = None if cf is None else front * cf / a
    else:
        cf = _betacf(b, a, one_minus_x, 1.0 - (a + b) * one_minus_x / (b + 1.0))
        p = None if cf is None else 1.0 - front * cf / b
    if p is None:  # no convergence (not seen in practice): ask scipy
        return _scipy_t_two_sided(t, df)
    return min(max(p, 0.0), 1.0)


def _scipy_t_two_sided(t: float, df: float) -> float:
    from scipy.special import stdtr  # scipy.stats.t.sf(t, df) is stdtr(df, -t)

    return float(2.0 * stdtr(df, -t))


def _ddf_method(ddf) -> str:
    key = str(ddf).lower() if ddf is not None else "none"
    if key not in _DDF:
        raise InferenceError(f"ddf must be 'Satterthwaite', 'Kenward-Roger' or 'none', got {ddf!r}")
    return _DDF[key]


def _t_frame(names, est, se, df) -> pd.DataFrame:
    est, se, df = (np.asarray(a, dtype=float) for a in (est, se, df))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = est / se
    p = np.array([t_two_sided_p(ti, di) for ti, di in zip(t.ravel(), np.broadcast_to(df, t.shape).ravel())])
    p = p.reshape(t.shape)
    return pd.DataFrame(
        {"Estimate": est, "Std. Error": se, "df": df, "t value": t, "Pr(>|t|)": p}, index=list(names)
    )


def coef_table(m, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """The fixed-effects table of lmerTest's ``summary``: Estimate, Std. Error, df, t value, Pr(>|t|).

    ``ddf``: ``"Satterthwaite"`` (default; lmerTest's), ``"Kenward-Roger"``
    (REML fits only; the Std. Error is then KR's adjusted one, sqrt(diag Φ_A),
    as lmerTest prints it) or ``"none"``: Wald z-tests, reported as df = inf
    with normal p-values (lmerTest's ``ddf = "lme4"`` prints no df and no p).
    ``attrs["ddf"]`` names the method used.
    """
    method = _ddf_method(ddf)
    names = list(m.design.fixef_names)
    est = m.fixef.to_numpy()
    se = m.se.to_numpy()
    p = len(names)
    if method == "Satterthwaite":
        df = satterthwaite_df(m, np.eye(p)) if p else np.zeros(0)
        if p and np.any(_satterthwaite(m)[3] < -EIG_TOL):
            warn_user(
                "the Hessian of the criterion in (theta, sigma) has a negative eigenvalue: the fit may not "
                "be at a minimum, and Satterthwaite's df may be off",
                InferenceWarning,
            )
    elif method == "Kenward-Roger":
        if p:
            Phi, PhiA, P, W = kenward_roger(m)
            se = np.sqrt(np.diag(PhiA))
            df = np.array([kr_ddf(np.eye(p)[j], Phi, P, W) for j in range(p)])
        else:
            df = np.zeros(0)
    else:
        df = np.full(p, np.inf)
    out = _t_frame(names, est, se, df)
    out.attrs["ddf"] = method
    return out


def _check_L(m, L) -> np.ndarray:
    names = list(m.design.fixef_names)
    p = len(names)
    if isinstance(L, pd.Series):
        L = L.reindex(names, fill_value=0.0).to_numpy()[None, :]
    elif isinstance(L, pd.DataFrame):
        L = L.reindex(columns=names, fill_value=0.0).to_numpy()
    L = np.atleast_2d(np.asarray(L, dtype=float))
    if L.ndim != 2 or L.shape[1] != p:
        raise InferenceError(
            f"L must have one column per fixed effect ({p}: {', '.join(names)}); got shape {L.shape}"
        )
    if not np.all(np.isfinite(L)) or L.shape[0] == 0:
        raise InferenceError("L must be a non-empty matrix of finite numbers")
    return L


def _fstat_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``: df of an F built from independent t's with df ν_m."""
    if len(nu) == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = np.sum(nu / (nu - 2.0))
    return float(2.0 * E / (E - len(nu)))


def contest(m, L, ddf: str = "Satterthwaite", rhs=0.0) -> pd.DataFrame:
    """F-test of H₀: L β = rhs, as lmerTest's ``contestMD`` (one row).

    Columns Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F). ``L`` is a
    (c, p) matrix, a vector, or a pandas Series / DataFrame labelled by
    fixed-effect names (missing names count as 0).

    Satterthwaite (Kuznetsova et al. 2017, §3.2): with L V Lᵀ = Q D Qᵀ, the
    rank-q rows of QᵀL give independent t's, F = Σ t²_m / q and the df from
    their ν_m by ``get_Fstat_ddf``. Kenward-Roger (pbkrtest's ``KRmodcomp``):
    F = scale · (Lβ − rhs)ᵀ(LΦ_ALᵀ)⁻¹(Lβ − rhs)/q with KR's scaling and df.
    ``ddf="none"``: Wald χ²/q with DenDF = inf.
    """
    method = _ddf_method(ddf)
    L = _check_L(m, L)
    c = L.shape[0]
    rhs = np.broadcast_to(np.asarray(rhs, dtype=float), (c,))
    beta = m.fixef.to_numpy()
    V = m.vcov.to_numpy()
    if np.any(rhs != 0):
        beta = beta - np.linalg.pinv(L) @ rhs
    sigma2 = m.sigma**2

    def frame(F, ndf, den, scale=1.0):
        from scipy import stats as sps  # not at import time: scipy.stats takes ~0.4 s to import

        ms = F * sigma2
        Fv = F * scale
        pv = sps.chi2.sf(Fv * ndf, ndf) if np.isinf(den) else sps.f.sf(Fv, ndf, den)
        out = pd.DataFrame(
            [[ms * ndf, ms, ndf, den, Fv, pv]],
            columns=["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"],
        )
        out.attrs["ddf"] = method
        return out

    if method == "Kenward-Roger":
        Phi, PhiA, P, W = kenward_roger(m)
        q = int(np.linalg.matrix_rank(L))
        if q < c:
            raise InferenceError(
                f"L has {c} rows but rank {q}: drop the linearly dependent rows for the Kenward-Roger test"
            )
        d = L @ beta
        F = float(d @ np.linalg.solve(L @ PhiA @ L.T, d)) / q
        return frame(F, q, kr_ddf(L, Phi, P, W), _kr_fscale(L, Phi, P, W))
    evals, evecs = np.linalg.eigh(L @ V @ L.T)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    pos = evals > max(np.sqrt(np.finfo(float).eps) * evals[0], 0.0)
    q = int(pos.sum())
    if q == 0:
        raise InferenceError("L β has zero variance: L is not a proper contrast of the fixed effects")
    PtL = evecs[:, pos].T @ L
    t2 = (PtL @ beta) ** 2 / evals[pos]
    F = float(np.sum(t2) / q)
    if method == "none":
        return frame(F, q, np.inf)
    nu = satterthwaite_df(m, PtL)
    return frame(F, q, _fstat_ddf(nu))


def _vc_spec(m):
    """Free terms (no scale at 0) as (structure, η offset, θ offset); their indices; the boundary terms."""
    spec, free, boundary = [], [], []
    eo = to = 0
    for t, term in enumerate(m.design.terms):
        cov = term.cov
        scales = m.theta[to : to + cov.nparams][cov.scale_mask()]
        if np.all(np.abs(scales) >= BOUNDARY_TOL):
            spec.append((cov, eo, to))
            free.append(t)
            eo += len(cov.sdcor_labels())
        else:
            boundary.append(t)
        to += cov.nparams
    return tuple(spec), tuple(free), tuple(boundary)


def _sd_first(cov) -> list[int]:
    """Positions of a structure's natural parameters with the SDs first (η's order)."""
    labels = cov.sdcor_labels()
    return [n for n, lab in enumerate(labels) if lab[0] == "sd"] + [n for n, lab in enumerate(labels) if lab[0] == "cor"]


def _eta_hat(m, free):
    """η̂: log SDs and atanh correlations of the free terms, log σ̂."""
    eta = []
    for t in free:
        cov = m.design.terms[t].cov
        v = cov.sdcor(m._term_cov(t))[_sd_first(cov)]
        ns = sum(kind == "sd" for kind, _, _ in cov.sdcor_labels())
        eta.extend(np.log(v[:ns]))
        eta.extend(np.arctanh(v[ns:]))
    eta.append(np.log(m.sigma))
    return np.asarray(eta)


def vc_problem(m):
    """(η̂, f, spec, boundary): the criterion f(η) of the variance components as a plain function.

    f evaluates :func:`vc_deviance` (compiled) at a numpy vector η, for
    finite-difference checks; ``spec`` as in :func:`_theta_from_eta`.
    """
    spec, free, boundary = _vc_spec(m)
    eta = _eta_hat(m, free)
    theta_hat = jnp.asarray(m.theta)

    def f(e):
        return float(vc_deviance_jit(jnp.asarray(e, dtype=float), theta_hat, m.stats, _reml(m), m.layout, spec))

    return eta, f, spec, boundary


def _vc_cov(m):
    """Cov(η̂) = 2 [∇²d(η̂)]⁻¹ with notes; NaN where the Hessian is not positive definite.

    ∇²d(η) by the chain rule from the Hessian in varpar = (θ, σ):
    ∇²_η d = Jᵀ H J + Σ_k (∂d/∂varpar_k) ∇²_η varpar_k, J = ∂varpar/∂η.
    """

    def compute():
        spec, free, boundary = _vc_spec(m)
        eta = _eta_hat(m, free)
        g, H, _, _ = _varpar(m)
        Jm, Hm = (np.asarray(a) for a in eta_map_derivatives(jnp.asarray(eta), jnp.asarray(m.theta), spec))
        He = Jm.T @ H @ Jm + np.einsum("k,kij->ij", g, Hm)
        He = 0.5 * (He + He.T)
        notes = []
        evals = np.linalg.eigvalsh(He)
        if evals[0] <= EIG_TOL * max(1.0, abs(evals[-1])):
            notes.append(
                "the Hessian of the criterion is not positive definite at the estimates: no standard errors"
            )
            cov = np.full_like(He, np.nan)
        else:
            cov = 2.0 * np.linalg.inv(He)
        return spec, free, boundary, eta, cov, notes

    return _cached(m, "vc_cov", compute)


def variance_components(m, level: float = 0.95) -> pd.DataFrame:
    """SD, variance and correlation of every random-effect term, and σ, with standard errors and
    Wald intervals as Stata's ``mixed`` (see the module docstring).

    One row per parameter, labelled as lme4's ``confint(oldNames = FALSE)``
    (``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``, ``sigma``)
    plus ``var_...`` rows for the variances (``var_Residual`` for σ²).
    Columns: grp, var1, var2, kind ("sd", "var", "cor"), Estimate,
    Std. Error, lower, upper. ``attrs``: level, criterion ("REML" or "ML"),
    notes (boundary terms, non-positive-definite Hessian).
    """
    if not (isinstance(level, (float, int)) and 0.0 < level < 1.0):
        raise InferenceError(f"level must be a number between 0 and 1, got {level!r}")
    spec, free_terms, boundary, eta, cov, notes = _vc_cov(m)
    notes = list(notes)
    from scipy.special import ndtri  # scipy.stats.norm.ppf, without importing scipy.stats

    z = float(ndtri(0.5 + level / 2.0))
    se_eta = np.sqrt(np.diag(cov)) if len(eta) else np.zeros(0)
    rows = []
    free = {t: eo for t, (_, eo, _) in zip(free_terms, spec)}
    for t, term in enumerate(m.design.terms):
        cov = term.cov
        labels = cov.sdcor_labels()
        values = cov.sdcor(m._term_cov(t))
        order = _sd_first(cov)  # η holds the SDs first, then the correlations
        se = np.full(len(labels), np.nan)
        if t in free:
            se[order] = se_eta[free[t] : free[t] + len(labels)]
        names = cov.sdcor_names(term.columns, term.group)  # confint's names (the factor, not VarCorr's g.1)
        for n in order:  # SDs (and variances) first, then correlations
            (kind, i, j), v, s, name = labels[n], values[n], se[n], names[n]
            c = term.columns[i]
            if kind == "sd":
                lo, hi = _log_ci(v, s, z)
                rows.append((name, term.vc_name, c, None, "sd", v, v * s, lo, hi))
                rows.append((name.replace("sd_", "var_", 1), term.vc_name, c, None, "var", v**2, 2.0 * v**2 * s,
                             lo**2, hi**2))
            else:
                lo, hi = (np.nan, np.nan)
                if np.isfinite(s):
                    lo, hi = np.tanh(np.arctanh(v) - z * s), np.tanh(np.arctanh(v) + z * s)
                rows.append((name, term.vc_name, term.columns[j], c, "cor", v, (1.0 - v**2) * s, lo, hi))
        if t in boundary:
            notes.append(
                f"term {cov.text(' + '.join(term.columns), term.vc_name)} is on the boundary of the parameter space "
                "(a variance at 0 or a correlation at ±1): no standard errors; the others are conditional "
                "on it fixed at its estimate"
            )
    s, s_log = m.sigma, se_eta[-1]
    lo, hi = _log_ci(s, s_log, z)
    rows.append(("sigma", "Residual", None, None, "sd", s, s * s_log, lo, hi))
    rows.append(("var_Residual", "Residual", None, None, "var", s**2, 2.0 * s**2 * s_log, lo**2, hi**2))
    out = pd.DataFrame(
        [r[1:] for r in rows],
        index=[r[0] for r in rows],
        columns=["grp", "var1", "var2", "kind", "Estimate", "Std. Error", "lower", "upper"],
    )
    out.attrs.update(level=level, criterion="REML" if m.REML else "ML", notes=notes)
    return out


def term_eta_cov(m, t: int) -> np.ndarray:
    """Cov(η̂) of term t's natural parameters, rows and columns in ``sdcor_labels()`` order (log SDs,
    atanh correlations; the delta method's input for functions of several of them, such as
    Stata's covariances ρ sd_i sd_j); all NaN for a term on the boundary or a Hessian that is not
    positive definite (see :func:`variance_components`)."""
    spec, free_terms, _, _, cov, _ = _vc_cov(m)
    struct = m.design.terms[t].cov
    n = len(struct.sdcor_labels())
    out = np.full((n, n), np.nan)
    free = {ft: eo for ft, (_, eo, _) in zip(free_terms, spec)}
    if t in free:
        order = _sd_first(struct)  # η position free[t] + a holds label order[a]
        out[np.ix_(order, order)] = cov[free[t] : free[t] + n, free[t] : free[t] + n]
    return out


def _log_ci(x: float, se_log: float, z: float) -> tuple[float, float]:
    if not (np.isfinite(se_log) and x > 0):
        return math.nan, math.nan
    return x * math.exp(-z * se_log), x * math.exp(z * se_log)

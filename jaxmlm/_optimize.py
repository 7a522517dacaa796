"""Stage 5 — optimizer: θ̂ = argmin of the profiled criterion, inside JAX.

θ has a handful of entries, so a Hessian costs a few gradient evaluations and
buys Newton's fast convergence. We
use a modified Newton method with a backtracking (Armijo) line search, the
whole loop in ``lax.while_loop`` so that a fit makes no host round trip per
evaluation and can be ``vmap``-ed over simulated responses:

* direction d = −V |Λ|⁻¹ Vᵀ g from the eigendecomposition H = V Λ Vᵀ, with
  eigenvalues replaced by their absolute values (bounded away from 0): a
  descent direction even where H is indefinite (Nocedal & Wright 2006, §3.4);
* stop when the Newton decrement gᵀ|H|⁻¹g / 2 — the predicted absolute
  decrease of the criterion — is below ``ftol``, or the gradient's largest
  entry is below ``gtol``. Both are absolute: for n = 10⁶ the criterion is
  ~10⁷ and a relative tolerance would stop far too early.

Units: θ carries the units of Z's columns (b = σΛu, so row i of Λ is in units of
y per unit of column i, over σ): a random slope on a predictor measured on a 1e4
scale has θ entries ~1e-4, on a 1e-4 scale ~1e4. A start, a step cap, a gradient
tolerance or a boundary threshold in θ would then mean something different for
every choice of units (issue 11: x1 on a 1e-4 and x2 on a 1e4 scale stalled ~10
deviance units above the optimum). The optimizer therefore works in
u = θ / c (elementwise), c = :func:`theta_scale`: cᵢ = 1 / rms(z_r), z_r the Z
column of the template row r of θᵢ — the θ the model would have with every Z
column scaled to unit root mean square. Changing units x → s·x (s > 0) divides
row r of Λ by s and c's entries of that row by s too, so u, the start, every step
and the stopping rules are unchanged (up to rounding). An intercept without
weights has c = 1 exactly (its θ and lme4's start are unchanged), a factor's
indicator columns c = 1/√(share of rows) ≥ 1; the parameters of structures that
are not linear in θ (:mod:`jaxmlm._covariance`) keep c = 1.

The boundary (variances ≥ 0) is handled by symmetry rather than bounds: the
criterion is even in each template column, so the optimizer runs
unconstrained and :func:`canonical_theta` flips columns to give non-negative
diagonals afterwards, and near-zero diagonals are snapped to exactly zero
when that does not raise the criterion (lme4 reports singular fits with
θ = 0). This replaces lme4's bounded BOBYQA/Nelder-Mead.

Where f, ∇f and H come from (:func:`fit_theta`): with one grouping factor of up to three
columns, the closed-form per-level derivatives of :func:`~jaxmlm._objective.blockdiag_fgh`
(exact, a few criterion evaluations); with a small rest block (nested or crossed factors) or
a wider single term, the autodiff gradient and, in float64, forward differences of it
(:func:`_fgh_newton`; structured terms take theirs by the chain rule); with a
large dense block (q_r > ``AI_ROWS``, crossed designs such as InstEval, nested ones such as
pupils in classes in schools), the
exact gradient of :func:`~jaxmlm._objective.criterion_rest` and, in place of H,
the average-information matrix (AI-REML; Gilmour, Thompson & Cullis 1995) —
positive semi-definite and close to H near the optimum, for the price of a few
solves. AI underestimates the curvature along components with few levels; the
diagonal step clipping of :func:`_clip_diagonals` keeps those steps from
oscillating across 0. From lme4's start InstEval takes 7 iterations (BFGS: 16); from
:func:`moment_start`, which :func:`~jaxmlm._results.lmer` uses with "ai", 5.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _compiled, _x64  # noqa: F401
from ._errors import ConvergenceWarning, warn_user
from ._objective import (
    CPU_CHUNK,
    LAPACK_SAFE,
    _deviance,
    average_information,
    blockdiag_fgh,
    criterion_rest,
    criterion_rest_value_and_grad,
    lapack_cost,
    levels_last,
    nested_data,
    nested_scalar,
    nested_scalar_criterion,
    nested_scalar_data,
    pair_data,
)
from ._stats import Layout, Stats, a22_diagonal, is_nested

__all__ = ["OptState", "fit_theta", "central_points", "fd_batch", "fd_hessian", "fd_points", "canonical_theta",
           "lme4_start", "theta_scale", "theta_scale_host", "STATUS"]

STATUS = {
    0: "converged: Newton decrement below ftol",
    1: "converged: gradient below gtol",
    2: "stopped: iteration limit reached",
    3: "stopped: line search found no decrease",
    4: "failed: non-finite criterion",
}


def max_abs_gradient(st) -> float:
    """max |∇f| of an optimizer state's gradient on the host (0 for an empty one)."""
    g = np.asarray(st.g)
    return float(np.max(np.abs(g))) if g.size else 0.0


def status_warnings(status: int, iterations: int, max_grad: float) -> tuple[str, ...]:
    """The fit record's warning for an optimizer that stopped without converging (status 2 or 3),
    also issued as a :class:`~jaxmlm.ConvergenceWarning` on the user's line
    (:func:`~jaxmlm._errors.warn_user`); () for a converged one. One wording for every kind of fit."""
    if status in (0, 1):
        return ()
    msg = f"optimizer {STATUS[status]} after {iterations} iterations (max |gradient| {max_grad:.2e})"
    warn_user(msg, ConvergenceWarning)
    return (msg,)


class OptState(NamedTuple):
    """Optimizer state (a pytree; batched under vmap).

    x (m,) current θ; f criterion; g (m,) gradient; it iterations; nfev
    criterion evaluations; status (see :data:`STATUS`, −1 while running).

    :func:`fit_theta` returns x as θ and g in the coordinates it optimizes,
    u = θ / :func:`theta_scale` (∂f/∂u = c ⊙ ∂f/∂θ): the gradient its tolerance
    judged, in the same units whatever the predictors' units.
    """

    x: jax.Array
    f: jax.Array
    g: jax.Array
    it: jax.Array
    nfev: jax.Array
    status: jax.Array


def _line_search(fun, s: OptState, d: jax.Array, slack=-jnp.inf):
    """Armijo backtracking from a full step: (step, evaluations, accepted).

    ``slack``: a step that raises the criterion by at most this much is accepted too (see
    :func:`_newton`: the last step, whose predicted decrease is rounding noise).
    """
    slope = s.g @ d

    def accept(a, fa):
        return _acceptable(s, slope, a, fa, slack)

    def ls_cond(c):
        a, fa, k = c
        return (~accept(a, fa)) & (k < 40)

    def ls_body(c):
        a, _, k = c
        a = a * 0.5
        return a, fun(s.x + a * d), k + 1

    a, fa, k = jax.lax.while_loop(ls_cond, ls_body, (jnp.asarray(1.0), fun(s.x + d), jnp.asarray(0)))
    return a, k + 1, accept(a, fa)


def _acceptable(s: OptState, slope, a, fa, slack):
    """Armijo's sufficient decrease at step a (slope = ∇f·d), or a rise of at most ``slack``."""
    return jnp.isfinite(fa) & ((fa <= s.f + 1e-4 * a * slope) | (fa <= s.f + slack))


def _capped(d: jax.Array, x: jax.Array) -> jax.Array:
    # x is θ in unit-free coordinates (u = θ/c, see fit_theta), ~0.01-10: no step longer
    # than 5·max(1, |x|).
    dmax = jnp.max(jnp.abs(d))
    cap = 5.0 * jnp.maximum(1.0, jnp.max(jnp.abs(x)))
    return jnp.where(dmax > cap, d * (cap / dmax), d)


def _clip_diagonals(d: jax.Array, x: jax.Array, g: jax.Array, diag) -> jax.Array:
    """Keep every diagonal θᵢ + dᵢ on θᵢ's side of 0 and at least |θᵢ|/10 from it.

    The criterion is even in each diagonal (module docstring), so a step that jumps across 0
    lands on the mirror image of a point on the same side: with a curvature estimate that is
    too small along a component with few levels (the average information for InstEval's 14
    departments), such steps oscillate between ±θᵢ. Clipped, θᵢ can still shrink tenfold
    per step towards a boundary optimum. If clipping destroyed descent, the step is scaled
    instead.
    """
    lo = -0.9 * x  # θᵢ + dᵢ = 0.1 θᵢ
    over = diag & (x != 0) & (d * jnp.sign(x) < jnp.sign(x) * lo)
    dc = jnp.where(over, lo, d)
    scale = jnp.min(jnp.where(over, lo / jnp.where(over, d, 1.0), 1.0))
    return jnp.where(g @ dc < 0, dc, d * scale)


def _ftol(ftol, f: jax.Array):
    """The effective ftol: in float32 mode at least the noise in f (see :func:`_noise_rel`)."""
    if f.dtype == jnp.float32:
        return jnp.maximum(ftol, _noise_rel(f) * jnp.maximum(1.0, jnp.abs(f)))
    return ftol


def _noise_rel(f: jax.Array) -> float:
    """Relative size of rounding noise in a criterion value: 1e-14 in float64; in float32
    mode the criterion is known to a few ulps of |f| only."""
    return 64 * float(jnp.finfo(jnp.float32).eps) if f.dtype == jnp.float32 else 1e-14


def _status(decrement, f_old, f_new, g_new, accepted, it, max_iter, ftol, gtol):
    rel = _noise_rel(f_new)
    ftol = _ftol(ftol, f_new)  # a predicted or achieved decrease below the noise is not progress
    small_change = accepted & (jnp.abs(f_old - f_new) <= rel * jnp.maximum(1.0, jnp.abs(f_new)))
    status = jnp.where(
        (decrement < ftol) | small_change,
        0,
        jnp.where(
            jnp.max(jnp.abs(g_new)) < gtol,
            1,
            jnp.where(~accepted, 3, jnp.where(it >= max_iter, 2, -1)),
        ),
    )
    return jnp.where(jnp.isfinite(f_new), status, 4)


def _start_status(f0, max_iter):
    """The status at the start: running (−1), or 2 at once when ``max_iter`` ≤ 0 — a fit with
    ``max_iter`` 0 (it may be traced) evaluates its start and takes no step, which is how
    :func:`~jaxmlm._results.lmer` gets the criterion and solution at a boundary candidate
    from the fit's own program (:func:`~jaxmlm._fit.snap_host`)."""
    return jnp.where(jnp.isfinite(f0), jnp.where(max_iter <= 0, 2, -1), 4)


#: Most θ entries for which a nested design's derivatives are taken in forward mode (m
#: tangents): its gradient, and in float32 its Hessian forward over forward.
_FORWARD_MAX = 3


def _fgh_ad(fun, forward: bool = False):
    """x ↦ (f, ∇f, ∇²f) of ``fun`` by autodiff: one forward-over-reverse program, or with
    ``forward`` forward over forward (m² tangents, no reverse pass: cheaper for a few θ
    entries when the reverse pass's transposes cost more than the criterion itself)."""
    def grad_aux(x):
        if forward:
            basis = jnp.eye(x.shape[0], dtype=x.dtype)
            f, g = jax.vmap(lambda v: jax.jvp(fun, (x,), (v,)), out_axes=(None, 0))(basis)
        else:
            f, g = jax.value_and_grad(fun)(x)
        return g, (g, f)

    fgh_ad = jax.jacfwd(grad_aux, has_aux=True)

    def evaluate(x):
        H, (g, f) = fgh_ad(x)
        return f, g, H

    return evaluate


def fd_points(x):
    """The points at which :func:`fd_hessian` takes ∇f: x, then x + hᵢeᵢ for each entry
    (steps hᵢ = 1e-5·max(1, |xᵢ|), x in unit-free coordinates), and the steps."""
    h = 1e-5 * jnp.maximum(1.0, jnp.abs(x))
    return jnp.concatenate([x[None, :], x[None, :] + jnp.diag(h)]), h


def central_points(theta, c):
    """The points of central differences (Satterthwaite's second derivatives,
    :func:`jaxmlm._inference.theta_derivatives`): θ, then θ + hᵢeᵢ and θ − hᵢeᵢ for each
    entry, and the steps hᵢ = 1e-4·max(|θᵢ|, cᵢ) (c: θ's scale, :func:`theta_scale`, so
    that a step means the same in any units of the predictors). Central differences err by
    O(h²) in the step and O(ε/h) in rounding: ~1e-7 relative here."""
    h = 1e-4 * jnp.maximum(jnp.abs(theta), c)
    E = jnp.diag(h)
    return jnp.concatenate([theta[None, :], theta[None, :] + E, theta[None, :] - E]), h


def fd_hessian(g, h):
    """∇²f by forward differences of the gradients ``g`` taken at :func:`fd_points`'s points,
    symmetrized: (∇f(x + hᵢeᵢ) − ∇f(x)) / hᵢ, relative error ~1e-5 — plenty for a Newton
    direction and its decrement (the gradient, which decides where the fit stops, is exact)."""
    H = (g[1:] - g[:1]) / h[:, None]
    return 0.5 * (H + H.T)


def _fgh_fd(fun, forward: bool = False, side_by_side: bool = False):
    """x ↦ (f, ∇f, ∇²f) of ``fun``: ∇f by autodiff (reverse, or with ``forward`` the m
    tangents side by side), ∇²f by :func:`fd_hessian` — the gradient's program traced once
    and run at m + 1 points, side by side (``vmap``) with ``side_by_side``, else one after
    another (``lax.map``; :func:`fd_batch` decides).

    Against :func:`_fgh_ad`'s autodiff Hessian, the fit's program holds one derivative of the
    criterion instead of two nested ones: for a model shape a first fit traces and compiles in
    about half the time (Penicillin 2.4 → 1.7 s, the classroom three-level model 2.2 →
    1.3 s; issue 12). Side by side, warm fits of several θ run faster than one after another
    (classroom ``(ses | schoolid/classid)``, 6 θ: 21.5–27 → 18.5–20.5 ms; Penicillin
    2.2–3.6 → 2.0–2.6 ms)."""
    if forward:
        def value_grad(x):
            basis = jnp.eye(x.shape[0], dtype=x.dtype)
            return jax.vmap(lambda v: jax.jvp(fun, (x,), (v,)), out_axes=(None, 0))(basis)
    else:
        value_grad = jax.value_and_grad(fun)

    def evaluate(x):
        pts, h = fd_points(x)
        f, g = jax.vmap(value_grad)(pts) if side_by_side else jax.lax.map(value_grad, pts)
        return f[0], g[0], fd_hessian(g, h)

    return evaluate


def fd_batch(layout: Layout) -> int:
    """How many criterion evaluations a Newton step of ``layout``'s fit runs side by side: the
    m + 1 gradients of its differenced Hessian (:func:`_fgh_fd`, nested and crossed designs),
    or 1 — where the Hessian has closed forms or comes by the chain rule, for one grouping
    factor, and on a CPU where those gradients' LAPACK calls batched m + 1 times, in a refit
    chunk of :data:`~jaxmlm._objective.CPU_CHUNK`, could reach the size at which jaxlib
    splits them over XLA's thread pool and can deadlock it
    (:data:`~jaxmlm._objective.LAPACK_SAFE`; ``benchmarks/jax_cpu_deadlock_repro.py``): a
    crossed design's fill-in block of more than ~15 columns; then they run one after
    another, as they do for a nested design of at most ``_FORWARD_MAX`` θ entries (below). A
    nested design's criterion is per-level algebra, with no LAPACK call but R_X's. Batched
    refits count this in their chunks (``jaxmlm._refit._chunk_size``)."""
    if layout.structured or per_level_formulas(layout) or layout.qr == 0:
        # Closed forms, the chain rule, or one factor over many columns, whose program keeps
        # LAPACK calls on single matrices only (tests/test_objective.py).
        return 1
    if is_nested(layout) and layout.ntheta <= _FORWARD_MAX:
        # Its gradient is already m forward tangents side by side: batching the points too
        # made the program ~0.15 s slower to compile (the course session's classroom step
        # 5.1 → 5.3–6.0 s), with warm fits no faster (classroom three-level 2.8 ms either way).
        return 1
    m1 = layout.ntheta + 1
    if jax.default_backend() != "cpu" or m1 * lapack_cost(layout) * CPU_CHUNK <= LAPACK_SAFE:
        return m1
    return 1


def _fgh_newton(fun, x0, layout: Layout, forward: bool = False):
    """(f, ∇f, ∇²f) for Newton on a criterion without closed forms: :func:`_fgh_fd` in
    float64 (its gradients side by side as :func:`fd_batch` says); in float32
    (``lmer(dtype="float32")``'s iterations) :func:`_fgh_ad`, since differences of a float32
    gradient keep too few digits (Penicillin without the float64 polish stopped 0.07 from θ̂,
    against 0.03 allowed)."""
    if x0.dtype != jnp.float64:
        return _fgh_ad(fun, forward)
    return _fgh_fd(fun, forward, side_by_side=fd_batch(layout) > 1)


#: Where an evaluation is costly, fits stop once the deviance is within this of its minimum (to
#: second order; ``_newton``'s ``near``): one evaluation less per fit — a Hessian through PIRLS for
#: a GLMM (crossed Bernoulli benchmark: 7 → 6 evaluations), an autodiff Hessian through the
#: whitening for a residual structure (sleepstudy AR(1): 10 → 9) — and the estimates within
#: ~1e-4 of their standard errors of the next Newton point's.
NEAR = 1e-8


def _newton(fun, x0, max_iter: int, ftol: float, gtol: float, fgh=None, diag=None,
            trial_fgh: bool = False, aux0=None, with_hessian: bool = False, aux_in: bool = False,
            near: float | None = None):
    """Modified Newton from ``x0``. ``fun`` gives the criterion (the value line search;
    None with ``trial_fgh``); ``fgh``, if given, (f, ∇f, H) at once, else they come from
    autodiff of ``fun`` (H = ∇²f).

    The step is the Newton step on H with eigenvalues replaced by their absolute values
    (floored), capped in length (:func:`_capped`), then Armijo backtracking from the full
    step. ``diag`` (boolean (m,), template diagonals), if given, limits each step so that
    no diagonal θᵢ shrinks below a tenth of its value or changes sign
    (:func:`_clip_diagonals`).

    ``trial_fgh``: every trial point of the line search gets (f, ∇f, H) at once, and an
    accepted one keeps them — one evaluation per Newton step, the usual case, instead of a
    criterion value for the line search followed by (f, ∇f, H) at the same point. For
    closed-form derivatives, which cost about as much as f, this halves the evaluations
    (sleepstudy, measured from θ = 1 in θ's own units: 13 → 7). For the average
    information (InstEval: f ~16 of ~65 ms) a backtracked step costs a full evaluation
    instead of a value, but a step backtracked once no more than before (a value at
    a = ½, then (f, ∇f, H) there). With autodiff Hessians (m gradients each), every
    backtracking step would cost m times more than a criterion value, so there the line search uses values only. The loop runs one trial
    point per pass, the start included: one copy of (f, ∇f, H) in the program (it compiles
    in less time than with a separate first evaluation), and nothing that runs both
    branches under ``vmap``.

    Either way, once the predicted decrease (the Newton decrement) is below ftol, a step
    that raises f by no more than rounding noise is accepted instead of backtracked.

    ``aux0`` (with ``trial_fgh``): ``fgh`` returns a fourth value, which the loop keeps for
    the point it keeps; the result is then (state, that value) — what the profile needs of
    each evaluation besides f (∂D/∂v), without a second copy of the criterion.

    ``with_hessian`` (without ``trial_fgh``): the result is (state, H at the state's x) — the
    Hessian the last step computed anyway (a GLMM's vcov), without a program of its own.

    ``aux_in`` (with ``aux0``): ``fgh`` takes the kept point's extra value as a second argument —
    a warm start for an inner iteration (a GLMM's PIRLS starts from the last accepted modes).

    ``near`` (with ``trial_fgh``): also stop (status 0) at an accepted point whose own Newton
    decrement — the decrease still to be had there, f − f* to second order (Boyd &
    Vandenberghe 2004, §9.5.1) — is below ``near``. The usual rule judges the step just
    taken and so always evaluates one more point; where an evaluation is costly (a GLMM's
    Hessian through PIRLS) and f is a deviance, stopping 1e-8 above the optimum leaves every
    estimate within ~1e-4 of its standard error of the next point's.
    """
    if trial_fgh and fgh is None:
        raise ValueError("trial_fgh needs fgh")
    if aux0 is not None and not trial_fgh:
        raise ValueError("aux0 needs trial_fgh")
    evaluate = _fgh_ad(fun) if fgh is None else fgh

    def slack(s, decrement):
        # A last step whose predicted decrease is below ftol may raise f by rounding noise;
        # backtracking could not improve on it (it halves ~40 times looking for a decrease
        # that is not there), so it is taken as it is.
        noise = _noise_rel(s.f) * jnp.maximum(1.0, jnp.abs(s.f))
        return jnp.where(decrement < _ftol(ftol, s.f), noise, -jnp.inf)

    def direction(s, H, with_free=False):
        """(Newton direction, Newton decrement[, whether no diagonal's step was clipped]) at s."""
        w, V = jnp.linalg.eigh(H)
        wabs = jnp.abs(w)
        wmod = jnp.maximum(wabs, 1e-8 * jnp.maximum(1.0, jnp.max(wabs)))
        d = _capped(-V @ ((V.T @ s.g) / wmod), s.x)
        decrement = -(s.g @ d) / 2.0
        free = jnp.asarray(True)  # no diagonal's step clipped
        if diag is not None:
            dc = _clip_diagonals(d, s.x, s.g, diag)
            d, free = dc, jnp.all(dc == d)
        return (d, decrement, free) if with_free else (d, decrement)

    if trial_fgh:
        def body(c):
            # One trial point x + a·d per pass: accepted, it ends the Newton step; rejected,
            # a is halved (at most 40 times, as in _line_search). The first pass evaluates the
            # start (d = 0): inside the loop, so the program holds one copy of (f, ∇f, H).
            s, d, decrement, a, k, aux = c
            first = s.nfev == 0
            x_t = s.x + a * d
            f_t, g_t, H_t, *aux_t = evaluate(x_t, aux[0]) if aux_in else evaluate(x_t)
            accepted = first | _acceptable(s, s.g @ d, a, f_t, slack(s, decrement))
            done = accepted | (k >= 40)
            it = s.it + (done & ~first).astype(s.it.dtype)
            # A step that ends rejected (the 41st halving) is judged at the point kept.
            f_new, g_new = jnp.where(accepted, f_t, s.f), jnp.where(accepted, g_t, s.g)
            status = jnp.where(first, _start_status(f_t, max_iter),
                               _status(decrement, s.f, f_new, g_new, accepted, it, max_iter, ftol, gtol))
            d_new, dec_new, free = direction(OptState(x_t, f_t, g_t, it, s.nfev, status), H_t, True)
            if near is not None:
                # not while a diagonal's step is clipped: the decrement then overstates the step
                # taken, and a θᵢ on its way to 0 must get close enough to be snapped there
                status = jnp.where(accepted & ~first & (status < 0) & (dec_new < near) & free, 0, status)
            new = OptState(x_t, f_t, g_t, it, s.nfev + 1, status)
            kept = OptState(s.x, s.f, s.g, it, s.nfev + 1, jnp.where(done, status, -1))
            s = jax.tree.map(lambda u, v: jnp.where(accepted, u, v), new, kept)
            aux = jax.tree.map(lambda u, v: jnp.where(accepted, u, v), tuple(aux_t), aux)
            return (s, jnp.where(accepted, d_new, d), jnp.where(accepted, dec_new, decrement),
                    jnp.where(accepted, 1.0, 0.5 * a).astype(a.dtype), jnp.where(accepted, 0, k + 1), aux)

        inf = jnp.asarray(jnp.inf, x0.dtype)
        zero = jnp.zeros_like(x0)
        init = (OptState(x0, inf, zero, jnp.asarray(0), jnp.asarray(0), jnp.asarray(-1)), zero, inf,
                jnp.asarray(1.0, x0.dtype), jnp.asarray(0), () if aux0 is None else (aux0,))
        out = jax.lax.while_loop(lambda c: c[0].status < 0, body, init)
        return out[0] if aux0 is None else (out[0], out[-1][0])

    f0, g0, H0 = evaluate(x0)
    st0 = OptState(x0, f0, g0, jnp.asarray(0), jnp.asarray(1), _start_status(f0, max_iter))

    def body(c):
        s, H = c
        d, decrement = direction(s, H)
        a, k, accepted = _line_search(fun, s, d, slack(s, decrement))
        x_new = jnp.where(accepted, s.x + a * d, s.x)
        f_new, g_new, H_new = evaluate(x_new)
        it = s.it + 1
        status = _status(decrement, s.f, f_new, g_new, accepted, it, max_iter, ftol, gtol)
        return OptState(x_new, f_new, g_new, it, s.nfev + k + 1, status), H_new

    out = jax.lax.while_loop(lambda c: c[0].status < 0, body, (st0, H0))
    return out if with_hessian else out[0]


def _bfgs(fun, x0, max_iter: int, ftol: float, gtol: float) -> OptState:
    """BFGS on the inverse Hessian (Nocedal & Wright 2006, §6.1, initial scaling eq. 6.20).

    For layouts whose criterion is expensive (a large dense fill-in block, as
    in crossed designs like InstEval) an exact Hessian costs many gradients;
    BFGS needs one gradient per iteration.
    """
    vg = jax.value_and_grad(fun)
    f0, g0 = vg(x0)
    m = x0.shape[0]
    st0 = OptState(x0, f0, g0, jnp.asarray(0), jnp.asarray(1), _start_status(f0, max_iter))

    def body(c):
        s, Hi = c
        d = -Hi @ s.g
        d = jnp.where(s.g @ d < 0, d, -s.g)  # keep a descent direction
        d = _capped(d, s.x)
        decrement = -(s.g @ d) / 2.0
        a, k, accepted = _line_search(fun, s, d)
        x_new = jnp.where(accepted, s.x + a * d, s.x)
        f_new, g_new = vg(x_new)
        step, dg = x_new - s.x, g_new - s.g
        sy = step @ dg
        ok = accepted & (sy > 1e-12 * jnp.linalg.norm(step) * jnp.linalg.norm(dg))
        Hi = jnp.where((s.it == 0) & ok, jnp.eye(m, dtype=x0.dtype) * sy / (dg @ dg), Hi)
        rho = 1.0 / jnp.where(ok, sy, 1.0)
        E = jnp.eye(m, dtype=x0.dtype) - rho * jnp.outer(step, dg)
        Hi = jnp.where(ok, E @ Hi @ E.T + rho * jnp.outer(step, step), Hi)
        it = s.it + 1
        status = _status(decrement, s.f, f_new, g_new, accepted, it, max_iter, ftol, gtol)
        return OptState(x_new, f_new, g_new, it, s.nfev + k + 1, status), Hi

    return jax.lax.while_loop(lambda c: c[0].status < 0, body, (st0, jnp.eye(m, dtype=x0.dtype)))[0]


@functools.partial(_compiled.jit, static_argnames=("layout", "max_iter", "method", "penalty"))
def fit_theta(
    theta0, stats: Stats, reml, layout: Layout, max_iter: int = 200, ftol=1e-10, gtol=1e-8, method: str = "newton",
    penalty=None,
) -> OptState:
    """Minimize the criterion over θ from ``theta0`` by ``method`` ("newton", "ai" or "bfgs").

    * "newton": modified Newton — the exact Hessian in closed form per level when there
      is one grouping factor of up to three columns (:func:`~jaxmlm._objective.blockdiag_fgh`),
      through the chain rule for structured terms, else forward differences of the autodiff
      gradient in float64 (its m + 1 gradients side by side where :func:`fd_batch` allows)
      and autodiff's Hessian in float32 (:func:`_fgh_newton`);
    * "ai": modified Newton on the average-information matrix
      (:func:`~jaxmlm._objective.average_information`) with the exact gradient of
      :func:`~jaxmlm._objective.criterion_rest` and diagonal steps clipped
      (:func:`_clip_diagonals`): for a large dense fill-in block, where an exact Hessian
      costs many gradients. With one grouping factor it is "newton";
    * "bfgs": BFGS with exact gradients.

    All minimize the same criterion, :func:`~jaxmlm._objective.deviance`, over the
    unit-free coordinates u = θ / c, c = :func:`theta_scale` (module docstring): f(c ⊙ u),
    ∇_u f = c ⊙ ∇_θ f, ∇²_u f = diag(c) ∇²_θ f diag(c), so that step caps and ``gtol`` do
    not depend on the predictors' units. ``penalty`` (None, or a hashable function of θ and the
    layout, :class:`~jaxmlm._priors.ThetaPenalty`) is added to the criterion on every path: its value,
    gradient and Hessian by autodiff (it is a small function of θ alone; ``blmer``'s priors).
    ``theta0`` and the result's x are θ; its g is
    ∇_u f (:class:`OptState`). c is computed from ``stats`` inside the program (traced
    data: one compiled program serves every data set of a layout). Data are arguments, not
    closures, so fits of the same shape reuse one compiled program.
    """
    c = theta_scale(stats, layout)
    st = _fit_u(theta0 / c, c, stats, reml, layout, max_iter, ftol, gtol, method, penalty)
    return st._replace(x=c * st.x)


def _pen_fun(fun, penalty, layout: Layout):
    """θ ↦ fun(θ) + penalty(θ) (``fun`` itself when there is no penalty: lmer's programs unchanged)."""
    if penalty is None:
        return fun
    return lambda t: fun(t) + penalty(t, layout)


def _pen_fgh(fgh, penalty, layout: Layout):
    """(f, ∇f, H) of fun + penalty from those of fun, all in θ; the penalty's by autodiff."""
    if penalty is None:
        return fgh
    pen = lambda t: penalty(t, layout)  # noqa: E731
    pg, ph = jax.grad(pen), jax.hessian(pen)

    def fgh_p(t):
        f, g, H, *rest = fgh(t)
        return (f + pen(t), g + pg(t), H + ph(t), *rest)

    return fgh_p


def _fun_u(fun, c):
    """u ↦ f(c ⊙ u); autodiff of it gives the derivatives in u."""
    return lambda u: fun(c * u)


def _fgh_u(fgh, c):
    """(f, ∇f, ∇²f) in u from those in θ at θ = c ⊙ u (the chain rule for a diagonal map)."""
    def fgh_u(u):
        f, g, H = fgh(c * u)
        return f, c * g, H * (c[:, None] * c[None, :])

    return fgh_u


#: The closed-form Hessian of :func:`~jaxmlm._objective.blockdiag_fgh` is unrolled over
#: pairs of θ entries and k×k products, O(k⁶) operations in the program: for a term of k
#: columns its compile took ~3.6 s at k = 3, ~8 s at k = 4 and 33–39 s at k = 5 (issue 12).
#: Above this k the per-level criterion is differentiated by autodiff instead.
_CLOSED_FORM_MAX_K = 3


#: Most entries of the unstructured templates through which :func:`_structured_fgh` takes the
#: derivatives of a layout with structured terms (its autodiff Hessian is that size squared);
#: above it θ's own derivatives are taken by autodiff (:func:`_fit_u`).
_CHAIN_MAX = 64


def per_level_formulas(layout: Layout) -> bool:
    """Whether the criterion of ``layout`` is evaluated by the per-level formulas of
    :func:`~jaxmlm._objective.blockdiag_fgh`/``blockdiag_value``: one grouping factor, no
    structured term, at most ``_CLOSED_FORM_MAX_K`` columns (they are unrolled over the k×k
    entries; above that the dense per-level factorization compiles in less time)."""
    return layout.qr == 0 and not layout.structured and layout.k1 <= _CLOSED_FORM_MAX_K


def _fit_u(u0, c, stats: Stats, reml, layout: Layout, max_iter: int, ftol, gtol, method: str,
           penalty=None) -> OptState:
    """:func:`fit_theta`'s minimization in u = θ / c (its state's x is u); ``penalty`` is added to
    every criterion below (:func:`_pen_fun`, :func:`_pen_fgh`)."""
    def dev0(t):
        return _deviance(t, stats, reml, layout)

    dev = _pen_fun(dev0, penalty, layout)

    if layout.structured:
        if method == "bfgs":
            return _bfgs(_fun_u(dev, c), u0, max_iter, ftol, gtol)
        if unstructured_layout(layout)[0].ntheta > _CHAIN_MAX:
            # A structure over many columns (a relationship matrix over the levels of a factor,
            # jaxmlm._relmat) has a few parameters but a template of k(k + 1)/2 entries: the
            # chain rule through the unstructured templates would need their Hessian, so θ's
            # own (f, ∇f, ∇²f) are taken by autodiff through the dense factorization instead.
            return _newton(None, u0, max_iter, ftol, gtol, fgh=_fgh_ad(_fun_u(dev, c), forward=len(u0) <= _FORWARD_MAX),
                           trial_fgh=True)
        return _newton(None, u0, max_iter, ftol, gtol, fgh=_fgh_u(_pen_fgh(_structured_fgh(stats, reml, layout), penalty, layout), c),
                       trial_fgh=True)
    if per_level_formulas(layout) and method in ("newton", "ai"):
        # One grouping factor: closed-form per-level derivatives (blockdiag_fgh), on
        # level-last copies of A11 and Z1W made once here, outside the loop.
        A, Z = levels_last(stats.A11, stats.Z1W)
        return _newton(None, u0, max_iter, ftol, gtol,
                       fgh=_fgh_u(_pen_fgh(lambda t: blockdiag_fgh(t, A, Z, stats, reml, layout), penalty, layout), c),
                       trial_fgh=True)
    if is_nested(layout):
        if nested_scalar(layout):
            data = nested_scalar_data(stats, layout)  # θ-free: once, outside the loop

            def dev_nested(t):
                return nested_scalar_criterion(t, data, stats, reml, layout)
        else:
            nested = nested_data(stats, layout)

            def dev_nested(t):
                return _deviance(t, stats, reml, layout, nested)

        dev_nested = _pen_fun(dev_nested, penalty, layout)
        if method == "bfgs":
            return _bfgs(_fun_u(dev_nested, c), u0, max_iter, ftol, gtol)
        # (f, ∇f, H) costs a few values on per-level algebra, so every trial point gets all
        # three (one evaluation per step).
        return _newton(None, u0, max_iter, ftol, gtol, fgh=_fgh_newton(_fun_u(dev_nested, c), u0, layout,
                                                                     forward=len(u0) <= _FORWARD_MAX),
                       trial_fgh=True)
    if method == "newton" or (method == "ai" and layout.qr == 0):  # "ai" needs a fill-in block
        # (f, ∇f, H) at every trial point: the program holds one derivative program of the
        # criterion, not that and a separate value for the line search (Penicillin's fit
        # compiled in ~3.3 s instead of 5-6.5 s, (x | a) + (1 | b) with 40 levels of b
        # 4.9 instead of 9.8 s; warm fits as fast, the same iterations; issue 12).
        return _newton(None, u0, max_iter, ftol, gtol, fgh=_fgh_newton(_fun_u(dev, c), u0, layout), trial_fgh=True)
    if layout.qr == 0:
        return _bfgs(_fun_u(dev, c), u0, max_iter, ftol, gtol)
    pairs = pair_data(stats, layout)  # θ-free: once, outside the loop
    if method == "bfgs":
        return _bfgs(_fun_u(_pen_fun(lambda t: criterion_rest(t, stats, reml, layout, pairs)[0], penalty, layout), c),
                     u0, max_iter, ftol, gtol)

    def fg_ai(t):
        f, g, pieces = criterion_rest_value_and_grad(t, stats, reml, layout, pairs)
        return f, g, average_information(t, pieces, stats, reml, layout)[0]

    fg_ai = _pen_fgh(fg_ai, penalty, layout)

    # c > 0, so clipping in u keeps each diagonal θᵢ on its side of 0 just as in θ.
    return _newton(None, u0, max_iter, ftol, gtol, fgh=_fgh_u(fg_ai, c), diag=jnp.asarray(diagonal_mask(layout)),
                   trial_fgh=True)


@functools.partial(_compiled.jit, static_argnames="layout")
def theta_scale(stats: Stats, layout: Layout) -> jax.Array:
    """c (m,): the scale of each θ entry in the units of the data, θ = c ⊙ u (module docstring).

    cᵢ = 1 / rms(z_r) = √(n / Σ_rows z_r²) for an entry of template row r (z_r: that Z
    column over all levels of its grouping factor, with the rows' weights; n: rows that
    carry information), from the diagonals of A11 and A22 in ``stats``. Entries of
    structures not linear in θ, and of a column that is zero everywhere (nothing to scale;
    the criterion does not depend on it), get 1. An intercept without weights has rms 1
    exactly, so its c is 1 and lme4's start is unchanged there.
    """
    return _theta_scale(jnp, stats, layout)


def _theta_scale(xp, stats: Stats, layout: Layout):
    """:func:`theta_scale` with ``xp`` jax.numpy (in a program) or numpy (on the host)."""
    A11, n = (stats.A11, stats.n) if xp is jnp else (np.asarray(stats.A11), float(np.asarray(stats.n)))
    sums = [xp.sum(xp.diagonal(A11, axis1=1, axis2=2), axis=0)]  # (k₁,) Σ z² per column
    d22 = a22_diagonal(stats.A22, xp)
    for off, lev, k in layout.rest:
        sums.append(xp.sum(d22[off : off + lev * k].reshape(lev, k), axis=0))
    linear = [(kb, pos, idx, ss) for (kb, pos, idx), ss in zip(layout.templates, sums) if idx]
    c = xp.ones(layout.ntheta, stats.WW.dtype)
    if not linear:
        return c
    ms = xp.concatenate([ss[np.asarray(pos) // kb] / n for kb, pos, _, ss in linear])  # mean square of each entry's row column
    idx = np.concatenate([np.asarray(idx, dtype=int) for _, _, idx, _ in linear])
    ok = ms > 0
    scale = xp.where(ok, 1.0 / xp.sqrt(xp.where(ok, ms, 1.0)), 1.0).astype(c.dtype)
    if xp is jnp:
        return c.at[idx].set(scale)
    c[idx] = scale
    return c


def theta_scale_host(stats: Stats, layout: Layout) -> np.ndarray:
    """:func:`theta_scale` on the host, as float64, in numpy: a program of its own for it
    cost a fresh process ~0.05 s of tracing and compiling for each new shape (``anova``'s
    and ``ranova``'s refits, profiles)."""
    return _theta_scale(np, stats, layout).astype(np.float64)


@functools.lru_cache(maxsize=256)
def unstructured_layout(layout: Layout) -> tuple[Layout, tuple[int, ...]]:
    """The layout in which every term is unstructured (us), and which θ entries of ``layout``
    keep their meaning in it (those of linear structures, in order; after them come the
    template entries of the other terms, column by column)."""
    kept = tuple(sorted(i for kb, pos, idx in layout.templates for i in idx))
    order = {t: n for n, t in enumerate(kept)}
    blocks = [(list(pos), [order[i] for i in idx]) for kb, pos, idx in layout.templates]
    t = len(kept)
    for b, off, cov, _ in layout.structured:
        kb = layout.templates[b][0]
        for j in range(cov.k):
            for i in range(j, cov.k):
                blocks[b][0].append((off + i) * kb + off + j)
                blocks[b][1].append(t)
                t += 1
    templates = tuple((kb, tuple(p), tuple(i)) for (kb, _, _), (p, i) in zip(layout.templates, blocks))
    return layout._replace(templates=templates, ntheta=t, structured=()), kept


def unstructured_theta(theta: jax.Array, layout: Layout) -> jax.Array:
    """θ of :func:`unstructured_layout`: the same templates as ``theta`` gives in ``layout`` (traceable)."""
    _, kept = unstructured_layout(layout)
    parts = [theta[jnp.asarray(kept, dtype=int)]]
    for _, _, cov, first in layout.structured:
        T = cov.factor(theta[first : first + cov.nparams])
        jj, ii = np.triu_indices(cov.k)  # (column, row) pairs with row ≥ column, column by column
        parts.append(T[ii, jj])
    return jnp.concatenate(parts)


def _structured_fgh(stats: Stats, reml, layout: Layout):
    """(f, ∇f, ∇²f) in θ of a layout with structures not linear in θ, by the chain rule through
    the unstructured templates: f(θ) = F(u(θ)), u = :func:`unstructured_theta`, so
    ∇f = Jᵀ∇F and ∇²f = Jᵀ∇²F J + Σᵢ ∂ᵢF ∇²uᵢ. F's derivatives are the engine's own
    (closed form for one grouping factor of at most three columns); u's, by autodiff of a k × k map, are cheap."""
    lay, _ = unstructured_layout(layout)
    if per_level_formulas(lay):
        A, Z = levels_last(stats.A11, stats.Z1W)

        def inner(u):
            return blockdiag_fgh(u, A, Z, stats, reml, lay)
    else:
        def inner(u):
            f, g = jax.value_and_grad(_deviance)(u, stats, reml, lay)
            return f, g, jax.hessian(_deviance)(u, stats, reml, lay)

    def u_of(t):
        return unstructured_theta(t, layout)

    def fgh(theta):
        f, g, H = inner(u_of(theta))
        J = jax.jacfwd(u_of)(theta)
        K = jax.hessian(u_of)(theta)
        return f, J.T @ g, J.T @ H @ J + jnp.einsum("i,ijk->jk", g, K)

    return fgh


def intercept_blocks(design) -> tuple[bool, ...]:
    """Per block of ``design`` (the layout's order), whether it is a random intercept alone,
    ``(1 | g)``: the blocks :func:`moment_start` estimates."""
    return tuple(blk.columns == ("(Intercept)",) for blk in design.blocks)


def moment_start(stats: Stats, layout: Layout, intercepts, with_scale: bool = False):
    """A start for θ from one-way ANOVA moment estimates: θ_b = σ̂_b / σ̂ per scalar block.

    ``intercepts`` (one bool per block, in the layout's order) says which blocks are a
    random intercept alone, ``(1 | g)``: only those get a moment estimate (for a scalar
    slope ``(0 + x | g)`` the sums below are Σx² and Σxe, not counts and residual sums).
    For each such block the residuals e of
    the least-squares fit of y on X give, from the sufficient statistics alone,

        SSB = Σ_g (Σ_{i∈g} eᵢ)² / n_g,   MSB = SSB / (G − 1),   MSW = (eᵀe − SSB) / (n − G),
        σ̂_b² = (MSB − MSW) / n₀,        n₀ = (n − Σ_g n_g² / n) / (G − 1)

    (the ANOVA estimator of a one-way random-effects model; Searle, Casella & McCulloch
    1992, §3.5), each factor taken on its own, and σ̂² = eᵀe/(n − p) − Σ_b σ̂_b², kept at
    least a tenth of eᵀe/(n − p). Crossed factors leak into each other's group means, so
    this is only a start: it saves the "ai" optimizer, whose iterations each cost a dense
    q_r³ factorization and inverse, the first few steps from lme4's θ = 1 (InstEval: 7
    iterations → 5, the same optimum). Diagonals are kept in [0.05, 10] in the optimizer's
    unit-free coordinates u = θ / c (c = :func:`theta_scale`; 1 for an intercept without
    weights): the optimizer moves each diagonal at most tenfold towards 0 per step, and
    never across it. Entries of the other blocks get lme4's start in those coordinates,
    θ = c ⊙ (1 on the diagonal, 0 off it), as :func:`~jaxmlm._results.lmer` starts.
    ``with_scale``: return (θ, c), c read in the same transfer.
    """
    theta, c = jax.device_get(_moment_program(stats, layout, tuple(bool(i) for i in intercepts)))
    theta, c = np.asarray(theta, dtype=np.float64), np.asarray(c, dtype=np.float64)
    return (theta, c) if with_scale else theta


@functools.partial(_compiled.jit, static_argnames=("layout", "intercepts"))
def _moment_program(stats: Stats, layout: Layout, intercepts: tuple):
    """(θ₀, c) of :func:`moment_theta` as a program of its own: two small arrays in one
    transfer, not the q_r × q_r A22."""
    return moment_theta(stats, layout, intercepts)


def moment_theta(stats: Stats, layout: Layout, intercepts: tuple):
    """(θ₀, c): :func:`moment_start`'s θ and :func:`theta_scale`'s c, traceable (inside the
    one program that fits a nested design's small data: ``jaxmlm._fit._pass_fit_and_solve``).

    A block without an estimate (not a random intercept alone; fewer than 2 levels with
    rows; n − G ≤ 0; n₀ ≤ 0), or all of them where n − p ≤ 1 or eᵀe = 0, keeps lme4's start. p is
    ``stats.p``, the design's, whatever padding X carries (``jaxmlm._stats.widen``)."""
    p = layout.p  # W's response column; the count of fixed effects is stats.p
    c = theta_scale(stats, layout)
    n, ete = stats.n, stats.WW[p, p]
    level_n = jnp.concatenate([jnp.diagonal(stats.A11, axis1=1, axis2=2).reshape(-1), a22_diagonal(stats.A22)])
    level_e = jnp.concatenate([stats.Z1W[:, :, p].reshape(-1), stats.ZrW[:, p]])
    sizes = [layout.l1] + [lev for _, lev, _ in layout.rest]
    ks = [layout.k1] + [k for _, _, k in layout.rest]
    bounds = np.cumsum([0] + [lev * k for lev, k in zip(sizes, ks)])
    var = []  # (σ̂_b², whether block b has an estimate), or None
    for a, b, k, icpt in zip(bounds, bounds[1:], ks, intercepts):
        if not (k == 1 and icpt):
            var.append(None)
            continue
        ng, rg = level_n[a:b], level_e[a:b]
        keep = ng > 0  # padded and empty levels: no rows
        G = jnp.sum(keep)
        ssb = jnp.sum(jnp.where(keep, rg * rg / jnp.where(keep, ng, 1.0), 0.0))
        n0 = (n - jnp.sum(ng * ng) / n) / (G - 1)
        est = jnp.maximum((ssb / (G - 1) - (ete - ssb) / (n - G)) / n0, 0.0)
        var.append((est, (G >= 2) & (n - G > 0) & (n0 > 0)))
    s2_total = ete / (n - stats.p)
    s2 = jnp.maximum(s2_total - sum(jnp.where(ok, v, 0.0) for v, ok in filter(None, var)), 0.1 * s2_total)
    theta = jnp.asarray(lme4_start(layout), c.dtype) * c
    usable = (n - stats.p > 1) & (ete > 0)
    for (kb, pos, idx), v in zip(layout.templates, var):
        if kb == 1 and v is not None:
            ci = c[idx[0]]
            est = ci * jnp.clip(jnp.sqrt(v[0] / s2) / ci, 0.05, 10.0)
            theta = theta.at[idx[0]].set(jnp.where(usable & v[1], est, theta[idx[0]]))
    return theta, c


#: Rows of the dense block above which "auto" takes average-information steps instead of
#: Newton's: the autodiff Hessian through the block's factorization costs ~25 criterion
#: evaluations (the classroom data's (1 | schoolid/classid), q_r = 112: a fit 45 ms with
#: Newton, 8 ms with AI, the same optimum); at q_r ≤ 30 both take the same time.
AI_ROWS = 64


def choose_method(layout: Layout) -> str:
    """Newton unless the dense block makes a Hessian costly (q_r > :data:`AI_ROWS`): then "ai"
    (not with structures that are not linear in θ: average information assumes linear ones;
    not for a nested design, whose fill-in is block diagonal and whose Hessian is cheap)."""
    return "ai" if layout.qr > AI_ROWS and not layout.structured and not is_nested(layout) else "newton"


def diagonal_mask(layout: Layout) -> np.ndarray:
    """Boolean (m,): which θ entries are template diagonals (lower bound 0 in lme4)."""
    return _diagonals(layout)[0].copy()


def lme4_start(layout: Layout) -> np.ndarray:
    """lme4's starting θ (m,): 1 on the template diagonals (and scales), 0 off them (Λ = I).

    jaxmlm starts from it in the optimizer's unit-free coordinates, θ = c ⊙ lme4_start
    (c = :func:`theta_scale`): lme4's θ = 1 says a random slope's sd is σ per unit of its
    predictor, whatever the unit."""
    return np.where(_diagonals(layout)[0], 1.0, 0.0)


@functools.lru_cache(maxsize=256)
def _diagonals(layout: Layout):
    """(diagonal mask (m,), ((θ index of a diagonal, θ indices of its column), …)), per layout:
    a fit of a small model spends more time rebuilding these than optimizing."""
    m = np.zeros(layout.ntheta, bool)
    columns = []
    for kb, pos, idx in layout.templates:
        pos, idx = np.asarray(pos), np.asarray(idx)
        rows, cols = pos // kb, pos % kb
        for j in range(kb):
            diag = idx[(rows == j) & (cols == j)]
            if diag.size:
                m[diag[0]] = True
                columns.append((int(diag[0]), idx[cols == j]))
    for _, _, cov, first in layout.structured:
        m[first : first + cov.nparams] = cov.scale_mask()
        columns += [(first + i, first + np.asarray(flip)) for i, flip in cov.sign_columns()]
    m.flags.writeable = False
    return m, tuple(columns)


#: Boundary candidates: template diagonals with |θᵢ| < SNAP_BELOW·cᵢ (c = theta_scale), i.e.
#: below 1e-3 in the optimizer's unit-free coordinates, whatever the predictors' units.
SNAP_BELOW = 1e-3


def canonical_theta_jax(theta: jax.Array, layout: Layout) -> jax.Array:
    """:func:`canonical_theta` inside a jitted program (same flips, same result)."""
    for diag, column in _diagonals(layout)[1]:
        theta = theta.at[column].multiply(jnp.where(theta[diag] < 0, -1.0, 1.0).astype(theta.dtype))
    return theta


def canonical_theta(theta: np.ndarray, layout: Layout) -> np.ndarray:
    """Flip template columns so that every diagonal entry is ≥ 0 (criterion unchanged)."""
    theta = np.array(theta, dtype=np.float64)
    for diag, column in _diagonals(layout)[1]:
        if theta[diag] < 0:
            theta[column] *= -1.0
    return theta

"""Stage 5 — optimizer: θ̂ = argmin of the profiled criterion, inside JAX.

θ has a handful of entries, so the exact Hessian (autodiff, forward over
reverse) costs a few gradient evaluations and buys quadratic convergence. We
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

The boundary (variances ≥ 0) is handled by symmetry rather than bounds: the
criterion is even in each template column, so the optimizer runs
unconstrained and :func:`canonical_theta` flips columns to give non-negative
diagonals afterwards, and near-zero diagonals are snapped to exactly zero
when that does not raise the criterion (lme4 reports singular fits with
θ = 0). This replaces lme4's bounded BOBYQA/Nelder-Mead.

Where f, ∇f and H come from (:func:`fit_theta`): with one grouping factor, the
closed-form per-level derivatives of :func:`~jaxmlm._objective.blockdiag_fgh`
(exact, a few criterion evaluations); with a small rest block, autodiff; with a
large dense fill-in block (q_r > 256, crossed designs such as InstEval), the
exact gradient of :func:`~jaxmlm._objective.criterion_rest` and, in place of H,
the average-information matrix (AI-REML; Gilmour, Thompson & Cullis 1995) —
positive semi-definite and close to H near the optimum, for the price of a few
solves. AI underestimates the curvature along components with few levels; the
diagonal step clipping of :func:`_clip_diagonals` keeps those steps from
oscillating across 0. InstEval: 7 iterations / 16 evaluations against BFGS's
16 / 46.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _x64  # noqa: F401
from ._objective import (
    _deviance,
    average_information,
    blockdiag_fgh,
    blockdiag_value,
    criterion_rest,
    deviance,
    levels_last,
    pair_data,
)
from ._stats import Layout, Stats

__all__ = ["OptState", "fit_theta", "canonical_theta", "STATUS"]

STATUS = {
    0: "converged: Newton decrement below ftol",
    1: "converged: gradient below gtol",
    2: "stopped: iteration limit reached",
    3: "stopped: line search found no decrease",
    4: "failed: non-finite criterion",
}


class OptState(NamedTuple):
    """Optimizer state (a pytree; batched under vmap).

    x (m,) current θ; f criterion; g (m,) gradient; it iterations; nfev
    criterion evaluations; status (see :data:`STATUS`, −1 while running).
    """

    x: jax.Array
    f: jax.Array
    g: jax.Array
    it: jax.Array
    nfev: jax.Array
    status: jax.Array


def _line_search(fun, s: OptState, d: jax.Array):
    """Armijo backtracking from a full step: (step, criterion there, evaluations, accepted)."""
    slope = s.g @ d

    def ls_cond(c):
        a, fa, k = c
        ok = jnp.isfinite(fa) & (fa <= s.f + 1e-4 * a * slope)
        return (~ok) & (k < 40)

    def ls_body(c):
        a, _, k = c
        a = a * 0.5
        return a, fun(s.x + a * d), k + 1

    a, fa, k = jax.lax.while_loop(ls_cond, ls_body, (jnp.asarray(1.0), fun(s.x + d), jnp.asarray(0)))
    return a, k + 1, jnp.isfinite(fa) & (fa <= s.f + 1e-4 * a * slope)


def _capped(d: jax.Array, x: jax.Array) -> jax.Array:
    # θ lives on a scale of ~0.01-10 relative to σ: no step longer than 5·max(1, |θ|).
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


def _status(decrement, f_old, f_new, g_new, accepted, it, max_iter, ftol, gtol):
    rel = 1e-14
    if f_new.dtype == jnp.float32:
        # float32 mode: the criterion is known to a few ulps of |f| only; a predicted or
        # achieved decrease below that is noise, not progress.
        rel = 64 * jnp.finfo(jnp.float32).eps
        ftol = jnp.maximum(ftol, rel * jnp.maximum(1.0, jnp.abs(f_new)))
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


def _newton(fun, x0, max_iter: int, ftol: float, gtol: float, fgh=None, diag=None) -> OptState:
    """Modified Newton from ``x0``. ``fun`` gives the criterion (line search); ``fgh``, if
    given, (f, ∇f, H) at once, else they come from autodiff of ``fun`` (H = ∇²f).

    ``diag`` (boolean (m,), template diagonals), if given, limits each step so that no
    diagonal θᵢ shrinks below a tenth of its value or changes sign (:func:`_clip_diagonals`).
    """
    if fgh is None:
        def grad_aux(x):
            f, g = jax.value_and_grad(fun)(x)
            return g, (g, f)

        # One forward-over-reverse program gives f, g and H together.
        fgh_ad = jax.jacfwd(grad_aux, has_aux=True)

        def evaluate(x):
            H, (g, f) = fgh_ad(x)
            return f, g, H
    else:
        evaluate = fgh

    f0, g0, H0 = evaluate(x0)
    st0 = OptState(x0, f0, g0, jnp.asarray(0), jnp.asarray(1), jnp.where(jnp.isfinite(f0), -1, 4))

    def body(c):
        s, H = c
        w, V = jnp.linalg.eigh(H)
        wabs = jnp.abs(w)
        wmod = jnp.maximum(wabs, 1e-8 * jnp.maximum(1.0, jnp.max(wabs)))
        d = _capped(-V @ ((V.T @ s.g) / wmod), s.x)
        decrement = -(s.g @ d) / 2.0
        if diag is not None:
            d = _clip_diagonals(d, s.x, s.g, diag)
        a, k, accepted = _line_search(fun, s, d)
        x_new = jnp.where(accepted, s.x + a * d, s.x)
        f_new, g_new, H_new = evaluate(x_new)
        it = s.it + 1
        status = _status(decrement, s.f, f_new, g_new, accepted, it, max_iter, ftol, gtol)
        return OptState(x_new, f_new, g_new, it, s.nfev + k + 1, status), H_new

    return jax.lax.while_loop(lambda c: c[0].status < 0, body, (st0, H0))[0]


def _bfgs(fun, x0, max_iter: int, ftol: float, gtol: float) -> OptState:
    """BFGS on the inverse Hessian (Nocedal & Wright 2006, §6.1, initial scaling eq. 6.20).

    For layouts whose criterion is expensive (a large dense fill-in block, as
    in crossed designs like InstEval) an exact Hessian costs many gradients;
    BFGS needs one gradient per iteration.
    """
    vg = jax.value_and_grad(fun)
    f0, g0 = vg(x0)
    m = x0.shape[0]
    st0 = OptState(x0, f0, g0, jnp.asarray(0), jnp.asarray(1), jnp.where(jnp.isfinite(f0), -1, 4))

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


@partial(jax.jit, static_argnames=("layout", "max_iter", "method"))
def fit_theta(
    theta0, stats: Stats, reml, layout: Layout, max_iter: int = 200, ftol=1e-10, gtol=1e-8, method: str = "newton"
) -> OptState:
    """Minimize the criterion over θ from ``theta0`` by ``method`` ("newton", "ai" or "bfgs").

    * "newton": modified Newton with the exact Hessian — closed form per level when there
      is one grouping factor (:func:`~jaxmlm._objective.blockdiag_fgh`), else autodiff;
    * "ai": modified Newton on the average-information matrix
      (:func:`~jaxmlm._objective.average_information`) with the exact gradient of
      :func:`~jaxmlm._objective.criterion_rest` and diagonal steps clipped
      (:func:`_clip_diagonals`): for a large dense fill-in block, where an exact Hessian
      costs many gradients. With one grouping factor it is "newton";
    * "bfgs": BFGS with exact gradients.

    All minimize the same criterion, :func:`~jaxmlm._objective.deviance`. Data are
    arguments, not closures, so fits of the same shape reuse one compiled program.
    """
    if layout.qr == 0 and method in ("newton", "ai"):
        # One grouping factor: closed-form per-level derivatives (blockdiag_fgh), on
        # level-last copies of A11 and Z1W made once here, outside the loop.
        A, Z = levels_last(stats.A11, stats.Z1W)
        return _newton(
            lambda t: blockdiag_value(t, A, Z, stats, reml, layout), theta0, max_iter, ftol, gtol,
            fgh=lambda t: blockdiag_fgh(t, A, Z, stats, reml, layout),
        )
    if method == "newton":
        return _newton(lambda t: _deviance(t, stats, reml, layout), theta0, max_iter, ftol, gtol)
    if layout.qr == 0:
        return _bfgs(lambda t: _deviance(t, stats, reml, layout), theta0, max_iter, ftol, gtol)
    pairs = pair_data(stats, layout)  # θ-free: once, outside the loop
    fun = lambda t: criterion_rest(t, stats, reml, layout, pairs)[0]  # noqa: E731
    if method == "bfgs":
        return _bfgs(fun, theta0, max_iter, ftol, gtol)

    def fg_ai(t):
        (f, pieces), g = jax.value_and_grad(criterion_rest, has_aux=True)(t, stats, reml, layout, pairs)
        return f, g, average_information(t, pieces, stats, reml, layout)[0]

    return _newton(fun, theta0, max_iter, ftol, gtol, fgh=fg_ai, diag=jnp.asarray(diagonal_mask(layout)))


def choose_method(layout: Layout) -> str:
    """Newton unless the dense fill-in block makes a Hessian costly (q_r > 256): then "ai"."""
    return "ai" if layout.qr > 256 else "newton"


def diagonal_mask(layout: Layout) -> np.ndarray:
    """Boolean (m,): which θ entries are template diagonals (lower bound 0 in lme4)."""
    m = np.zeros(layout.ntheta, bool)
    for kb, pos, idx in layout.templates:
        for p, i in zip(pos, idx):
            if p // kb == p % kb:
                m[i] = True
    return m


SNAP_BELOW = 1e-3  # boundary candidates: template diagonals smaller than this


def snap_boundary(theta: np.ndarray, f: float, stats: Stats, reml, layout: Layout):
    """Set near-zero template diagonals to exactly 0 where that does not raise the criterion.

    lme4 reports singular fits with θ = 0; an unconstrained optimizer only gets
    close. Returns (θ, criterion, indices snapped). ``theta`` is canonical (see
    :func:`canonical_theta`).
    """
    mask = diagonal_mask(layout)
    tol = min(1e-6, 1e-10 * max(1.0, abs(f)))
    snapped = []
    for i in np.flatnonzero(mask & (np.abs(theta) < SNAP_BELOW) & (theta != 0)):
        trial = theta.copy()
        trial[i] = 0.0
        ft = float(deviance(jnp.asarray(trial, dtype=stats.WW.dtype), stats, reml, layout))
        if ft <= f + tol:
            theta, f = trial, min(f, ft)
            snapped.append(int(i))
    return theta, f, tuple(snapped)


def canonical_theta(theta: np.ndarray, layout: Layout) -> np.ndarray:
    """Flip template columns so that every diagonal entry is ≥ 0 (criterion unchanged)."""
    theta = np.array(theta, dtype=np.float64)
    for kb, pos, idx in layout.templates:
        pos = np.asarray(pos)
        idx = np.asarray(idx)
        rows, cols = pos // kb, pos % kb
        for j in range(kb):
            diag = idx[(rows == j) & (cols == j)]
            if diag.size and theta[diag[0]] < 0:
                theta[idx[cols == j]] *= -1.0
    return theta

"""Stage 5's whole pipeline — start → minimize → canonical signs → boundary snapping → estimates — as one
traceable function of arrays.

:func:`fit` is what every fit is made of: it runs inside a caller's compiled program (a
single fit, or ``vmap``-ed over responses or starts), so a fit's steps are written once.
Its state is a pytree (:class:`Fit`); nothing in it needs the host.

Snapping follows lmer's rule (:func:`~jaxmlm._optimize.snap_boundary`, its host form):
template diagonals below ``SNAP_BELOW``·cᵢ in absolute value (c =
:func:`~jaxmlm._optimize.theta_scale`, the optimizer's unit-free coordinates) are set to exactly 0, one at a
time in θ order, where that raises the criterion by at most min(1e-6, 1e-10·max(1, |f|))
— lme4 reports boundary fits with θᵢ = 0, which an unconstrained optimizer only approaches.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _compiled, _x64  # noqa: F401
from ._objective import _deviance, blockdiag_value, levels_last
from ._optimize import SNAP_BELOW, OptState, canonical_theta_jax, diagonal_mask, fit_theta, theta_scale
from ._solution import Solution, solve
from ._stats import Layout, Stats

__all__ = ["Fit", "fit", "snap"]


class Fit(NamedTuple):
    """A finished fit: the optimizer's raw ``state`` (its θ before signs and snapping, f, ∇f,
    counters, status: :data:`~jaxmlm._optimize.STATUS`), the estimate ``theta`` (canonical,
    snapped), which diagonals were ``snapped`` to 0 (bool, (m,)), the criterion ``objective``
    at ``theta``, and the ``solution`` there (None when not asked for)."""

    state: OptState
    theta: jax.Array
    snapped: jax.Array
    objective: jax.Array
    solution: Solution | None


def snap(theta, f, stats: Stats, reml, layout: Layout):
    """(θ, criterion, snapped mask): lmer's boundary snapping (module docstring), traceable.

    The diagonals are visited by a loop in the program, not unrolled: the criterion is
    then compiled once, not once per diagonal (InstEval's fit program compiled 1.2 s
    longer with three copies)."""
    tol = jnp.minimum(1e-6, 1e-10 * jnp.maximum(1.0, jnp.abs(f)))
    c = theta_scale(stats, layout)
    diagonals = np.flatnonzero(diagonal_mask(layout))
    if not len(diagonals):
        return theta, f, jnp.zeros(theta.shape, bool)
    if layout.qr == 0 and not layout.structured:
        A, Z = levels_last(stats.A11, stats.Z1W)

        def criterion(t):  # one grouping factor: the per-level formulas compile smaller (~0.2 s)
            return blockdiag_value(t, A, Z, stats, reml, layout)
    else:
        def criterion(t):
            return _deviance(t, stats, reml, layout)

    def visit(j, carry):
        theta, f, snapped = carry
        i = jnp.asarray(diagonals)[j]
        trial = theta.at[i].set(0.0)
        near = (jnp.abs(theta[i]) < SNAP_BELOW * c[i]) & (theta[i] != 0)
        # Only a candidate needs the criterion at the trial point (under vmap both branches run).
        ft = jax.lax.cond(near, criterion, lambda t: jnp.inf * f, trial)
        take = near & (ft <= f + tol)
        return jnp.where(take, trial, theta), jnp.where(take, jnp.minimum(f, ft), f), snapped.at[i].set(take)

    return jax.lax.fori_loop(0, len(diagonals), visit, (theta, f, jnp.zeros(theta.shape, bool)))


def fit(theta0, stats: Stats, reml, layout: Layout, max_iter: int = 200, ftol=1e-10, gtol=1e-8,
        method: str = "newton", with_solution: bool = True) -> Fit:
    """Minimize the criterion from ``theta0`` (:func:`~jaxmlm._optimize.fit_theta`), give θ̂
    canonical signs, snap boundary estimates, and (``with_solution``) solve for β̂, σ̂ and b̂.

    Traceable and ``vmap``-able; ``layout``, ``max_iter``, ``method`` and
    ``with_solution`` are static in a caller's ``jit``."""
    st = fit_theta(theta0, stats, reml, layout, max_iter=max_iter, ftol=ftol, gtol=gtol, method=method)
    theta, f, snapped = snap(canonical_theta_jax(st.x, layout), st.f, stats, reml, layout)
    sol = solve(theta, stats, reml, layout) if with_solution else None
    return Fit(st, theta, snapped, sol.criterion if sol is not None else f, sol)


fit_jit = partial(_compiled.jit, static_argnames=("layout", "max_iter", "method", "with_solution"))(fit)

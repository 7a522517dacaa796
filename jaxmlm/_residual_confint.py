"""Profile confidence intervals of a linear mixed model with a residual structure.

The linear model's profile (:mod:`jaxmlm._confint`, lme4's ``profile.merMod``: the ML
deviance, each parameter fixed in turn and the others re-optimized, the limits where
ζ(v) = sign(v − ψ̂)·√(D*(v) − D̂) = ±z) with the structure's parameters among the
parameters: as a profiled parameter of its own (``Phi``, a ``varIdent`` ratio, …) and as free
coordinates of every other parameter's minimization. The criterion is the linear model's
profile kernel on the whitened statistics at the structure's unconstrained parameters ρ_u
(:func:`~jaxmlm._residual_fit.whitened_stats`: n-free for AR(1), CAR(1), compound symmetry and ``varIdent``), so
the free vector of a task is (φ, ρ_u); a structure parameter fixed at v replaces its entry of
ρ_u. Its profile is taken on nlme's unconstrained scale (atanh φ for AR(1), log of a
``varIdent`` ratio, …), where it is nearer quadratic, and its limits are mapped back by the
structure's own increasing map — ζ, and so each limit, does not depend on the scale.
A REML fit is profiled by its ML refit (with the structure), as lme4 profiles REML fits.

The checks lme4's ``confint.thpr`` makes at the bounds are made by the same minimization: an
SD whose profile does not reach −z at 0 (or whose estimate is 0) has the lower limit 0, a
correlation of the random effects that does not reach ±z at ±1 has that bound.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.special import ndtri

from . import _compiled, _programs, _x64  # noqa: F401
from ._confint import (SIGMA, _at_bounds, _cor_bounds, _estimates, _first_guess, _lift_free, _pad, _Param,
                       _params, _percent_labels, _prof_objective, _select, _snappable, _solve_tasks, _Spec, _specs,
                       _start_tasks, _task_start, grid_frame, grid_settings, grid_walks, padded_tasks, prof_tasks,
                       walk)
from ._residual_fit import split, whitened_stats, with_response

__all__ = ["structured_profile", "structured_profile_confint"]

STRUCT = 4  # a residual structure's parameter (after the kinds of :mod:`jaxmlm._confint`)


@partial(_compiled.jit, static_argnames=("layout", "rspec", "max_iter"), tiered=False)
def _minimize(X, v, spec, ridx, snappable, frozen, rows, index, arr, layout, rspec, max_iter: int = 50):
    """Minimize the ML deviance over each task's (φ, ρ_u), its parameter at v (``ridx``: the ρ_u
    entry a structure task fixes, −1 for the others): (x̂, D, ∂D/∂v) per task.

    Compiled once, fully optimized from the start (``tiered=False``): at the quick tier it
    ran ~4× slower (a crossed model with AR(1) residuals: 2.6–3.8 s per later ``confint()``
    against 0.53–0.76 s), and the ``confint()`` that brought it to the tier-up count paid the
    optimized compile on top (6.5–7.6 s); the first ``confint()`` takes about as long either
    way (11–14 s against 12.5–15.4, compile included)."""
    nt = layout.ntheta
    arr = with_response(arr, rows, index, layout)

    def objective(x, w, sp):
        s, r = sp
        u = x[nt:]
        u = jnp.where(r >= 0, u.at[jnp.maximum(r, 0)].set(w), u)
        return _prof_objective(x[:nt], w, s, whitened_stats(u, rows, index, arr, layout, rspec), layout)

    return prof_tasks(objective, X, v, (spec, ridx), snappable, frozen, max_iter)


def _problem(m):
    """What a structured model's profiles need, at its ML fit (a REML fit is refitted by ML):
    (its parameters, the ML fit, D̂, minimize, guess, start, estimates). ``minimize(P, X, v,
    frozen)``: (X̂, D, ∂D/∂v, finite) of tasks P (rows of X beyond len(P) are padding);
    ``guess(p, v̂, target)``: the first v tried; ``start(P)``: the tasks' free vectors
    (φ, ρ_u) at the estimates; ``estimates(params)``: ψ̂ (a structure's on the unconstrained
    scale)."""
    mm = m.update(REML=False) if m.REML else m
    r, layout = mm.residual, mm.layout
    nt, nr = layout.ntheta, len(r.u)
    base_params = _params(mm)
    at = [p.kind for p in base_params].index(SIGMA) + 1
    allp = (base_params[:at] + [_Param(nm, STRUCT, row=k) for k, nm in enumerate((*r.cor_names, *r.var_names))]
            + base_params[at:])
    theta, sigma, beta, vcov = (np.asarray(a, float) for a in (mm.theta, mm.sigma, mm._beta, mm._vcov))
    u_hat = np.asarray(r.u, float)
    se_u = np.sqrt(np.maximum(np.diag(mm._variance_cov()[0]), 0.0))

    def estimates(params):
        est = np.array([u_hat[p.row] if p.kind == STRUCT else np.nan for p in params])
        lmm = [a for a, p in enumerate(params) if p.kind != STRUCT]
        est[lmm] = _estimates(mm, [params[a] for a in lmm], theta, sigma, beta)
        return est

    def minimize(P, X, v, frozen):
        T = len(X)
        spec = _pad(_specs(mm, P), T)
        ridx = np.full(T, -1, np.int32)
        ridx[: len(P)] = [p.row if p.kind == STRUCT else -1 for p in P]
        snap = np.concatenate([_snappable(layout, spec), np.zeros((T, nr), bool)], axis=1)
        X = np.concatenate([_lift_free(X[:, :nt], spec, layout), X[:, nt:]], axis=1)
        args = (X, np.asarray(v, float), _Spec(*(np.asarray(spec[f]) for f in _Spec._fields)), ridx, snap,
                np.asarray(frozen), r.rows, r.index, r.arr)
        Xn, D, gv = (np.array(a) for a in _programs.call(_minimize, args, dict(layout=layout, rspec=r.spec)))
        return Xn, D, gv, np.isfinite(D) | frozen

    def start(P):
        T = padded_tasks(len(P))
        spec = _pad(_specs(mm, P), T)
        return np.concatenate([_task_start(mm, P, spec, theta, sigma), np.repeat(u_hat[None, :], T, axis=0)], axis=1)

    def guess(p, vhat, target):
        if p.kind == STRUCT:
            return vhat + target * (se_u[p.row] if se_u[p.row] > 0 else 0.5)
        return _first_guess(mm, p, vhat, target, sigma, vcov, mm.nobs)

    return allp, mm, float(mm.objective), minimize, guess, start, estimates


def _natural(mm, p, u_value: float) -> float:
    """A structure parameter on nlme's scale, its unconstrained value at ``u_value`` (the map is
    increasing and elementwise, so limits map to limits)."""
    r = mm.residual
    u = np.asarray(r.u, float).copy()
    u[p.row] = u_value
    return float(np.concatenate([np.asarray(x) for x in split(jnp.asarray(u), r.spec)])[p.row])


def structured_profile_confint(m, level: float = 0.95, parm=None, max_outer: int = 40,
                               ztol: float = 1e-7) -> pd.DataFrame:
    """Profile intervals of a :class:`~jaxmlm.StructuredMixedModel` (module docstring): rows the
    random-effect SDs and correlations, ``sigma``, the structure's parameters (nlme's names and
    scale), then the fixed effects."""
    allp, mm, base, minimize, guess, start, estimates = _problem(m)
    z = float(ndtri(0.5 + level / 2.0))
    params = _select(allp, parm)
    est = estimates(params)
    lower, upper = np.full(len(params), np.nan), np.full(len(params), np.nan)
    # Bounds first (lme4's confint.thpr): an SD at 0, a correlation of the random effects at ±1.
    tasks, checks = _start_tasks(params, est, z, lower, lambda p: _cor_bounds(mm, p))
    if checks:
        P = [params[a] for a, *_ in checks]
        X = start(P)
        v = np.zeros(len(X))
        v[: len(P)] = [where for _, _, where, _ in checks]
        _, D, _, _ = minimize(P, X, v, np.arange(len(X)) >= len(P))
        _at_bounds(checks, D, base, z, est, lower, upper, tasks)
    if tasks:
        P = [params[a] for a, *_ in tasks]
        X = start(P)
        res = _solve_tasks(P, est, tasks, base, max_outer, ztol, guess=guess, X=X, nspec=len(X),
                           minimize=lambda X, v, frozen: minimize(P, X, v, frozen))
        for (a, target, _, _), val in zip(tasks, res):
            (lower if target < 0 else upper)[a] = val
    for a, p in enumerate(params):  # the structure's limits on nlme's scale
        if p.kind == STRUCT:
            lower[a], upper[a] = _natural(mm, p, lower[a]), _natural(mm, p, upper[a])
    cols = _percent_labels(level)
    return pd.DataFrame({cols[0]: lower, cols[1]: upper}, index=pd.Index([p.name for p in params]))


def structured_profile(m, parm=None, alphamax: float = 0.01, maxpts: int = 100, delta: float | None = None,
                       delta_cutoff: float = 1 / 8) -> pd.DataFrame:
    """lme4's ``profile(m)`` with the structure (:func:`jaxmlm._confint.profile`'s walk): ζ on a
    grid of values of each parameter, a structure's parameters on nlme's scale."""
    allp, mm, base, minimize, guess, start, estimates = _problem(m)
    cutoff, delta = grid_settings(len(allp), delta, delta_cutoff, alphamax, maxpts)
    params = _select(allp, parm)
    est = estimates(params)
    rows = [(a, est[a], 0.0) for a in range(len(params)) if np.isfinite(est[a])]

    def sd_zero(p):
        X = start([p])
        _, D, _, _ = minimize([p], X, np.zeros(len(X)), np.arange(len(X)) >= 1)
        return float(D[0])

    walks = grid_walks(params, est, lambda p: [b for b, _ in _cor_bounds(mm, p)])
    if walks:
        P = [params[a] for a, *_ in walks]
        X = start(P)
        rows += walk(P, est, walks, base, cutoff, delta, int(maxpts), guess=guess, X=X, nspec=len(X),
                     minimize=lambda X, v, frozen: minimize(P, X, v, frozen), sd_zero=sd_zero,
                     cor_at=lambda p: [at for _, at in _cor_bounds(mm, p)])
    rows = [(a, _natural(mm, params[a], v) if params[a].kind == STRUCT else v, zeta) for a, v, zeta in rows]
    return grid_frame(rows, params)

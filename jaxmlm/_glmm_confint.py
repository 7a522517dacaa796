"""Profile confidence intervals of a GLMM, as lme4's ``confint(m)`` for a ``glmer`` fit.

lme4 (``profile.merMod``, Bates et al. 2015, *J. Stat. Softw.* 67(1), §5.1) profiles the
deviance the fit minimized — the Laplace approximation, or adaptive Gauss–Hermite
quadrature with ``nAGQ > 1`` — over the random-effects SDs and correlations
(``sd_(Intercept)|herd``, ``cor_…``) and the fixed effects; a GLMM has no σ row. For a
parameter ψ fixed at v the others are re-optimized, D*(v) = min D, and the limits are where
ζ(v) = sign(v − ψ̂)·√(D*(v) − D̂) crosses ±z, z = Φ⁻¹((1 + level)/2).

A GLMM's θ is the relative covariance factor of the random effects themselves (b = Λ_θ u,
u ~ N(0, I): no σ), so an SD is the norm of its template row and a correlation the cosine
of two rows. Each kind of parameter is fixed by the change of variables of the linear
model's profile (:mod:`jaxmlm._confint`): an SD's row is v times a unit vector in
hyperspherical angles, a correlation's two rows are rebuilt with cosine v, a fixed effect
is set to v; the remaining minimization, over the free angles, the other θ entries and β,
is unconstrained. It is the fit's own minimizer (:func:`~jaxmlm._glmm_fit._newton_once`:
modified Newton with the exact autodiff Hessian of the deviance, PIRLS inside), run for
every (parameter, side) task in one compiled program per model shape (``lax.map`` over the
tasks). The crossings are found by the linear model's safeguarded Newton steps in v
(:func:`~jaxmlm._confint._solve_tasks`), with dζ/dv = (∂D/∂v)/(2ζ), ∂D/∂v exact at the
inner optimum (envelope theorem), instead of lme4's spline through a grid of profile
points.

Boundaries as lme4's ``confint.thpr``: an SD whose estimate is 0, or whose profile does not
reach −z at 0, gets the lower limit 0; a correlation that does not reach ±z at ±1 gets ±1;
an upper limit never reached is ∞. A negative binomial's θ is held at its estimate, as lme4
profiles a ``glmer.nb`` fit.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.special import ndtri

from . import _compiled, _programs, _x64  # noqa: F401
from ._compare import lift_zero_diagonals
from ._confint import (BETA, SD, _at_bounds, _cor_start, _cor_theta, _estimates, _pad, _params, _percent_labels,
                       _sd_start, _sd_theta, _select, _snappable, _solve_tasks, _Spec, _specs, _start_tasks,
                       grid_frame, grid_settings, grid_walks, padded_tasks, walk)
from ._errors import InferenceError
from ._glmm_fit import _newton_once, _u_layout, deviance_at
from ._implicit import RowData
from ._pirls import Modes, laplace_deviance
from ._stats import Layout
from .families import Family

__all__ = ["glmm_boot_confint", "glmm_profile", "glmm_profile_confint"]


def _task_params(z, v, spec: _Spec, ntheta: int):
    """(θ, β) of a task's free vector z = (φ, β) with its parameter at v. An SD's row keeps the
    linear model's layout (its first slot, log σ there, is σ = 1 here and does not enter)."""
    phi, beta = z[:ntheta], z[ntheta:]
    ext = jnp.concatenate([phi, jnp.zeros(1, phi.dtype)])
    phi = jnp.where(spec.kind == SD, ext.at[spec.rr[0]].set(0.0)[:ntheta], phi)
    theta = _sd_theta(_cor_theta(phi, v, spec), v, spec)[0]
    beta = jnp.where(spec.kind == BETA, beta + (v - spec.e @ beta) * spec.e, beta)
    return theta, beta


@partial(_compiled.jit, static_argnames=("layout", "family", "nagq", "max_iter"), tiered="once")
def _minimize(X, v, spec: _Spec, frozen, mask, start: Modes, rows: RowData, index: tuple, phi, layout: Layout,
              family: Family, nagq: int, max_iter: int = 100):
    """Minimize the deviance over each task's free vector, its parameter at v: (ẑ, D(ẑ), ∂D/∂v).

    The tasks run one after another (``lax.map``: no batched LAPACK inside a while loop, see
    :mod:`jaxmlm._confint`), each from the fit's PIRLS modes; ``frozen`` tasks are skipped,
    ``mask`` marks the θ diagonals whose Newton steps keep their sign (those of rows the task
    does not rebuild).

    Compiled once, at the quick tier for a small model (``tiered="once"``, as
    :func:`jaxmlm._confint._prof_minimize`): a ``confint()`` runs it a handful of times, and
    the one that reached the tier-up count paid a full-optimization compile on the main thread."""
    lay_u = _u_layout(layout)
    m = layout.ntheta

    def deviance(z, w, sp, modes):
        theta, beta = _task_params(z, w, sp, m)
        return laplace_deviance(theta, beta, phi, modes, rows, index, lay_u, family, nagq)

    def task(args):
        x0, w, sp, mk = args
        st, (_, modes) = _newton_once(lambda z, kept: deviance(z, w, sp, kept), x0, start, max_iter, 1e-10, 1e-6, mk)
        gv = jax.grad(lambda ww: deviance(st.x, ww, sp, modes)[0])(w)
        return st.x, st.f, gv

    def skip(args):
        return args[0], jnp.nan * args[1], jnp.nan * args[1]

    return jax.lax.map(lambda a: jax.lax.cond(a[-1], skip, task, a[:-1]), (X, v, spec, mask, frozen))


def _problem(m):
    """What a GLMM's profiles need: (its parameters, θ̂, β̂, D̂, minimize, guess, start).
    ``minimize(P, v, X=None, frozen=None)``: (X̂, D, ∂D/∂v, finite) of tasks P at v, padded to a
    multiple of 8 tasks (few programs); ``guess(p, v̂, target)``: the first v tried;
    ``start(P)``: the tasks' free vectors at the estimates."""
    if m.nAGQ == 0:
        raise InferenceError("profiles need the Laplace or quadrature deviance (nAGQ ≥ 1); an nAGQ = 0 "
                             "fit has no deviance in β. Use method='Wald' or method='boot', or refit with nAGQ=1")
    own = sorted({getattr(t.cov, "kind", type(t.cov).__name__) for t in m.design.terms} - {"us", "diag"})
    if own:
        raise InferenceError(f"GLMM profiles cover unstructured and diagonal terms, not {', '.join(own)}; "
                             "use method='Wald' or method='boot'")
    layout = m.layout
    theta, beta = np.asarray(m.theta, float), np.asarray(m._beta, float)
    phi = np.asarray(m._phi, float)
    args = (m._modes, m._rowdata, m._index, phi)
    statics = dict(layout=layout, family=m.family, nagq=m.nAGQ)
    base = float(deviance_at(jnp.asarray(np.concatenate([theta, beta, [np.log(phi)] if m.family.estimates_phi else []])),
                             m._modes, m._rowdata, m._index, layout, m.family, m.nAGQ))
    se = np.sqrt(np.maximum(np.diag(np.asarray(m._vcov, float)), 0.0))

    def start(P):
        T = padded_tasks(len(P))
        return _start(m, P, _pad(_specs(m, P), T), theta, beta)

    def minimize(P, v, X=None, frozen=None):
        T = padded_tasks(len(P))
        spec = _pad(_specs(m, P), T)
        X = start(P) if X is None else X
        mask = np.concatenate([_snappable(layout, spec), np.zeros((T, layout.p), bool)], axis=1)
        v = np.asarray(v, float)[: len(P)]
        vv = np.concatenate([v, np.repeat(v[:1], T - len(v))])
        fr = np.arange(T) >= len(P) if frozen is None else frozen
        out = _programs.call(_minimize, (X, vv, _Spec(*(np.asarray(spec[f]) for f in _Spec._fields)), fr, mask, *args),
                             statics)
        Xn, D, gv = (np.array(a) for a in out)
        return Xn, D, gv, np.isfinite(D) | fr

    def guess(p, vhat, target):
        if p.kind == BETA:
            return vhat + target * se[p.fixef]
        if p.kind == SD:  # (an SD estimated at 0: half a unit on the link scale)
            nlev = m.design.blocks[m.design.terms[p.term].block].nlev
            return vhat * math.exp(target / math.sqrt(2.0 * nlev)) if vhat > 0 else 0.5
        return vhat + math.copysign(min(0.5, 1.0 - abs(vhat)), target) * (1.0 - vhat**2)

    return _params(m, sigma=False), theta, beta, base, minimize, guess, start


def glmm_profile_confint(m, level: float = 0.95, parm=None, max_outer: int = 40, ztol: float = 1e-7) -> pd.DataFrame:
    """lme4's ``confint(m, method = "profile")`` of a GLMM (module docstring): a DataFrame indexed
    by parameter (``sd_…``, ``cor_…``, then the fixed effects), columns ``"2.5 %"``, ``"97.5 %"``."""
    allp, theta, beta, base, minimize, guess, start = _problem(m)
    z = float(ndtri(0.5 + level / 2.0))
    params = _select(allp, parm)
    est = _estimates(m, params, theta, 1.0, beta)
    lower, upper = np.full(len(params), np.nan), np.full(len(params), np.nan)
    # What the bounds decide before any root is sought: SD = 0, correlation = ±1.
    tasks, checks = _start_tasks(params, est, z, lower, lambda p: [(-1.0, -1.0), (1.0, 1.0)])
    if checks:
        _, D, _, _ = minimize([params[a] for a, *_ in checks], np.array([b for _, b, _, _ in checks]))
        _at_bounds(checks, D, base, z, est, lower, upper, tasks)
    if tasks:
        P = [params[a] for a, _, _, _ in tasks]
        X = start(P)
        res = _solve_tasks(P, est, tasks, base, max_outer, ztol, guess=guess, X=X, nspec=len(X),
                           minimize=lambda X, v, frozen: minimize(P, v, X, frozen))
        for (a, target, _, _), val in zip(tasks, res):
            (lower if target < 0 else upper)[a] = val
    cols = _percent_labels(level)
    return pd.DataFrame({cols[0]: lower, cols[1]: upper}, index=pd.Index([p.name for p in params]))


def glmm_profile(m, parm=None, alphamax: float = 0.01, maxpts: int = 100, delta: float | None = None,
                 delta_cutoff: float = 1 / 8) -> pd.DataFrame:
    """lme4's ``profile(m)`` of a GLMM: ζ on a grid of values of each parameter, walked from the
    estimate to lme4's cutoff (:func:`jaxmlm._confint.profile`, whose walk it shares); columns
    ``parameter``, ``value``, ``zeta``."""
    allp, theta, beta, base, minimize, guess, start = _problem(m)
    cutoff, delta = grid_settings(len(allp), delta, delta_cutoff, alphamax, maxpts)
    params = _select(allp, parm)
    est = _estimates(m, params, theta, 1.0, beta)
    rows = [(a, est[a], 0.0) for a in range(len(params)) if np.isfinite(est[a])]
    walks = grid_walks(params, est, lambda p: (-1.0, 1.0))
    if walks:
        P = [params[a] for a, *_ in walks]
        X = start(P)
        rows += walk(P, est, walks, base, cutoff, delta, int(maxpts), guess=guess, X=X, nspec=len(X),
                     minimize=lambda X, v, frozen: minimize(P, v, X, frozen),
                     sd_zero=lambda p: float(minimize([p], np.zeros(1))[1][0]), cor_at=lambda p: (-1.0, 1.0))
    return grid_frame(rows, params)


def glmm_boot_confint(m, level: float = 0.95, parm=None, nsim: int = 500, seed=None) -> pd.DataFrame:
    """lme4's ``confint(m, method = "boot")``: percentile intervals of the SDs, correlations and
    fixed effects over a parametric bootstrap (``nsim`` responses from :meth:`simulate`, refitted
    at once by :meth:`refit_many`; replicates that did not converge are left out)."""
    params = _select(_params(m, sigma=False), parm)
    fits = m.refit_many(m.simulate(nsim, seed))
    ok = fits[fits["converged"]]
    if len(ok) < 2:
        raise InferenceError(f"only {len(ok)} of {len(fits)} bootstrap refits converged: no interval")
    T, B = ok[list(m.theta_names)].to_numpy(), ok[list(m.design.fixef_names)].to_numpy()
    draws = np.array([_estimates(m, params, t, 1.0, b) for t, b in zip(T, B)])  # σ = 1: b = Λu
    a = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(draws, a, axis=0), np.nanquantile(draws, 1.0 - a, axis=0)
    cols = _percent_labels(level)
    return pd.DataFrame({cols[0]: lo, cols[1]: hi}, index=pd.Index([p.name for p in params]))


def _start(m, P, spec: dict, theta: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Every task's free vector (φ, β) at the estimates, θ's diagonals lifted off 0 (an even
    criterion's stationary point) except in a row the task rebuilds."""
    T, layout = len(spec["kind"]), m.layout
    lifted = lift_zero_diagonals(theta, layout, np.ones(layout.ntheta))
    X = _cor_start(np.repeat(lifted[None, :], T, axis=0), spec)
    for i, p in enumerate(P):
        if p.kind == SD:
            X[i] = _sd_start(m, p, X[i], 1.0)
    return np.concatenate([X, np.repeat(beta[None, :], T, axis=0)], axis=1)

"""Confidence intervals as lme4's ``confint.merMod``: profile, Wald and bootstrap.

Parameters and names follow ``confint(m, oldNames = FALSE)``: per random-effects
term (lme4 order) the entries of its θ block in θ's order — ``sd_<col>|<group>``
on the diagonal, ``cor_<row col>.<col col>|<group>`` below it — then ``sigma``,
then the fixed effects. Columns are R's ``"2.5 %"``, ``"97.5 %"``.

Profile intervals (Bates et al. 2015, *J. Stat. Softw.* 67(1), §5.1; lme4's
``profile.merMod`` / ``confint.thpr``)
----------------------------------------------------------------------------
lme4 profiles the **ML** deviance, also for REML fits (``devfun2`` calls
``refitML``): for a parameter ψ fixed at v, the others are re-optimized,
D*(v) = min D, and the signed root ζ(v) = sign(v − ψ̂)·√(D*(v) − D(ψ̂)) is
interpolated at ζ = ±z, z = Φ⁻¹((1 + level)/2). Here the deviance is

    D(θ, σ, β) = log|L_θ|² + r²(θ, β)/σ² + n log(2πσ²),  r²(θ, β) = r²_θ + ‖R_Xᵀ(β − β̂_θ)‖²

and each kind of parameter is fixed by a change of variables, so that the
remaining minimization is unconstrained (θ's criterion is even in each
template column, so variance boundaries need no bounds):

* ``sigma`` = v: minimize D(θ, v, β̂_θ) over θ;
* ``sd`` of template row r = v: the row is (v/σ)·u with u a unit vector in
  hyperspherical angles, and log σ and the angles take the row's places in
  the free vector (sd_r = σ‖T[r, :]‖ = v); norm and direction as separate
  coordinates avoid the thin curved valley that Cartesian ones make;
* ``cor`` of rows (i, j) = ρ: T = diag(s)·L with unit rows; row j is ‖y‖·y and
  row i is ‖x‖²(ρ ℓ + √(1 − ρ²) w), ℓ = y/‖y‖, w the unit vector along
  x − (x·ℓ)ℓ, x and y taking the rows' places; the squared magnitudes keep
  the criterion smooth where an sd is driven to 0; σ and β profiled out;
* fixed effect β_j = v: r² + (v − β̂_j)²/[(R_X R_Xᵀ)⁻¹]_jj (the minimum over the
  other β), σ profiled out;
* diag, cs and ar1 terms (:mod:`jaxmlm._covariance`): an sd is one scale parameter
  t, set from v and σ as a one-entry row (sd = σ t for diag, σ t² for the others;
  one t for all columns when homogeneous); a cs or ar1 correlation fixed at ρ sets
  the structure's own parameter η(ρ) (:meth:`~jaxmlm._covariance.Structure.eta`),
  and its bounds are the structure's range (−1/(k−1) for cs, −1 for ar1; and 1).

Units: the free vector φ holds θ in the optimizer's unit-free coordinates,
θ = c ⊙ θ̃ with c = :func:`~jaxmlm._optimize.theta_scale` (1 / rms of each template
row's Z column), and an sd fixed at v fixes row r of θ̃ at norm v / (σ c_r): the
minimizer's start, step cap, finite-difference steps and its thresholds for
diagonals near 0 (snapping, lifting off 0) then mean the same whatever the
predictors' units (in θ itself a slope on a 1e4-unit predictor has θ ~ 1e-4, below
the snapping threshold, and finite-difference steps of 1e-5 swamp it). Correlations,
σ and β are unchanged by the row scaling.

All of them are one pure kernel (:func:`_prof_objective`). Its minimization is
the engine's own minimizer (:func:`jaxmlm._optimize._newton`, as every fit), run
for every (parameter, side) task in one program compiled once per model shape
(:func:`_prof_minimize`); its Hessian comes from finite differences of the
autodiff gradient (compiling an exact Hessian of this kernel costs several times
more than the whole profile). The tasks run one after another in that program,
not batched: batched LAPACK calls inside a compiled ``while_loop`` can deadlock
XLA's CPU thread pool (``benchmarks/jax_cpu_deadlock_repro.py``).
The crossing ζ(v) = ±z is found by
safeguarded Newton steps in v (log v for ``sd`` and ``sigma``) using
dζ/dv = (∂D/∂v)/(2ζ) (∂D/∂v at the inner optimum, by the envelope theorem),
instead of lme4's spline through a grid of profile points. Where that spline
is coarse (flat or strongly curved profiles) lme4's limits miss |ζ| = z; the
tests check those limits against exact roots of lme4's own ``devfun2``.

Boundaries as lme4's ``confint.thpr`` (NA → the parameter's bound): an sd
whose profile does not reach −z at sd = 0 (evaluated as the model without
that column: :func:`jaxmlm._compare.zero_columns`), or whose estimate is 0,
gets the lower limit 0; a correlation that does not reach ±z at ±1 gets ±1;
an upper limit that is never reached is ∞ (sd, sigma).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.linalg import solve_triangular
from scipy.special import ndtri  # the normal quantile; scipy.stats takes ~0.5–4 s to import

from . import _compiled, _programs, _x64  # noqa: F401
from ._compare import lift_zero_diagonals, refit_criterion
from ._covariance import Structure
from ._errors import ConvergenceWarning, InferenceError, JaxmlmError, warn_user
from ._objective import factorize, templates_host
from ._optimize import _newton, diagonal_mask, fd_hessian, fd_points, theta_scale, theta_scale_host
from ._solution import solve
from ._stats import Layout, Stats

__all__ = ["check_level", "confint", "grid_frame", "grid_settings", "grid_walks", "padded_tasks", "param_names", "prof_tasks", "profile", "walk"]

_LOG2PI = 1.8378770664093453
_TINY = 1e-300
SIGMA, SD, COR, BETA = 0, 1, 2, 3


# ---- names and the parameter table ----------------------------------------------------------------


class _Param(NamedTuple):
    name: str
    kind: int
    term: int = -1  # index in design.terms
    row: int = -1  # template row within the term (sd: its column; cor: i)
    col: int = -1  # cor: j (< row)
    fixef: int = -1


def _theta_index(t0: int, k: int, r: int, c: int) -> int:
    """θ index of template entry (r, c), r ≥ c, of a term whose θ block starts at t0 (column-major lower triangle)."""
    return t0 + c * k - c * (c - 1) // 2 + (r - c)


def _params(m, sigma: bool = True) -> list[_Param]:
    """The parameters in lme4's order; ``sigma`` False for a GLMM, whose profile has no σ row."""
    out = []
    for t, term in enumerate(m.design.terms):
        names = term.cov.sdcor_names(term.columns, term.group)
        for name, (kind, r, c) in zip(names, term.cov.sdcor_labels()):
            out.append(_Param(name, SD, t, r) if kind == "sd" else _Param(name, COR, t, r, c))
    if sigma:
        out.append(_Param("sigma", SIGMA))
    out += [_Param(nm, BETA, fixef=j) for j, nm in enumerate(m.design.fixef_names)]
    return out


def param_names(m) -> list[str]:
    """Row names of ``confint`` (lme4's ``oldNames = FALSE``)."""
    return [p.name for p in _params(m)]


def _term_starts(m) -> list[int]:
    """θ index of each term's first parameter (θ holds the terms' parameters in turn)."""
    starts, t0 = [], 0
    for term in m.design.terms:
        starts.append(t0)
        t0 += term.cov.nparams
    return starts


def _sd_entries(m, p: _Param) -> list[int]:
    """θ indices of an sd's row of T: for us its template row (column-major lower triangle);
    for the other structures the one scale parameter of its column (shared by all columns
    when the structure is homogeneous)."""
    term, t0 = m.design.terms[p.term], _term_starts(m)[p.term]
    if term.cov.kind == "us":
        return [_theta_index(t0, term.k, p.row, c) for c in range(p.row + 1)]
    return [t0 + p.row]


def _select(params: list[_Param], parm) -> list[_Param]:
    if parm is None:
        return params
    names = [p.name for p in params]
    if isinstance(parm, str):
        if parm == "theta_":
            return [p for p in params if p.kind != BETA]
        if parm == "beta_":
            return [p for p in params if p.kind == BETA]
        parm = [parm]
    elif isinstance(parm, (int, np.integer)):  # one position, as a list of one
        parm = [parm]
    out = []
    for q in parm:
        if isinstance(q, (int, np.integer)):
            if not 0 <= q < len(params):
                raise JaxmlmError(f"parameter index {q} is out of range: the model has {len(params)} parameters {names}")
            out.append(params[q])
        elif q in names:
            out.append(params[names.index(q)])
        else:
            raise JaxmlmError(f"unknown parameter {q!r}; the model's parameters are {names} "
                              "(or use 'theta_' / 'beta_' for all variance / fixed-effect parameters)")
    return out


def _percent_labels(level: float) -> list[str]:
    """R's ``format.perc``: paste(format(100 * c(a, 1 - a), trim = TRUE, digits = 3), "%")."""
    a = (1.0 - level) / 2.0
    vals = [100.0 * a, 100.0 * (1.0 - a)]
    dec = 0
    for v in vals:
        for sig in range(1, 4):
            if float(f"{v:.{sig}g}") == float(f"{v:.3g}"):
                break
        exp = math.floor(math.log10(abs(v))) if v else 0
        dec = max(dec, sig - 1 - exp)
    return [f"{v:.{max(dec, 0)}f} %" for v in vals]


# ---- public entry --------------------------------------------------------------------------------------


def confint(m, method: str = "profile", level: float = 0.95, parm=None, nsim: int = 500, seed=None,
            **kwargs) -> pd.DataFrame:
    """Confidence intervals as lme4's ``confint(m, method = ..., oldNames = FALSE)``.

    ``method``: ``"profile"`` (likelihood profile of the ML deviance, see the
    module docstring), ``"wald"`` (β̂ ± z·se for the fixed effects; NaN for the
    variance parameters, as lme4) or ``"boot"`` (parametric bootstrap
    percentile intervals from ``m.bootstrap(nsim, seed)``). ``parm``: names or
    positions of parameters, or ``"theta_"`` / ``"beta_"``; default all.
    Returns a DataFrame indexed by parameter, columns like ``"2.5 %"``, ``"97.5 %"``.
    """
    level = check_level(level)
    key = str(method).lower()
    if key == "wald":
        return _wald(m, float(level), parm)
    if key == "profile":
        own = sorted({type(t.cov).__name__ for t in m.design.terms if not isinstance(t.cov, Structure)})
        if own:
            raise InferenceError(
                f"profile intervals need the built-in covariance structures (us, diag, cs, ar1), not {', '.join(own)}; "
                "use method='boot', method='wald' (fixed effects) or m.variance_components() (Wald intervals of "
                "the SDs and correlations)")
        return _profile(m, float(level), parm, **kwargs)
    if key in ("boot", "bootstrap"):
        out = m.bootstrap(nsim, seed=seed, **kwargs).confint(level)
        if out.shape[1] == 2:
            out = out.set_axis(_percent_labels(float(level)), axis=1)
        if parm is not None:
            out = out.loc[[p.name for p in _select(_params(m), parm)]]
        return out
    raise JaxmlmError(f"method must be 'profile', 'wald' or 'boot', got {method!r}")


def check_level(level) -> float:
    """A confidence level as a float in (0, 1), else a clear error."""
    if not (isinstance(level, (float, int)) and not isinstance(level, bool) and 0.0 < float(level) < 1.0):
        raise JaxmlmError(f"level must be a number between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


def _wald(m, level: float, parm) -> pd.DataFrame:
    z = float(ndtri(0.5 + level / 2.0))
    cols = _percent_labels(level)
    params = _select(_params(m), parm)
    fe, se = np.asarray(m._beta), np.sqrt(np.diag(np.asarray(m._vcov)))
    lo = [fe[p.fixef] - z * se[p.fixef] if p.kind == BETA else np.nan for p in params]
    hi = [fe[p.fixef] + z * se[p.fixef] if p.kind == BETA else np.nan for p in params]
    return pd.DataFrame({cols[0]: lo, cols[1]: hi}, index=pd.Index([p.name for p in params]))


# ---- the profile kernel ------------------------------------------------------------------------------------


class _Spec(NamedTuple):
    """What one profile task fixes (arrays, so one compiled kernel serves every task).

    kind (): SIGMA / SD / COR / BETA; rr (K,): θ indices of the sd's template
    row, mr (K,) its mask; sq (): whether that row is one scale parameter that
    enters T squared (cs, ar1, homogeneous diag: sd = σ t²); ri, rj (K,): θ
    indices of rows i and j of an unstructured term's correlation (padding →
    index m), mi, mj (K,): their masks; eta (): θ index of a cs or ar1 term's
    correlation parameter (else m), cterm (): that term's place in the
    layout's ``structured`` (else −1); e (p,): unit vector of a fixed effect.
    """

    kind: jax.Array
    rr: jax.Array
    mr: jax.Array
    sq: jax.Array
    ri: jax.Array
    mi: jax.Array
    rj: jax.Array
    mj: jax.Array
    eta: jax.Array
    cterm: jax.Array
    e: jax.Array


def _sd_theta(phi, v, spec: _Spec):
    """θ with the sd's template row r set to (v/σ)·u(a), and log σ.

    φ's entries in row r are (log σ, a_1, …, a_r): u(a) is the unit vector in
    hyperspherical coordinates, u_c = sin a_1 ⋯ sin a_c · cos a_{c+1}, so that
    sd_r = σ‖T[r, :]‖ = v. Norm (through σ) and direction are separate
    coordinates: in Cartesian ones the optimum lies in a thin curved valley.
    """
    m = phi.shape[0]
    ext = jnp.concatenate([phi, jnp.zeros(1, phi.dtype)])
    e = ext[spec.rr] * spec.mr
    logsig = e[0]
    a = jnp.concatenate([e[1:], jnp.zeros(1, phi.dtype)])  # a_1 … a_{K-1}, then a_K = 0
    sinprod = jnp.concatenate([jnp.ones(1, phi.dtype), jnp.cumprod(jnp.sin(a[:-1]))])
    u = sinprod * jnp.cos(a)
    row = jnp.where(spec.kind == SD, v, 0.0) * jnp.exp(-logsig) * u
    # A scale parameter t that enters T squared (one entry, u = 1): sd = σ t², t = √(sd/σ).
    sq = (spec.kind == SD) & (spec.sq > 0) & (spec.mr > 0)  # (K,): the one entry only
    row = jnp.where(sq, jnp.sqrt(jnp.where(sq, jnp.abs(row), 1.0)), row)
    ext = ext.at[spec.rr].set(jnp.where(spec.mr > 0, row, ext[spec.rr]))
    return jnp.where(spec.kind == SD, ext[:m], phi), logsig


def _cor_theta(phi, v, spec: _Spec):
    """θ with rows i and j of a term's template rebuilt so that cor(i, j) = v.

    T = diag(s)·L_C with unit rows: row j is ‖y‖·y (s_j = ‖y‖², direction
    ℓ = y/‖y‖), row i is ‖x‖²(v ℓ + √(1 − v²) w), w the unit vector along
    x − (x·ℓ)ℓ; x, y are φ's entries at rows i, j. The squared magnitudes keep
    the criterion smooth where the optimum has s_i or s_j = 0 (see the module docstring).
    """
    m = phi.shape[0]
    ext = jnp.concatenate([phi, jnp.zeros(1, phi.dtype)])
    x = ext[spec.ri] * spec.mi
    y = ext[spec.rj] * spec.mj
    ny = jnp.sqrt(jnp.sum(y * y) + _TINY)
    ell = y / ny
    xp = x - jnp.dot(x, ell) * ell
    w = xp / jnp.sqrt(jnp.sum(xp * xp) + _TINY)
    r = jnp.where(spec.kind == COR, jnp.clip(v, -1.0, 1.0), 0.0)
    q = 1.0 - r * r
    s = jnp.where(q > 0, jnp.sqrt(jnp.where(q > 0, q, 1.0)), 0.0)
    row_i = jnp.sum(x * x) * (r * ell + s * w)
    row_j = ny * y
    ext = ext.at[spec.rj].set(jnp.where(spec.mj > 0, row_j, ext[spec.rj]))
    ext = ext.at[spec.ri].set(jnp.where(spec.mi > 0, row_i, ext[spec.ri]))
    return jnp.where(spec.kind == COR, ext[:m], phi)


_RHO_IN = 1e-7  # a structure's correlation is held this far (× its range) inside its bounds


def _eta_theta(phi, v, spec: _Spec, layout: Layout):
    """θ with a cs or ar1 term's correlation parameter set so that its correlation is v
    (the structure's own inverse map, :meth:`~jaxmlm._covariance.Structure.eta`); other
    tasks write to the padding slot m and leave θ as it is."""
    eta = jnp.zeros((), phi.dtype)
    for s, (_, _, cov, _) in enumerate(layout.structured):
        if isinstance(cov, Structure) and cov.correlated:
            lo, hi = cov.rho_range()
            inside = _RHO_IN * (hi - lo)
            eta = jnp.where(spec.cterm == s, cov.eta(jnp.clip(v, lo + inside, hi - inside)), eta)
    ext = jnp.concatenate([phi, jnp.zeros(1, phi.dtype)])
    return ext.at[spec.eta].set(jnp.where(spec.kind == COR, eta, ext[spec.eta]))[: phi.shape[0]]


def _cor_start(X: np.ndarray, spec: dict) -> np.ndarray:
    """φ for correlation tasks from θ: rows i and j divided by the square root of their norms."""
    X = X.copy()
    for t in np.flatnonzero(spec["kind"][: len(X)] == COR):
        for idx, mask in ((spec["ri"][t], spec["mi"][t]), (spec["rj"][t], spec["mj"][t])):
            sel = idx[mask > 0]
            nrm = float(np.sqrt(np.sum(X[t, sel] ** 2)))
            if nrm > 0:
                X[t, sel] /= math.sqrt(nrm)
    return X


def _prof_objective(phi, v, spec: _Spec, stats: Stats, layout: Layout):
    """ML deviance D with the task's parameter fixed at v, as a function of the free θ-vector φ
    (in unit-free coordinates, θ = c ⊙ θ̃: see the module docstring)."""
    c = theta_scale(stats, layout)
    c_row = jnp.concatenate([c, jnp.ones(1, c.dtype)])[spec.rr[0]]  # c of an sd's row (1 for other tasks)
    theta_u, logsig = _sd_theta(_eta_theta(_cor_theta(phi, v, spec), v, spec, layout), v / c_row, spec)
    theta = c * theta_u
    fac = factorize(theta, stats, layout)
    p, n = layout.p, stats.n
    r2 = fac.R[p, p] ** 2
    if p:
        RX, cb = fac.R[:p, :p], fac.R[p, :p]
        bhat = solve_triangular(RX.T, cb, lower=False) + stats.beta0
        q = solve_triangular(RX, spec.e, lower=True)
        vjj = jnp.where(spec.kind == BETA, q @ q, 1.0)
        r2 = r2 + jnp.where(spec.kind == BETA, (v - spec.e @ bhat) ** 2 / vjj, 0.0)
    vs = jnp.where(spec.kind == SIGMA, v, 1.0)
    ls = jnp.where(spec.kind == SD, logsig, 0.0)
    sig2 = jnp.where(spec.kind == SIGMA, vs**2, jnp.where(spec.kind == SD, jnp.exp(2.0 * ls), r2 / n))
    return fac.logdet_L + r2 / sig2 + n * (_LOG2PI + jnp.log(sig2)) - stats.ldw


def _snappable(layout: Layout, spec: dict) -> np.ndarray:
    """Per task, the template diagonals the minimization may set to exactly 0: all but those in
    the rows a task rebuilds (an sd's row, a correlation's two rows)."""
    rebuilt = np.zeros((len(spec["kind"]), layout.ntheta + 1), bool)
    for idx, mask in (("ri", "mi"), ("rj", "mj"), ("rr", "mr")):
        np.put_along_axis(rebuilt, spec[idx], spec[mask] > 0, axis=1)
    return diagonal_mask(layout)[None, :] & ~rebuilt[:, : layout.ntheta]


_SNAP_AT = 0.05  # unit-free φ diagonals below this are tried at exactly 0
_ROUNDS = 3  # minimize and snap, again while the task snapped; the last round only minimizes


@partial(_compiled.jit, static_argnames=("layout", "max_iter"), tiered="once")
def _prof_minimize(phi, v, spec: _Spec, snappable, frozen, stats: Stats, layout: Layout, max_iter: int = 50):
    """Minimize D over φ for each task, its parameter held at v: (φ̂, D(φ̂), ∂D/∂v at φ̂).

    Each task runs the engine's minimizer (:func:`~jaxmlm._optimize._newton`: modified
    Newton, |eigenvalue| Hessian, Armijo backtracking), the tasks one after another in one
    compiled program (``lax.map``); ``frozen`` tasks keep φ and are not evaluated. The
    Hessian comes from forward differences of the autodiff gradient (steps
    1e-5·max(1, |φᵢ|)): compiling an exact Hessian of this kernel costs several times more
    than the whole profile. After a minimization the task's snappable diagonals below
    ``_SNAP_AT`` are set to exactly 0 together, as ``lmer`` snaps boundary estimates (with a
    variance whose optimum is on the boundary the criterion is locally quartic there, where
    Newton steps only creep), and the task is minimized again from there; a round that ends
    higher than the round before is undone (at most ``_ROUNDS`` rounds, the last without
    snapping, so that every result is a minimum of the coordinates left free). ∂D/∂v is
    exact: reverse mode over (φ, v) with each evaluation, kept by the minimizer for the
    point it keeps (``_newton``'s ``aux0``).

    Tasks and finite-difference points are mapped, not ``vmap``-ed: a batched LAPACK
    Cholesky or triangular solve inside a compiled ``while_loop`` can deadlock XLA's CPU
    thread pool (``benchmarks/jax_cpu_deadlock_repro.py``; a vmap-ed version of this
    program hung on the classroom three-level model). Unbatched, every factorization is
    one LAPACK call, as in every fit.

    A small model's program is compiled once, at the quick tier (``tiered="once"``): a
    ``confint()`` calls it a handful of times, and the second ``confint()`` of the classroom
    three-level model took 1.9 s instead of 0.1 s when its twelfth call compiled it again at
    full optimization. A large model's is optimized from the start, as before: its runs are long.
    """
    return prof_tasks(lambda ph, w, sp: _prof_objective(ph, w, sp, stats, layout), phi, v, spec, snappable, frozen,
                      max_iter)


def prof_tasks(objective, phi, v, spec, snappable, frozen, max_iter: int):
    """:func:`_prof_minimize`'s loop over the tasks for any criterion ``objective(φ, v, spec)``
    (traceable; ``spec`` is passed through, any pytree with a leading task axis): the linear
    model's (statistics fixed), or a residual structure's, whose statistics depend on φ
    (:mod:`jaxmlm._residual_confint`)."""
    value_grad = jax.value_and_grad(objective, argnums=(0, 1))

    def task(args):
        x0, w, sp, snap_ok = args

        def fgh(x):  # (D, ∂D/∂φ, finite-difference ∂²D/∂φ², ∂D/∂v)
            pts, h = fd_points(x)
            f, (g, gv) = jax.lax.map(lambda p: value_grad(p, w, sp), pts)
            return f[0], g[0], fd_hessian(g, h), gv[0]

        def round_(carry):
            # Minimize from x; a round that started from snapped diagonals and ended higher
            # than the round before is undone. Snap again only after an improvement.
            x, best, f_best, gv_best, r, _ = carry
            st, gv = _newton(None, x, max_iter, 1e-10, 1e-8, fgh=fgh, trial_fgh=True, aux0=jnp.zeros_like(w))
            better = jnp.isfinite(st.f) & ~(st.f > f_best + 1e-12 * jnp.abs(f_best))
            best, f_best, gv_best = (jnp.where(better, a, b) for a, b in ((st.x, best), (st.f, f_best), (gv, gv_best)))
            cand = snap_ok & (jnp.abs(best) < _SNAP_AT) & (best != 0) & (r < _ROUNDS - 1) & better
            return jnp.where(cand, 0.0, best), best, f_best, gv_best, r + 1, jnp.any(cand)

        inf = jnp.asarray(jnp.inf, x0.dtype)
        init = (x0, x0, inf, jnp.zeros_like(w), 0, jnp.asarray(True))
        _, x, D, gv, _, _ = jax.lax.while_loop(lambda c: (c[4] < _ROUNDS) & c[5], round_, init)
        return x, D, gv

    def skip(args):
        return args[0], jnp.nan * args[1], jnp.nan * args[1]

    return jax.lax.map(lambda a: jax.lax.cond(a[-1], skip, task, a[:-1]), (phi, v, spec, snappable, frozen))


def _minimize(m, spec: dict, X: np.ndarray, v: np.ndarray, frozen: np.ndarray):
    """:func:`_prof_minimize` for the tasks of ``spec`` (arrays of :class:`_Spec`'s fields) from
    φ = X: (φ̂, D, ∂D/∂v, finite); ``frozen`` tasks keep X (their D and ∂D/∂v are not used)."""
    args = (np.asarray(X), np.asarray(v), _Spec(*(np.asarray(spec[f]) for f in _Spec._fields)),
            np.asarray(_snappable(m.layout, spec)), np.asarray(frozen), m.stats)
    # Through the program cache: a later process finds the traced program.
    Xn, D, gv = (np.array(a) for a in _programs.call(_prof_minimize, args, dict(layout=m.layout)))
    return Xn, D, gv, np.isfinite(D) | frozen


# ---- the profile ---------------------------------------------------------------------------------------------


def _ml_fit(m):
    """θ̂, σ̂, β̂, vcov and deviance at the ML estimates (lme4's refitML for REML fits)."""
    if m.REML:  # the refit's program gives the estimates too: no program of its own for them
        _, theta, sol = refit_criterion(m, reml=False)
    else:
        theta = np.asarray(m.theta, dtype=np.float64)
        sol = solve(np.asarray(theta), m.stats, np.asarray(0.0), m.layout)
    return theta, float(sol.sigma), np.asarray(sol.beta), np.asarray(sol.vcov), float(sol.criterion)


def _estimates(m, params, theta, sigma, beta) -> np.ndarray:
    Ts = templates_host(theta, m.layout)  # one program, not a dozen eager operations
    out = []
    for p in params:
        if p.kind == SIGMA:
            out.append(sigma)
        elif p.kind == BETA:
            out.append(beta[p.fixef])
        else:
            term = m.design.terms[p.term]
            T = Ts[term.block][term.offset : term.offset + term.k, term.offset : term.offset + term.k]
            S = T @ T.T
            if p.kind == SD:
                out.append(sigma * math.sqrt(S[p.row, p.row]))
            else:
                d = math.sqrt(S[p.row, p.row] * S[p.col, p.col])
                out.append(S[p.row, p.col] / d if d > 0 else np.nan)
    return np.asarray(out, dtype=np.float64)


def _specs(m, params) -> dict:
    """Array form (_Spec fields) of the tasks' parameters."""
    nt, pdim = m.layout.ntheta, m.layout.p
    K = max(t.k for t in m.design.terms)
    starts = _term_starts(m)
    n = len(params)
    spec = {
        "kind": np.array([p.kind for p in params], np.int32),
        "rr": np.full((n, K), nt, np.int32),
        "mr": np.zeros((n, K)),
        "sq": np.zeros(n),
        "ri": np.full((n, K), nt, np.int32),
        "mi": np.zeros((n, K)),
        "rj": np.full((n, K), nt, np.int32),
        "mj": np.zeros((n, K)),
        "eta": np.full(n, nt, np.int32),
        "cterm": np.full(n, -1, np.int32),
        "e": np.zeros((n, pdim)),
    }
    for a, p in enumerate(params):
        if p.kind == BETA:
            spec["e"][a, p.fixef] = 1.0
        elif p.kind == SD:
            idx = _sd_entries(m, p)
            spec["rr"][a, : len(idx)] = idx
            spec["mr"][a, : len(idx)] = 1.0
            spec["sq"][a] = float(not m.design.terms[p.term].cov.linear)
        elif p.kind == COR:
            cov, t0, k = m.design.terms[p.term].cov, starts[p.term], m.design.terms[p.term].k
            if cov.kind != "us":  # cs, ar1: one correlation parameter after the scales
                spec["eta"][a] = t0 + cov.nscales
                spec["cterm"][a] = [first for *_, first in m.layout.structured].index(t0)
            else:
                for c in range(p.row + 1):
                    spec["ri"][a, c] = _theta_index(t0, k, p.row, c)
                    spec["mi"][a, c] = 1.0
                for c in range(p.col + 1):
                    spec["rj"][a, c] = _theta_index(t0, k, p.col, c)
                    spec["mj"][a, c] = 1.0
    return spec


def padded_tasks(n: int) -> int:
    """How many task rows a profile program gets for n tasks: a multiple of 8 (at least 8), so
    that models share a few compiled programs instead of one per task count."""
    return max(8, -(-n // 8) * 8)


def _pad(spec: dict, T: int) -> dict:
    n = len(spec["kind"])
    return {k: np.concatenate([v, np.repeat(v[:1], T - n, axis=0)]) if T > n else v for k, v in spec.items()}


def _sd_start(m, p: _Param, theta: np.ndarray, sigma: float) -> np.ndarray:
    """φ for an sd task from θ: the sd's row as (log σ̂, hyperspherical angles of its direction)."""
    out = theta.copy()
    idx = _sd_entries(m, p)
    d = out[idx].copy()
    if not np.any(d):
        d[-1] = 1.0
    d /= np.linalg.norm(d)
    angles = []
    for c in range(len(idx) - 1):
        if c == len(idx) - 2:
            angles.append(math.atan2(d[c + 1], d[c]))
        else:
            angles.append(math.atan2(float(np.linalg.norm(d[c + 1 :])), d[c]))
    out[idx] = [math.log(sigma), *angles]
    return out


def _sd_zero_deviance(m, p: _Param, theta: np.ndarray) -> float:
    """ML deviance with sd = 0: the model without that Z column (all the term's columns
    for a homogeneous structure, whose one sd they share), σ re-estimated."""
    term = m.design.terms[p.term]
    cols = range(term.k) if term.cov.hom else [p.row]
    start = theta.copy()
    start[_sd_entries(m, p)] = 0.0
    return refit_criterion(m, reml=False, theta0=start, zeroed=[(term.block, term.offset + c) for c in cols])[0]


def _cor_bounds(m, p: _Param) -> list[tuple[float, float]]:
    """(bound, where D is evaluated for it) of a correlation, lower then upper: ±1 for us, where D is defined;
    a cs or ar1 correlation's range (:meth:`~jaxmlm._covariance.Structure.rho_range`), just
    inside it, where its parameter η is finite."""
    cov = m.design.terms[p.term].cov
    if cov.kind == "us":
        return [(-1.0, -1.0), (1.0, 1.0)]
    lo, hi = cov.rho_range()
    inside = 10 * _RHO_IN * (hi - lo)
    return [(lo, lo + inside), (hi, hi - inside)]


def _nlev(m, p: _Param) -> int:
    return m.design.blocks[m.design.terms[p.term].block].nlev


def _profile(m, level: float, parm, max_outer: int = 40, ztol: float = 1e-7) -> pd.DataFrame:
    z = float(ndtri(0.5 + level / 2.0))
    cols = _percent_labels(level)
    params = _select(_params(m), parm)
    theta, sigma, beta, vcov, base = _ml_fit(m)
    est = _estimates(m, params, theta, sigma, beta)
    n = m.nobs
    lower = np.full(len(params), np.nan)
    upper = np.full(len(params), np.nan)

    # Tasks: (parameter, side) pairs still to solve, with their brackets in v.
    tasks = []  # (param index, target, lo, hi)
    cor_bounds = []
    for a, p in enumerate(params):
        if p.kind == SD:
            if est[a] <= 0:
                lower[a] = 0.0
            else:
                z0 = -math.sqrt(max(_sd_zero_deviance(m, p, theta) - base, 0.0))
                if z0 >= -z:
                    lower[a] = 0.0
                else:
                    tasks.append((a, -z, 0.0, est[a]))
            tasks.append((a, z, est[a], np.inf))
        elif p.kind == SIGMA:
            tasks += [(a, -z, 0.0, est[a]), (a, z, est[a], np.inf)]
        elif p.kind == BETA:
            tasks += [(a, -z, -np.inf, est[a]), (a, z, est[a], np.inf)]
        elif np.isfinite(est[a]):
            cor_bounds += [(a, b, at, side) for (b, at), side in zip(_cor_bounds(m, p), (-1.0, 1.0))]
    T = padded_tasks(len(tasks) + len(cor_bounds))

    # Correlations at their bounds (±1 as lme4; a structure's range): reached → bracket, else the bound.
    if cor_bounds:
        pidx = [a for a, *_ in cor_bounds]
        spec = _pad(_specs(m, [params[a] for a in pidx]), T)
        X = _cor_start(np.repeat(_free_start(m, theta)[None, :], T, axis=0), spec)
        v = np.zeros(T)
        v[: len(cor_bounds)] = [at for _, _, at, _ in cor_bounds]
        frozen = np.arange(T) >= len(cor_bounds)
        _, D, _, _ = _minimize(m, spec, X, v, frozen)
        _at_bounds(cor_bounds, D, base, z, est, lower, upper, tasks)

    if tasks:
        P = [params[a] for a, _, _, _ in tasks]
        spec = _pad(_specs(m, P), T)
        res = _solve_tasks(
            P, est, tasks, base, max_outer, ztol,
            guess=lambda p, vhat, target: _first_guess(m, p, vhat, target, sigma, vcov, n),
            X=_task_start(m, P, spec, theta, sigma), nspec=T,
            minimize=lambda X, v, frozen: _minimize(m, spec, _lift_free(X, spec, m.layout), v, frozen))
        for (a, target, _, _), val in zip(tasks, res):
            (lower if target < 0 else upper)[a] = val
    return pd.DataFrame({cols[0]: lower, cols[1]: upper}, index=pd.Index([p.name for p in params]))


# ---- the profile on a grid (lme4's profile.merMod) ---------------------------------------------------------


def profile(m, parm=None, alphamax: float = 0.01, maxpts: int = 100, delta: float | None = None,
            delta_cutoff: float = 1 / 8) -> pd.DataFrame:
    """ζ on a grid of values of each parameter, as lme4's ``profile.merMod`` (its
    ``as.data.frame``: ``.zeta``, ``.focal``, ``.par``; here ``zeta``, ``value``, ``parameter``).

    ζ(v) = sign(v − ψ̂)·√(D*(v) − D(ψ̂)) is the signed root of the profiled ML deviance (module
    docstring), the quantity whose crossings of ±z are the profile limits of :func:`confint`.
    Each parameter is walked from its ML estimate (ζ = 0) out to each side as lme4 does: the
    walk stops at the first point with |ζ| > cutoff = √χ²_{npar}(1 − ``alphamax``) (lme4's
    cutoff: the χ² quantile on as many degrees of freedom as the model has parameters), at a
    bound (an sd at 0, a correlation at ±1, each evaluated there as in :func:`confint`) or
    after ``maxpts`` points; steps aim at ζ increments of ``delta`` (default cutoff ×
    ``delta_cutoff``, lme4's 1/8). lme4 extrapolates the step from the last two points; here
    it is a Newton step with the exact dζ/dv (envelope theorem), in log v for sd and sigma
    away from 0, capped at 10 times the step before (lme4's ``maxmult``). Every point is a
    minimization of the same kernel as :func:`confint`'s (all parameters and both sides in
    one compiled program per step), warm-started from the point before (lme4's
    ``startmethod = "prev"``). REML fits are profiled on the ML deviance, as lme4.

    Returns a DataFrame with columns ``parameter`` (names as :func:`confint`'s rows),
    ``value`` and ``zeta``, the parameters in :func:`param_names` order, each by value.
    """
    own = sorted({type(t.cov).__name__ for t in m.design.terms if not isinstance(t.cov, Structure)})
    if own:
        raise InferenceError(f"profiles need the built-in covariance structures (us, diag, cs, ar1), not {', '.join(own)}")
    allp = _params(m)
    cutoff, delta = grid_settings(len(allp), delta, delta_cutoff, alphamax, maxpts)
    params = _select(allp, parm)
    theta, sigma, beta, vcov, base = _ml_fit(m)
    est = _estimates(m, params, theta, sigma, beta)
    rows = [(a, est[a], 0.0) for a in range(len(params)) if np.isfinite(est[a])]
    walks = grid_walks(params, est, lambda p: [b for b, _ in _cor_bounds(m, p)])
    if walks:
        P = [params[a] for a, *_ in walks]
        T = padded_tasks(len(P))
        spec = _pad(_specs(m, P), T)
        rows += walk(
            P, est, walks, base, cutoff, float(delta), int(maxpts),
            guess=lambda p, vhat, target: _first_guess(m, p, vhat, target, sigma, vcov, m.nobs),
            X=_task_start(m, P, spec, theta, sigma), nspec=T,
            minimize=lambda X, v, frozen: _minimize(m, spec, _lift_free(X, spec, m.layout), v, frozen),
            sd_zero=lambda p: _sd_zero_deviance(m, p, theta), cor_at=lambda p: [at for _, at in _cor_bounds(m, p)])
    return grid_frame(rows, params)


def grid_settings(npar: int, delta, delta_cutoff, alphamax, maxpts) -> tuple[float, float]:
    """(cutoff, δ) of :func:`profile`'s walks: lme4's cutoff √χ²_npar(1 − alphamax) and the ζ step
    (default cutoff × ``delta_cutoff``), the arguments checked."""
    from scipy.special import chdtri  # the χ² upper-tail quantile

    if not (isinstance(alphamax, (float, int)) and 0.0 < float(alphamax) < 1.0):
        raise JaxmlmError(f"alphamax must be a number between 0 and 1 (e.g. 0.01), got {alphamax!r}")
    if not (isinstance(maxpts, (int, np.integer)) and maxpts >= 2):
        raise JaxmlmError(f"maxpts must be an integer of at least 2, got {maxpts!r}")

    cutoff = math.sqrt(float(chdtri(npar, float(alphamax))))
    if delta is None:
        if not (isinstance(delta_cutoff, (float, int)) and not isinstance(delta_cutoff, bool)
                and 0.0 < float(delta_cutoff) <= 1.0):
            raise JaxmlmError(f"delta_cutoff must be a number in (0, 1] (lme4's 1/8), got {delta_cutoff!r}")
        delta = cutoff * float(delta_cutoff)
    if not (isinstance(delta, (float, int)) and 0.0 < float(delta) <= cutoff):
        raise JaxmlmError(f"delta must be a positive number no larger than the cutoff {cutoff:.4g}, got {delta!r}")
    return cutoff, float(delta)


def grid_walks(params, est, cor_bounds) -> list:
    """:func:`profile`'s walks: (param index, side, lower bound, upper bound, step in log v?).
    An sd walks down in v itself, to reach 0 (lme4's lower bound); sd and σ walk up, σ down, in
    log v; a correlation between its bounds (``cor_bounds(p)``: lower, upper); any other
    parameter (β, a residual structure's) unbounded."""
    walks = []
    for a, p in enumerate(params):
        if not np.isfinite(est[a]):
            continue
        if p.kind == SD:
            if est[a] > 0:
                walks.append((a, -1.0, 0.0, est[a], False))
            walks.append((a, 1.0, est[a], np.inf, True))
        elif p.kind == SIGMA:
            walks += [(a, -1.0, 0.0, est[a], True), (a, 1.0, est[a], np.inf, True)]
        elif p.kind == COR:
            lo, hi = cor_bounds(p)
            walks += [(a, -1.0, lo, est[a], False), (a, 1.0, est[a], hi, False)]
        else:
            walks += [(a, -1.0, -np.inf, est[a], False), (a, 1.0, est[a], np.inf, False)]
    return walks


def grid_frame(rows, params) -> pd.DataFrame:
    """:func:`profile`'s table from its points (param index, v, ζ)."""
    out = pd.DataFrame(rows, columns=["a", "value", "zeta"]).drop_duplicates()
    out = out.sort_values(["a", "value"], kind="stable")
    out.insert(0, "parameter", [params[a].name for a in out["a"]])
    return out.drop(columns="a").reset_index(drop=True)


def walk(P, est, walks, base, cutoff, delta, maxpts, *, guess, X, nspec, minimize, sd_zero, cor_at,
          maxmult: float = 10.0):
    """The points (param index, v, ζ) of every walk of :func:`profile`, all walks stepping together.
    ``P``: each walk's parameter; ``guess(p, v̂, target)``, ``X``, ``nspec`` and ``minimize`` as
    :func:`_solve_tasks`'s; ``sd_zero(p)``: the deviance with an sd at 0; ``cor_at(p)``: where a
    correlation's lower and upper bounds are evaluated (the linear model's, a GLMM's and a
    residual structure's profiles share it)."""
    nw = len(walks)
    side = np.array([s for _, s, _, _, _ in walks])
    lo = np.array([w[2] for w in walks], dtype=float)
    hi = np.array([w[3] for w in walks], dtype=float)
    logv = np.array([w[4] for w in walks])
    vhat = np.array([est[a] for a, *_ in walks])
    at = {}  # where a correlation's bound is evaluated (just inside a structure's range)
    for i, p in enumerate(P):
        if p.kind == COR:
            lo_at, hi_at = cor_at(p)
            at[i] = lo_at if side[i] < 0 else hi_at
    v = np.array([guess(p, vhat[i], side[i] * delta) for i, p in enumerate(P)])
    v = np.clip(v, lo, hi)
    vfull = np.concatenate([v, np.repeat(v[:1], nspec - nw)])
    active = np.zeros(nspec, bool)
    active[:nw] = True
    prev_step = np.where(logv, np.log(np.where(logv & (vhat > 0), v / np.where(vhat > 0, vhat, 1.0), np.nan)),
                         v - vhat)
    npts = np.ones(nw, int)
    out = []
    while active.any():
        # A point at a bound: an sd at 0 is the model without its column; a correlation at ±1 the kernel there.
        for i in np.flatnonzero(active[:nw]):
            if P[i].kind == SD and vfull[i] <= 0.0:
                d = sd_zero(P[i])
                out.append((walks[i][0], 0.0, -math.sqrt(max(d - base, 0.0))))
                active[i] = False
        if not active.any():
            break
        veval = vfull.copy()
        for i, a_ in at.items():
            if vfull[i] in (lo[i], hi[i]) and vfull[i] != vhat[i]:
                veval[i] = a_
        Xn, D, gv, finite = minimize(X, veval, ~active)
        X = np.where(active[:, None] & np.isfinite(Xn).all(axis=1)[:, None], Xn, X)
        for i in np.flatnonzero(active[:nw]):
            vi = vfull[i]
            if not (finite[i] and np.isfinite(D[i])):
                active[i] = False
                continue
            dd = _rise(D[i], base, P[i].name)
            zeta = side[i] * math.sqrt(max(dd, 0.0))
            out.append((walks[i][0], vi, zeta))
            npts[i] += 1
            if abs(zeta) > cutoff or vi in (lo[i], hi[i]) or npts[i] >= maxpts:
                active[i] = False
                continue
            # Next: a Newton step towards ζ + s·δ; where dζ/dv is useless (ζ = 0, a flat or
            # non-monotone profile), the step before again.
            dz = gv[i] / (2.0 * zeta) if zeta != 0 else np.nan
            vn = _newton_v(vi, -side[i] * delta, dz, logv[i]) if np.isfinite(dz) and dz > 0 else np.nan
            step = (math.log(vn / vi) if logv[i] else vn - vi) if np.isfinite(vn) else np.nan
            if not np.isfinite(step) or step * side[i] <= 0:
                step = prev_step[i] if np.isfinite(prev_step[i]) else (
                    math.log(vi / vhat[i]) if logv[i] else vi - vhat[i])
            if np.isfinite(prev_step[i]) and abs(step) > maxmult * abs(prev_step[i]):
                step = math.copysign(maxmult * abs(prev_step[i]), step)
            prev_step[i] = step
            vn = vi * math.exp(step) if logv[i] else vi + step
            vfull[i] = min(max(vn, lo[i]), hi[i])
            if vfull[i] == vi:
                active[i] = False
    return out


def _rise(D: float, base: float, name: str) -> float:
    """D − base, the deviance's rise over the fit's; warns when it is clearly negative (the
    profile found a lower deviance: the fit was not at its optimum)."""
    if D - base < -1e-6 * max(1.0, abs(base)):
        warn_user(f"profiling {name} found a lower deviance ({D:.8g} < {base:.8g}): "
                  "the fit is not at the optimum", ConvergenceWarning)
    return D - base


def _start_tasks(params, est, z: float, lower, cor_bounds) -> tuple[list, list]:
    """(tasks, checks) of a profile whose minimizer also evaluates the bounds: an SD's upper
    side is a task and its lower side a check at 0 (lower limit 0 at once if its estimate is
    0); σ has two tasks bracketed by 0; a correlation is checked at its bounds
    (``cor_bounds(p)``: (bound, where D is evaluated) lower then upper, as :func:`_cor_bounds`);
    any other parameter (β, a residual structure's) has two unbounded tasks. Tasks are
    (parameter index, target ζ, bracket low, bracket high); checks (parameter index, bound,
    where, side), for :func:`_at_bounds`."""
    tasks, checks = [], []
    for a, p in enumerate(params):
        if p.kind == SD:
            if est[a] <= 0:
                lower[a] = 0.0
            else:
                checks.append((a, 0.0, 0.0, -1.0))
            tasks.append((a, z, est[a], np.inf))
        elif p.kind == SIGMA:
            tasks += [(a, -z, 0.0, est[a]), (a, z, est[a], np.inf)]
        elif p.kind == COR:
            if np.isfinite(est[a]):
                checks += [(a, b, at, side) for (b, at), side in zip(cor_bounds(p), (-1.0, 1.0))]
        else:
            tasks += [(a, -z, -np.inf, est[a]), (a, z, est[a], np.inf)]
    return tasks, checks


def _at_bounds(bounds, D, base: float, z: float, est, lower, upper, tasks: list) -> None:
    """lme4's ``confint.thpr`` at a parameter's bounds: for each (parameter, bound, where D was
    evaluated for it, side) with D there, a profile that does not reach ζ = ±z at the bound
    makes the bound the limit; else a task bracketed by the estimate and the bound is added.
    The side is the bound's (lower first): an estimate at ±1 may exceed it by rounding."""
    for (a, b, at, side), d in zip(bounds, D):
        zb = side * math.sqrt(max(d - base, 0.0))
        if abs(zb) < z or not np.isfinite(d):
            (lower if side < 0 else upper)[a] = b
        else:
            tasks.append((a, side * z, min(at, est[a]), max(at, est[a])))


def _solve_tasks(P, est, tasks, base, max_outer, ztol, *, guess, X, nspec, minimize):
    """Safeguarded Newton on ζ(v) = target for every task at once; returns the v's (∞/NaN if not
    found). ``P``: each task's parameter; ``guess(p, v̂, target)``: the first v tried; ``X``: the
    tasks' free vectors at the estimates (``nspec`` rows, padding after the tasks);
    ``minimize(X, v, frozen)``: (X̂, D, ∂D/∂v, finite) of every row, the frozen ones left alone
    (LMMs: :func:`_minimize`; GLMMs: :mod:`jaxmlm._glmm_confint`)."""
    nt_ = len(tasks)
    kind = np.array([p.kind for p in P])
    logv = (kind == SD) | (kind == SIGMA)
    target = np.array([t for _, t, _, _ in tasks])
    lo = np.array([l for _, _, l, _ in tasks], dtype=float)
    hi = np.array([h for _, _, _, h in tasks], dtype=float)
    vhat = np.array([est[a] for a, _, _, _ in tasks])

    v = np.array([guess(p, vhat[i], target[i]) for i, p in enumerate(P)])
    for i in range(nt_):
        if not lo[i] < v[i] < hi[i]:
            v[i] = _midpoint(lo[i], hi[i], vhat[i], v[i], logv[i])
    vfull = np.concatenate([v, np.repeat(v[:1], nspec - nt_)])
    active = np.zeros(nspec, bool)
    active[:nt_] = True
    result = np.full(nt_, np.nan)
    for _ in range(max_outer):
        if not active.any():
            break
        X, D, gv, finite = minimize(X, vfull, ~active)
        for i in np.flatnonzero(active[:nt_]):
            vi = vfull[i]
            if not finite[i] or not np.isfinite(D[i]):
                active[i] = False
                continue
            dd = _rise(D[i], base, P[i].name)
            zeta = math.copysign(math.sqrt(max(dd, 0.0)), vi - vhat[i])
            F = zeta - target[i]
            if abs(F) < ztol:
                result[i], active[i] = vi, False
                continue
            s = np.sign(target[i])
            if F * s < 0:  # not far enough: move the near end of the bracket
                if s > 0:
                    lo[i] = max(lo[i], vi)
                else:
                    hi[i] = min(hi[i], vi)
            else:
                if s > 0:
                    hi[i] = min(hi[i], vi)
                else:
                    lo[i] = max(lo[i], vi)
            vn = _newton_v(vi, F, gv[i] / (2.0 * zeta) if zeta != 0 else np.nan, logv[i])
            if not (np.isfinite(vn) and lo[i] < vn < hi[i]):
                vn = _midpoint(lo[i], hi[i], vhat[i], vi, logv[i])
            if not np.isfinite(vn) or abs(vn - vi) <= 1e-13 * max(1.0, abs(vi)):
                result[i], active[i] = (vi if abs(F) < 1e-4 else np.nan), False
                continue
            vfull[i] = vn
            if abs(vn) > 1e12 * max(1.0, abs(vhat[i])):
                result[i], active[i] = np.inf * s, False
    if np.isnan(result).any():
        bad = [P[i].name for i in np.flatnonzero(np.isnan(result))]
        warn_user(f"the profile did not reach the confidence level for {bad}; their limits are NaN",
                  ConvergenceWarning)
    return result


def _first_guess(m, p: _Param, vhat: float, target: float, sigma: float, vcov: np.ndarray, n: int) -> float:
    """Where ζ(v) = target is first tried: about |target| "standard errors" from the estimate,
    in the coordinate the steps use (log v for sd and sigma, v otherwise)."""
    if p.kind == BETA:
        return vhat + target * math.sqrt(max(float(vcov[p.fixef, p.fixef]), 0.0))
    if p.kind == SIGMA:
        return vhat * math.exp(target / math.sqrt(2.0 * n))
    if p.kind == SD:
        if vhat > 0:
            return vhat * math.exp(target / math.sqrt(2.0 * _nlev(m, p)))
        # half of σ in the units of the sd's column (θ̃ = 0.5)
        return 0.5 * sigma * theta_scale_host(m.stats, m.layout)[_sd_entries(m, p)[-1]]
    return vhat + math.copysign(1.0, target) * (1.0 - vhat**2) * abs(target) / math.sqrt(_nlev(m, p))


def _task_start(m, P: list[_Param], spec: dict, theta: np.ndarray, sigma: float) -> np.ndarray:
    """φ of every task (rows padded to len(spec)) at the ML estimates, in each task's coordinates."""
    X = _cor_start(np.repeat(_free_start(m, theta)[None, :], len(spec["kind"]), axis=0), spec)
    for i, p in enumerate(P):
        if p.kind == SD:
            X[i] = _sd_start(m, p, X[i], sigma)
    return X


def _newton_v(v: float, F: float, dzdv: float, logv: bool) -> float:
    """One Newton step in v for ζ(v) − target = F, with dζ/dv from the envelope theorem; in
    log v (step capped at ±5) for sd and sigma. NaN where the derivative is useless."""
    if not np.isfinite(dzdv):
        return np.nan
    if logv:
        step = -F / (dzdv * v) if dzdv * v != 0 else np.nan
        return v * math.exp(max(min(step, 5.0), -5.0)) if np.isfinite(step) else np.nan
    return v - F / dzdv if dzdv != 0 else np.nan


def _free_start(m, theta: np.ndarray) -> np.ndarray:
    """θ̃ = θ / c, the unit-free coordinates of φ (module docstring), with diagonals lifted off 0."""
    c = theta_scale_host(m.stats, m.layout)
    return lift_zero_diagonals(theta, m.layout, c) / c


def _lift_free(X: np.ndarray, spec: dict, layout) -> np.ndarray:
    """Move template diagonals off 0 (a stationary point of the even criterion), except an sd's own row."""
    own = np.zeros((len(X), layout.ntheta + 1), bool)
    np.put_along_axis(own, spec["rr"][: len(X)], spec["mr"][: len(X)] > 0, axis=1)
    diag = diagonal_mask(layout)[None, :] & ~own[:, :-1]
    return np.where(diag & (np.abs(X) < 1e-4), 0.1, X)


def _midpoint(lo: float, hi: float, vhat: float, v: float, logv: bool) -> float:
    """The next point when a Newton step fails: bisection inside a finite bracket, else
    twice as far from the estimate as v (in log v for sd and sigma)."""
    if np.isfinite(lo) and np.isfinite(hi):
        return math.sqrt(lo * hi) if logv and lo > 0 else 0.5 * (lo + hi)
    if logv:
        return vhat * (v / vhat) ** 2 if vhat > 0 else 2.0 * v
    return vhat + 2.0 * (v - vhat)

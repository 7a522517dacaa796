"""Stage 5's whole pipeline — start → minimize → canonical signs → boundary snapping → estimates — as one
traceable function of arrays.

:func:`fit` is what every fit is made of: it runs inside a caller's compiled program (a
single fit, or ``vmap``-ed over responses or starts), so a fit's steps are written once.
Its state is a pytree (:class:`Fit`); nothing in it needs the host.

Snapping follows lmer's rule: template diagonals below ``SNAP_BELOW``·cᵢ in absolute value
(c = :func:`~jaxmlm._optimize.theta_scale`, the optimizer's unit-free coordinates) are set
to exactly 0, one at a time in θ order, where that raises the criterion by at most
min(1e-6, 1e-10·max(1, |f|)) — lme4 reports boundary fits with θᵢ = 0, which an
unconstrained optimizer only approaches. :func:`snap` applies it inside a program (what a
``vmap``-ed fit needs); :func:`snap_host` applies the same rule on the host with any
criterion, which lets :func:`~jaxmlm._results.lmer` leave the criterion's second copy out
of its one program (the fit's program evaluated with ``max_iter`` 0 is the criterion).
"""

from __future__ import annotations

import functools
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _compiled, _programs, _x64  # noqa: F401
from ._objective import _deviance, blockdiag_value, levels_last
from ._optimize import (SNAP_BELOW, OptState, canonical_theta_jax, choose_method, diagonal_mask, fit_theta,
                        intercept_blocks, moment_theta, per_level_formulas, theta_scale)
from ._solution import Solution, solve
from ._stats import Layout, Stats, is_nested, one_chunk, stats_from_chunk, widen, zeroed_chunk

__all__ = ["Fit", "fit", "snap", "snap_host", "snap_candidates", "fit_packed", "fit_and_solve", "unpack_fit",
           "fit_snapped", "fit_stats", "fit_program", "moment_intercepts", "needs_moment_start", "one_program_refit"]


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


def snap_candidates(theta, c, layout: Layout):
    """Which entries of θ are boundary candidates: nonzero template diagonals with
    |θᵢ| < ``SNAP_BELOW``·cᵢ (NumPy or JAX arrays alike)."""
    return diagonal_mask(layout) & (abs(theta) < SNAP_BELOW * c) & (theta != 0)


def snap_tolerance(f, xp=jnp):
    """How much snapping may raise the criterion f: min(1e-6, 1e-10·max(1, |f|)) (``xp``:
    ``jnp`` in a program, ``np`` on the host)."""
    return xp.minimum(1e-6, 1e-10 * xp.maximum(1.0, xp.abs(f)))


def snap_host(theta: np.ndarray, f: float, c: np.ndarray, layout: Layout, criterion, noise: float = 0.0):
    """lmer's boundary snapping (module docstring) on the host: (θ, f, snapped indices, the
    value ``criterion`` returned at the last accepted point or None).

    ``criterion(trial)`` returns (f(trial), anything); it is called once per candidate, in
    θ order, each time with the current θ and that diagonal set to 0. ``noise``: the
    criterion's rounding noise where it exceeds the tolerance (float32 arithmetic)."""
    theta = np.array(theta, dtype=np.float64)
    candidates = np.flatnonzero(snap_candidates(theta, c, layout))
    if not candidates.size:  # the usual case: nothing near the boundary
        return theta, f, (), None
    tol, snapped, kept = max(float(snap_tolerance(f, np)), noise), [], None
    for i in candidates:
        trial = theta.copy()
        trial[i] = 0.0
        ft, value = criterion(trial)
        if ft <= f + tol:
            theta, f, kept = trial, min(f, float(ft)), value
            snapped.append(int(i))
    return theta, f, tuple(snapped), kept


def snap(theta, f, stats: Stats, reml, layout: Layout, penalty=None):
    """(θ, criterion, snapped mask): lmer's boundary snapping (module docstring), traceable.

    The diagonals are visited by a loop in the program, not unrolled: the criterion is
    then compiled once, not once per diagonal (InstEval's fit program compiled 1.2 s
    longer with three copies). ``penalty``: as :func:`fit`'s."""
    tol = snap_tolerance(f)
    c = theta_scale(stats, layout)
    diagonals = np.flatnonzero(diagonal_mask(layout))
    if not len(diagonals):
        return theta, f, jnp.zeros(theta.shape, bool)
    if per_level_formulas(layout):
        A, Z = levels_last(stats.A11, stats.Z1W)

        def criterion(t):  # one grouping factor: the per-level formulas compile smaller (~0.2 s)
            return blockdiag_value(t, A, Z, stats, reml, layout)
    else:
        def criterion(t):
            return _deviance(t, stats, reml, layout)

    if penalty is not None:
        unpenalized = criterion

        def criterion(t):
            return unpenalized(t) + penalty(t, layout)

    def visit(j, carry):
        theta, f, snapped = carry
        i = jnp.asarray(diagonals)[j]
        trial = theta.at[i].set(0.0)
        near = snap_candidates(theta, c, layout)[i]
        # Only a candidate needs the criterion at the trial point (under vmap both branches run).
        ft = jax.lax.cond(near, criterion, lambda t: jnp.inf * f, trial)
        take = near & (ft <= f + tol)
        return jnp.where(take, trial, theta), jnp.where(take, jnp.minimum(f, ft), f), snapped.at[i].set(take)

    return jax.lax.fori_loop(0, len(diagonals), visit, (theta, f, jnp.zeros(theta.shape, bool)))


def fit(theta0, stats: Stats, reml, layout: Layout, max_iter: int = 200, ftol=1e-10, gtol=1e-8,
        method: str = "newton", with_solution: bool = True, snapping: bool = True, penalty=None) -> Fit:
    """Minimize the criterion from ``theta0`` (:func:`~jaxmlm._optimize.fit_theta`), give θ̂
    canonical signs, snap boundary estimates, and (``with_solution``) solve for β̂, σ̂ and b̂.

    Traceable and ``vmap``-able; ``layout``, ``method``, ``with_solution`` and ``snapping``
    are static in a caller's ``jit``, ``max_iter`` may be traced (0: the criterion and
    solution at ``theta0``, no step). ``snapping=False`` leaves snapping to the caller
    (:func:`snap_host`): the program then holds one copy of the criterion, not two — for
    a single fit most of a compile's extra cost (100k rows: ~0.3 of 3 s), where few fits
    have a candidate at all.

    ``penalty`` (None, or a hashable θ ↦ value, :class:`~jaxmlm._priors.ThetaPenalty`): minimize the
    criterion plus this penalty instead (``blmer``'s priors); the objective and the solution's
    criterion then include it."""
    st = fit_theta.fn(theta0, stats, reml, layout, max_iter=max_iter, ftol=ftol, gtol=gtol, method=method,
                      penalty=penalty)
    theta, f = canonical_theta_jax(st.x, layout), st.f
    theta, f, snapped = (snap(theta, f, stats, reml, layout, penalty) if snapping
                         else (theta, f, jnp.zeros(theta.shape, bool)))
    sol = solve(theta, stats, reml, layout) if with_solution else None
    if sol is not None and penalty is not None:
        sol = sol._replace(criterion=sol.criterion + penalty(theta, layout))
    return Fit(st, theta, snapped, sol.criterion if sol is not None else f, sol)


fit_jit = partial(_compiled.jit, static_argnames=("layout", "max_iter", "method", "with_solution", "snapping",
                                                  "penalty"))(fit)


def fit_packed(u0, stats: Stats, reml, layout: Layout, max_iter, method: str, penalty=None):
    """:func:`fit` from θ₀ = c ⊙ u₀ (c = :func:`~jaxmlm._optimize.theta_scale`:
    minimize, canonical signs, solve), its start, c and outputs packed into one float64
    vector (:func:`unpack_fit` takes it apart). Traceable; ``max_iter`` is traced.

    Snapping is left to the host (:func:`fit_snapped`), which evaluates a
    candidate by this same program with ``max_iter`` 0: a second copy of the criterion in
    the program cost ~10 % of its compile time, and few fits have a candidate.

    For small models a separate dispatch and transfer per stage or per output array costs
    as much as the arithmetic (sleepstudy: reading 14 arrays took ~0.15 ms of ~1 ms, one
    takes ~0.01)."""
    c = theta_scale(stats, layout)
    theta0 = c * u0
    res = fit(theta0, stats, reml, layout, max_iter=max_iter, method=method, snapping=False, penalty=penalty)
    out = (theta0, c, res.state, res.theta, res.solution)
    # Every value is exact in float64: θ and the estimates are float64 or float32, the
    # counters small integers.
    return jnp.concatenate([jnp.ravel(a).astype(jnp.float64) for a in jax.tree.leaves(out)])


@partial(_compiled.jit, static_argnames=("layout", "method", "penalty"))
def fit_and_solve(u0, stats: Stats, reml, max_iter, layout: Layout, method: str = "newton", penalty=None):
    """:func:`fit_packed` as a program of its own (c computed here: a program of its own
    for c, and the wait to read it, cost ~1 ms of a 100k-row fit's ~15)."""
    return fit_packed(u0, stats, reml, layout, max_iter, method, penalty)


@functools.lru_cache(maxsize=256)
def _fit_pieces(layout: Layout) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    """(start, stop, shape) of each leaf in :func:`fit_packed`'s vector, in tree order."""
    m, p, l1, k1 = layout.ntheta, layout.p, layout.l1, layout.k1
    shapes = [(m,), (m,), (m,), (), (m,), (), (), (), (m,), (p,), (), (p, p), (l1, k1), (layout.qr,), (l1, k1, k1)]
    shapes += [(lev, k, k) for _, lev, k in layout.rest] + [()]
    stops = np.cumsum([math.prod(s) for s in shapes]).tolist()
    return tuple(zip([0, *stops[:-1]], stops, map(tuple, shapes)))


def unpack_fit(vec: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray, OptState, np.ndarray, Solution]:
    """The host side of :func:`fit_packed`: (θ₀, c, optimizer state, θ̂, solution), with
    shapes known from the layout (no tracing needed, so exported programs can use it too)."""
    pieces = _fit_pieces(layout)
    if vec.shape != (pieces[-1][1],):
        raise AssertionError(f"packed fit output of shape {vec.shape}, expected ({pieces[-1][1]},)")
    parts = [vec[a:b].reshape(s) for a, b, s in pieces]
    theta0, c, x, f, g, it, nfev, status, theta, beta, sigma, vcov, b1, b_rest, var1 = parts[:15]
    st = OptState(x, f, g, it.astype(np.int64), nfev.astype(np.int64), status.astype(np.int64))
    sol = Solution(beta, sigma, vcov, b1, b_rest, var1, tuple(parts[15:-1]), parts[-1])
    return theta0, c, st, theta, sol


def fit_snapped(run, u0, max_iter: int, layout: Layout, p: int | None = None):
    """A packed fit program run from ``u0`` (``run(u, max_iter)`` gives :func:`fit_packed`'s
    vector), then lmer's boundary snapping on the host (:func:`snap_host`), a candidate
    evaluated by the same program with ``max_iter`` 0: one compiled program for the fit
    and its snapping. Returns (θ₀, c, optimizer state, θ̂, solution, snapped).

    ``layout`` is the program's; ``p`` the real number of fixed effects where the program
    runs on widened statistics (:func:`~jaxmlm._stats.widen`): the solution keeps the
    leading p entries of β̂ and vcov(β̂)."""
    p = layout.p if p is None else p

    def unpack(vec):
        theta0, c, st, theta, sol = unpack_fit(np.asarray(vec), layout)
        return theta0, c, st, theta, sol._replace(beta=sol.beta[:p], vcov=sol.vcov[:p, :p])

    theta0, c, st, theta, sol = unpack(run(u0, np.int32(max_iter)))

    def at(trial):  # the criterion and solution at a boundary candidate: no step
        _, _, _, theta_t, sol_t = unpack(run((trial / c).astype(u0.dtype), np.int32(0)))
        return float(sol_t.criterion), (theta_t, sol_t)

    _, _, snapped, at_snapped = snap_host(theta, float(st.f), c, layout, at)
    if at_snapped is not None:
        theta, sol = at_snapped
    return theta0, c, st, theta, sol, snapped


def fit_stats(u0, stats: Stats, reml, layout: Layout, method: str, max_iter: int = 200):
    """:func:`fit_snapped` with :func:`fit_and_solve` on ``stats`` (through the program
    cache): the program ``lmer`` fits with on statistics, so that refits of a fitted shape —
    the ML refits of ``anova``, ``ranova``'s reduced models — compile no fit program.
    ``u0`` is the start in unit-free coordinates (θ₀ / c), ``reml`` a float64 0 or 1."""
    run, wide = fit_program(stats, reml, layout, method)
    return fit_snapped(run, np.asarray(u0, dtype=np.float64), max_iter, wide, p=layout.p)


def fit_program(stats: Stats, reml, layout: Layout, method: str, penalty=None):
    """(run, the program's layout): ``run(u, max_iter)`` runs :func:`fit_and_solve` (through
    the program cache) on ``stats`` widened to a common fixed-effects width
    (:func:`~jaxmlm._stats.widen`), so that models differing only in their fixed effects
    share the program; :func:`fit_snapped` with ``p=layout.p`` takes its output apart. ``penalty``:
    as :func:`fit`'s (a penalty on θ does not depend on p, so it holds for the widened layout too)."""
    wide_stats, wide = widen(stats, layout)
    static = dict(layout=wide, method=method) if penalty is None else dict(layout=wide, method=method, penalty=penalty)

    def run(u, n):
        return _programs.call(fit_and_solve, (u, wide_stats, reml, n), static)

    return run, wide


# ---- small data: the pass, the optimizer and the solve as one program ----------------------------

@partial(_compiled.jit, static_argnames=("spec", "layout", "method", "intercepts"))
def _pass_fit_and_solve(u0, floats, ints, reml, max_iter, from_moments, spec: tuple, layout: Layout,
                        method: str = "newton", intercepts: tuple | None = None):
    """The pass over one chunk of rows, then :func:`~jaxmlm._fit.fit_packed`, as one program:
    (statistics, packed fit). For small data each program launched costs ~0.1 ms on a
    2-core machine (waking XLA's worker threads), more than the pass's arithmetic.

    The start comes in the optimizer's unit-free coordinates u₀ (lmer's: lme4's start
    there) because c = :func:`~jaxmlm._optimize.theta_scale` needs the statistics made
    here; the packed output holds θ₀. A nested design (``intercepts``: which blocks are a
    random intercept alone) starts instead from the moment estimates made here
    (:func:`~jaxmlm._optimize.moment_theta`) where ``from_moments`` is true (None without
    ``intercepts``)."""
    stats = stats_from_chunk(floats, ints, spec, layout)
    if intercepts is not None:
        theta_m, c = moment_theta(stats, layout, intercepts)
        u0 = jnp.where(from_moments, theta_m / c, u0)
    return stats, fit_packed(u0, stats, reml, layout, max_iter, method)


def needs_moment_start(layout: Layout, method: str, one_program: bool) -> bool:
    """Whether ``lmer`` starts θ from moment estimates (:func:`~jaxmlm._optimize.moment_start`)
    made from the statistics before the fit, in a program of their own: for "ai" on a dense
    block, where every iteration costs a dense q_r³ step (small data are then not fitted by
    one program), and for a nested design fitted on statistics made apart (larger data).
    The one program of a nested design's small data (``one_program``) makes that start
    itself (:func:`moment_intercepts`)."""
    return (method == "ai" and layout.qr > 0) or (is_nested(layout) and not one_program)


def moment_intercepts(layout: Layout, design) -> tuple | None:
    """Which blocks are a random intercept alone, ``(1 | g)`` (what a moment start estimates),
    for a nested design; None for others. The one-program fit of a nested design's small data
    starts from moment estimates, in the program (classroom's ``(1 | schoolid/classid)``: 5
    Newton steps, against 10 from lme4's start; a pass program and a start program of their
    own cost more)."""
    return intercept_blocks(design) if is_nested(layout) else None


def _one_program_run(one, reml, method: str, made: list, intercepts: tuple | None = None, moments: bool = False):
    """``run(u, max_iter)`` for :func:`~jaxmlm._fit.fit_snapped`: :func:`_pass_fit_and_solve` on
    the rows of ``one`` (:class:`~jaxmlm._stats.OneChunk`), through the program cache; the
    statistics each run makes are appended to ``made``. ``intercepts``: as
    :func:`moment_intercepts`; ``moments``: the first run (the fit, also with ``max_iter`` 0)
    starts from the moment estimates, not from u; later ones (:func:`fit_snapped`'s
    snapping candidates) are evaluated at their u."""
    static = dict(layout=one.wide, method=method, spec=one.spec, intercepts=intercepts)

    def run(u, n):
        first = moments and not made
        args = (u, one.floats, one.ints, reml, n, None if intercepts is None else np.asarray(first))
        out, packed = _programs.call(_pass_fit_and_solve, args, static)
        made.append(out)
        return packed

    return run


def one_program_refit(m, reml: bool, zeroed=()):
    """(``run(u, max_iter)``, the program's layout), as :func:`fit_program` gives them, of the
    program ``lmer`` fitted ``m`` with where that program also made
    the statistics (small data: :func:`_pass_fit_and_solve`), REML or ML as asked, on m's rows
    with the Z columns ``zeroed`` ((block, column) pairs) set to 0; None where ``m`` was fitted on
    statistics made apart, or by an optimizer other than the one refits use. Refits of ``m`` (the
    ML refits of ``anova``, the reduced models of ``ranova``) run it, so that they compile
    nothing: the program that fits on statistics alone is another one (issue 12)."""
    if (m.record.dtype != "float64" or not m.design.held or m.record.method != choose_method(m.layout)
            or needs_moment_start(m.layout, m.record.method, one_program=True)):
        return None
    one = one_chunk(m.design)
    if one is None or one.layout != m.layout:
        return None
    if zeroed:
        one = zeroed_chunk(one, zeroed)
    run = _one_program_run(one, np.asarray(1.0 if reml else 0.0), m.record.method, [],
                           intercepts=moment_intercepts(m.layout, m.design))
    return run, one.wide

"""lme4's ``allFit``: refit one model with every optimizer, from several starts, and compare.

When a fit warns, users ask whether another optimizer would agree. lme4's
``allFit`` refits with each of its derivative-free optimizers in turn;
jaxmlm refits with each of its own ("newton", "ai" for layouts with a dense
fill-in block, "bfgs"), each from lme4's start, the moment start where it
exists, and a few random starts, the starts of one optimizer batched
(``vmap``) into one compiled call. Every refit goes through the same
canonicalization, boundary snapping and solve as ``lmer``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import numpy as np
import pandas as pd

from . import _programs
from ._errors import DataError
from ._inference import _ONE_SHOT_OPTIONS, _one_shot_jit
from ._fit import fit
from ._optimize import STATUS, fd_batch, intercept_blocks, lme4_start, moment_start, theta_scale_host
from ._refit import _padded, _run_chunks, _sdcor, _theta_names, _vc_params, lapack_safe_batch

__all__ = ["AllFit", "all_fit"]


@_one_shot_jit(static_argnames=("layout", "max_iter", "method"))
def _fit_starts(theta0s, stats, reml, layout, max_iter: int, method: str):
    """:func:`~jaxmlm._fit.fit` from each row of ``theta0s``: one program per (layout, method), batched over starts.

    Compiled with XLA's backend optimization level 0, as the inference kernels: all_fit
    is usually run once per model, and that saves a quarter of the compile time (about
    0.5 s per optimizer) for a few milliseconds more per call."""
    return jax.vmap(lambda t: fit(t, stats, reml, layout, max_iter=max_iter, method=method))(theta0s)


@dataclass(frozen=True, eq=False)
class AllFit:
    """The refits of :func:`all_fit`, one row per (optimizer, start).

    ``table``: criterion (REML criterion or deviance), its excess over the best
    (``diff``), ``converged``, ``message``, ``iterations``, ``evaluations``,
    ``max_abs_gradient``; ``fixef``, ``theta``, ``sdcor`` (lme4's sd/cor
    names and σ) and ``llik`` (log-likelihood, −criterion/2) per refit;
    ``times`` wall seconds of each optimizer's batched call (compilation
    included the first time a layout is seen). ``print()`` gives lme4's
    ``summary(allFit(m))`` layout.
    """

    table: pd.DataFrame
    fixef: pd.DataFrame
    theta: pd.DataFrame
    sdcor: pd.DataFrame
    llik: pd.Series
    times: pd.Series

    @property
    def which_ok(self) -> pd.Series:
        """Whether each refit converged (lme4's ``which.OK``)."""
        return self.table["converged"]

    def __str__(self) -> str:
        def block(name, obj):
            return f"${name}\n{obj.to_string()}\n"

        return "\n".join(
            [
                block("which.OK", self.which_ok),
                block("msgs", self.table["message"]),
                block("fixef", self.fixef),
                block("llik", self.llik),
                block("sdcor", self.sdcor),
                block("theta", self.theta),
                block("times", self.times),
                block("feval", self.table["evaluations"]),
            ]
        )

    __repr__ = __str__


def _starts(m, n_random: int, seed, scale: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(name, θ₀) of every start. lme4's and the random ones are drawn in the optimizer's
    unit-free coordinates and multiplied by ``scale`` (c = theta_scale: θ = c ⊙ u), as lmer
    starts, so that they are as far from the optimum in any units of the predictors."""
    layout = m.layout
    base = lme4_start(layout)
    starts = [("lme4", base * scale)]
    if layout.qr > 0:
        intercepts = intercept_blocks(m.design)
        starts.append(("moment", np.asarray(moment_start(m.stats, layout, intercepts), dtype=float)))
    rng = np.random.default_rng(seed)
    diag = base == 1.0
    for i in range(n_random):
        t = np.where(diag, rng.uniform(0.2, 3.0, base.shape), rng.normal(0.0, 0.5, base.shape))
        starts.append((f"random{i + 1}", t * scale))
    return starts


def all_fit(m, optimizers=None, n_random: int = 3, seed=0, max_iter: int = 200) -> AllFit:
    """Refit ``m`` with every optimizer jaxmlm has, from several starts (lme4's ``allFit``).

    ``optimizers``: a list out of "newton", "ai", "bfgs" (default: all that
    differ for this layout; with one grouping factor "ai" is "newton");
    starts: lme4's (θ = 1 on template diagonals), the moment estimates (for
    layouts with a dense block) and ``n_random`` random ones drawn with
    ``seed`` — lme4's and the random ones in the optimizer's unit-free
    coordinates, θ = c ⊙ u (c = :func:`~jaxmlm._optimize.theta_scale`), as
    lmer starts. Returns an :class:`AllFit`.
    """
    layout = m.layout
    default = ["newton", "ai", "bfgs"] if layout.qr > 0 else ["newton", "bfgs"]
    optimizers = default if optimizers is None else list(optimizers)
    bad = [o for o in optimizers if o not in ("newton", "ai", "bfgs")]
    if bad or not optimizers:
        raise DataError(f"optimizers must be a non-empty list out of 'newton', 'ai', 'bfgs', got {optimizers!r}")
    if not isinstance(n_random, (int, np.integer)) or n_random < 0:
        raise DataError(f"n_random must be a non-negative integer, got {n_random!r}")
    scale = theta_scale_host(m.stats, layout)
    starts = _starts(m, int(n_random), seed, scale)
    theta0s = np.stack([t for _, t in starts])
    reml = np.asarray(1.0 if m.REML else 0.0)
    design = m.design
    rows, fixefs, thetas, sdcors, times = [], [], [], [], {}
    for opt in optimizers:
        t0 = time.perf_counter()
        # all starts in one batch, unless a batched LAPACK call could then be split over
        # XLA's threads on a CPU (it can deadlock there): then in equal batches
        c = lapack_safe_batch(len(theta0s), layout, points=fd_batch(layout))

        def launch(lo):
            return _programs.call(_fit_starts, (_padded(theta0s[lo : lo + c], c), m.stats, reml),
                                  dict(layout=layout, max_iter=max_iter, method=opt), compiler_options=_ONE_SHOT_OPTIONS)

        res = _run_chunks(len(theta0s), c, launch)
        st, sol = res.state, res.solution
        for i, (start, _) in enumerate(starts):
            status = int(st.status[i])
            theta = np.asarray(res.theta[i], dtype=float)
            if np.isfinite(float(st.f[i])):
                beta, sigma, crit = np.asarray(sol.beta[i], float), float(sol.sigma[i]), float(sol.criterion[i])
            else:
                beta, sigma, crit = np.full(len(m.fixef), np.nan), np.nan, np.nan
            rows.append(
                dict(optimizer=opt, start=start, criterion=crit, converged=status in (0, 1) and np.isfinite(crit),
                     message=STATUS[status], iterations=int(st.it[i]), evaluations=int(st.nfev[i]),
                     max_abs_gradient=float(np.max(np.abs(st.g[i]))) if st.g.shape[-1] else 0.0)
            )
            fixefs.append(beta)
            thetas.append(theta)
            sdcors.append(np.append(_sdcor(theta, np.array([sigma]), design, m.layout)[0], sigma))
        times[opt] = time.perf_counter() - t0
    index = pd.MultiIndex.from_frame(pd.DataFrame([(r["optimizer"], r["start"]) for r in rows],
                                                  columns=["optimizer", "start"]))
    table = pd.DataFrame(rows, index=index).drop(columns=["optimizer", "start"])
    table.insert(1, "diff", table["criterion"] - table["criterion"].min())
    crit_name = "REML criterion" if m.REML else "deviance"
    table.attrs["criterion"] = crit_name
    sd_names = [name for name, *_ in _vc_params(design)] + ["sigma"]
    return AllFit(
        table=table,
        fixef=pd.DataFrame(np.array(fixefs), index=index, columns=list(design.fixef_names)),
        theta=pd.DataFrame(np.array(thetas), index=index, columns=_theta_names(design)),
        sdcor=pd.DataFrame(np.array(sdcors), index=index, columns=sd_names),
        llik=pd.Series(-0.5 * table["criterion"].to_numpy(), index=index, name="llik"),
        times=pd.Series(times, name="seconds"),
    )

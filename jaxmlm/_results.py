"""Stage 6 — results: the fitted model, with lme4's names and definitions.

:func:`lmer` runs the pipeline (formula → design → statistics → optimizer →
estimates) and returns an immutable :class:`LinearMixedModel`. Every derived
quantity (VarCorr, ranef, coef, fitted values) is computed once here from
the arrays of :class:`~jaxmlm._solution.Solution`; nothing is mutated later.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property, partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import _compiled, _programs, _x64  # noqa: F401  (float64 before any array exists)
from ._design import Design
from ._errors import ConvergenceError, DataError, JaxmlmError, RowsNotHeldError, outside_jaxmlm
from ._frontend import build_design
from ._objective import templates_host
from ._fit import _one_program_run, fit_program, fit_snapped, moment_intercepts, needs_moment_start
from ._optimize import (STATUS, choose_method, diagonal_mask, fit_theta, intercept_blocks, lme4_start,
                        max_abs_gradient, moment_start, status_warnings, theta_scale_host)
from ._stats import Layout, Stats, narrow, one_chunk, stats_from_chunk, stats_shapes, sufficient_stats

__all__ = ["FitRecord", "LinearMixedModel", "MixedModelBase", "lmer"]

SINGULAR_TOL = 1e-4  # lme4's isSingular(tol = 1e-4)


@dataclass(frozen=True)
class FitRecord:
    """What the optimizer did: users must be able to see why a fit stopped.

    ``theta_start`` / ``theta_end`` in lme4 order (``theta_end`` after sign
    canonicalization and snapping of boundary components, listed in
    ``snapped``); ``theta_start`` is lme4's (1 on template diagonals, 0 off
    them) in the optimizer's unit-free coordinates, θ = c ⊙ that with
    c = :func:`~jaxmlm._optimize.theta_scale` (1 for an intercept, 1 / rms of
    the column for a slope), except for the "ai" optimizer and nested designs,
    which start from moment estimates (:func:`~jaxmlm._optimize.moment_start`);
    ``theta_optimizer`` the raw optimizer output; ``objective`` the criterion
    at ``theta_end``; ``iterations`` Newton steps; ``evaluations`` points at
    which the criterion was evaluated, with or without derivatives (an
    accepted full Newton step costs one); ``status`` / ``message``;
    ``max_abs_gradient`` at the optimizer's end (of ∂f/∂u, the gradient in the
    optimizer's unit-free coordinates u = θ / c that ``gtol`` judges, so it
    does not depend on the predictors' units); ``seconds`` wall time of the
    optimization and the final solve (one program, which for small data, at most
    ``ONE_PROGRAM_ROWS`` = 2,048 rows, also makes the pass over the rows; compile included the first
    time a shape is seen); ``method`` the optimizer ("newton", "ai" or
    "bfgs"); ``dtype`` the arithmetic of the iterations ("float64", "float32",
    or "float32+float64 polish"); ``theta_float32`` the optimizer's float32 θ
    in float32 mode (iterations and evaluations count both stages)."""

    theta_start: np.ndarray
    theta_optimizer: np.ndarray
    theta_end: np.ndarray
    objective: float
    iterations: int
    evaluations: int
    status: int
    message: str
    converged: bool
    max_abs_gradient: float
    snapped: tuple[int, ...]
    warnings: tuple[str, ...]
    seconds: float
    method: str = "newton"
    dtype: str = "float64"
    theta_float32: np.ndarray | None = None


def _readonly(a) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


class FixedEffectsBase:
    """What every fitted model has from its design, β̂, vcov(β̂), objective and npar: sizes,
    fixed effects, log-likelihood, AIC and BIC — also a model without random effects
    (:class:`~jaxmlm._residual_model.GlsModel`)."""

    # ---- sizes -----------------------------------------------------------
    @property
    def nobs(self) -> int:
        """Number of observations used (after dropping rows with missing values)."""
        return self.design.n

    @property
    def n_dropped(self) -> int:
        """Rows dropped because a variable of the formula was missing."""
        return self.design.n_dropped_na

    # ---- fixed effects ----------------------------------------------------
    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates β̂ in lme4's order."""
        return pd.Series(self._beta, index=list(self.design.fixef_names), name="Estimate")

    @property
    def vcov(self) -> pd.DataFrame:
        """vcov(β̂) = σ̂² (R_X R_Xᵀ)⁻¹."""
        names = list(self.design.fixef_names)
        return pd.DataFrame(self._vcov, index=names, columns=names)

    @property
    def se(self) -> pd.Series:
        """Standard errors of the fixed effects."""
        return pd.Series(np.sqrt(np.diag(self._vcov)), index=list(self.design.fixef_names), name="Std. Error")

    # ---- likelihood ---------------------------------------------------------
    @property
    def loglik(self) -> float:
        """Log-likelihood as lme4's ``logLik``: −objective/2 (the REML log-likelihood for REML fits,
        the Laplace or quadrature approximation for GLMMs)."""
        return -0.5 * self.objective

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.npar

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + math.log(self.nobs) * self.npar



class MixedModelBase(FixedEffectsBase):
    """What every fitted mixed model has, from its design, θ̂, β̂, vcov(β̂), σ (1 for families
    without a scale) and the conditional modes and variances: besides :class:`FixedEffectsBase`,
    group counts, VarCorr, ranef, condVar, coef. :class:`LinearMixedModel` and
    :class:`~jaxmlm._glmer.GeneralizedLinearMixedModel` derive from it."""

    @property
    def ngroups(self) -> dict[str, int]:
        """Levels per grouping factor (lme4's ``ngrps``)."""
        return {b.group: b.nlev for b in self._blocks_lme4_order}

    # ---- variance components ------------------------------------------------
    def _term_cov(self, t: int) -> np.ndarray:
        """σ² T_t T_tᵀ for term t (lme4 order)."""
        term = self.design.terms[t]
        T = self._templates[term.block]
        Tt = T[term.offset : term.offset + term.k, term.offset : term.offset + term.k]
        return self.sigma**2 * Tt @ Tt.T

    @cached_property
    def _templates(self) -> list[np.ndarray]:
        """The template T_b of every engine block at θ̂ (numpy)."""
        return [_readonly(T) for T in templates_host(self.theta, self.layout)]

    @property
    def varcorr(self) -> pd.DataFrame:
        """Variance components as R's ``as.data.frame(VarCorr(m))``.

        Columns grp, var1, var2, vcov, sdcor; per term (lme4 order) the
        variances, then the covariances (sdcor holds the correlation), then
        the residual. A name that does not apply (var2 of a variance, the
        residual's var1) is missing (NaN), as R's NA.
        """
        rows = []
        for t, term in enumerate(self.design.terms):
            S = self._term_cov(t)
            sd = np.sqrt(np.diag(S))
            for i, c in enumerate(term.columns):
                rows.append((term.vc_name, c, np.nan, S[i, i], sd[i]))
            for j in range(term.k if term.cov.shows_covariances() else 0):
                for i in range(j + 1, term.k):
                    corr = S[i, j] / (sd[i] * sd[j]) if sd[i] > 0 and sd[j] > 0 else np.nan
                    rows.append((term.vc_name, term.columns[j], term.columns[i], S[i, j], corr))
        rows.extend(self._residual_rows())
        # missing names are NaN in every model (R's NA), whatever dtype pandas infers
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    @property
    def varcorr_matrices(self) -> dict[str, pd.DataFrame]:
        """The covariance matrix of each random-effects term, σ̂² T Tᵀ (lme4's ``VarCorr(m)[[name]]``),
        keyed by the term's name in VarCorr (``Subject``, ``Subject.1`` …), rows and columns its columns."""
        def sym(S):  # σ² T Tᵀ, exactly symmetric
            return (S + S.T) / 2

        return {term.vc_name: pd.DataFrame(sym(self._term_cov(t)), index=list(term.columns), columns=list(term.columns))
                for t, term in enumerate(self.design.terms)}

    @property
    def is_singular(self) -> bool:
        """lme4's isSingular: a template diagonal below 1e-4 (a variance on the boundary)."""
        mask = diagonal_mask(self.layout)
        return bool(np.any(self.theta[mask] < SINGULAR_TOL))

    # ---- random effects -------------------------------------------------------
    @property
    def _blocks_lme4_order(self):
        seen, out = set(), []
        for term in self.design.terms:
            if term.block not in seen:
                seen.add(term.block)
                out.append(self.design.blocks[term.block])
        return out

    def _block_index(self, block) -> int:
        return self.design.blocks.index(block)

    @property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes b̂ per grouping factor: index = levels, columns = terms."""
        return {
            b.group: pd.DataFrame(self._b[self._block_index(b)], index=b.levels.copy(), columns=list(b.columns))
            for b in self._blocks_lme4_order
        }

    @property
    def condvar(self) -> dict[str, np.ndarray]:
        """Conditional covariance of b per level, (levels, k, k) per factor (lme4's condVar)."""
        return {b.group: self._condvar[self._block_index(b)].copy() for b in self._blocks_lme4_order}

    @property
    def condsd(self) -> dict[str, pd.DataFrame]:
        """Conditional standard deviations of the random effects, shaped like ``ranef``."""
        return {
            g: pd.DataFrame(
                np.sqrt(np.diagonal(v, axis1=1, axis2=2)), index=self.ranef[g].index, columns=self.ranef[g].columns
            )
            for g, v in self.condvar.items()
        }

    def ranef_frame(self) -> pd.DataFrame:
        """Long table like R's ``as.data.frame(ranef(m, condVar = TRUE))``."""
        rows = []
        for g, df in self.ranef.items():
            sd = self.condsd[g]
            for col in df.columns:
                for lev in df.index:
                    rows.append((g, col, lev, df.at[lev, col], sd.at[lev, col]))
        return pd.DataFrame(rows, columns=["grpvar", "term", "grp", "condval", "condsd"])

    @property
    def coef(self) -> dict[str, pd.DataFrame]:
        """lme4's ``coef``: fixed effects plus each level's random effects."""
        out = {}
        fe = self.fixef
        for g, re in self.ranef.items():
            df = pd.DataFrame(np.tile(fe.to_numpy(), (len(re), 1)), index=re.index, columns=fe.index)
            for c in re.columns:
                if c in df.columns:
                    df[c] = df[c] + re[c]
                else:
                    df[c] = re[c]
            out[g] = df
        return out


@dataclass(frozen=True, eq=False)
class LinearMixedModel(MixedModelBase):
    """A fitted linear mixed model (lme4's ``lmerMod``). Create it with :func:`lmer`.

    Attributes follow lme4: ``fixef``, ``vcov``, ``sigma``, ``theta``,
    ``varcorr``, ``ranef``, ``coef``, ``fitted``, ``resid``, ``objective``,
    ``loglik``, ``aic``, ``bic``, ``nobs``, ``ngroups``, ``is_singular``.
    """

    formula: str
    REML: bool
    design: Design = field(repr=False)
    layout: Layout = field(repr=False)
    stats: Stats = field(repr=False)
    theta: np.ndarray
    record: FitRecord = field(repr=False)
    _beta: np.ndarray = field(repr=False)
    _vcov: np.ndarray = field(repr=False)
    sigma: float
    objective: float
    _b: tuple = field(repr=False)
    _condvar: tuple = field(repr=False)
    data_name: str | None = None

    @property
    def npar(self) -> int:
        """Parameters counted by logLik's df: p + length(θ) + 1 (σ)."""
        return self.design.p + len(self.theta) + 1

    def _residual_rows(self):
        return [("Residual", np.nan, np.nan, self.sigma**2, self.sigma)]

    # ---- likelihood ---------------------------------------------------------
    @property
    def deviance(self) -> float:
        """ML deviance for ML fits; for REML fits the REML criterion (see ``objective``)."""
        return self.objective

    # ---- fitted values ----------------------------------------------------------
    def _rows(self, what: str) -> Design:
        """The design, for ``what`` needs its rows: a fit from data in pieces has none (RowsNotHeldError)."""
        if not self.design.held:
            raise RowsNotHeldError(
                f"{what} needs the rows the model was fitted to, and a fit from data in pieces (a Dask frame or a "
                "Parquet dataset) keeps only their sufficient statistics; compute it piece by piece with "
                "predict(newdata=piece), or fit the rows you need in memory")
        return self.design

    def _rows_for(self, ddf) -> None:
        """Kenward-Roger needs the rows (its dense matrices); Satterthwaite works from the statistics."""
        if str(ddf).lower().startswith("k"):
            self._rows("Kenward-Roger degrees of freedom")

    @cached_property
    def _fitted(self) -> np.ndarray:
        d = self._rows("fitted values and residuals")
        mu = d.X @ self._beta
        if d.offset is not None:
            mu = mu + d.offset
        for i, blk in enumerate(d.blocks):
            mu = mu + np.einsum("nk,nk->n", blk.Z, self._b[i][blk.codes])
        return _readonly(mu)

    @property
    def fitted(self) -> np.ndarray:
        """Fitted values Xβ̂ + Zb̂ (+ the offset), one per row used in the fit."""
        return self._fitted

    @property
    def resid(self) -> np.ndarray:
        """Response residuals y − fitted (not scaled by the prior weights, as lme4's default)."""
        return _readonly(self.design.y - self._fitted)

    @property
    def weights(self) -> np.ndarray:
        """Prior weights of the rows used (all 1 without ``weights=``), as lme4's ``weights(m)``."""
        w = self._rows("weights(m)").weights
        return _readonly(np.ones(self.nobs) if w is None else w)

    @property
    def pearson_resid(self) -> np.ndarray:
        """Pearson residuals √wᵢ (yᵢ − fittedᵢ) / σ̂: scaled to unit variance (lme4's
        ``residuals(m, "pearson", scaled = TRUE)``, which ``summary`` describes)."""
        d = self._rows("Pearson residuals")
        return _readonly(np.sqrt(self.weights) * (d.y - self._fitted) / self.sigma)

    # ---- refitting --------------------------------------------------------------------
    def update(self, formula: str | None = None, *, REML: bool | None = None) -> LinearMixedModel:
        """The model refitted, as lme4's ``update``: with another ``formula`` and/or REML setting,
        on the same rows (the model frame), prior weights and ``offset=`` argument."""
        d = self._rows("update()")
        if d.frame is None:
            raise JaxmlmError("this model does not carry its model frame (m.design.frame), which a refit of a "
                              "different formula needs; refit the model with the current jaxmlm version")
        return lmer(self.formula if formula is None else formula, d.frame, REML=self.REML if REML is None else REML,
                    weights=d.weights, offset=d.arg_offset, data_name=self.data_name)

    # ---- prediction and simulation (jaxmlm/_predict.py, jaxmlm/_refit.py) -------
    def predict(self, newdata: pd.DataFrame | None = None, re_form=None, allow_new_levels: bool = False,
                offset=None, **kwargs) -> np.ndarray:
        """Predictions Xβ̂ + Zb̂ (+ offset), as lme4's ``predict.merMod``.

        ``newdata``: a DataFrame of new rows (None: the fitted rows); ``re_form``: which random
        effects to include — None (all), ``"~0"`` or ``"NA"`` (none: the population mean), or a
        formula of some of the model's terms (``"~(1 | Subject)"``); ``allow_new_levels``: give a
        grouping level the fit never saw zero random effects instead of an error; ``offset``: the
        new rows' offsets when the model was fitted with ``offset=`` values. Rows with a missing
        predictor give NaN. Other lme4 arguments (``type``, ``se.fit``) are refused by name.
        """
        from ._predict import predict

        if newdata is None:
            self._rows("predict() without newdata")
        return predict(self, newdata, re_form=re_form, allow_new_levels=allow_new_levels, offset=offset, **kwargs)

    def simulate(self, nsim: int = 1, seed=None, use_u: bool = False) -> np.ndarray:
        """``nsim`` responses simulated from the fitted model, an (nsim, nobs) array, as lme4's
        ``simulate.merMod``: new random effects each time (``use_u=False``), or the conditional
        modes held fixed (``use_u=True``); ``seed``: None, an int, a numpy Generator or a JAX PRNG key."""
        from ._refit import simulate

        self._rows("simulate()")
        return simulate(self, nsim, seed=seed, use_u=use_u)

    def refit_many(self, Y, progress: bool = True, chunk_size: int | None = None, *, REML: bool | None = None,
                   start=None, max_iter: int = 200):
        """Refit the same design to every row of ``Y`` (nsim, nobs) in one batched computation
        (lme4's ``refit`` over many responses). ``REML``: default the model's; ``start``: θ to
        start from (default the fit's θ̂, "default" lmer's own start); ``chunk_size``: responses per compiled batch;
        ``progress``: a progress bar (tqdm) for long runs. Returns a ``RefitResult`` (θ, β, σ,
        criteria and convergence of every refit)."""
        from ._refit import refit_many

        self._rows("refit_many()")
        return refit_many(self, Y, progress, chunk_size, REML=REML, start=start, max_iter=max_iter)

    def bootstrap(self, nsim: int, seed=None, level: float = 0.95, progress: bool = True,
                  chunk_size: int | None = None, use_u: bool = False):
        """Parametric bootstrap of the fixed effects and variance components (lme4's ``bootMer``):
        ``nsim`` responses simulated from the fit (``use_u`` as in :meth:`simulate`), each refitted
        in batches; the result holds the replicates and gives percentile intervals at ``level``."""
        from ._refit import bootstrap

        self._rows("bootstrap()")
        return bootstrap(self, nsim, seed=seed, level=level, progress=progress, chunk_size=chunk_size, use_u=use_u)

    # ---- inference (jaxmlm/_inference.py, jaxmlm/_compare.py, jaxmlm/_confint.py) ---
    def coef_table(self, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """The fixed-effects table of lmerTest's summary: Estimate, Std. Error, df, t value, Pr(>|t|).

        ``ddf``: "Satterthwaite" (default), "Kenward-Roger" (REML fits; adjusted SEs as pbkrtest)
        or "none" (Wald z-tests, df = inf)."""
        from ._inference import coef_table

        self._rows_for(ddf)
        return coef_table(self, ddf=ddf)

    def contest(self, L, ddf: str = "Satterthwaite", rhs=0.0) -> pd.DataFrame:
        """F-test of L β = rhs with Satterthwaite or Kenward-Roger df, as lmerTest's contest(joint = TRUE)."""
        from ._inference import contest

        self._rows_for(ddf)
        return contest(self, L, ddf=ddf, rhs=rhs)

    def anova(self, type=3, ddf: str = "Satterthwaite"):
        """lmerTest's ANOVA table: an F test of each fixed-effects term (see :func:`jaxmlm._anova.anova_table`).

        ``type`` 3 (default), 2 or 1; ``ddf`` "Satterthwaite" (default) or
        "Kenward-Roger" (REML fits). A DataFrame indexed by term: Sum Sq,
        Mean Sq, NumDF, DenDF, F value, Pr(>F); it prints as lmerTest prints it.
        """
        from ._anova import anova_table

        self._rows("anova() of one model (its terms' hypothesis matrices)")
        return anova_table(self, type=type, ddf=ddf)

    def all_fit(self, optimizers=None, n_random: int = 3, seed=0, max_iter: int = 200):
        """Refit with every optimizer jaxmlm has, from several starts, batched (lme4's ``allFit``).

        ``optimizers``: a list out of "newton", "ai", "bfgs" (default: every one
        that differs for this model); starts: lme4's, the moment estimates (for
        crossed designs) and ``n_random`` random ones drawn with ``seed``. Returns
        an ``AllFit``: ``table`` (criterion, excess over the best, convergence,
        iterations, evaluations, gradient), ``fixef``, ``theta``, ``sdcor``,
        ``llik``, ``times``; it prints as lme4's ``summary(allFit(m))``.
        """
        from ._allfit import all_fit

        return all_fit(self, optimizers=optimizers, n_random=n_random, seed=seed, max_iter=max_iter)

    def variance_components(self, level: float = 0.95) -> pd.DataFrame:
        """Each random-effect SD, variance and correlation and the residual SD with its standard error
        and a Wald interval at ``level``, computed on the log-SD / Fisher-z scale as Stata's ``mixed``."""
        from ._inference import variance_components

        return variance_components(self, level=level)

    def confint(self, method: str = "profile", level: float = 0.95, parm=None, nsim: int = 500, seed=None,
                **kwargs) -> pd.DataFrame:
        """Confidence intervals as lme4's ``confint(oldNames = FALSE)``: ``method`` "profile"
        (likelihood profile), "Wald" (fixed effects only) or "boot" (parametric bootstrap with
        ``nsim`` replicates and ``seed``); ``parm``: the rows wanted (names, positions, or
        ``"theta_"`` / ``"beta_"``), default all. Further keywords go to the profile search or to
        :meth:`bootstrap`."""
        from ._confint import confint

        if method == "boot":
            self._rows("confint(method='boot')")
        return confint(self, method=method, level=level, parm=parm, nsim=nsim, seed=seed, **kwargs)

    def profile(self, parm=None, alphamax: float = 0.01, maxpts: int = 100, delta: float | None = None,
                delta_cutoff: float = 1 / 8) -> pd.DataFrame:
        """lme4's ``profile()``: ζ, the signed root of the ML deviance increase, on a grid of each
        parameter's values out to |ζ| = √χ²_npar(1 − ``alphamax``); columns ``parameter``,
        ``value``, ``zeta`` (see :func:`jaxmlm._confint.profile`; plot with
        :func:`jaxmlm.plot.profile_zeta`)."""
        from ._confint import profile

        return profile(self, parm=parm, alphamax=alphamax, maxpts=maxpts, delta=delta, delta_cutoff=delta_cutoff)

    def ranova(self, reduce_terms: bool = True) -> pd.DataFrame:
        """lmerTest's ``ranova``: a likelihood-ratio test of each random-effects term against the model
        without it (``reduce_terms=True``: a vector term is reduced to its intercept, as lmerTest does)."""
        from ._compare import ranova

        self._rows("ranova() (refits of reduced models)")
        return ranova(self, reduce_terms=reduce_terms)

    def lrt_vs_ols(self):
        """Stata's "LR test vs. linear regression": the model against the same fixed effects without
        random effects, with the χ̄² mixture p-value for variances on the boundary."""
        from ._compare import lrt_vs_ols

        return lrt_vs_ols(self)

    def icc(self) -> pd.DataFrame:
        """Intraclass correlations σ²_group / (Σσ²_groups + σ²_ε) per grouping factor, and cumulative
        (the correlation of two observations sharing this and every higher level)."""
        from ._compare import icc

        self._rows("icc() (the random-effects columns' variances)")
        return icc(self)

    def r2_nakagawa(self) -> pd.Series:
        """Nakagawa & Schielzeth's marginal R² (variance of the fixed-effects predictions over the total)
        and conditional R² (fixed plus random effects over the total)."""
        from ._compare import r2_nakagawa

        self._rows("r2_nakagawa() (the variance of the fixed-effects predictions)")
        return r2_nakagawa(self)

    def hatvalues(self) -> np.ndarray:
        """Leverage of each row used in the fit, as lme4's ``hatvalues`` (see :mod:`jaxmlm._influence`)."""
        from ._influence import hat_values

        return _readonly(hat_values(self))

    def cooks_distance(self) -> np.ndarray:
        """Cook's distance of each row used in the fit, as lme4's ``cooks.distance``."""
        from ._influence import cooks_distance

        return _readonly(cooks_distance(self))

    def influence(self, group: str | None = None, method: str = "exact", *, vcov: str = "full",
                  chunk_size: int | None = None):
        """Deletion diagnostics of the fixed effects, as influence.ME: Cook's distance and DFBETAS
        of each level of ``group`` (or each row, ``group=None``) left out. ``method``: "exact"
        (leave-one-out refits in one compiled program), "approximate" (one Newton
        step from θ̂ per deletion) or "both" (with their difference). Returns an ``Influence``
        (``.cooks_distance``, ``.dfbetas``, ...; see :mod:`jaxmlm._influence`)."""
        from ._influence import influence

        return influence(self, group, method, vcov=vcov, chunk_size=chunk_size)

    # ---- tidy tables (jaxmlm/_tidy.py) --------------------------------------------------
    def tidy(self, effects=("fixed", "ran_pars"), conf_int: bool = False, conf_level: float = 0.95,
             ddf: str = "Satterthwaite") -> pd.DataFrame:
        """One row per estimate, as broom.mixed's ``tidy`` (see :func:`jaxmlm._tidy.tidy`)."""
        from ._tidy import tidy

        return tidy(self, effects=effects, conf_int=conf_int, conf_level=conf_level, ddf=ddf)

    def glance(self) -> pd.DataFrame:
        """One row per model, as broom.mixed's ``glance``: nobs, sigma, logLik, AIC, BIC, REMLcrit or deviance, df_residual."""
        from ._tidy import glance

        return glance(self)

    def augment(self) -> pd.DataFrame:
        """The model frame with fitted values, residuals, hat values and Cook's distances, as broom.mixed's ``augment``."""
        from ._tidy import augment

        return augment(self)

    def equations(self, estimates: bool = False, digits: int = 2):
        """The model as equations: level-1 and level-2 (level-3, ...) equations where the grouping
        factors nest, the composite form and the distributions, as R's equatiomatic ``extract_eq``
        (see :mod:`jaxmlm._equations`); ``estimates=True`` puts the fitted numbers, rounded to
        ``digits``, in place of the symbols. Prints as text; a notebook renders its LaTeX."""
        from ._equations import equations

        return equations(self, estimates=estimates, digits=digits)

    def summary(self, style: str = "lme4", stddev: bool = False) -> str:
        """Text summary: lme4's (``style="lme4"``, the default, also printed by ``print(m)``) or the
        output of Stata's ``mixed`` (``style="stata"``: see :mod:`jaxmlm._stata`), with variances and
        covariances or, with ``stddev=True``, standard deviations and correlations."""
        if style == "stata":
            from ._stata import stata_summary

            return stata_summary(self, stddev=stddev)
        if style != "lme4":
            raise DataError(f"style must be 'lme4' or 'stata', got {style!r}")
        if stddev:
            raise DataError("stddev= applies to style='stata' (lme4's summary shows both variances and SDs)")
        from ._present import summary_text

        return summary_text(self)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        """A notebook shows a bare model as its ``summary()`` (preformatted, HTML-escaped)."""
        import html

        return f"<pre>{html.escape(self.summary())}</pre>"


@_compiled.jit
def _as_float32(stats: Stats) -> Stats:
    """The float64 statistics rounded to float32 (index arrays unchanged), in one program."""
    return jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.float64 else a, stats)


def _condvar_blocks(sol, layout: Layout, design: Design) -> tuple[tuple, tuple]:
    """Cut the padded engine arrays back to each block's real levels."""
    b_list = [np.asarray(sol.b1)[: design.blocks[0].nlev]]
    v_list = [np.asarray(sol.var1)[: design.blocks[0].nlev]]
    b_rest = np.asarray(sol.b_rest)
    for (off, lev, k), blk, v in zip(layout.rest, design.blocks[1:], sol.var_rest):
        b_list.append(b_rest[off : off + lev * k].reshape(lev, k)[: blk.nlev])
        v_list.append(np.asarray(v)[: blk.nlev])
    return tuple(_readonly(b) for b in b_list), tuple(_readonly(v) for v in v_list)


@partial(_compiled.jit, static_argnames=("spec", "layout"))
def _pass(floats, ints, spec: tuple, layout: Layout) -> Stats:
    """:func:`~jaxmlm._stats.stats_from_chunk` as a program of its own."""
    return stats_from_chunk(floats, ints, spec, layout)


def _summary_ahead(one, stats, layout: Layout) -> None:
    """Ask for the Satterthwaite program of a model about to be fitted, once per model shape
    (:func:`~jaxmlm._inference.derivatives_ahead`): its shape is the statistics' (those made
    apart, or those the one program of small data makes: ``one``), known before the fit.
    A warm fit pays one set look-up."""
    key = ("summary", layout, one.wide, one.spec) if stats is None else ("summary", layout, _compiled._signature(stats))
    if not _compiled.ahead_enabled() or not _compiled.first_ask(key):
        return
    from ._inference import derivatives_ahead

    derivatives_ahead((lambda: stats_shapes(one, layout)) if stats is None else (lambda: stats), layout)


def _callers_name(data) -> str | None:
    """The name the user's code binds ``data`` to, for summary()'s "Data:" line.

    lme4 prints the expression given as its data argument; Python keeps no expressions, so
    the variables of the first calling frame outside jaxmlm are searched for this very object
    (locals, then globals; names starting with "_", e.g. IPython's output cache, skipped).
    None when no variable holds it (``lmer(f, load_example("sleepstudy"))``).
    """
    frame, _ = outside_jaxmlm(sys._getframe(1))
    try:
        if frame is None:
            return None
        for scope in (frame.f_locals, frame.f_globals):
            for name, value in list(scope.items()):
                if value is data and not name.startswith("_"):
                    return name
        return None
    finally:
        del frame


def _subset(data, subset, weights, offset):
    """(rows of ``data`` where ``subset`` holds, weights and offset values cut alike): lme4's ``subset``."""
    if not isinstance(data, pd.DataFrame):
        raise DataError("subset= needs a pandas DataFrame; filter a Dask frame or dataset before fitting it "
                        "(e.g. ddf[ddf.year >= 2000])")
    if isinstance(subset, str):
        try:
            mask = data.eval(subset)
        except Exception as exc:  # noqa: BLE001 - pandas' parser and evaluation errors alike
            raise DataError(f"subset {subset!r} could not be evaluated on the data ({type(exc).__name__}: {exc})") \
                from None
    elif isinstance(subset, pd.Series):
        if not subset.index.equals(data.index):
            raise DataError("subset given as a Series must have the data's index")
        mask = subset
    else:
        mask = np.asarray(subset)
        if mask.ndim != 1 or len(mask) != len(data):
            raise DataError(f"subset must be a condition (text) or one boolean per row of the data ({len(data)}), "
                            f"got {mask.shape}")
    values = pd.Series(mask, index=data.index) if not isinstance(mask, pd.Series) else mask
    present = values.dropna()
    if not (pd.api.types.is_bool_dtype(present.dtype) or (present.dtype == object and
                                                           all(isinstance(v, (bool, np.bool_)) for v in present))):
        raise DataError(f"subset must be true or false for each row, got values of dtype {values.dtype}")
    keep = values.fillna(False).to_numpy(dtype=bool)  # missing: left out, as R's subset
    if not keep.any():
        raise DataError("subset leaves no rows")

    def cut(v):  # values given per row of data (a column name needs nothing)
        if v is None or isinstance(v, str):
            return v
        arr = v.to_numpy() if isinstance(v, pd.Series) else np.asarray(v)
        return arr[keep] if arr.ndim == 1 and len(arr) == len(keep) else v  # a wrong length: build_design says so

    return data.loc[keep], cut(weights), cut(offset)


def _in_pieces(data) -> bool:
    """A Dask frame or a Parquet path (jaxmlm/_dask.py), imported only when data is not a pandas frame."""
    from ._dask import is_dask_frame, is_dataset_path

    return is_dask_frame(data) or is_dataset_path(data)


def lmer(
    formula: str,
    data: pd.DataFrame,
    REML: bool = True,
    *,
    max_iter: int = 200,
    optimizer: str = "auto",
    dtype: str = "float64",
    polish: bool = True,
    data_name: str | None = None,
    weights=None,
    offset=None,
    subset=None,
) -> LinearMixedModel:
    """Fit a linear mixed model by REML (default) or maximum likelihood, as lme4's ``lmer``.

    ``formula`` uses lme4's syntax, e.g. ``"Reaction ~ Days + (Days | Subject)"``;
    ``data`` is a pandas DataFrame — or, for data beyond memory, a Dask DataFrame or the path
    (file, folder, glob, or a list of them) of a Parquet dataset: then the rows are read
    partition by partition and only their statistics kept (:mod:`jaxmlm._dask`). Rows with a missing value in any variable
    of the formula are dropped (``m.n_dropped`` counts them). ``data_name``
    labels the data in ``summary()`` (lme4 prints the data argument there).
    ``optimizer`` is "newton" (the Hessian in closed form for one grouping
    factor of up to three columns, otherwise mostly forward differences of the
    exact autodiff gradient), "ai" (Newton with the average-information
    matrix in place of the Hessian), "bfgs", or "auto": Newton unless a large
    dense fill-in block (crossed designs) makes the Hessian costly, then "ai".

    ``dtype="float32"`` runs the optimizer's iterations in float32, the
    arithmetic accelerators are fast at (the one pass over the rows always
    accumulates in float64). With ``polish=True`` (default) Newton then
    continues in float64 from the float32 optimum — usually one or two steps —
    so the estimates are those of a float64 fit; ``polish=False`` keeps the
    estimates in float32 (measured accuracy: README, "float32 mode").
    Inference (``coef_table``, ``confint``, ...) is always in float64.

    ``weights``: prior weights, a column name or one value per row of ``data``
    (lme4's ``weights``): row i's residual variance is σ²/wᵢ, so a weight is a
    precision (or the number of observations a row averages); weights must be
    ≥ 0, and a row of weight 0 carries no information. ``offset``: a known part
    of the linear predictor with coefficient 1 (a column name or values), as
    lme4's ``offset`` argument; ``offset(expr)`` terms in the formula do the same
    and may be combined with it. ``fitted``, ``predict`` and ``simulate`` include
    the offset.

    ``subset``: fit only some rows, as lme4's ``subset`` — a boolean mask (one value per row,
    or a Series on ``data``'s index) or a condition in pandas' ``DataFrame.eval`` syntax, e.g.
    ``"Days >= 2"``; rows where it is missing are left out, as R does. Weights or offsets
    given as values are cut to the same rows. ``data`` is not modified.
    """
    if not isinstance(REML, (bool, np.bool_)):
        raise DataError(f"REML must be True or False, got {REML!r}")
    if optimizer not in ("auto", "newton", "ai", "bfgs"):
        raise DataError(f"optimizer must be 'auto', 'newton', 'ai' or 'bfgs', got {optimizer!r}")
    if dtype not in ("float64", "float32"):
        raise DataError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    if data_name is None and isinstance(data, pd.DataFrame):
        data_name = _callers_name(data)
    if subset is not None:
        data, weights, offset = _subset(data, subset, weights, offset)
    if not isinstance(data, pd.DataFrame) and _in_pieces(data):
        from ._dask import fit_statistics

        design, layout, stats = fit_statistics(formula, data, weights=weights, offset=offset)
        one = None
        if data_name is None and isinstance(data, (str, os.PathLike)):
            data_name = os.fspath(data)  # summary() names the dataset, as lme4 names the data argument
    else:
        design = build_design(formula, data, weights=weights, offset=offset)
        # Small data (float64 mode): the pass over the rows runs in the optimizer's program
        # (_pass_fit_and_solve), unless the start needs the statistics first. A layout fitted
        # both to small and to larger data compiles both programs (once).
        one = one_chunk(design) if dtype == "float64" else None
        layout, stats = (one.layout, None) if one is not None else sufficient_stats(design)[:2]
    if design.p == 0:
        # Nothing to integrate out: the restricted likelihood is the likelihood, and lme4
        # reports such a fit as ML (with AIC), whatever REML says.
        REML = False
    reml = np.asarray(1.0 if REML else 0.0)
    t0 = time.perf_counter()
    method = choose_method(layout) if optimizer == "auto" else optimizer
    opts = dict(layout=layout, method=method)
    # lme4's start (θ = 1 on template diagonals) in the optimizer's unit-free coordinates,
    # θ₀ = c ⊙ lme4_start (c = theta_scale: 1 for an intercept, 1/rms for a slope's column;
    # lme4's own θ = 1 would make a slope on a 1e4-unit predictor 1e4 times too variable),
    # except where every iteration costs a dense q_r³ step, and in nested designs: there a
    # moment estimate saves the first few (_optimize.moment_start; the one program of a
    # nested design's small data makes it itself: _fit.moment_intercepts).
    moment = needs_moment_start(layout, method, one_program=one is not None)
    u0 = lme4_start(layout)
    if one is not None and not moment:
        made = []  # the statistics, from the program's first run
        intercepts = moment_intercepts(layout, design)
        run = _one_program_run(one, reml, method, made, intercepts=intercepts, moments=intercepts is not None)
        stages, wide = [], one.wide
    else:
        if stats is None:
            stats = narrow(_programs.call(_pass, (one.floats, one.ints), dict(spec=one.spec, layout=one.wide)), layout)
        # The optimizer's stages in order: float32 iterations (float32 mode), then float64 ones
        # (always, except float32 mode without polish). The last stage runs with the final solve
        # as one program, which takes its start in unit-free coordinates (u = θ / c); only a
        # start known as θ needs c on the host. One transfer of each state: every separate
        # read of a device array waits.
        stages = []
        est_stats, est_reml = stats, reml
        if moment:  # one transfer gives the start and c
            theta0, c = moment_start(stats, layout, intercept_blocks(design), with_scale=True)
            u0 = theta0 / c
        elif dtype == "float32":
            c = theta_scale_host(stats, layout)
            theta0 = c * u0
        if dtype == "float32":
            stats32, reml32 = _as_float32(stats), reml.astype(np.float32)
            if polish:
                stages.append(jax.device_get(_programs.call(
                    fit_theta, (theta0.astype(np.float32), stats32, reml32), dict(opts, max_iter=max_iter))))
                u0 = np.asarray(stages[0].x, dtype=np.float64) / c
            else:
                est_stats, est_reml, u0 = stats32, reml32, u0.astype(np.float32)

        run, wide = fit_program(est_stats, est_reml, layout, method)

    if dtype == "float64":
        _summary_ahead(one, stats, layout)
    theta0, c, st, theta, sol, snapped = fit_snapped(run, u0, max_iter, wide, p=layout.p)
    if stats is None:
        stats = narrow(made[0], layout)
    stages.append(st)
    iterations = sum(int(s.it) for s in stages)
    evaluations = sum(int(s.nfev) for s in stages)
    raw, f, status = np.asarray(st.x, dtype=np.float64), float(st.f), int(st.status)
    if status == 4 or not np.isfinite(f):
        raise ConvergenceError(
            "the criterion became non-finite during optimization; check for a (near-)constant "
            "response or predictors on wildly different scales"
        )
    theta = np.asarray(theta, dtype=np.float64)
    max_grad = max_abs_gradient(st)
    warns = status_warnings(status, iterations, max_grad)
    seconds = time.perf_counter() - t0
    b, v = _condvar_blocks(sol, layout, design)
    record = FitRecord(
        theta_start=_readonly(theta0),
        theta_optimizer=_readonly(raw),
        theta_end=_readonly(theta),
        objective=float(sol.criterion),
        iterations=iterations,
        evaluations=evaluations,
        status=status,
        message=STATUS[status],
        converged=status in (0, 1),
        max_abs_gradient=max_grad,
        snapped=snapped,
        warnings=warns,
        seconds=seconds,
        method=method,
        dtype="float32+float64 polish" if len(stages) == 2 else dtype,
        theta_float32=_readonly(stages[0].x) if dtype == "float32" else None,
    )
    return LinearMixedModel(
        formula=design.formula.text,
        REML=bool(REML),
        design=design,
        layout=layout,
        stats=stats,
        theta=_readonly(theta),
        record=record,
        _beta=_readonly(sol.beta),
        _vcov=_readonly(sol.vcov),
        sigma=float(sol.sigma),
        objective=float(sol.criterion),
        _b=b,
        _condvar=v,
        data_name=data_name,
    )

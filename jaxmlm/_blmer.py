"""``blmer``: linear mixed models with priors, fitted at the posterior mode, as R's blme 1.0-5.

The fit is lmer's — the same statistics, compiled Newton optimizer, canonical signs and solution
(:func:`~jaxmlm._fit.fit_program`) — on statistics that carry the fixed-effects prior's ridge and
blme's degrees-of-freedom adjustment, with the covariance priors' −2 log density added to the
criterion the optimizer minimizes (:mod:`jaxmlm._priors` gives the formulas and their source).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._errors import ConvergenceError, DataError, InferenceError
from ._fit import fit_program, fit_snapped
from ._frontend import build_design
from ._optimize import STATUS, choose_method, lme4_start, max_abs_gradient, status_warnings
from ._priors import (_COV_ARGS, _FIXEF_ARGS, _RESID_ARGS, TermPrior, ThetaPenalty, _as_prior, augment,
                      resolve_cov, resolve_fixef, resolve_resid)
from ._results import FitRecord, LinearMixedModel, _callers_name, _condvar_blocks, _readonly, _subset
from ._stats import sufficient_stats

__all__ = ["blmer", "PenalizedMixedModel"]

_LOG2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True, eq=False)
class PenalizedMixedModel(LinearMixedModel):
    """A ``blmer`` fit (blme's ``blmerMod``): a :class:`LinearMixedModel` whose ``objective`` is the
    penalized criterion that blme's optimizer minimizes (its deviance function at the estimate):
    −2 log likelihood − 2 log prior, the priors' normalizing constants included. blme prints it in
    two parts, which ``summary()`` shows too: "REML criterion at convergence" (or the deviance),
    the likelihood's part ``objective − prior_penalty``, and "Prior dev", ``prior_penalty``.
    ``priors`` holds blme's description of each prior (term label → text).

    Estimates, random effects, fitted values and ``vcov`` (σ̂² times the inverse of the penalized
    R_XᵀR_X, as blme's) are available as for lmer fits. Inference that refits the model or rests on
    the likelihood alone (anova, ranova, confint, profile, Satterthwaite or Kenward-Roger tests,
    bootstrap) is refused: it would silently drop the priors."""

    priors: dict = field(default_factory=dict)
    prior_penalty: float = 0.0
    penalty: ThetaPenalty | None = field(default=None, repr=False)

    @property
    def loglik(self) -> float:
        """The (REML) log-likelihood at the estimate, without the prior, as blme's ``logLik``
        (−(objective − prior_penalty)/2); ``aic`` and ``bic`` follow from it, as in blme."""
        return -0.5 * (self.objective - self.prior_penalty)

    @property
    def deviance(self) -> float:
        """The likelihood's part of the criterion (blme's deviance or REML criterion)."""
        return self.objective - self.prior_penalty

    def criterion_at(self, theta) -> float:
        """The penalized criterion (blme's deviance function) at any θ: the core's profiled criterion
        on the penalized statistics plus the covariance priors' penalty (:mod:`jaxmlm._priors`)."""
        import jax.numpy as jnp

        from . import core

        theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
        if theta.shape != self.theta.shape:
            raise DataError(f"theta must have {len(self.theta)} entries, got shape {theta.shape}")
        f = core.criterion(jnp.asarray(theta), self.stats, self.layout, REML=1.0 if self.REML else 0.0)
        return float(f) + float(self.penalty(jnp.asarray(theta), self.layout))

    def summary(self, style: str = "lme4", stddev: bool = False) -> str:
        """blme's summary: the priors, their deviance (``Prior dev``), then lme4's summary with the
        penalized criterion and the fixed effects' t values (no denominator df: see the class)."""
        if style != "lme4":
            raise DataError("a blmer fit is summarized in lme4's style only")
        if stddev:
            raise DataError("stddev= applies to style='stata'")
        from ._present import summary_text

        lines = []
        for i, (label, desc) in enumerate(self.priors.get("cov", {}).items()):
            lines.append(("Cov prior  : " if i == 0 else "           : ") + f"{label} ~ {desc}")
        if "fixef" in self.priors:
            lines.append(f"Fixef prior: {self.priors['fixef']}")
        if "resid" in self.priors:
            lines.append(f"Resid prior: {self.priors['resid']}")
        lines.append(f"Prior dev  : {self.prior_penalty:.4f}")
        text = summary_text(self)
        head = f"Linear mixed model fit by {'REML' if self.REML else 'maximum likelihood'} ['blmerMod'] (jaxmlm)"
        text = head + text[text.index("\n"):]
        if self.REML:  # blme prints the likelihood's part here; the prior's is "Prior dev" above
            old = next(x for x in text.split("\n") if x.startswith("REML criterion at convergence"))
            text = text.replace(old, f"REML criterion at convergence: {self.objective - self.prior_penalty:.2f}\n"
                                     f"Penalized criterion (REML + Prior dev): {self.objective:.4f}")
        return "\n".join(lines) + "\n\n" + text

    def _refuse(self, what):
        raise InferenceError(f"{what} is not available for a blmer fit: it would refit or test the model "
                             "without its priors")

    def coef_table(self, *args, **kwargs):
        """Estimate, Std. Error and t value (blme's table; no denominator degrees of freedom)."""
        if args or kwargs:
            self._refuse("coef_table with a ddf method")
        return pd.DataFrame({"Estimate": self.fixef, "Std. Error": self.se, "t value": self.fixef / self.se})

    def anova(self, *a, **k):
        self._refuse("anova")

    def ranova(self, *a, **k):
        self._refuse("ranova")

    def confint(self, *a, **k):
        self._refuse("confint")

    def profile(self, *a, **k):
        self._refuse("profile")

    def bootstrap(self, *a, **k):
        self._refuse("bootstrap")

    def refit_many(self, *a, **k):
        self._refuse("refit_many")

    def contest(self, *a, **k):
        self._refuse("contest")

    def all_fit(self, *a, **k):
        self._refuse("all_fit")

    def update(self, *a, **k):
        self._refuse("update")

    def lrt_vs_ols(self, *a, **k):
        self._refuse("lrt_vs_ols")


def _term_specs(cov_prior, terms):
    """One prior (or None) per term, from blmer's ``cov_prior``: one spec for every term, or a dict
    {grouping factor: spec} (terms not named get no prior, as blme's list form)."""
    if isinstance(cov_prior, dict):
        groups = {t.group for t in terms}
        unknown = set(cov_prior) - groups
        if unknown:
            raise DataError(f"cov_prior names {', '.join(map(repr, sorted(unknown)))}, which "
                            f"{'is' if len(unknown) == 1 else 'are'} not a grouping factor of the model "
                            f"({', '.join(map(repr, sorted(groups)))})")
        return [_as_prior(cov_prior.get(t.group), _COV_ARGS, "cov_prior") for t in terms]
    spec = _as_prior(cov_prior, _COV_ARGS, "cov_prior")
    return [spec for _ in terms]


def blmer(
    formula: str,
    data: pd.DataFrame,
    REML: bool = True,
    *,
    cov_prior="wishart",
    fixef_prior=None,
    resid_prior=None,
    max_iter: int = 200,
    weights=None,
    offset=None,
    subset=None,
    data_name: str | None = None,
) -> PenalizedMixedModel:
    """Fit a linear mixed model at the posterior mode under priors, as blme's ``blmer``
    (Chung, Rabe-Hesketh, Dorie, Gelman & Liu 2013, *Psychometrika* 78(4); blme 1.0-5).

    Priors (blme's names, defaults and definitions; all on the common scale σ, blme's default):

    * ``cov_prior`` on each random-effects term's relative covariance ΛΛᵀ = Σ_b/σ²: "wishart"
      (default; df = k + 2.5, scale = ∞ — for a scalar term the same as gamma(2.5) on its SD),
      "invwishart" (df = k − 0.998, scale = (df + 0.1)·I), "gamma" (shape 2.5, rate 0, on the SD),
      "invgamma" (shape 0.001, scale 0.051, on the variance), or None (no prior). Hyperparameters:
      a pair ``("wishart", {"df": 4, "scale": 10})``, ``("gamma", {"shape": 3, "rate": 0.5,
      "posterior_scale": "sd"})``. Per term: a dict ``{"Subject": "gamma", "Batch": None}``
      (grouping factors not named get no prior). gamma and invgamma are for scalar terms.
    * ``fixef_prior``: None or "normal" — β ~ N(0, σ²Σ_β), default SDs (10, 2.5): 10 for the first
      coefficient and 2.5 for the others; ``("normal", {"sd": [20, 1]})`` or ``{"cov": matrix}``;
      an SD of ``inf`` leaves that coefficient without a prior.
    * ``resid_prior`` on σ²: None, ``("gamma", {"shape": a})`` (rate 0) or ``("invgamma", {"shape": a,
      "scale": s})`` — the priors for which σ̂² stays in closed form.

    Returns a :class:`PenalizedMixedModel`: ``fixef``, ``theta``, ``sigma``, ``vcov``, ``ranef``, …
    as for ``lmer``; ``objective`` is blme's penalized criterion (its "REML criterion at
    convergence", normalizing constants included), ``priors`` and ``prior_penalty`` say what the
    priors were and contributed. ``weights``, ``offset``, ``subset``, ``data_name``, ``max_iter``:
    as ``lmer``'s. A wishart or gamma prior with shape above 1 has density 0 at a zero variance,
    so the estimate stays off the boundary where lmer's fit is singular.
    """
    if not isinstance(REML, (bool, np.bool_)):
        raise DataError(f"REML must be True or False, got {REML!r}")
    if not isinstance(data, pd.DataFrame):
        raise DataError("blmer takes a pandas DataFrame")
    if data_name is None:
        data_name = _callers_name(data)
    if subset is not None:
        data, weights, offset = _subset(data, subset, weights, offset)
    fixef_spec = _as_prior(fixef_prior, _FIXEF_ARGS, "fixef_prior")
    resid_spec = _as_prior(resid_prior, _RESID_ARGS, "resid_prior")
    design = build_design(formula, data, weights=weights, offset=offset)
    specs = _term_specs(cov_prior, design.terms)
    layout, stats = sufficient_stats(design)[:2]
    if design.p == 0:
        REML = False  # as lmer: nothing to integrate out

    terms, constant, df, labels = [], 0.0, 0.0, {}
    for t, spec in zip(design.terms, specs):
        if spec is None:
            continue
        if not t.cov.linear:
            raise DataError(f"cov_prior on the term of {t.group!r}: priors apply to unstructured terms only")
        kind, params, const, label = resolve_cov(spec, t.k, repr(t.group))
        terms.append(TermPrior(kind, t.block, t.offset, t.k, params))
        constant += const
        labels[t.group if t.group not in labels else t.vc_name] = label
    priors = {"cov": labels} if labels else {}
    Cinv, rss_add = None, 0.0
    if fixef_spec is not None:
        if design.p == 0:
            raise DataError("fixef_prior: the model has no fixed effects")
        Cinv, dfb, const, priors["fixef"] = resolve_fixef(fixef_spec, list(design.fixef_names))
        df, constant = df + dfb, constant + const
    if resid_spec is not None:
        dfr, rss_add, const, priors["resid"] = resolve_resid(resid_spec)
        df, constant = df + dfr, constant + const
    penalty = ThetaPenalty(tuple(terms), float(constant - df * _LOG2PI))
    pen_stats = augment(stats, layout, Cinv, df, rss_add)

    t0 = time.perf_counter()
    reml = np.asarray(1.0 if REML else 0.0)
    method = choose_method(layout)
    run, wide = fit_program(pen_stats, reml, layout, method, penalty)
    theta0, c, st, theta, sol, snapped = fit_snapped(run, lme4_start(layout), max_iter, wide, p=layout.p)
    status, f = int(st.status), float(sol.criterion)
    if status == 4 or not np.isfinite(f):
        raise ConvergenceError("the penalized criterion became non-finite during optimization (a prior with "
                               "density 0 at the start, or a degenerate response)")
    max_grad = max_abs_gradient(st)
    warns = status_warnings(status, int(st.it), max_grad)
    theta = np.asarray(theta, dtype=np.float64)
    b, v = _condvar_blocks(sol, layout, design)
    record = FitRecord(
        theta_start=_readonly(theta0), theta_optimizer=_readonly(np.asarray(st.x, dtype=np.float64)),
        theta_end=_readonly(theta), objective=f, iterations=int(st.it), evaluations=int(st.nfev),
        status=status, message=STATUS[status], converged=status in (0, 1), max_abs_gradient=max_grad,
        snapped=snapped, warnings=tuple(warns), seconds=time.perf_counter() - t0, method=method,
        dtype="float64", theta_float32=None,
    )
    # blme's "Prior dev": −2 log prior at the estimate, σ̂ terms and constants included
    # (df·log σ̂² + βᵀΣ_β⁻¹β/σ̂² for a normal prior on β, + the resid prior's exponential term).
    sigma = float(sol.sigma)
    prior_dev = float(penalty(np.asarray(theta), layout)) + df * _LOG2PI + df * np.log(sigma ** 2)
    if Cinv is not None:
        beta = np.asarray(sol.beta)
        prior_dev += float(beta @ Cinv @ beta) / sigma ** 2
    prior_dev += rss_add / sigma ** 2
    return PenalizedMixedModel(
        formula=design.formula.text, REML=bool(REML), design=design, layout=layout, stats=pen_stats,
        theta=_readonly(theta), record=record, _beta=_readonly(sol.beta), _vcov=_readonly(sol.vcov),
        sigma=sigma, objective=f, _b=b, _condvar=v, data_name=data_name,
        priors=priors, prior_penalty=prior_dev, penalty=penalty,
    )

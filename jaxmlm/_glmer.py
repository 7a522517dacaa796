"""GLMMs' entry and results — :func:`glmer` (lme4's ``glmer`` and ``glmer.nb``) and the fitted
:class:`GeneralizedLinearMixedModel`.

The same stages as :func:`~jaxmlm.lmer`: formula → design (:mod:`jaxmlm._frontend`), schema
(:mod:`jaxmlm._stats`), then the fit of :mod:`jaxmlm._glmm_fit` over PIRLS
(:mod:`jaxmlm._pirls`), whose every step is the linear engine's weighted statistics and
factorization. The response is read as R's ``glm`` reads it (:func:`_response`):

* binomial: 0/1 numbers, booleans, a two-level factor or strings (the first level —
  sorted, or the categorical's first category — is failure), proportions with the number of
  trials as ``weights``, or ``cbind(successes, failures)`` on the left-hand side (then
  y = successes / trials and the trials become prior weights);
* Poisson and negative binomial: non-negative integer counts.
"""

from __future__ import annotations

import ast
import dataclasses
import time
import warnings
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import _x64  # noqa: F401  (float64 before any array exists)
from ._design import Design
from ._errors import ConvergenceWarning, DataError, DataWarning, FormulaError, JaxmlmError, warn_user
from ._formula import parse_formula, split_cbind
from ._frontend import build_design
from ._implicit import RowData, row_data
from ._optimize import STATUS, max_abs_gradient, status_warnings
from ._results import MixedModelBase, _callers_name, _readonly, _subset
from ._stats import Layout, make_schema
from .families import Family, NegativeBinomial, make_family

__all__ = ["glmer", "glmer_nb", "GeneralizedLinearMixedModel", "GlmmRecord"]

_CBIND = "cbind_response_"


@dataclass(frozen=True)
class GlmmRecord:
    """What the fit did (see :mod:`jaxmlm._glmm_fit`): the starts (lme4's θ₀ and the GLM's β₀);
    ``criterion``: what was minimized ("nAGQ = 0 deviance over θ" or "Laplace / quadrature
    deviance over (θ, β[, log φ])"); Newton's iterations, evaluations, status and message,
    max |gradient| at the end; the final deviance (``objective``, −2 logLik); PIRLS's last
    iteration count and whether it converged; which θ diagonals were snapped to 0;
    the fixed effects that look separated; warnings; the wall time (compile included the
    first time a shape is seen); the arithmetic ("float64", "float32", or "float32+float64
    polish", whose iterations and evaluations count both stages)."""

    theta_start: np.ndarray
    beta_start: np.ndarray
    criterion: str
    objective: float
    iterations: int
    evaluations: int
    status: int
    message: str
    converged: bool
    max_abs_gradient: float
    pirls_iterations: int
    pirls_converged: bool
    snapped: tuple
    warnings: tuple
    seconds: float
    separation: tuple = ()
    dtype: str = "float64"


_ARITH = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Constant, ast.Load, ast.Add, ast.Sub, ast.Mult,
          ast.Div, ast.USub, ast.UAdd)


def _arithmetic(expr: str, data: pd.DataFrame):
    """``expr`` evaluated on ``data``'s numeric columns when it is arithmetic (+ − × ÷ of column
    names and numbers: ``size - incidence``), else None. numpy, not pandas' ``eval`` (~2 ms)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    names = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
    numbers = all(isinstance(n.value, (int, float)) for n in ast.walk(tree) if isinstance(n, ast.Constant))
    if not numbers or not all(isinstance(n, _ARITH) for n in ast.walk(tree)) or not all(
            nm in data.columns and pd.api.types.is_numeric_dtype(data[nm]) and not
            pd.api.types.is_bool_dtype(data[nm]) for nm in names):
        return None
    env = {nm: data[nm].to_numpy(dtype=float) for nm in names}
    return np.asarray(eval(compile(tree, "<cbind>", "eval"), {"__builtins__": {}}, env), dtype=float)  # noqa: S307


def _evaluate(expr: str, data: pd.DataFrame, formula: str) -> np.ndarray:
    name = expr.strip("`")
    fast = None if name in data.columns else _arithmetic(expr, data)
    if fast is not None:
        return np.broadcast_to(fast, (len(data),)).copy()
    if name in data.columns:
        col = data[name]
    else:
        try:
            col = data.eval(expr)
        except Exception as exc:  # noqa: BLE001 - pandas' parser and evaluation errors alike
            raise FormulaError(f"could not evaluate {expr!r} of the response in {formula!r} on the data "
                               f"({type(exc).__name__}: {exc})") from None
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise DataError(f"{expr!r} in cbind() must be numeric counts, got {col.dtype}")
    return np.asarray(col, dtype=float)


def _response(formula: str, data: pd.DataFrame, family: Family, weights):
    """(formula to build, data to build it from, weights): the response as R's glm reads it
    (module docstring). ``data`` is never modified: a changed response goes into a copy."""
    parsed = parse_formula(formula)
    lhs = parsed.lhs.strip()
    if lhs.startswith("cbind("):
        if not isinstance(family, type(make_family("binomial"))):
            raise FormulaError("cbind(successes, failures) is a binomial response; use family='binomial'")
        s_expr, f_expr = split_cbind(lhs)
        s, f = _evaluate(s_expr, data, formula), _evaluate(f_expr, data, formula)
        ok = np.isfinite(s) & np.isfinite(f)
        if np.any(ok & ((s < 0) | (f < 0))):
            raise DataError("cbind(successes, failures): counts must be non-negative")
        trials = s + f
        if weights is not None:
            raise DataError("weights= with a cbind(successes, failures) response: R treats them as frequency "
                            "weights of whole binomial rows, which jaxmlm does not support yet; repeat the rows, "
                            "or add the counts of identical rows")
        if np.any(ok & (trials == 0)):
            raise DataError(f"cbind(successes, failures): {int(np.sum(ok & (trials == 0)))} row(s) have zero trials "
                            "(successes + failures = 0); they carry no information: drop them")
        w = trials
        y = np.where(ok, s / np.where(trials > 0, trials, 1.0), np.nan)
        new = data.assign(**{_CBIND: y})
        rhs = formula.split("~", 1)[1]
        return f"{_CBIND} ~{rhs}", new, w
    if lhs not in data.columns and lhs.strip("`") not in data.columns:
        # an arithmetic response such as lme4's incidence/size (which the formula parser would
        # read as nesting): evaluated here, as R's model.frame does
        values = _arithmetic(lhs, data)
        if values is not None:
            rhs = formula.split("~", 1)[1]
            return f"{_CBIND} ~{rhs}", data.assign(**{_CBIND: values}), weights
    if lhs in data.columns or lhs.strip("`") in data.columns:
        name = lhs.strip("`")
        col = data[name]
        y = _response_values(col, name, family)
        if y is not col:
            data = data.assign(**{name: y})
    return formula, data, weights


def _response_values(col: pd.Series, name: str, family: Family):
    """A binomial response's factor, boolean or string values as 0/1 (R's glm: the first
    level is failure); other columns as they are."""
    if family.name != "binomial":
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise DataError(f"the {family.name} family needs numeric counts; response {name!r} is {col.dtype}")
        return col
    if pd.api.types.is_bool_dtype(col):
        return col.astype(float)
    if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or pd.api.types.is_string_dtype(col):
        present = col.dropna().unique()
        if len(present) == 1:
            raise DataError(f"the binomial response {name!r} has one value only ({present[0]!r}): nothing to model")
        if len(present) > 2:
            shown = ", ".join(map(str, sorted(present, key=str)[:5])) + (" ..." if len(present) > 5 else "")
            raise DataError(f"a binomial response must have two levels; {name!r} has {len(present)} ({shown}). "
                            "Make it 0/1 (e.g. with a comparison) or use cbind(successes, failures)")
        # R's glm: y != levels(y)[1] — a categorical's first category, else the first sorted value
        first = col.cat.categories[0] if isinstance(col.dtype, pd.CategoricalDtype) else sorted(present, key=str)[0]
        return pd.Series(np.where(col.isna(), np.nan, (col != first).astype(float)), index=col.index)
    return col


def _check_response(design: Design, family: Family) -> None:
    y = np.asarray(design.y, float)
    w = np.ones_like(y) if design.weights is None else np.asarray(design.weights, float)
    if family.name == "binomial":
        if np.any((y < 0) | (y > 1)):
            bad = y[(y < 0) | (y > 1)][:3]
            raise DataError(f"a binomial response must lie in [0, 1] (a proportion, 0/1, or cbind(successes, "
                            f"failures)); found {', '.join(f'{v:g}' for v in bad)}")
        k = w * y
        if np.any(np.abs(k - np.round(k)) > 1e-7):
            warn_user("non-integer #successes in a binomial glmer! (weights × response should be whole "
                      "numbers of successes: give the number of trials as weights)", DataWarning)
    else:
        if np.any(y < 0):
            raise DataError(f"the {family.name} family needs non-negative counts; the response has "
                            f"{int(np.sum(y < 0))} negative value(s)")
        if np.any(np.abs(y - np.round(y)) > 1e-9):
            raise DataError(f"the {family.name} family needs whole-number counts; the response has "
                            f"{int(np.sum(np.abs(y - np.round(y)) > 1e-9))} non-integer value(s) "
                            f"(e.g. {y[np.abs(y - np.round(y)) > 1e-9][0]:g})")
    if np.any(w < 0):
        raise DataError("weights must be non-negative")


def glmer(formula: str, data: pd.DataFrame, family, nAGQ: int = 1, *, weights=None, offset=None,
          subset=None, link: str | None = None, max_iter: int = 200, data_name: str | None = None,
          dtype: str = "float64", polish: bool = True) -> "GeneralizedLinearMixedModel":
    """Fit a generalized linear mixed model by maximum likelihood, as lme4's ``glmer``.

    ``family``: "binomial", "poisson", "negative_binomial" (θ estimated: lme4's ``glmer.nb``)
    or a :mod:`jaxmlm.families` object such as ``families.Binomial(link="probit")``; ``link``
    picks another link for a family given by name. ``nAGQ``: 1 the Laplace approximation
    (default), k > 1 adaptive Gauss–Hermite quadrature with k nodes (one scalar random-effects
    term only, as lme4), 0 the fast approximation with β estimated inside PIRLS.
    ``weights`` (prior weights; for a binomial proportion the numbers of trials), ``offset``
    (a known part of the linear predictor, as does ``offset(...)`` in the formula) and
    ``subset``: as :func:`~jaxmlm.lmer`'s. ``data`` is not modified.

    The deviance is optimized with exact derivatives (autodiff through PIRLS,
    :mod:`jaxmlm._pirls`), and vcov(β̂) comes from its exact Hessian in (θ, β), as lme4's
    default ``use.hessian = TRUE`` with finite differences.

    ``dtype="float32"`` runs the fit on the rows rounded to float32, the arithmetic
    accelerators are fast at; with ``polish=True`` (default) it then continues in float64 from
    the float32 optimum, so the estimates are those of a float64 fit; ``polish=False`` keeps
    float32's (measured accuracy: benchmarks/results/float32_accuracy.md). Inference after the
    fit (``confint``, ``anova``, refits) is in float64.
    """
    if isinstance(family, str) and family.lower() == "gaussian":
        raise DataError("a gaussian GLMM with the identity link is a linear mixed model: use jaxmlm.lmer "
                        "(lme4's glmer hands it to lmer too)")
    fam = make_family(family, link)
    if dtype not in ("float64", "float32"):
        raise DataError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    if not isinstance(polish, (bool, np.bool_)):
        raise DataError(f"polish must be True or False, got {polish!r}")
    if not isinstance(nAGQ, (int, np.integer)) or isinstance(nAGQ, bool) or nAGQ < 0:
        raise DataError(f"nAGQ must be a whole number ≥ 0, got {nAGQ!r}")
    nagq = int(nAGQ)
    if fam.estimates_phi and nagq != 1:
        raise DataError("the negative binomial's θ is estimated with the Laplace approximation (nAGQ=1), as "
                        "lme4's glmer.nb does; fix θ (families.NegativeBinomial(theta=...)) for other nAGQ")
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"glmer needs a pandas DataFrame, got {type(data).__name__}")
    if data_name is None:
        data_name = _callers_name(data)
    if subset is not None:
        data, weights, offset = _subset(data, subset, weights, offset)
    build_formula, frame, w = _response(formula, data, fam, weights)
    design = build_design(dataclasses.replace(parse_formula(build_formula), glmm=True), frame, weights=w, offset=offset)
    _check_response(design, fam)
    if nagq > 1:
        if len(design.terms) != 1 or design.terms[0].k != 1:
            raise DataError("nAGQ > 1 is only available for models with a single, scalar random-effects term "
                            "(lme4's rule); use nAGQ=1 (Laplace) for this model")
    if nagq > 100:
        raise DataError(f"nAGQ = {nagq} is too many nodes; lme4 allows at most 100")
    schema = make_schema(design)
    rows = row_data(design, schema, host=True)  # numpy leaves: the compiled programs take them as they are
    index = tuple(schema.index)
    return _fit(formula, design, schema.layout, rows, index, fam, nagq, max_iter, data_name, dtype, bool(polish))


def glmer_nb(formula: str, data: pd.DataFrame, **kwargs) -> "GeneralizedLinearMixedModel":
    """lme4's ``glmer.nb``: a negative binomial GLMM (log link) with its θ estimated."""
    kwargs.setdefault("data_name", _callers_name(data) if isinstance(data, pd.DataFrame) else None)
    return glmer(formula, data, family=NegativeBinomial(), **kwargs)


def _separation(design: Design, beta: np.ndarray, se: np.ndarray, mu: np.ndarray, family: Family) -> tuple:
    """Fixed effects that look separated: a binomial fit with fitted probabilities numerically 0
    or 1 and a coefficient whose estimate and standard error have both run off (|β| > 10 on
    the link scale with SE > 10·|β|·0.1)."""
    if family.name != "binomial":
        return ()
    edge = (mu < 1e-8) | (mu > 1 - 1e-8)
    if not edge.any():
        return ()
    names = list(design.fixef_names)
    out = [n for n, b, s in zip(names, beta, se) if abs(b) > 8 and (not np.isfinite(s) or s > abs(b) / 2)]
    if not out:
        j = int(np.argmax(np.abs(beta)))
        out = [names[j]]
    return tuple(out)


def _fit(formula, design: Design, layout: Layout, rows: RowData, index, fam: Family, nagq: int, max_iter: int,
         data_name, dtype: str = "float64", polish: bool = True) -> "GeneralizedLinearMixedModel":
    from ._glmm_fit import fit_glmm

    t0 = time.perf_counter()
    phi0 = None
    if fam.estimates_phi:
        from ._glmm_fit import nb_start

        phi0 = float(nb_start(rows, index, layout))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        f = fit_glmm(rows, index, layout, fam, nagq, max_iter, phi0, dtype, polish)
    seconds = time.perf_counter() - t0
    last = f.stage2 if f.stage2 is not None else f.stage1
    status = int(last.status)
    max_grad = max_abs_gradient(last)
    if not np.isfinite(f.deviance):
        from ._errors import ConvergenceError

        raise ConvergenceError("the deviance became non-finite during the fit; check the response and the "
                               "predictors' scales")
    warns = list(status_warnings(status, int(last.it), max_grad))
    if not bool(f.modes.converged):
        msg = "PIRLS did not converge at the optimum (the conditional modes are not exact)"
        warns.append(msg)
        warn_user(msg, ConvergenceWarning)
    beta = f.beta
    se = np.sqrt(np.maximum(np.diag(f.vcov), 0.0))
    eta, mu = f.eta, f.mu
    sep = _separation(design, beta, se, mu, fam)
    if sep:
        msg = (f"complete or quasi-complete separation: fitted probabilities numerically 0 or 1 occurred, and "
               f"the estimate of {', '.join(sep)} runs off to infinity (its value and SE are not meaningful); "
               "drop or merge the predictor's levels that have only one outcome, or use a prior (blme's bglmer)")
        warns.append(msg)
        warn_user(msg, ConvergenceWarning)
    b, v = _blocks(f, layout, design)
    st32 = f.float32
    polished = st32 is not None and polish
    record = GlmmRecord(
        theta_start=_readonly(f.theta_start), beta_start=_readonly(f.beta_start),
        criterion=("nAGQ = 0 deviance over θ (β from PIRLS)" if nagq == 0 else
                   ("Laplace" if nagq == 1 else f"adaptive Gauss-Hermite ({nagq} nodes)") +
                   " deviance over (θ, β" + (", log θ_nb)" if fam.estimates_phi else ")")),
        objective=f.deviance, iterations=int(last.it) + int(st32.it if polished else 0),
        evaluations=int(last.nfev) + int(st32.nfev if polished else 0),
        status=status, message=STATUS[status], converged=status in (0, 1) and not sep,
        max_abs_gradient=max_grad, pirls_iterations=int(f.modes.iterations), pirls_converged=bool(f.modes.converged),
        snapped=f.snapped, warnings=tuple(warns), seconds=seconds, separation=sep,
        dtype="float32+float64 polish" if polished else dtype,
    )
    return GeneralizedLinearMixedModel(
        formula=formula, family=fam, nAGQ=nagq, design=design, layout=layout, theta=_readonly(f.theta),
        record=record, _beta=_readonly(beta), _vcov=_readonly(f.vcov), objective=f.deviance, _b=b, _condvar=v,
        _eta=_readonly(eta), _mu=_readonly(mu), _rowdata=rows, _index=index, _modes=f.modes, nb_theta=f.phi, data_name=data_name,
        _hessian=None if f.hessian is None else _readonly(f.hessian))


def _blocks(f, layout: Layout, design: Design):
    b_list = [f.b1[: design.blocks[0].nlev]]
    v_list = [f.var1[: design.blocks[0].nlev]]
    for (off, lev, k), blk, v in zip(layout.rest, design.blocks[1:], f.var_rest):
        b_list.append(f.b_rest[off : off + lev * k].reshape(lev, k)[: blk.nlev])
        v_list.append(np.asarray(v)[: blk.nlev])
    return tuple(_readonly(b) for b in b_list), tuple(_readonly(v) for v in v_list)


@dataclass(frozen=True, eq=False)
class GeneralizedLinearMixedModel(MixedModelBase):
    """A fitted GLMM (lme4's ``glmerMod``). Create it with :func:`glmer`.

    lme4's names: ``fixef``, ``vcov``, ``se``, ``theta``, ``varcorr``, ``ranef``, ``condsd``,
    ``coef``, ``fitted`` (response scale), ``resid(type)``, ``predict(newdata, type)``,
    ``loglik``, ``aic``, ``bic``, ``deviance``, ``df_resid``, ``nobs``, ``ngroups``,
    ``is_singular``, ``record`` (the fit's stages), ``summary()``; ``nb_theta`` is the negative
    binomial's θ (lme4's ``getME(m, "glmer.nb.theta")``)."""

    formula: str
    family: Family
    nAGQ: int
    design: Design = field(repr=False)
    layout: Layout = field(repr=False)
    theta: np.ndarray
    record: GlmmRecord = field(repr=False)
    _beta: np.ndarray = field(repr=False)
    _vcov: np.ndarray = field(repr=False)
    objective: float
    _b: tuple = field(repr=False)
    _condvar: tuple = field(repr=False)
    _eta: np.ndarray = field(repr=False)
    _mu: np.ndarray = field(repr=False)
    _rowdata: RowData = field(repr=False)
    _index: tuple = field(repr=False)
    _modes: object = field(repr=False)
    nb_theta: float = float("nan")
    data_name: str | None = None
    _hessian: np.ndarray | None = field(default=None, repr=False)

    sigma = 1.0  # no scale parameter: lme4's sigma(m) for these families
    REML = False  # GLMMs are fitted by maximum likelihood

    def _residual_rows(self):
        return []

    @property
    def npar(self) -> int:
        """Parameters counted by logLik's df: p + length(θ) (+ 1 for the negative binomial's θ)."""
        return self.design.p + len(self.theta) + int(self.family.estimates_phi)

    @property
    def df_resid(self) -> int:
        return int(self.nobs - self.npar)

    @property
    def theta_names(self) -> list[str]:
        """lme4's names of θ's entries (``herd.(Intercept)``, ``subj.cond.(Intercept)`` …)."""
        return [nm for term in self.design.terms for nm in term.cov.param_names(term.columns, term.group)]

    @property
    def _phi(self):
        return self.nb_theta if self.family.has_phi else 0.0

    @property
    def _y(self) -> np.ndarray:
        return np.asarray(self._rowdata.y)

    @property
    def _w(self) -> np.ndarray:
        return np.asarray(self._rowdata.weights)

    @property
    def deviance(self) -> float:
        """lme4's ``deviance()`` of a GLMM: the sum of squared deviance residuals at the conditional
        modes (the conditional deviance). ``-2 * loglik`` is the criterion that was minimized."""
        return float(np.sum(self.resid("deviance") ** 2))

    @property
    def fitted(self) -> np.ndarray:
        """Fitted means μ̂ = g⁻¹(Xβ̂ + Zb̂ + offset) (response scale; a proportion for binomial data)."""
        return self._mu

    @property
    def linear_predictor(self) -> np.ndarray:
        """η̂ = Xβ̂ + Zb̂ + offset."""
        return self._eta

    def resid(self, type: str = "deviance") -> np.ndarray:
        """Residuals as lme4's ``residuals.glmResp``: "deviance" (default), "pearson", "response"
        or "working"."""
        y, mu, w = self._y, self.fitted, self._w
        fam, phi = self.family, self._phi
        if type == "deviance":
            d = np.asarray(fam.dev_resids(jnp.asarray(y), jnp.asarray(mu), jnp.asarray(w), phi))
            return np.sign(y - mu) * np.sqrt(np.maximum(d, 0.0))
        if type == "pearson":
            return (y - mu) * np.sqrt(w) / np.sqrt(np.asarray(fam.variance(jnp.asarray(mu), phi)))
        if type == "response":
            return y - mu
        if type == "working":
            return (y - mu) / np.asarray(fam.mu_eta(jnp.asarray(self._eta)))
        raise DataError(f"type must be 'deviance', 'pearson', 'response' or 'working', got {type!r}")

    @property
    def pearson_resid(self) -> np.ndarray:
        return self.resid("pearson")

    def predict(self, newdata: pd.DataFrame | None = None, type: str = "link", re_form=None,
                allow_new_levels: bool = False, offset=None) -> np.ndarray:
        """Predictions as lme4's ``predict.merMod``: on the link scale (``type="link"``, default) or
        the response scale (``type="response"``); ``re_form``, ``allow_new_levels`` and
        ``offset`` as :meth:`LinearMixedModel.predict`."""
        from ._predict import predict

        if type not in ("link", "response"):
            raise DataError(f"type must be 'link' or 'response', got {type!r}")
        eta = predict(_LinkScale(self), newdata, re_form=re_form, allow_new_levels=allow_new_levels, offset=offset)
        return eta if type == "link" else np.asarray(self.family.linkinv(jnp.asarray(eta)))

    def coef_table(self) -> pd.DataFrame:
        """Wald z tests of the fixed effects (lme4's summary table): Estimate, Std. Error, z value, Pr(>|z|)."""
        from scipy.stats import norm

        z = self.fixef / self.se
        return pd.DataFrame({"Estimate": self.fixef, "Std. Error": self.se, "z value": z,
                             "Pr(>|z|)": 2 * norm.sf(np.abs(z))})

    def confint(self, level: float = 0.95, method: str = "profile", parm=None, nsim: int = 500,
                seed=None) -> pd.DataFrame:
        """Confidence intervals as lme4's ``confint(m, method = ...)`` of a glmer fit.

        ``"profile"`` (lme4's default): likelihood-profile intervals of the random-effects SDs
        and correlations and the fixed effects, from the deviance the fit minimized
        (:mod:`jaxmlm._glmm_confint`); ``"boot"``: percentile intervals of the same parameters
        over ``nsim`` parametric-bootstrap refits; ``parm`` selects parameters by name or
        position, or ``"theta_"`` / ``"beta_"``. ``"Wald"``: β̂ ± z SE for the fixed effects."""
        from scipy.stats import norm

        if not (isinstance(level, (float, int)) and 0.0 < float(level) < 1.0):
            raise DataError(f"level must be a number between 0 and 1 (e.g. 0.95), got {level!r}")
        key = str(method).lower()
        if key == "profile":
            from ._glmm_confint import glmm_profile_confint

            return glmm_profile_confint(self, float(level), parm)
        if key in ("boot", "bootstrap"):
            from ._glmm_confint import glmm_boot_confint

            return glmm_boot_confint(self, float(level), parm, nsim, seed)
        if key != "wald":
            raise DataError(f"method must be 'profile', 'boot' or 'Wald' for a glmer fit, got {method!r}")
        q = norm.ppf(0.5 + level / 2)
        lo, hi = f"{100 * (1 - level) / 2:.1f} %", f"{100 * (1 + level) / 2:.1f} %"
        return pd.DataFrame({lo: self.fixef - q * self.se, hi: self.fixef + q * self.se})

    def profile(self, parm=None, alphamax: float = 0.01, maxpts: int = 100, delta: float | None = None,
                delta_cutoff: float = 1 / 8) -> pd.DataFrame:
        """lme4's ``profile(m)``: ζ on a grid of values of each parameter (columns ``parameter``,
        ``value``, ``zeta``), the same deviance and minimization as :meth:`confint`'s profile;
        ``jaxmlm.plot.profile_zeta`` draws it."""
        from ._glmm_confint import glmm_profile

        return glmm_profile(self, parm, alphamax, maxpts, delta, delta_cutoff)

    def simulate(self, nsim: int = 1, seed=None, use_u: bool = False) -> np.ndarray:
        """Responses drawn from the fitted model, (nsim, n), as lme4's ``simulate``: new random
        effects b = Λ̂u, u ~ N(0, I) (``use_u=True``: the fitted b̂), then y ~ family(g⁻¹(η)).
        Binomial draws are proportions of the rows' trials (the fit's y scale)."""
        return self._simulate(nsim, seed, use_u, self._beta, self.theta)

    def _simulate(self, nsim, seed, use_u: bool, beta, theta) -> np.ndarray:
        from ._pirls import linear_predictor

        if not isinstance(nsim, (int, np.integer)) or isinstance(nsim, bool) or nsim < 1:
            raise DataError(f"nsim must be a whole number ≥ 1, got {nsim!r}")
        rng = np.random.default_rng(seed)
        r, lay = self._rowdata, self.layout
        theta, beta = jnp.asarray(theta, float), jnp.asarray(beta, float)
        out = np.empty((int(nsim), self.nobs))
        for i in range(int(nsim)):
            if use_u:
                eta = self._eta
            else:
                u1 = jnp.asarray(rng.standard_normal((lay.l1, lay.k1)))
                u2 = jnp.asarray(rng.standard_normal(lay.qr))
                eta = np.asarray(linear_predictor(theta, beta, u1, u2, r, lay))
            mu = np.asarray(self.family.linkinv(jnp.asarray(eta)))
            out[i] = self.family.simulate(rng, mu, self._w, self._phi)
        return out

    def refit_many(self, Y, max_iter: int = 100, se: bool = False) -> pd.DataFrame:
        """Refit the model to every response in Y ((nsim, n): e.g. :meth:`simulate`'s) by a
        compiled, vmapped program (:func:`~jaxmlm._glmm_fit.refit_batch`) over chunks of
        replicates (as :meth:`LinearMixedModel.refit_many`'s: on a CPU small enough that no
        batched LAPACK call is split over XLA's threads, where it can deadlock): the same
        stages as :func:`glmer`, per replicate. Returns one row per replicate: the fixed effects, θ
        (diagonals made positive), ``nb_theta`` (a negative binomial whose θ is estimated: each
        replicate estimates it, from MASS's start as :func:`glmer_nb`), the log-likelihood,
        ``converged`` and ``status``. A replicate
        that fails (separation, a non-finite deviance) is flagged (``converged`` False) and the
        others are unaffected. ``se=True`` adds each replicate's SEs (columns ``se:<name>``, from
        its deviance's exact Hessian, as :attr:`se`)."""
        from ._glmm_fit import refit_batch
        from ._optimize import canonical_theta
        from ._refit import _chunk_size, _padded, _run_chunks

        Y = np.asarray(Y, dtype=float)
        if Y.ndim == 1:
            Y = Y[None, :]
        if Y.ndim != 2 or Y.shape[1] != self.nobs:
            raise DataError(f"Y must be (replicates, {self.nobs}), got {Y.shape}")
        if not np.all(np.isfinite(Y)):
            raise DataError("Y has missing or infinite values")
        # the optimizer's Hessian (θ, β and a negative binomial's log θ) is the largest eigh
        c = _chunk_size(len(Y), self.nobs, None, self.layout, hessian=self.layout.ntheta + self.layout.p + 1)

        def launch(lo):
            return refit_batch(jnp.asarray(_padded(Y[lo : lo + c], c)), self._rowdata, self._index, self.layout,
                               self.family, self.nAGQ, max_iter)

        res = _run_chunks(len(Y), c, launch)
        theta = np.array([canonical_theta(np.asarray(t), self.layout) for t in res.theta])
        df = pd.DataFrame(np.asarray(res.beta), columns=list(self.design.fixef_names))
        for j, nm in enumerate(self.theta_names):
            df[nm] = theta[:, j]
        if self.family.estimates_phi:
            df["nb_theta"] = np.asarray(res.phi)
        df["loglik"] = -0.5 * np.asarray(res.deviance)
        status = np.asarray(res.status)
        beta = np.asarray(res.beta)
        # separation, as glmer's check: fitted probabilities 0 or 1 and a coefficient running off
        separated = np.asarray(res.edge) & np.any(np.abs(beta) > 8, axis=1)
        df["converged"] = (np.isin(status, (0, 1)) & np.asarray(res.pirls_converged) & np.isfinite(df["loglik"])
                           & ~separated)
        df["status"] = status
        if se:
            for j, nm in enumerate(self.design.fixef_names):
                df[f"se:{nm}"] = np.asarray(res.se)[:, j]
        return df

    def power(self, term: str, effect: float | None = None, nsim: int = 200, alpha: float = 0.05, seed=None, *,
              fixef=None, level: float = 0.95, interval: str = "clopper-pearson"):
        """Power to detect fixed effect ``term`` by simulation, as simr's ``powerSim`` for a GLMM:
        ``nsim`` responses from the model with ``effect`` as ``term``'s coefficient (and any
        ``fixef`` replaced), refitted at once (:meth:`refit_many`), each tested by Wald z =
        β̂/SE(β̂) (simr's default for GLMMs), SE from each refit's exact Hessian. Power = share of
        converged replicates with p < alpha, with a Clopper–Pearson (or ``interval="wilson"``)
        interval; a :class:`~jaxmlm._refit.PowerResult`."""
        from scipy import stats as sps

        from ._refit import PowerResult, _check_level, _clopper_pearson, _wilson

        names = list(self.design.fixef_names)
        if term not in names:
            raise DataError(f"term {term!r} is not a fixed effect of the model; its fixed effects are {names}")
        if self.nAGQ == 0:
            raise DataError("power for an nAGQ = 0 fit is not available (its refits have no Hessian-based SEs); "
                            "refit with nAGQ=1")
        if not isinstance(alpha, (int, float, np.floating)) or not 0 < alpha < 1:
            raise DataError(f"alpha must be between 0 and 1, got {alpha!r}")
        if interval not in ("clopper-pearson", "wilson"):
            raise DataError(f"interval must be 'clopper-pearson' or 'wilson', got {interval!r}")
        level = _check_level(level)
        beta = self._beta.copy()
        for nm, v in {**(fixef or {}), **({term: effect} if effect is not None else {})}.items():
            if nm not in names:
                raise DataError(f"fixef names {nm!r}, which is not a fixed effect of the model ({names})")
            beta[names.index(nm)] = float(v)
        t0 = time.perf_counter()
        fits = self.refit_many(self._simulate(nsim, seed, False, beta, self.theta), se=True)
        j = names.index(term)
        ok = fits["converged"].to_numpy()
        est = np.where(ok, fits[term].to_numpy(float), np.nan)
        p = np.where(ok, 2 * sps.norm.sf(np.abs(est / fits[f"se:{term}"].to_numpy(float))), np.nan)
        trials = int(ok.sum())
        if trials == 0:
            raise JaxmlmError("every refit failed (separation in every simulated data set?); check the effect sizes")
        x = int(np.sum(p[ok] < alpha))
        lo, hi = (_clopper_pearson if interval == "clopper-pearson" else _wilson)(x, trials, level)
        return PowerResult(term=term, effect=float(beta[j]), test="z", alpha=float(alpha), level=level,
                           interval=interval, successes=x, trials=trials, nsim=int(nsim), power=x / trials,
                           lower=lo, upper=hi, pvalues=_readonly(p), estimates=_readonly(est),
                           seconds=time.perf_counter() - t0)

    def bootstrap(self, nsim: int, seed=None, level: float = 0.95, max_iter: int = 100) -> pd.DataFrame:
        """Parametric bootstrap (lme4's ``bootMer`` with ``confint(method = "boot")``'s percentile
        intervals): ``nsim`` responses from :meth:`simulate`, refitted at once by
        :meth:`refit_many`. Returns each parameter's estimate, bootstrap SE and percentile interval
        over the replicates that converged (their count in ``n_ok``)."""
        fits = self.refit_many(self.simulate(nsim, seed), max_iter=max_iter)
        ok = fits[fits["converged"]]
        cols = [c for c in fits.columns if c not in ("loglik", "converged", "status")]
        est = list(self._beta) + list(self.theta) + ([self.nb_theta] if self.family.estimates_phi else [])
        lo, hi = (1 - level) / 2, (1 + level) / 2
        return pd.DataFrame({"estimate": est, "boot_se": ok[cols].std(ddof=1).to_numpy(),
                             f"{100 * lo:.1f} %": ok[cols].quantile(lo).to_numpy(),
                             f"{100 * hi:.1f} %": ok[cols].quantile(hi).to_numpy(),
                             "n_ok": len(ok)}, index=cols)

    def equations(self, estimates: bool = False, digits: int = 2):
        """The model as equations (:mod:`jaxmlm._equations`): the link of the conditional mean at
        level 1 (``logit(π_ij) = β_0j + …``), the level-2 (level-3, …) equations, the composite
        form, and the response's conditional distribution (``use_ij ~ Bernoulli(π_ij)``) with the
        random effects'; ``estimates=True`` puts the fitted numbers, rounded to ``digits``."""
        from ._equations import equations

        return equations(self, estimates=estimates, digits=digits)

    def summary(self) -> str:
        """lme4's ``summary()`` of a glmerMod, line for line."""
        from ._present import glmer_summary_text

        return glmer_summary_text(self)

    def __str__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p, cycle):
        p.text(self.summary())


class _LinkScale:
    """The model as ``_predict`` sees a linear model: ``fitted`` on the link scale."""

    def __init__(self, model: GeneralizedLinearMixedModel):
        self._m = model

    def __getattr__(self, name):
        return getattr(self._m, name)

    @property
    def fitted(self):
        return self._m._eta

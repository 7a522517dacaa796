"""Models with residual structures: ``lmer(..., correlation=, variance=)`` and ``gls``.

The fit is :mod:`jaxmlm._residual_fit` (the engine's criterion of the whitened rows); the
results extend :class:`~jaxmlm.LinearMixedModel` with the structure's parameters as nlme
reports them (``coef(m$modelStruct$corStruct, unconstrained = FALSE)``), Pearson and
normalized residuals, each group's residual correlation matrix, and nlme's summary block.
Analyses whose numbers would silently ignore the structure (batched refits, profiles,
influence, ...) are refused with an error naming the method, rather than answered wrongly.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from functools import cached_property

import jax
import numpy as np
import pandas as pd

from ._errors import ConvergenceError, DataError, FormulaError, GroupingError, InferenceError
from ._formula import parse_formula
from ._frontend import build_design
from ._implicit import row_data
from ._optimize import STATUS, lme4_start, max_abs_gradient, status_warnings
from ._results import FitRecord, FixedEffectsBase, LinearMixedModel, _callers_name, _condvar_blocks, _readonly, _subset
from ._stats import make_schema
from ._refit import RefitResult
from .residuals import CorrelationStructure, VarianceFunction, correlation_matrix, group_codes

__all__ = ["StructuredMixedModel", "GlsModel", "fit_structured", "gls"]


@dataclass(frozen=True)
class ResidualFit:
    """The residual structure of a fitted model: the structures, their binding to the rows
    (group codes, order, times), the arrangement, names, and the start and final values
    (unconstrained ``u_start``/``u``; ``correlation``/``variance`` as nlme reports them)."""

    correlation: CorrelationStructure | None
    variance: VarianceFunction | None
    bound_cor: object = field(repr=False)
    bound_var: object = field(repr=False)
    spec: object = field(repr=False)
    arr: object = field(repr=False)
    u_start: np.ndarray
    u: np.ndarray
    cor_names: tuple[str, ...]
    var_names: tuple[str, ...]
    cor_values: np.ndarray
    var_values: np.ndarray
    var_labels: tuple[str, ...] = ()
    rows: object = field(default=None, repr=False)
    index: tuple = field(default=(), repr=False)


def _as_structure(obj, base, what: str):
    if obj is None or isinstance(obj, base):
        return obj
    raise DataError(f"{what} must be a jaxmlm structure such as jaxmlm.{'corAR1' if what == 'correlation' else 'varIdent'}"
                    f"(form='...'), got {type(obj).__name__}")


def _prepare(call: dict):
    """The structures checked and the rows to fit, for ``lmer`` with a structure and ``gls``:
    (correlation, variance, data_name, data, weights, offset), ``subset=`` applied. ``call`` (the
    fit's arguments, kept for ``update``) gets the structures and the data's name; its data stays
    the whole frame, which ``subset`` is applied to again on refits."""
    call["correlation"] = _as_structure(call["correlation"], CorrelationStructure, "correlation")
    call["variance"] = _as_structure(call["variance"], VarianceFunction, "variance")
    data, weights, offset = call["data"], call["weights"], call.get("offset")
    if call["data_name"] is None:
        call["data_name"] = _callers_name(data)
    if call["subset"] is not None:
        data, weights, offset = _subset(data, call["subset"], weights, offset)
    return call["correlation"], call["variance"], call["data_name"], data, weights, offset


def _frame_of(design, data: pd.DataFrame) -> pd.DataFrame:
    return data if design.positions is None else data.iloc[design.positions]


def _bind(design, data, correlation, variance, lmm: bool):
    """Bind the structures to the rows the model uses; check the grouping against the random effects."""
    from ._residual_fit import Spec, arrange

    frame = _frame_of(design, data)
    n = design.n
    bc = bv = None
    if correlation is not None:
        same = [b for b in design.blocks if lmm and b.factors == correlation.groups] if correlation.groups else []
        if same:  # the grouping of a random-effects term: its codes are already there
            codes = same[0].codes.astype(np.int64, copy=False)  # the block's own array: constant() below skips it
        elif correlation.groups:
            codes = group_codes(frame, correlation.groups, type(correlation).__name__)
        elif lmm:
            codes = np.asarray(design.blocks[0].codes, np.int64)
        else:
            codes = np.zeros(n, np.int64)
        bc = correlation.bind(frame, codes)
    if variance is not None:
        bv = variance.bind(frame)
        if design.weights is not None and np.any(design.weights <= 0):
            raise DataError("weights of 0 cannot be combined with a variance function or correlation; drop those rows")
    if (bc is not None) and design.weights is not None and np.any(design.weights <= 0):
        raise DataError("weights of 0 cannot be combined with a residual correlation; drop those rows")
    X = np.asarray(design.X, float)
    yc = np.asarray(design.y, float) - (0.0 if design.offset is None else design.offset)
    beta0 = np.linalg.lstsq(X, yc, rcond=None)[0] if X.shape[1] else np.zeros(0)
    m, arr = arrange(bc, bv, n, beta0)
    vary: list[int] = []
    if lmm and bc is not None:
        g = bc.codes
        label = "/".join(correlation.groups) or design.blocks[0].group

        order = bc.order  # the rows by group (then time)
        same_group = np.diff(g[order]) == 0

        def constant(codes):  # one level of the factor within every group
            if codes is g:  # the correlation's groups are this factor's levels
                return True
            return bool(np.all(np.diff(np.asarray(codes)[order])[same_group] == 0))

        if not constant(design.blocks[0].codes):
            raise GroupingError(
                f"the correlation's groups ({label!r}) must each lie within one level of "
                f"{design.blocks[0].group!r}, the random-effects factor with the most levels; group the "
                f"correlation by {design.blocks[0].group!r} or by a factor nested in it")
        col = 0
        for blk in design.blocks[1:]:
            k = len(blk.columns)
            if not constant(blk.codes):
                vary += list(range(col, col + k))
            col += k
    ncor = len(correlation.param_names()) if correlation is not None else 0
    nvar = variance.nparams(bv) if variance is not None else 0
    spec = Spec(correlation, variance, m, ncor, nvar, tuple(vary), len(bv.labels) if bv is not None else 0)
    u0 = np.concatenate([correlation.start(bc) if correlation is not None else np.zeros(0),
                         variance.start(bv) if variance is not None else np.zeros(0)])
    return bc, bv, spec, arr, u0


def _residual_fit(correlation, variance, bc, bv, spec, arr, u0, u, rows=None, index=(), nat=None) -> ResidualFit:
    from ._residual_fit import split

    if nat is None:
        nat = jax.device_get(split(np.asarray(u), spec))
    nat_c, nat_v = (np.asarray(a, float) for a in nat)
    cor_names = correlation.param_names() if correlation is not None else ()
    var_names = variance.param_names(bv) if variance is not None else ()
    labels = bv.labels if bv is not None else ()
    return ResidualFit(correlation, variance, bc, bv, spec, arr, _readonly(np.asarray(u0, float)),
                       _readonly(np.asarray(u, float)), cor_names, var_names, _readonly(nat_c), _readonly(nat_v),
                       labels, rows, index)


def _require_finite(*values) -> None:
    """A non-finite criterion or estimate is an error (before any convergence warning about it)."""
    if not all(np.isfinite(np.asarray(v, float)).all() for v in values):
        raise ConvergenceError("the criterion or the estimates are not finite: check the structure's covariates "
                               "(e.g. two rows of a group at the same place for corExp without a nugget) and the data")


# ---- shared presentation ----------------------------------------------------------------------------

def structure_lines(res: ResidualFit) -> list[str]:
    """nlme's print of the correlation structure and the variance function."""
    from ._rnum import r_format

    out = []
    if res.correlation is not None:
        c = res.correlation
        out += [f"Correlation Structure: {c.title}", f" Formula: {c.form.replace(' ', '')}",
                " Parameter estimate(s):"]
        out += _named_vector(res.cor_names, res.cor_values, r_format)
    if res.variance is not None:
        v = res.variance
        out += ["Variance function:", f" Structure: {v.title}", f" Formula: {v.form.replace(' ', '')}"]
        if v.kind == "ident":
            out.append(" Parameter estimates:")
            out += _named_vector(res.var_labels, np.r_[1.0, res.var_values], r_format)
        elif res.var_names:
            out.append(" Parameter estimates:")
            out += _named_vector(res.var_names, res.var_values, r_format)
    return out


def _named_vector(names, values, r_format) -> list[str]:
    vals = r_format(np.asarray(values, float), 7)
    w = max(len(x) for x in list(names) + vals)
    return [" ".join(str(x).rjust(w) for x in names), " ".join(x.rjust(w) for x in vals)]


def _normalized(res: ResidualFit, pearson: np.ndarray) -> np.ndarray:
    """L_g⁻¹ applied to each group's Pearson residuals (nlme's ``type = "normalized"``)."""
    from ._residual_fit import _whiten, split

    spec, arr = res.spec, res.arr
    nat_c, _ = split(np.asarray(res.u), spec)
    D = np.r_[pearson, 0.0][np.asarray(arr.idx)][..., None]
    out, _ = _whiten(spec, nat_c, arr, D)
    out = np.asarray(out)[..., 0]
    z = np.empty(len(pearson))
    real = np.asarray(arr.mask) > 0
    z[np.asarray(arr.idx)[real]] = out[real]
    return z


def _sd_ratio(res: ResidualFit, n: int, weights) -> np.ndarray:
    from .residuals import log_sd_ratio

    d = np.ones(n)
    if res.variance is not None:
        d = np.exp(np.asarray(log_sd_ratio(res.variance.kind, np.asarray(res.var_values), res.arr.x, res.arr.strata)))
    if weights is not None:
        d = d / np.sqrt(weights)
    return d


class _StructureResults:
    """What every model with a residual structure reports (mixed into the model classes)."""

    residual: ResidualFit

    @property
    def y_(self):
        return self.design.y

    @property
    def _weights_(self):
        return self.design.weights

    @property
    def _rows_index_(self):
        return self.design.rows

    @property
    def _frame_(self):
        return _frame_of(self.design, self._call["data"])

    def update(self, formula: str | None = None, *, REML: bool | None = None):
        """The model refitted with another formula and/or REML setting: the same structures, data,
        weights and subset (``jaxmlm.anova`` refits REML fits by ML with it)."""
        call = dict(self._call)
        if formula is not None:
            call["formula"] = formula
        if REML is not None:
            call["REML"] = REML
        return self._refit(**call)

    @property
    def correlation_params(self) -> dict[str, float]:
        """The correlation structure's parameters, as nlme's ``coef(..., unconstrained = FALSE)``."""
        r = self.residual
        return {k: float(v) for k, v in zip(r.cor_names, r.cor_values)}

    @property
    def variance_params(self) -> dict[str, float]:
        """The variance function's parameters as nlme reports them: for ``varIdent`` the SD of
        each stratum over the first's; for ``varPower``/``varExp`` the power/exponent."""
        r = self.residual
        return {k: float(v) for k, v in zip(r.var_names, r.var_values)}

    def residuals(self, type: str = "response") -> np.ndarray:
        """Residuals as nlme's ``resid(m, type=)``: "response" y − fitted; "pearson" divided by
        σ̂ and the variance function's SD ratio; "normalized" Pearson residuals whitened within
        each group by the estimated correlation (approximately iid N(0, 1) if the model holds)."""
        r = self.y_ - self.fitted
        if type == "response":
            return _readonly(r)
        pearson = r / (self.sigma * _sd_ratio(self.residual, len(r), self._weights_))
        if type == "pearson":
            return _readonly(pearson)
        if type == "normalized":
            return _readonly(_normalized(self.residual, pearson))
        raise DataError(f"type must be 'response', 'pearson' or 'normalized', got {type!r}")

    def intervals(self, level: float = 0.95) -> pd.DataFrame:
        """Approximate intervals of the residual structure's parameters and of σ, as nlme's
        ``intervals(m, which = "var-cov")`` computes them: Wald on the unconstrained scale
        (atanh φ for AR(1), logit for CAR(1) and a nugget, log for varIdent ratios and corExp's
        range, log σ), mapped back. The covariance is 2 H⁻¹, H the exact autodiff Hessian of the
        criterion in all variance parameters with β profiled (nlme's ``apVar`` takes a numerical
        one). Columns ``lower``, ``est.``, ``upper``; ``group`` says which part a row belongs to."""
        from scipy.stats import norm

        from ._residual_fit import split

        if not 0 < level < 1:
            raise DataError(f"level must be in (0, 1), got {level!r}")
        r = self.residual
        cov_u, var_log_sigma = self._variance_cov()
        z = float(norm.ppf(0.5 + level / 2))

        def natural(u):
            return np.concatenate([np.asarray(a, float) for a in jax.device_get(split(np.asarray(u), r.spec))])

        names = list(r.cor_names) + list(r.var_names)
        groups = ["corStruct"] * len(r.cor_names) + ["varStruct"] * len(r.var_names)
        est = natural(r.u)
        out = []
        for j, (name, grp) in enumerate(zip(names, groups)):
            se = float(np.sqrt(max(cov_u[j, j], 0.0)))
            lo, hi = np.array(r.u, float), np.array(r.u, float)
            lo[j] -= z * se
            hi[j] += z * se
            a, b = natural(lo)[j], natural(hi)[j]
            out.append((grp, name, min(a, b), est[j], max(a, b)))
        se_ls = float(np.sqrt(max(var_log_sigma, 0.0)))
        out.append(("sigma", "sigma", self.sigma * np.exp(-z * se_ls), self.sigma, self.sigma * np.exp(z * se_ls)))
        frame = pd.DataFrame(out, columns=["group", "name", "lower", "est.", "upper"]).set_index("name")
        frame.attrs["level"] = level
        return frame

    def residual_cor(self, group=None) -> pd.DataFrame:
        """The estimated residual correlation matrix of one group's rows (nlme's ``corMatrix``),
        rows and columns labelled by the data's index; ``group``: a level of the correlation's
        grouping (a tuple for a nested one), default the first group."""
        r = self.residual
        if r.correlation is None:
            raise DataError("the model has no correlation structure: its residuals are uncorrelated")
        bc = r.bound_cor
        rows = self._rows_index_
        if group is None:
            code = int(bc.codes[bc.order[0]])
        else:
            frame = self._frame_
            cols = r.correlation.groups
            if not cols:
                raise DataError("the correlation has no grouping column in its form; call residual_cor() without group")
            key = group if isinstance(group, tuple) else (group,)
            hit = np.ones(len(frame), bool)
            for c, v in zip(cols, key):
                by_value = (frame[c] == v).to_numpy(dtype=bool)
                hit &= by_value if by_value.any() else (frame[c].astype(str) == str(v)).to_numpy()
            if len(key) != len(cols) or not hit.any():
                raise DataError(f"group {group!r} is not a level of {'/'.join(cols)!r} in the rows the model uses")
            code = int(bc.codes[np.flatnonzero(hit)[0]])
        members = bc.order[bc.codes[bc.order] == code]
        time = bc.time[members] if bc.time is not None else None
        coords = bc.coords[members] if bc.coords is not None else None
        C = correlation_matrix(r.correlation, r.cor_values, time, coords, len(members))
        labels = rows[members]
        return pd.DataFrame(C, index=labels, columns=labels)


def _structure_names(r: ResidualFit) -> tuple[str, ...]:
    return tuple(r.cor_names) + tuple(r.var_names)


def _colour(r: ResidualFit, E: np.ndarray, weights) -> np.ndarray:
    """(nsim, n) standard normals → residuals with the structure (in units of σ): each group's
    rows times the Cholesky factor of its correlation matrix, then the SD ratios."""
    out = np.array(E, float)
    bc = r.bound_cor
    if bc is not None:
        sorted_codes = bc.codes[bc.order]
        bounds = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1, len(sorted_codes)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            rows = bc.order[a:b]
            C = correlation_matrix(r.correlation, r.cor_values, None if bc.time is None else bc.time[rows],
                                   None if bc.coords is None else bc.coords[rows], len(rows))
            out[:, rows] = E[:, rows] @ np.linalg.cholesky(C).T
    return out * _sd_ratio(r, E.shape[1], weights)[None, :]


@dataclass(frozen=True, eq=False)
class StructuredRefitResult(RefitResult):
    """:class:`~jaxmlm._refit.RefitResult` of a model with a residual structure, plus the
    structure's parameters of every replicate (nlme's scale) in ``structure``."""

    structure_names: tuple[str, ...] = ()
    structure_values: np.ndarray = None

    @property
    def structure(self) -> pd.DataFrame:
        return pd.DataFrame(self.structure_values, columns=list(self.structure_names))

    @property
    def ok(self) -> np.ndarray:
        fin = np.all(np.isfinite(self.structure_values), axis=1)
        out = np.asarray(RefitResult.ok.fget(self), bool) & fin
        out.flags.writeable = False
        return out


# ---- lmer with a residual structure ------------------------------------------------------------------

_REFUSED = ("ranova", "power", "augment", "lrt_vs_ols", "hatvalues",
            "cooks_distance", "influence", "all_fit", "variance_components", "icc", "r2_nakagawa", "equations")


@dataclass(frozen=True, eq=False)
class StructuredMixedModel(_StructureResults, LinearMixedModel):
    """A linear mixed model with a residual correlation structure and/or variance function
    (``jaxmlm.lmer(..., correlation=, variance=)``; nlme's ``lme``). Everything a
    :class:`~jaxmlm.LinearMixedModel` reports from its estimates, plus ``correlation_params``,
    ``variance_params``, ``residuals(type=)``, ``residual_cor()`` and ``intervals()``; ``simulate``,
    ``refit_many`` and ``bootstrap`` carry the structure (re-estimated in every refit).
    ``coef_table``, ``contest`` and ``anova()`` use Satterthwaite's degrees of freedom with the
    structure's parameters among the variance parameters (exact autodiff derivatives; no
    Kenward-Roger). Profiles, ``ranova``, influence diagnostics
    and the other analyses that would ignore the structure are refused with an error."""

    residual: ResidualFit = field(default=None, repr=False)
    _call: dict = field(default=None, repr=False)

    @property
    def npar(self) -> int:
        r = self.residual
        return self.design.p + len(self.theta) + 1 + r.spec.ncor + r.spec.nvar

    @property
    def pearson_resid(self) -> np.ndarray:
        return self.residuals("pearson")

    def _refit(self, **call):
        return fit_structured(**call)

    def simulate(self, nsim: int = 1, seed=None, use_u: bool = False) -> np.ndarray:
        """``nsim`` responses from the fitted model (nsim, nobs): new random effects (or the
        conditional modes with ``use_u``) and residuals with the estimated structure,
        ε* = σ̂ D L_g z (z standard normal, L_g the Cholesky factor of each group's correlation)."""
        from ._refit import _check_nsim, _normals, _sim_kernel
        from ._objective import templates_host

        nsim, d = _check_nsim(nsim), self.design
        mu = d.X @ self._beta + (0.0 if d.offset is None else d.offset)
        if use_u:
            mu = mu + sum(np.einsum("nk,nk->n", blk.Z, b[blk.codes]) for blk, b in zip(d.blocks, self._b))
            (E,) = _normals(seed, [(nsim, d.n)])
            return mu[None, :] + self.sigma * _colour(self.residual, E, d.weights)
        *U, E = _normals(seed, [(nsim, blk.nlev, blk.k) for blk in d.blocks] + [(nsim, d.n)])
        y = _sim_kernel(np.asarray(mu), np.asarray(self.sigma), tuple(templates_host(self.theta, self.layout)),
                        tuple(np.asarray(b.Z, float) for b in d.blocks), tuple(b.codes.astype(np.int32) for b in d.blocks),
                        tuple(U), _colour(self.residual, E, d.weights))
        return np.asarray(y)

    def refit_many(self, Y, progress: bool = False, chunk_size: int | None = None, *, REML: bool | None = None,
                   start=None, max_iter: int = 200):
        """The model refitted to every row of ``Y`` (nsim, nobs), the structure's parameters
        re-estimated with the rest, in batched programs of ``chunk_size`` responses (default 64),
        each replicate as the single fit (Newton, canonical signs, snapping) started from this
        fit's estimates; ``REML`` (default the model's) as :meth:`LinearMixedModel.refit_many`.
        ``progress`` is accepted for compatibility (no bar); ``start`` is not supported.
        Returns a :class:`StructuredRefitResult` (a ``RefitResult`` plus ``structure``)."""
        if start is not None:
            raise DataError("start= is not supported with a residual structure: refits start from the fit's estimates")
        if REML is not None and not isinstance(REML, (bool, np.bool_)):
            raise DataError(f"REML must be True or False, got {REML!r}")
        reml_fit = self.REML if REML is None else bool(REML)
        chunk_size = 64 if chunk_size is None else chunk_size
        from ._refit import _as_responses, _readonly as ro, _sdcor, _theta_names, _vc_params, _START_FLOOR, lapack_safe_batch
        from ._residual_fit import refit_batch, scale_at, split

        r, d, lay = self.residual, self.design, self.layout
        Y = _as_responses(Y, d.n)
        if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise DataError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        # on a CPU no batched LAPACK call may be split over XLA's threads (it can deadlock)
        chunk_size = lapack_safe_batch(chunk_size, lay, hessian=lay.ntheta + len(r.u) + d.p)
        t0 = time.perf_counter()
        c = np.asarray(scale_at(r.u, r.rows, r.index, r.arr, lay, r.spec), float)
        from ._optimize import diagonal_mask

        xt = self.theta / c
        xt = np.where(diagonal_mask(lay), np.maximum(np.abs(xt), _START_FLOOR), xt)
        x0 = np.concatenate([xt, r.u])
        reml = np.asarray(1.0 if reml_fit else 0.0)
        parts = []
        for a in range(0, len(Y), chunk_size):
            blk = Y[a : a + chunk_size]
            pad = chunk_size - len(blk) if len(Y) > chunk_size else 0
            if pad:
                blk = np.concatenate([blk, np.repeat(blk[-1:], pad, axis=0)])
            out = jax.device_get(refit_batch(x0, blk, r.rows, r.index, r.arr, reml, lay, r.spec, max_iter))
            parts.append([np.asarray(o)[: len(blk) - pad] for o in out])
        theta, u, beta, sigma, vcov, crit, status, its, nfev, grad = (np.concatenate(p) for p in zip(*parts))
        nat = np.array([np.concatenate([np.asarray(a) for a in split(ui, r.spec)]) for ui in u])
        names = tuple(p[0] for p in _vc_params(d)) + ("sigma",)
        return StructuredRefitResult(
            REML=reml_fit, fixef_names=tuple(d.fixef_names), theta_names=tuple(_theta_names(d)),
            sdcor_names=names, beta=ro(beta), theta=ro(theta), sigma=ro(sigma), objective=ro(crit), vcov=ro(vcov),
            status=ro(status, np.int64), iterations=ro(its, np.int64), evaluations=ro(nfev, np.int64),
            max_abs_gradient=ro(grad), sdcor_values=ro(np.column_stack([_sdcor(theta, sigma, d, lay), sigma])),
            seconds=time.perf_counter() - t0, structure_names=_structure_names(r), structure_values=ro(nat))

    def bootstrap(self, nsim: int, seed=None, level: float = 0.95, progress: bool = False,
                  chunk_size: int | None = None, use_u: bool = False):
        """Parametric bootstrap (lme4's ``bootMer``): ``nsim`` responses simulated with the
        residual structure and refitted with it; replicates of the random-effect SDs and
        correlations, σ, the structure's parameters and the fixed effects, with percentile
        intervals (``.confint()``)."""
        from ._refit import BootstrapResult, _check_level, _sdcor

        level = _check_level(level)
        res = self.refit_many(self.simulate(nsim, seed=seed, use_u=use_u), chunk_size=chunk_size)
        names = list(res.sdcor_names) + list(res.structure_names) + list(res.fixef_names)
        vals = np.column_stack([res.sdcor_values, res.structure_values, res.beta])
        vals[~res.ok] = np.nan
        r = self.residual
        t0 = np.concatenate([_sdcor(self.theta[None], np.array([self.sigma]), self.design, self.layout)[0],
                             [self.sigma], r.cor_values, r.var_values, self._beta])
        return BootstrapResult(t0=pd.Series(t0, index=names, name="original"),
                               replicates=pd.DataFrame(vals, columns=names), refits=res, level=level, seed=seed)

    def _variance_cov(self):
        """(Cov(ρ_u), Var(log σ)) from 2 H⁺ of the criterion in (θ, σ, ρ_u) (Satterthwaite's H)."""
        from ._inference import _varpar

        _, H, _, _ = _varpar(self)
        cov = 2.0 * np.linalg.pinv(H)
        nt = len(self.theta)
        return cov[nt + 1 :, nt + 1 :], cov[nt, nt] / self.sigma**2

    def profile(self, parm=None, alphamax: float = 0.01, maxpts: int = 100, delta: float | None = None,
                delta_cutoff: float = 1 / 8) -> pd.DataFrame:
        """lme4's ``profile(m)`` with the structure re-estimated at every point and its parameters
        among the rows (nlme's scale): ζ on a grid of values of each parameter
        (:mod:`jaxmlm._residual_confint`); ``jaxmlm.plot.profile_zeta`` draws it."""
        from ._residual_confint import structured_profile

        return structured_profile(self, parm, alphamax, maxpts, delta, delta_cutoff)

    def confint(self, method: str = "profile", level: float = 0.95, parm=None, nsim: int = 500, seed=None, **kw):
        """lme4's ``confint``, the structure's parameters among the rows (after ``sigma``, nlme's
        names and scale): ``"profile"`` of the ML deviance with the structure re-estimated at
        every point (:mod:`jaxmlm._residual_confint`), ``"boot"`` (refits with the structure) or
        ``"Wald"`` (fixed effects). nlme's Wald intervals of the structure are :meth:`intervals`."""
        if str(method).lower() == "profile":
            from ._confint import check_level
            from ._residual_confint import structured_profile_confint

            return structured_profile_confint(self, check_level(level), parm, **kw)
        return LinearMixedModel.confint(self, method=method, level=level, parm=parm, nsim=nsim, seed=seed, **kw)

    def summary(self, style: str = "lme4", stddev: bool = False) -> str:
        """lme4's summary with nlme's block for the residual structure before the fixed effects."""
        if style != "lme4":
            raise DataError("a model with a residual structure prints in lme4's style only (style='lme4')")
        text = LinearMixedModel.summary(self)
        block = "\n".join(structure_lines(self.residual))
        head, sep, tail = text.partition("\nFixed effects:")
        return head + "\n" + block + "\n" + sep + tail if sep else text + block + "\n"


def _refuse(name):
    def method(self, *args, **kwargs):
        raise InferenceError(
            f"{name}() does not take the residual structure into account yet, so it is refused for models fitted "
            "with correlation= or variance=; fit without the structure for it, or use the methods that do "
            "(summary, coef_table, confint(method='Wald'), residuals, predict, simulate, refit_many, bootstrap, "
            "jaxmlm.anova)")
    method.__name__ = name
    return method


for _name in _REFUSED:
    setattr(StructuredMixedModel, _name, _refuse(_name))


def fit_structured(formula, data, REML=True, correlation=None, variance=None, *, max_iter=200, data_name=None,
                   weights=None, offset=None, subset=None):
    """``lmer`` with a residual structure (see :func:`jaxmlm.lmer`)."""
    from ._residual_fit import fit_and_solve, make_basis, pack_inputs, unpack

    if not isinstance(data, pd.DataFrame):
        raise DataError("a residual structure needs the rows in memory: data must be a pandas DataFrame")
    call = dict(formula=formula, data=data, REML=REML, correlation=correlation, variance=variance,
                max_iter=max_iter, data_name=data_name, weights=weights, offset=offset, subset=subset)
    correlation, variance, data_name, data, weights, offset = _prepare(call)
    design = build_design(formula, data, weights=weights, offset=offset)
    if design.p == 0:
        REML = False
    schema = make_schema(design)
    layout = schema.layout
    rows = row_data(design, schema, host=True)
    bc, bv, spec, arr, u0 = _bind(design, data, correlation, variance, lmm=True)
    index = tuple(schema.index)
    arr = arr._replace(basis=make_basis(rows, arr, spec, layout, index))
    reml = np.asarray(1.0 if REML else 0.0)
    nt = layout.ntheta
    x0 = np.concatenate([lme4_start(layout), u0])
    t0 = time.perf_counter()
    floats, ints, meta = pack_inputs((x0, rows, index, arr, reml))
    packed, stats = fit_and_solve(floats, ints, meta, layout, spec, max_iter)
    st, H, c, theta, snapped, sol, stats, nat = unpack(packed, stats, layout, spec)
    x = st.x
    snapped = tuple(int(i) for i in np.flatnonzero(snapped))
    u = x[nt:]
    _require_finite(st.f, sol.criterion)
    status, grad = int(st.status), max_abs_gradient(st)
    warns = status_warnings(status, int(st.it), grad)
    b, v = _condvar_blocks(sol, layout, design)
    record = FitRecord(
        theta_start=_readonly(c * x0[:nt]), theta_optimizer=_readonly(np.asarray(st.x, float)),
        theta_end=_readonly(theta), objective=float(sol.criterion), iterations=int(st.it),
        evaluations=int(st.nfev), status=status, message=STATUS[status], converged=status in (0, 1),
        max_abs_gradient=grad, snapped=snapped, warnings=warns,
        seconds=time.perf_counter() - t0, method="newton")
    res = _residual_fit(correlation, variance, bc, bv, spec, arr, u0, u, rows, index, nat)
    return StructuredMixedModel(
        formula=design.formula.text, REML=bool(REML), design=design, layout=layout, stats=stats,
        theta=_readonly(theta), record=record, _beta=_readonly(np.asarray(sol.beta)),
        _vcov=_readonly(np.asarray(sol.vcov)), sigma=float(sol.sigma), objective=float(sol.criterion), _b=b,
        _condvar=v, data_name=data_name, residual=res, _call=call)


# ---- gls ------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class GlsModel(_StructureResults, FixedEffectsBase):
    """A linear model fitted by generalized least squares (nlme's ``gls``): no random effects,
    residuals with a correlation structure and/or variance function. Create it with :func:`gls`."""

    formula: str
    REML: bool
    design: object = field(repr=False)
    _beta: np.ndarray = field(repr=False)
    _vcov: np.ndarray = field(repr=False)
    sigma: float
    objective: float
    residual: ResidualFit = field(repr=False)
    record: FitRecord = field(repr=False)
    data_name: str | None = None
    _call: dict = field(default=None, repr=False)

    layout = None
    stats = None
    theta = np.zeros(0)

    @property
    def npar(self) -> int:
        r = self.residual
        return self.design.p + 1 + r.spec.ncor + r.spec.nvar

    @property
    def bic(self) -> float:
        n = self.nobs - (self.design.p if self.REML else 0)  # nlme: REML's BIC uses n − p
        return self.objective + np.log(n) * self.npar

    @cached_property
    def fitted(self) -> np.ndarray:
        d = self.design
        mu = d.X @ self._beta
        if d.offset is not None:
            mu = mu + d.offset
        return _readonly(mu)

    @property
    def resid(self) -> np.ndarray:
        return self.residuals("response")

    def predict(self, newdata: pd.DataFrame | None = None, offset=None) -> np.ndarray:
        """X β̂ (+ the offset) for the fitted rows or for ``newdata`` (nlme's ``predict.gls``)."""
        from ._predict import predict

        if newdata is None:
            return self.fitted
        return predict(self, newdata, re_form="~0", offset=offset)

    def coef_table(self) -> pd.DataFrame:
        """t-tests of the coefficients with n − p degrees of freedom, as nlme's ``summary.gls``."""
        from scipy.stats import t as t_dist

        est, se = self._beta, np.sqrt(np.diag(self._vcov))
        df = self.nobs - self.design.p
        tv = est / se
        return pd.DataFrame({"Estimate": est, "Std. Error": se, "df": float(df), "t value": tv,
                             "Pr(>|t|)": 2 * t_dist.sf(np.abs(tv), df)}, index=list(self.design.fixef_names))

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """Intervals of the coefficients from the t distribution with n − p df (nlme's ``intervals``)."""
        from scipy.stats import t as t_dist

        if not 0 < level < 1:
            raise DataError(f"level must be in (0, 1), got {level!r}")
        q = t_dist.ppf(0.5 + level / 2, self.nobs - self.design.p)
        lo, hi = self._beta - q * self.se.to_numpy(), self._beta + q * self.se.to_numpy()
        pct = [f"{100 * (0.5 - level / 2):.1f} %", f"{100 * (0.5 + level / 2):.1f} %"]
        return pd.DataFrame({pct[0]: lo, pct[1]: hi}, index=list(self.design.fixef_names))

    def _variance_cov(self):
        from ._residual_fit import gls_hessian

        r = self.residual
        H = np.asarray(jax.device_get(gls_hessian(np.asarray(self.sigma, float), np.asarray(r.u, float), r.rows,
                                                  r.arr, np.asarray(1.0 if self.REML else 0.0), r.spec)), float)
        cov = 2.0 * np.linalg.pinv(0.5 * (H + H.T))
        return cov[1:, 1:], cov[0, 0] / self.sigma**2

    def _refit(self, **call):
        return gls(**call)

    def summary(self) -> str:
        """nlme's ``summary(gls)`` layout."""
        from ._present import print_coefmat
        from ._rnum import r_format

        crit = "REML" if self.REML else "maximum likelihood"
        out = [f"Generalized least squares fit by {crit} (jaxmlm)", f"  Model: {self.formula}"]
        if self.data_name:
            out.append(f"  Data: {self.data_name}")
        vals = r_format(np.array([self.aic, self.bic, self.loglik]), 7)
        w = max(len(v) for v in vals + ["logLik"])
        out += ["", " ".join(x.rjust(w) for x in ["AIC", "BIC", "logLik"]), " ".join(v.rjust(w) for v in vals), ""]
        out += structure_lines(self.residual)
        table = self.coef_table().drop(columns="df")
        out += ["", "Coefficients:"] + print_coefmat(table)
        out += ["", f"Residual standard error: {r_format([self.sigma], 7)[0]}",
                f"Degrees of freedom: {self.nobs} total; {self.nobs - self.design.p} residual"]
        return "\n".join(out) + "\n"

    def __str__(self) -> str:
        return self.summary()


_GLS_GROUP = "gls_no_random_effects_"


def gls(formula: str, data: pd.DataFrame, correlation=None, variance=None, REML: bool = True, *,
        weights=None, subset=None, max_iter: int = 200, data_name: str | None = None) -> GlsModel:
    """Fit a linear model by generalized least squares, as nlme's ``gls``: ``formula`` without
    random effects (``"y ~ x * g"``), residuals with a ``correlation`` structure
    (:func:`jaxmlm.corAR1`, ...) and/or a ``variance`` function (:func:`jaxmlm.varIdent`, ...);
    REML (default) or ML. A correlation form without ``| g`` makes all rows one group."""
    from ._residual_fit import fit_program, gls_estimates

    if not isinstance(REML, (bool, np.bool_)):
        raise DataError(f"REML must be True or False, got {REML!r}")
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if not isinstance(formula, str) or "~" not in formula:
        raise FormulaError(f"formula must be a string such as 'y ~ x', got {formula!r}")
    if "|" in formula:
        raise FormulaError("gls takes no random-effects terms; use jaxmlm.lmer(..., correlation=, variance=) for "
                           "a mixed model with a residual structure")
    call = dict(formula=formula, data=data, correlation=correlation, variance=variance, REML=REML, weights=weights,
                subset=subset, max_iter=max_iter, data_name=data_name)
    correlation, variance, data_name, data, weights, _ = _prepare(call)
    if _GLS_GROUP in data.columns:
        raise DataError(f"the data may not have a column named {_GLS_GROUP!r}")
    # The engine's design builder expects a random-effects term: a two-level placeholder gives X, y
    # and the rows used (its Z is never read). The user's frame is not modified (a copy is).
    work = data.assign(**{_GLS_GROUP: np.arange(len(data))})
    # each row its own level, lme4's level-count checks off (glmer's setting): whatever rows
    # survive the missing values, the placeholder never stops the fit
    parsed = dataclasses.replace(parse_formula(f"{formula} + (1 | {_GLS_GROUP})"), glmm=True)
    design = build_design(parsed, work, weights=weights)
    design = dataclasses.replace(design, formula=dataclasses.replace(design.formula, text=formula))
    schema = make_schema(design)
    rows = row_data(design, schema, host=True)
    rows = rows._replace(Z1=np.zeros_like(rows.Z1), V=np.zeros((design.n, 0)), P=np.zeros((design.n, 0), np.int32),
                         E=np.zeros((design.n, 0), np.int32))
    bc, bv, spec, arr, u0 = _bind(design, data, correlation, variance, lmm=False)
    reml = np.asarray(1.0 if REML else 0.0)
    t0 = time.perf_counter()
    if len(u0):
        st, H, _ = jax.device_get(fit_program(u0, rows, (), arr, reml, None, spec, max_iter))
        _require_finite(st.f)
        u = np.asarray(st.x, float)
        its, nfev, status = int(st.it), int(st.nfev), int(st.status)
        grad = max_abs_gradient(st)
        warns = status_warnings(status, its, grad)
    else:
        u, its, nfev, status, warns, grad = u0, 0, 1, 0, (), 0.0
    beta, sigma, vcov, crit = (np.asarray(a, float) for a in jax.device_get(gls_estimates(u, rows, arr, reml, spec)))
    _require_finite(crit, beta)
    record = FitRecord(theta_start=_readonly(np.zeros(0)), theta_optimizer=_readonly(u), theta_end=_readonly(np.zeros(0)),
                       objective=float(crit), iterations=its, evaluations=nfev, status=status, message=STATUS[status],
                       converged=status in (0, 1), max_abs_gradient=grad, snapped=(), warnings=warns,
                       seconds=time.perf_counter() - t0)
    return GlsModel(formula=formula, REML=bool(REML), design=design, _beta=_readonly(beta), _vcov=_readonly(vcov),
                    sigma=float(sigma), objective=float(crit),
                    residual=_residual_fit(correlation, variance, bc, bv, spec, arr, u0, u, rows), record=record,
                    data_name=data_name, _call=call)

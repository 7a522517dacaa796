"""Priors of ``blmer`` (R's blme, Chung, Rabe-Hesketh, Dorie, Gelman & Liu 2013) as a penalty on the
core's profiled criterion.

blme 1.0-5 maximizes the posterior mode of a linear mixed model: its deviance function is lme4's,
with σ given, plus −2 log prior (R source: ``lmmObjective`` in R/devFun.R, the ``getPolynomialTerm``,
``getExponentialTerm``, ``getConstantTerm`` and ``getDFAdjustment`` methods in R/dist_*.R). With
every prior on the *common scale* (blme's default, ``common.scale = TRUE``: a covariance prior is on
the relative covariance ΛΛᵀ = Σ_b/σ², a normal prior on β has covariance σ²Σ_β), with
N = n − REML·p and r²(θ) the penalized residual sum of squares,

    D(θ, σ) = log|L|² + REML·log|R_X|² + N log(2πσ²) + r²/σ² + df·log σ² + Σ_terms P_j(T_j) + C,

* a normal prior β ~ N(0, σ²Σ_β) adds βᵀΣ_β⁻¹β to the residual sum of squares — a ridge, i.e. the
  pseudo-rows [R_β, 0] (R_βᵀR_β = Σ_β⁻¹) appended to [X, y] (lme4's ``updateDecomp(XPenalty)``), so
  R_X is the penalized factor — and df = the number of finite prior SDs;
* a residual prior on σ² changes df (and, an inverse gamma's scale, r²);
* P_j is the −2 log density of term j's prior at its template T_j (a function of θ only);
* C collects the normalizing constants, which blme includes in the criterion it reports.

σ is profiled out as blme does it (``getSigmaProfiler``, linear case): σ̂² = r²/(N + df). Then

    D(θ) = d_{n+df}(θ) + Σ_j P_j(T_j) + C − df·log 2π,

where d_{n'} is the core's criterion (:func:`~jaxmlm._objective.deviance`) on statistics whose
row count is n' = n + df and whose X block carries the ridge: :func:`augment` makes those statistics,
:class:`ThetaPenalty` is Σ_j P_j + C − df log 2π, which the optimizer adds to the criterion it
minimizes (:func:`~jaxmlm._optimize.fit_theta`'s ``penalty``). The per-term P_j (blme's definitions,
on the relative factor, λ = θ for a scalar term; T is lower triangular, blme's ``Lambda.t`` = Tᵀ):

    wishart(ν, S):      −2(ν − k − 1) Σ log|T_ii| + tr(S⁻¹ TTᵀ)         (S = ∞: no trace term)
    invwishart(ν, S):    2(ν + k + 1) Σ log|T_ii| + tr(S (TTᵀ)⁻¹)
    gamma(a, b), "sd":  −2(a − 1) log|λ| + 2b|λ|;    "var": −4(a − 1) log|λ| + 2bλ²
    invgamma(a, s), "sd": 2(a + 1) log|λ| + 2s/|λ|;  "var":  4(a + 1) log|λ| + 2s/λ²

Each is even in the sign of every template column, as the criterion is, so the optimizer's
unconstrained search and canonical signs (:mod:`jaxmlm._optimize`) carry over. A prior that goes
to +∞ at λ = 0 (wishart's default ν = k + 2.5, gamma's shape 2.5) keeps the estimate off the
boundary: that is the point of blme (Chung et al. 2013, *Psychometrika* 78(4), 685–709).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ._errors import DataError

__all__ = ["ThetaPenalty", "augment"]

_LOG2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class TermPrior:
    """One term's prior, resolved: ``kind`` ("wishart", "invwishart", "gamma", "invgamma"), the
    block, offset and size k of its template, and ``params`` (hashable: floats and tuples)."""

    kind: str
    block: int
    offset: int
    k: int
    params: tuple


@dataclass(frozen=True)
class ThetaPenalty:
    """Σ_j P_j(T_j) + ``constant`` (module docstring): a pure function of θ, hashable, so it is a
    static argument of the compiled fit."""

    terms: tuple
    constant: float

    def __call__(self, theta, layout):
        from ._objective import templates

        Ts = templates(theta, layout)
        total = jnp.asarray(self.constant, theta.dtype)
        for t in self.terms:
            T = Ts[t.block][t.offset : t.offset + t.k, t.offset : t.offset + t.k]
            logd = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(T))))
            if t.kind == "wishart":
                df, rinv = t.params
                total = total - 2.0 * (df - t.k - 1.0) * logd
                if rinv is not None:  # tr(S⁻¹TTᵀ) = ‖Tᵀ R⁻¹‖², S = RᵀR
                    total = total + jnp.sum((T.T @ jnp.asarray(rinv).reshape(t.k, t.k)) ** 2)
            elif t.kind == "invwishart":
                df, r = t.params
                total = total + 2.0 * (df + t.k + 1.0) * logd
                if r is not None:  # tr(S (TTᵀ)⁻¹) = ‖R T⁻ᵀ‖²
                    Rm = jnp.asarray(r).reshape(t.k, t.k)
                    total = total + jnp.sum(jnp.linalg.solve(T, Rm.T) ** 2)
            else:
                a, b, scale = t.params
                lam = jnp.abs(T[0, 0])
                c = 1.0 if scale == "sd" else 2.0
                if t.kind == "gamma":
                    total = total - 2.0 * c * (a - 1.0) * logd + (2.0 * b * lam ** c if b else 0.0)
                else:
                    total = total + 2.0 * c * (a + 1.0) * logd + (2.0 * b / lam ** c if b else 0.0)
        return total


def augment(stats, layout, fixef_cov_inv=None, df: float = 0.0, rss_add: float = 0.0):
    """Statistics of the penalized problem (module docstring): the ridge Σ_β⁻¹ on β (given as
    ``fixef_cov_inv``, p × p, or None), n + ``df`` rows, and ``rss_add`` added to yᵀy.

    The response column is stored centred, y' = y − Xβ₀ (:mod:`jaxmlm._stats`), so the ridge's
    pseudo-rows [R_β, 0] become [R_β, −R_β β₀]: XᵀX += Σ_β⁻¹, Xᵀy' −= Σ_β⁻¹β₀, y'ᵀy' += β₀ᵀΣ_β⁻¹β₀
    (the Z blocks are unchanged: the pseudo-rows have no random effects)."""
    p = layout.p
    WW = jnp.asarray(stats.WW)
    if fixef_cov_inv is not None and p:
        P = jnp.asarray(fixef_cov_inv, WW.dtype)
        b0 = jnp.asarray(stats.beta0, WW.dtype)[:p]
        Pb = P @ b0
        WW = WW.at[:p, :p].add(P).at[:p, p].add(-Pb).at[p, :p].add(-Pb).at[p, p].add(b0 @ Pb)
    if rss_add:
        WW = WW.at[p, p].add(rss_add)
    return stats._replace(WW=WW, n=jnp.asarray(stats.n) + df)


# ---- user-facing specifications -----------------------------------------------------------------


@dataclass(frozen=True)
class Prior:
    """A prior as the user gave it: blme's distribution name and its hyperparameters (None: blme's
    default, which may depend on the term's dimension)."""

    name: str
    args: tuple  # sorted (key, value) pairs

    def get(self, key, default=None):
        return dict(self.args).get(key, default)

    def __str__(self) -> str:  # noqa: D105
        return self.name + "(" + ", ".join(f"{k} = {_fmt(v)}" for k, v in self.args) + ")"


def _fmt(v) -> str:
    if isinstance(v, (tuple, list, np.ndarray)):
        return "c(" + ", ".join(_fmt(x) for x in np.ravel(v)) + ")"
    if isinstance(v, float):
        return "Inf" if math.isinf(v) else f"{v:.6g}"
    return str(v)


_COV_ARGS = {"wishart": {"df", "scale"}, "invwishart": {"df", "scale"},
             "gamma": {"shape", "rate", "posterior_scale"}, "invgamma": {"shape", "scale", "posterior_scale"}}
_FIXEF_ARGS = {"normal": {"sd", "cov"}}
_RESID_ARGS = {"gamma": {"shape", "rate"}, "invgamma": {"shape", "scale"}}


def _as_prior(spec, allowed: dict, what: str) -> Prior | None:
    """A string ("gamma"), a (name, {hyperparameters}) pair, or a :class:`Prior` → :class:`Prior`."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("none", "flat")):
        return None
    if isinstance(spec, Prior):
        name, args = spec.name, dict(spec.args)
    elif isinstance(spec, str):
        name, args = spec.strip().lower(), {}
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        name, args = spec[0].strip().lower(), dict(spec[1])
    else:
        raise DataError(f"{what} must be one of {sorted(allowed)} or None, or a (name, {{hyperparameters}}) "
                                 f"pair, got {spec!r}")
    if name not in allowed:
        raise DataError(f"unknown {what} {name!r}: blmer knows {', '.join(sorted(allowed))} (or None)")
    bad = set(args) - allowed[name]
    if bad:
        raise DataError(f"{what} {name!r} has no hyperparameter {', '.join(sorted(bad))}; "
                                 f"it takes {', '.join(sorted(allowed[name]))}")
    return Prior(name, tuple(sorted((k, _hashable(v)) for k, v in args.items())))


def _hashable(v):
    if isinstance(v, str):
        return v
    a = np.asarray(v, dtype=float) if not isinstance(v, str) else v
    return float(a) if a.ndim == 0 else tuple(float(x) for x in a.ravel())


def _num(v, name: str, what: str) -> float:
    if isinstance(v, tuple) or isinstance(v, str) or not math.isfinite(v) and not math.isinf(v):
        raise DataError(f"{what}: {name} must be a number, got {v!r}")
    return float(v)


def resolve_cov(prior: Prior, k: int, where: str):
    """(kind, params, constant, label) of a covariance prior on a term of k columns (blme's defaults
    and checks: R/dist.R ``lmmDistributions``)."""
    what = f"cov_prior {prior.name!r} on {where}"
    if prior.name in ("wishart", "invwishart"):
        inv = prior.name == "invwishart"
        df = prior.get("df")
        df = (k - 0.998 if inv else k + 2.5) if df is None else _num(df, "df", what)
        if not df > k - 1:
            raise DataError(f"{what}: df must exceed k − 1 = {k - 1} (got {df}); the distribution is "
                                     "singular or does not exist")
        scale = prior.get("scale")
        if scale is None:
            scale = np.eye(k) * (df + 0.1) if inv else math.inf
        S = np.asarray(scale, dtype=float)
        if S.size == 1:
            S = np.eye(k) * float(S.ravel()[0]) if np.isfinite(S).all() else np.diag(np.repeat(float(S.ravel()[0]), k))
        elif S.size == k:
            S = np.diag(S.ravel())
        elif S.size == k * k:
            S = S.reshape(k, k)
        else:
            raise DataError(f"{what}: scale must be a number, {k} numbers or a {k} × {k} matrix")
        label = f"{prior.name}(df = {df:.6g}, scale = {_fmt(tuple(S.ravel()) if k > 1 and np.all(np.isfinite(S)) else float(S[0, 0]))}, posterior.scale = cov, common.scale = TRUE)"
        if not inv and np.all(np.isinf(np.diag(S))):
            return "wishart", (df, None), 0.0, label
        if inv and np.all(S == 0):
            return "invwishart", (df, None), 0.0, label
        if not np.all(np.isfinite(S)) or not np.allclose(S, S.T) or np.any(np.linalg.eigvalsh(S) <= 0):
            raise DataError(f"{what}: scale must be a finite symmetric positive definite matrix (or "
                                     + ("Inf" if not inv else "0") + ")")
        R = np.linalg.cholesky(S).T  # upper: S = RᵀR (R's chol)
        logdet = float(np.linalg.slogdet(S)[1])
        const = df * (k * math.log(2.0) + (-logdet if inv else logdet)) + 0.5 * k * (k - 1) * math.log(math.pi)
        const += sum(2.0 * math.lgamma(0.5 * (df + 1.0 - i)) for i in range(1, k + 1))
        mat = R if inv else np.linalg.inv(R)
        return prior.name, (df, tuple(float(x) for x in mat.ravel())), const, label
    # gamma, invgamma: scalar terms only
    if k != 1:
        raise DataError(f"{what}: a {prior.name} prior is for a scalar term (one column); this term has "
                                 f"{k} — use wishart or invwishart")
    post = prior.get("posterior_scale", "sd" if prior.name == "gamma" else "var")
    if post not in ("sd", "var"):
        raise DataError(f"{what}: posterior_scale must be 'sd' or 'var', got {post!r}")
    if prior.name == "gamma":
        a = _num(prior.get("shape", 2.5), "shape", what)
        b = _num(prior.get("rate", 0.0), "rate", what)
        second = ("rate", b)
    else:
        a = _num(prior.get("shape", 0.001), "shape", what)
        b = _num(prior.get("scale", a + 0.05), "scale", what)
        second = ("scale", b)
    if a < 0 or b < 0 or math.isinf(a) or math.isinf(b):
        raise DataError(f"{what}: shape and {second[0]} must be finite and ≥ 0 (got {a}, {b})")
    const = 0.0 if a == 0 or b == 0 else -2.0 * (a * math.log(b) - math.lgamma(a))
    label = f"{prior.name}(shape = {a:.6g}, {second[0]} = {b:.6g}, posterior.scale = {post}, common.scale = TRUE)"
    return prior.name, (a, b, post), const, label


def resolve_fixef(prior: Prior, names: list[str]):
    """(Σ_β⁻¹ (p × p), df, constant, label) of a normal prior β ~ N(0, σ²Σ_β) (blme's ``normal``:
    default sd = c(10, 2.5): 10 for the first coefficient, 2.5 for the others; infinite SDs allowed)."""
    p = len(names)
    what = "fixef_prior 'normal'"
    cov = prior.get("cov")
    if cov is not None:
        C = np.asarray(cov, dtype=float)
        if C.size == p:
            C = np.diag(C.ravel())
        elif C.size != p * p:
            raise DataError(f"{what}: cov must have {p} variances or be a {p} × {p} matrix")
        C = C.reshape(p, p)
        if not np.allclose(C, C.T) or not np.all(np.isfinite(C)) or np.any(np.linalg.eigvalsh(C) <= 0):
            raise DataError(f"{what}: cov must be a finite symmetric positive definite matrix")
        Cinv = np.linalg.inv(C)
        Cinv = 0.5 * (Cinv + Cinv.T)
        finite = p
        logdet = float(np.linalg.slogdet(C)[1])
        sds = np.sqrt(np.diag(C))
    else:
        sd = prior.get("sd", (10.0, 2.5))
        sd = np.atleast_1d(np.asarray(sd, dtype=float))
        if sd.size == 2 and p > 2:
            sd = np.concatenate([sd[:1], np.repeat(sd[1], p - 1)])
        elif sd.size == 1:
            sd = np.repeat(sd, p)
        else:
            sd = np.resize(sd, p)  # blme recycles (rep_len)
        if np.any(np.isnan(sd)) or np.any(sd <= 0):
            raise DataError(f"{what}: sd must be positive (Inf for no prior on a coefficient), got {sd}")
        var = sd ** 2
        Cinv = np.diag(np.where(np.isinf(var), 0.0, 1.0 / var))
        fin = np.isfinite(var)
        finite = int(fin.sum())
        logdet = float(np.sum(np.log(var[fin])))
        sds = sd
    const = finite * _LOG2PI + logdet
    label = "normal(sd = " + _fmt(tuple(float(s) for s in sds)) + ", common.scale = TRUE)"
    return Cinv, float(finite), const, label


def resolve_resid(prior: Prior):
    """(df adjustment, addition to r², constant, label) of a prior on σ² (blme's
    ``residualVarianceGammaPrior`` / ``...InvGammaPrior``, defaults shape = 0, rate/scale = 0,
    posterior scale "var"). Only the priors that keep σ̂² a root of a linear equation
    (blme's ``SIGMA_OPTIM_SQ_LINEAR``) are supported: a gamma with rate 0, any inverse gamma."""
    what = f"resid_prior {prior.name!r}"
    a = _num(prior.get("shape", 0.0), "shape", what)
    key = "rate" if prior.name == "gamma" else "scale"
    b = _num(prior.get(key, 0.0), key, what)
    if a < 0 or b < 0 or math.isinf(a) or math.isinf(b):
        raise DataError(f"{what}: shape and {key} must be finite and ≥ 0 (got {a}, {b})")
    if prior.name == "gamma" and b != 0:
        raise DataError(f"{what}: a gamma prior on σ² with a nonzero rate makes σ̂ the root of a "
                                 "quadratic equation, which blmer does not implement; use rate = 0 or invgamma")
    const = 0.0 if a == 0 or b == 0 else -2.0 * (a * math.log(b) - math.lgamma(a))
    df = -2.0 * (a - 1.0) if prior.name == "gamma" else 2.0 * (a + 1.0)
    label = f"{prior.name}(shape = {a:.6g}, {key} = {b:.6g}, posterior.scale = var)"
    return df, (2.0 * b if prior.name == "invgamma" else 0.0), const, label

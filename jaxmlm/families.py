"""GLM families for :func:`jaxmlm.glmer`: the conditional distribution of y given the random effects.

A family is a small frozen (hashable) object: a jit static argument. It holds the link and
gives, as pure functions of arrays,

* ``linkinv(η)``, ``mu_eta(η)`` = dμ/dη, ``linkfun(μ)`` — the link, clamped as R's C code
  clamps it (``binomial()``'s ``linkinv`` keeps μ in [ε, 1 − ε], ``mu.eta`` ≥ ε), so that
  PIRLS's working weights stay finite where lme4's do;
* ``variance(μ, φ)``: V(μ);
* ``dev_resids(y, μ, w, φ)``: R's ``dev.resids``, the unit deviances times the prior weights;
* ``aic_terms(y, μ, w, φ)``: −2 log p(yᵢ | μᵢ) per row with every constant, R's
  ``family$aic`` split by row — what lme4's Laplace and quadrature deviances add up
  (``glmResp::aic``), so that ``logLik`` matches lme4's;
* ``mustart(y, w)``: R's ``initialize`` starting values;
* ``simulate(rng, μ, w, φ)``: R's ``simulate`` for the family.

φ is the family's own parameter: the negative binomial's θ (``var = μ + μ²/θ``, MASS's
``negative.binomial``), unused (0) by the binomial and the Poisson.

References: R's ``stats::family`` (src/library/stats/R/family.R and src/family.c), MASS's
``negative.binomial``, McCullagh & Nelder (1989) *Generalized Linear Models*, 2nd ed., ch. 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, ndtr, ndtri

from ._errors import DataError

__all__ = ["Link", "Family", "Binomial", "Poisson", "NegativeBinomial", "make_family"]

_EPS = float(np.finfo(float).eps)
_LOGIT_THRESH = 30.0  # R's binomial(): -log(DBL_EPSILON) ≈ 36; logit_linkinv clamps η at ±30
_PROBIT_THRESH = float(-ndtri(_EPS))  # R's probit linkinv: −qnorm(DBL_EPSILON) ≈ 8.125


@dataclass(frozen=True)
class Link:
    """A link function g (μ = g⁻¹(η)) by name: "logit", "probit", "cloglog", "log", "identity"."""

    name: str

    def __post_init__(self):
        if self.name not in _LINKS:
            raise DataError(f"unknown link {self.name!r}: use one of {', '.join(sorted(_LINKS))}")

    def linkfun(self, mu):
        return _LINKS[self.name][0](mu)

    def linkinv(self, eta):
        return _LINKS[self.name][1](eta)

    def mu_eta(self, eta):
        return _LINKS[self.name][2](eta)


def _logit_inv(eta):
    e = jnp.clip(eta, -_LOGIT_THRESH, _LOGIT_THRESH)
    return jax.nn.sigmoid(e)


def _logit_mu_eta(eta):
    a = jnp.exp(-jnp.abs(eta))
    return jnp.maximum(a / (1.0 + a) ** 2, _EPS)


def _probit_inv(eta):
    return ndtr(jnp.clip(eta, -_PROBIT_THRESH, _PROBIT_THRESH))


def _probit_mu_eta(eta):
    return jnp.maximum(jnp.exp(-0.5 * eta**2) / jnp.sqrt(2.0 * jnp.pi), _EPS)


def _cloglog_inv(eta):
    return jnp.clip(-jnp.expm1(-jnp.exp(jnp.minimum(eta, 700.0))), _EPS, 1.0 - _EPS)


def _cloglog_mu_eta(eta):
    e = jnp.minimum(eta, 700.0)
    return jnp.maximum(jnp.exp(e) * jnp.exp(-jnp.exp(e)), _EPS)


_LINKS = {
    "logit": (lambda mu: jnp.log(mu / (1.0 - mu)), _logit_inv, _logit_mu_eta),
    "probit": (ndtri, _probit_inv, _probit_mu_eta),
    "cloglog": (lambda mu: jnp.log(-jnp.log1p(-mu)), _cloglog_inv, _cloglog_mu_eta),
    "log": (jnp.log, lambda eta: jnp.maximum(jnp.exp(eta), _EPS), lambda eta: jnp.maximum(jnp.exp(eta), _EPS)),
    "identity": (lambda mu: mu, lambda eta: eta, jnp.ones_like),
}


@dataclass(frozen=True)
class Family:
    """Base class: a distribution of the exponential family (or the negative binomial) with a link."""

    link: Link
    name: str = ""
    links: tuple = ()
    #: the link with which Fisher scoring is Newton's method (observed = expected information)
    canonical: str = ""
    #: whether the family has a parameter φ of its own (the negative binomial's θ)
    has_phi: bool = False

    def __post_init__(self):
        theta = getattr(self, "theta", None)
        if theta is not None and not (isinstance(theta, (int, float)) and not isinstance(theta, bool) and theta > 0
                                      and np.isfinite(theta)):
            raise DataError(f"the negative binomial's theta must be a positive number (or None: estimated), "
                            f"got {theta!r}")
        if isinstance(self.link, str):
            object.__setattr__(self, "link", Link(self.link))
        if self.link.name not in self.links:
            raise DataError(f"the {self.name} family takes the links {', '.join(self.links)}, not {self.link.name!r}")

    @property
    def fixed_phi(self) -> float:
        """φ when it is not estimated: a fixed negative binomial θ, else 0 (unused)."""
        return float(getattr(self, "theta", None) or 0.0)

    @property
    def estimates_phi(self) -> bool:
        """Whether φ is a parameter of the fit (the negative binomial's θ when not fixed)."""
        return self.has_phi and getattr(self, "theta", None) is None

    @property
    def is_canonical(self) -> bool:
        return self.link.name == self.canonical

    def linkfun(self, mu):
        return self.link.linkfun(mu)

    def linkinv(self, eta):
        return self.link.linkinv(eta)

    def mu_eta(self, eta):
        return self.link.mu_eta(eta)

    def __str__(self) -> str:
        return f"{self.label}  ( {self.link.name} )"

    @property
    def label(self) -> str:
        return self.name


def _ylogy(y, mu):
    """y log(y/μ), 0 at y = 0 (R's y_log_y)."""
    pos = y > 0
    return jnp.where(pos, y * jnp.log(jnp.where(pos, y, 1.0) / mu), 0.0)


@dataclass(frozen=True)
class Binomial(Family):
    """binomial(link): y a proportion of w trials (w = prior weights; 1 for 0/1 data)."""

    link: Link = Link("logit")
    name: str = "binomial"
    links: tuple = ("logit", "probit", "cloglog", "log")
    canonical: str = "logit"

    def variance(self, mu, phi=0.0):
        return mu * (1.0 - mu)

    def dev_resids(self, y, mu, w, phi=0.0):
        return 2.0 * w * (_ylogy(y, mu) + _ylogy(1.0 - y, 1.0 - mu))

    def aic_terms(self, y, mu, w, phi=0.0):
        # R: −2 Σ (wt/m) dbinom(round(m y), round(m), μ, log = TRUE) with m = wt (trials).
        m = jnp.round(w)
        k = jnp.round(m * y)
        logc = gammaln(m + 1.0) - gammaln(k + 1.0) - gammaln(m - k + 1.0)
        ll = logc + jnp.where(k > 0, k * jnp.log(mu), 0.0) + jnp.where(m - k > 0, (m - k) * jnp.log1p(-mu), 0.0)
        return jnp.where(w > 0, -2.0 * ll, 0.0)

    def mustart(self, y, w):
        return (w * y + 0.5) / (w + 1.0)

    def simulate(self, rng: np.random.Generator, mu, w, phi=0.0, size=None):
        m = np.round(np.asarray(w)).astype(np.int64)
        draws = rng.binomial(m, mu, size=size)
        return np.where(m > 0, draws / np.maximum(m, 1), 0.0)


@dataclass(frozen=True)
class Poisson(Family):
    """poisson(link): counts."""

    link: Link = Link("log")
    name: str = "poisson"
    links: tuple = ("log", "identity")
    canonical: str = "log"

    def variance(self, mu, phi=0.0):
        return mu

    def dev_resids(self, y, mu, w, phi=0.0):
        return 2.0 * w * (_ylogy(y, mu) - (y - mu))

    def aic_terms(self, y, mu, w, phi=0.0):
        ll = jnp.where(y > 0, y * jnp.log(mu), 0.0) - mu - gammaln(y + 1.0)
        return -2.0 * w * ll

    def mustart(self, y, w):
        return y + 0.1

    def simulate(self, rng: np.random.Generator, mu, w, phi=0.0, size=None):
        return rng.poisson(mu, size=size).astype(float)


@dataclass(frozen=True)
class NegativeBinomial(Family):
    """negative.binomial(θ, link) of MASS: Var(y) = μ + μ²/θ. With ``glmer(family="negative_binomial")``
    (lme4's ``glmer.nb``) θ is estimated with the other parameters; ``theta`` here fixes it."""

    link: Link = Link("log")
    theta: float | None = None
    name: str = "negative_binomial"
    links: tuple = ("log", "identity")
    canonical: str = ""  # no link makes Fisher scoring Newton's method (θ enters the canonical link)
    has_phi: bool = True

    def variance(self, mu, phi):
        return mu + mu**2 / phi

    def dev_resids(self, y, mu, w, phi):
        return 2.0 * w * (_ylogy(y, mu) - (y + phi) * jnp.log((y + phi) / (mu + phi)))

    def aic_terms(self, y, mu, w, phi):
        ll = (gammaln(phi + y) - gammaln(phi) - gammaln(y + 1.0) + phi * jnp.log(phi)
              + jnp.where(y > 0, y * jnp.log(mu), 0.0) - (phi + y) * jnp.log(phi + mu))
        return -2.0 * w * ll

    def mustart(self, y, w):
        return y + (y == 0) / 6.0

    def simulate(self, rng: np.random.Generator, mu, w, phi=0.0, size=None):
        mu = np.asarray(mu, float)
        return rng.negative_binomial(phi, phi / (phi + mu), size=size).astype(float)

    @property
    def label(self) -> str:
        return "Negative Binomial" + (f"({self.theta:.4g})" if self.theta is not None else "")


_NAMES = {
    "binomial": Binomial, "poisson": Poisson,
    "negative_binomial": NegativeBinomial, "negbin": NegativeBinomial, "nb": NegativeBinomial,
}


def make_family(family, link: str | None = None) -> Family:
    """A :class:`Family` from a family object or its name ("binomial", "poisson",
    "negative_binomial"), with ``link`` (default: the family's canonical link, log for the
    negative binomial)."""
    if isinstance(family, Family):
        if link is not None and link != family.link.name:
            return dataclasses.replace(family, link=Link(link))  # keeps a fixed θ
        return family
    if isinstance(family, type) and issubclass(family, Family):
        return family() if link is None else family(link=Link(link))
    if not isinstance(family, str) or family.lower() not in _NAMES:
        raise DataError(f"family must be 'binomial', 'poisson', 'negative_binomial' or a jaxmlm.families "
                        f"object such as jaxmlm.families.Binomial(link='probit'); got {family!r}")
    cls = _NAMES[family.lower()]
    return cls() if link is None else cls(link=Link(link))

"""Residual correlation and variance structures, as nlme's ``correlation=`` and ``weights=``.

A linear mixed model with a residual structure has

    y = Xβ + Zb + ε,   b ~ N(0, σ²ΛΛᵀ),   ε ~ N(0, σ²R),   R = D C D

where C is block diagonal — one correlation matrix C_g per group g of the structure's
grouping — and D = diag(dᵢ) holds a variance function's standard-deviation ratios
(Pinheiro & Bates 2000, *Mixed-Effects Models in S and S-PLUS*, §5.1–5.3; nlme's
``corStruct`` and ``varFunc`` classes). Prior weights wᵢ multiply the precision:
dᵢ ← dᵢ / √wᵢ.

The structures (the names and ``form`` syntax are nlme's):

=====================================  ========================================  ==========
structure                              correlation / SD ratio                    parameter
=====================================  ========================================  ==========
``corAR1(form="~ 1 | g")``             φ^|i−j| by position within the group      Phi
``corAR1(form="~ t | g")``             φ^|tᵢ−tⱼ|, t integer                       Phi
``corCAR1(form="~ t | g")``            φ^|tᵢ−tⱼ|, t continuous, 0 < φ < 1         Phi
``corCompSymm(form="~ 1 | g")``        ρ for every pair of the group             Rho
``corExp(form="~ x + y | g")``         exp(−dᵢⱼ / range) (Euclidean d);          range,
                                       (1 − nugget) exp(−d/range) with a nugget   nugget
``varIdent(form="~ 1 | s")``           δ_s, the SD of stratum s over the first    one per
                                       stratum's                                  stratum
``varPower(form="~ x [| s]")``         |xᵢ|^δ (δ per stratum)                     power
``varExp(form="~ x [| s]")``           exp(δ xᵢ)                                  expon
``varFixed("~ x")``                    √xᵢ (variance ∝ x)                         —
=====================================  ========================================  ==========

``g`` may be nested, ``"~ 1 | school/child"``: a group is a combination of the levels. In
:func:`jaxmlm.lmer` a form without ``| g`` takes the random effects' grouping factor with
the most levels (nlme's innermost group); in :func:`jaxmlm.gls` it makes all rows one group.

How a structure enters the likelihood: with R_g = L_g L_gᵀ, the rows of each group are
whitened, [Z X y]* = L_g⁻¹ D_g⁻¹ [Z X y], and the model for the whitened rows has iid
errors, so the engine's profiled criterion applies to their statistics, plus log|R| =
Σ 2 log dᵢ + Σ_g log|C_g| (the Jacobian of the whitening). AR(1) and CAR(1) are Markov:
L_g⁻¹ is bidiagonal (Prais–Winsten: e*₁ = e₁, e*ᵣ = (eᵣ − ρᵣ eᵣ₋₁)/√(1 − ρᵣ²) with
ρᵣ = φ^(tᵣ − tᵣ₋₁)), O(n) per evaluation; compound symmetry has a closed-form root,
C_g⁻¹ = (I − ρ/(1 + (m − 1)ρ) 11ᵀ)/(1 − ρ), O(n); corExp factors each group's m × m matrix,
O(n m²), in one compiled kernel over all groups. AR(1)/CAR(1) with few distinct time steps,
compound symmetry with few distinct group sizes, ``varIdent`` (not with compound symmetry),
``varFixed`` and prior weights need no pass per evaluation: the whitened statistics are a
weighted sum of statistics of row classes made once per fit
(:func:`jaxmlm._residual_fit.basis_stats`); the others pass over the rows at each evaluation.

Parameters are optimized unconstrained: φ = tanh(u) (AR(1)), logistic(u) (CAR(1), the
nugget), ρ = −1/(m−1) + (1 + 1/(m−1)) logistic(u) (m the largest group), range and the
varIdent ratios exp(u), power and expon u itself. Results report them as nlme's
``coef(..., unconstrained = FALSE)``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._design import take_columns
from ._errors import DataError, FormulaError, UnknownColumnError
from ._objective import cholesky_by_columns, solve_lower_by_rows

__all__ = ["corAR1", "corCAR1", "corCompSymm", "corExp", "varIdent", "varPower", "varExp", "varFixed",
           "CorrelationStructure", "VarianceFunction"]


# ---- the form: "~ covariates | grouping" -----------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _parse_form(form, what: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(covariates, grouping columns) of an nlme form: ``"~ t | g"``, ``"~ x + y | a/b"``, ``"~ 1"``."""
    if not isinstance(form, str):
        raise FormulaError(f"{what}: form must be a string such as '~ 1 | Subject', got {form!r}")
    text = form.strip()
    if not text.startswith("~"):
        raise FormulaError(f"{what}: form must start with '~' (e.g. '~ 1 | Subject'), got {form!r}")
    text = text[1:]
    if text.count("|") > 1:
        raise FormulaError(f"{what}: form {form!r} has more than one '|'")
    lhs, _, rhs = text.partition("|")
    covs = tuple(c.strip() for c in lhs.split("+") if c.strip())
    if covs == ("1",):
        covs = ()
    if any(c == "1" for c in covs) or not lhs.strip():
        raise FormulaError(f"{what}: form {form!r} should read '~ 1 | g' or '~ covariate | g'")
    for c in covs:
        if not re.fullmatch(r"[A-Za-z_.][\w.]*", c):
            raise FormulaError(f"{what}: {c!r} in form {form!r} is not a column name (write the transformed "
                               "values into a column first)")
    groups = tuple(g.strip() for g in rhs.split("/")) if rhs.strip() else ()
    if any(not g for g in groups):
        raise FormulaError(f"{what}: form {form!r} has an empty grouping factor")
    return covs, groups


def _column(frame: pd.DataFrame, name: str, what: str, plain: bool = False) -> pd.Series:
    """The column ``name`` of the rows the model uses, without missing values; ``plain``: small
    data's numeric column as the design reads it (:func:`~jaxmlm._design.take_columns`)."""
    if name not in frame.columns:
        close = [c for c in frame.columns if str(c).lower() == name.lower()]
        raise UnknownColumnError(name, close)
    col = take_columns(frame, [name])[name] if plain else frame[name]
    values = col.to_numpy()
    missing = np.isnan(values).any() if values.dtype.kind == "f" else bool(pd.isna(values).any())
    if missing:
        raise DataError(f"{what}: column {name!r} has missing values in the rows the model uses "
                        "(nlme's default na.action fails too); drop those rows first")
    return col


def _numeric(frame: pd.DataFrame, name: str, what: str) -> np.ndarray:
    col = _column(frame, name, what, plain=True)
    plain = isinstance(col.dtype, np.dtype) and col.dtype.kind in "iuf"  # pandas' dtype tests cost more
    if not plain and (not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
        raise DataError(f"{what}: covariate {name!r} must be numeric, got dtype {col.dtype}")
    x = col.to_numpy(dtype=float)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what}: covariate {name!r} has non-finite values")
    return x


def group_codes(frame: pd.DataFrame, groups: tuple[str, ...], what: str) -> np.ndarray:
    """Integer codes of the combinations of the grouping columns (nested ``a/b``: the pairs)."""
    if not groups:
        return np.zeros(len(frame), np.int64)
    cols = [_column(frame, g, what) for g in groups]
    if len(cols) == 1:
        return pd.factorize(cols[0], sort=True)[0].astype(np.int64)
    return pd.MultiIndex.from_arrays(cols).factorize()[0].astype(np.int64)


def _strata(frame: pd.DataFrame, groups: tuple[str, ...], what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes and labels of a variance function's strata, in the order of the factor's levels."""
    if not groups:
        return np.zeros(len(frame), np.int64), ()
    cols = [_column(frame, g, what) for g in groups]
    if len(cols) == 1:
        col = cols[0]
        if isinstance(col.dtype, pd.CategoricalDtype):
            empty = [c for c in col.cat.categories if not (col == c).any()]
            if empty:
                raise DataError(f"{what}: stratum {groups[0]!r} has no rows at level(s) {empty!r}, so their "
                                "parameters cannot be estimated; drop them with .cat.remove_unused_categories()")
            return col.cat.codes.to_numpy(np.int64), tuple(str(c) for c in col.cat.categories)
        codes, labels = pd.factorize(col, sort=True)
        return codes.astype(np.int64), tuple(str(c) for c in labels)
    codes, labels = pd.MultiIndex.from_arrays(cols).factorize(sort=True)
    return codes.astype(np.int64), tuple("*".join(str(v) for v in t) for t in labels)


# ---- correlation structures --------------------------------------------------------------------------

@dataclass(frozen=True)
class CorrelationStructure:
    """A within-group residual correlation (base class; see the module docstring)."""

    form: str = "~ 1"
    kind = ""
    title = ""

    def __post_init__(self):
        _parse_form(self.form, type(self).__name__)

    @property
    def covariates(self) -> tuple[str, ...]:
        return _parse_form(self.form, type(self).__name__)[0]

    @property
    def groups(self) -> tuple[str, ...]:
        return _parse_form(self.form, type(self).__name__)[1]

    def param_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def start(self, bound: "BoundCorrelation") -> np.ndarray:
        raise NotImplementedError

    def natural(self, u, m: int):
        """nlme's ``coef(unconstrained = FALSE)`` from the optimizer's unconstrained values."""
        raise NotImplementedError

    def bind(self, frame: pd.DataFrame, codes: np.ndarray) -> "BoundCorrelation":
        """The structure's arrays on the rows of ``frame`` grouped by ``codes``: the order of
        the rows within each group and the positions or coordinates the kernel needs."""
        return BoundCorrelation(self, codes, _order_within(codes, None), None, None)


def _order_within(codes: np.ndarray, key: np.ndarray | None) -> np.ndarray:
    """Row numbers sorted by group, then by ``key`` (stable: data order where key ties or is None)."""
    if key is None:
        return np.argsort(codes, kind="stable")
    return np.lexsort((key, codes))


@dataclass(frozen=True)
class BoundCorrelation:
    """A correlation structure on data: group codes (n,), the rows sorted by group and time
    (``order``), the time of each row (AR(1)/CAR(1)) or its coordinates (corExp)."""

    structure: CorrelationStructure
    codes: np.ndarray
    order: np.ndarray
    time: np.ndarray | None
    coords: np.ndarray | None


def _times(self, frame, codes, integer: bool) -> BoundCorrelation:
    what = type(self).__name__
    covs = self.covariates
    if len(covs) > 1:
        raise FormulaError(f"{what}: form {self.form!r} takes one time covariate, got {len(covs)}")
    if not covs:
        order = _order_within(codes, None)
        time = np.empty(len(codes))
        # position within the group, in the order of the data (nlme's default)
        pos = np.arange(len(codes), dtype=float)
        sorted_codes = codes[order]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_codes)) + 1))
        first = np.repeat(starts, np.diff(np.append(starts, len(codes))))
        time[order] = pos - first
        return BoundCorrelation(self, codes, order, time, None)
    t = _numeric(frame, covs[0], what)
    if integer:
        whole = np.round(t)  # 3.0000000000000004 is 3: steps must be exact integers (the sign of φ^Δ)
        if np.any(np.abs(t - whole) > 1e-8):
            raise DataError(f"{what}: the time covariate {covs[0]!r} must be integer-valued (nlme's corAR1); "
                            "use corCAR1 for continuous times")
        t = whole
    order = _order_within(codes, t)
    ts, cs = t[order], codes[order]
    same = (np.diff(cs) == 0) & (np.diff(ts) == 0)
    if same.any():
        i = order[1:][same][0]
        raise DataError(f"{what}: time {covs[0]!r} = {t[i]:g} repeats within a group ({int(same.sum())} "
                        f"repeated times); each row of a group needs its own time")
    return BoundCorrelation(self, codes, order, t, None)


@dataclass(frozen=True)
class corAR1(CorrelationStructure):
    """First-order autoregressive correlation within groups, as nlme's ``corAR1``:
    cor(εᵢ, εⱼ) = φ^|tᵢ − tⱼ| with t the row's position within its group (``"~ 1 | g"``) or an
    integer time covariate (``"~ t | g"``; gaps allowed), −1 < φ < 1. Whitened in O(n)."""

    kind = "ar1"
    title = "AR(1)"

    def param_names(self):
        return ("Phi",)

    def start(self, bound):
        return np.zeros(1)

    def natural(self, u, m):
        return jnp.tanh(u)

    def bind(self, frame, codes):
        return _times(self, frame, codes, integer=True)


@dataclass(frozen=True)
class corCAR1(CorrelationStructure):
    """Continuous-time AR(1) within groups, as nlme's ``corCAR1``: cor(εᵢ, εⱼ) = φ^|tᵢ − tⱼ|
    with t a continuous time covariate (``"~ t | g"``), 0 < φ < 1. Whitened in O(n)."""

    kind = "car1"
    title = "Continuous AR(1)"

    def param_names(self):
        return ("Phi",)

    def start(self, bound):
        return np.array([np.log(0.2 / 0.8)])  # φ = 0.2, nlme's default value

    def natural(self, u, m):
        return jax.nn.sigmoid(u)

    def bind(self, frame, codes):
        if not self.covariates:
            raise FormulaError("corCAR1 needs a time covariate: form='~ time | group'")
        return _times(self, frame, codes, integer=False)


@dataclass(frozen=True)
class corCompSymm(CorrelationStructure):
    """Compound symmetry (exchangeable) within groups, as nlme's ``corCompSymm``: every pair of
    rows of a group has correlation ρ, −1/(m − 1) < ρ < 1 with m the largest group."""

    kind = "cs"
    title = "Compound symmetry"

    def param_names(self):
        return ("Rho",)

    def start(self, bound):
        return np.zeros(1) + _cs_u(0.0, _max_group(bound.codes))

    def natural(self, u, m):
        lo = -1.0 / (m - 1)
        return lo + (1.0 - lo) * jax.nn.sigmoid(u)

    def bind(self, frame, codes):
        if self.covariates:
            raise FormulaError("corCompSymm takes no covariate: form='~ 1 | group'")
        b = CorrelationStructure.bind(self, frame, codes)
        if _max_group(codes) < 2:
            raise DataError("corCompSymm: every group has a single row, so there is no within-group "
                            "correlation to estimate; check the grouping in form")
        return b


def _cs_u(rho: float, m: int) -> float:
    lo = -1.0 / (m - 1)
    s = (rho - lo) / (1.0 - lo)
    return float(np.log(s / (1.0 - s)))


def _max_group(codes: np.ndarray) -> int:
    return int(np.bincount(codes).max()) if len(codes) else 0


@dataclass(frozen=True)
class corExp(CorrelationStructure):
    """Exponential spatial correlation within groups, as nlme's ``corExp``: cor(εᵢ, εⱼ) =
    exp(−dᵢⱼ / range) with d the Euclidean distance between the rows' covariates
    (``"~ x + y | g"``); with ``nugget=True``, (1 − nugget) exp(−d / range) for i ≠ j."""

    nugget: bool = False
    kind = "exp"
    title = "Exponential spatial correlation"

    def param_names(self):
        return ("range", "nugget") if self.nugget else ("range",)

    def start(self, bound):
        d = _distances(bound)
        pos = d[d > 0]
        r = float(np.median(pos)) if pos.size else 1.0
        return np.array([np.log(r), np.log(0.1 / 0.9)]) if self.nugget else np.array([np.log(r)])

    def natural(self, u, m):
        r = jnp.exp(u[:1])
        return jnp.concatenate([r, jax.nn.sigmoid(u[1:])]) if self.nugget else r

    def bind(self, frame, codes):
        if not self.covariates:
            raise FormulaError("corExp needs coordinates: form='~ x + y | group'")
        xy = np.column_stack([_numeric(frame, c, "corExp") for c in self.covariates])
        order = _order_within(codes, None)
        return BoundCorrelation(self, codes, order, None, xy)


def _distances(bound: BoundCorrelation) -> np.ndarray:
    """All within-group distances (for a start), on at most ~200 groups."""
    out = []
    for g in np.unique(bound.codes)[:200]:
        xy = bound.coords[bound.codes == g]
        out.append(np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)).ravel())
    return np.concatenate(out) if out else np.ones(1)


# ---- the whitening kernels ---------------------------------------------------------------------------

def correlation_whiten(kind: str, nugget: bool, nat, time, coords, mask, A):
    """(L⁻¹A, log|C|) for the padded groups: ``A`` (G, m, c) rows of each group in order,
    ``mask`` (G, m) 1 for a row, 0 for padding (padding rows are zero and stay zero); ``nat`` the
    natural parameters. Markov structures by their bidiagonal inverse factor, the others by a
    Cholesky factor of each group's m × m matrix (padding: identity)."""
    if kind in ("ar1", "car1"):
        phi = nat[0]
        dt = time[:, 1:] - time[:, :-1]
        real = (mask[:, 1:] * mask[:, :-1]) > 0
        rho = jnp.where(real, _phi_power(phi, jnp.where(real, dt, 1.0), kind), 0.0)
        s = jnp.sqrt(1.0 - rho**2)
        head = A[:, :1]
        tail = (A[:, 1:] - rho[..., None] * A[:, :-1]) / s[..., None]
        return jnp.concatenate([head, tail], axis=1), jnp.sum(jnp.log1p(-(rho**2)))
    m = mask.shape[1]
    eye = jnp.eye(m, dtype=A.dtype)
    both = mask[:, :, None] * mask[:, None, :]
    if kind == "cs":
        C = nat[0] + (1.0 - nat[0]) * eye
        C = jnp.broadcast_to(C, both.shape)
    elif kind == "exp":
        diff = coords[:, :, None, :] - coords[:, None, :, :]
        d2 = jnp.sum(diff**2, axis=-1)
        off = d2 > 0
        d = jnp.sqrt(jnp.where(off, d2, 1.0))
        C = jnp.where(off, jnp.exp(-d / nat[0]), 1.0)
        if nugget:
            C = jnp.where(eye > 0, 1.0, (1.0 - nat[1]) * C)
    else:  # pragma: no cover - the structures above are all there are
        raise ValueError(kind)
    C = jnp.where(both > 0, C, eye)
    # loops, not XLA's batched LAPACK calls, which deadlock inside the optimizer's loop
    # (see jaxmlm._objective's batched linear algebra): corExp with groups of up to 12 rows hung
    L = cholesky_by_columns(C)
    out = solve_lower_by_rows(L, A)
    return out, 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=1, axis2=2)))


def _phi_power(phi, dt, kind):
    """φ^Δ: for AR(1) Δ is a positive integer and φ may be negative (sign^Δ |φ|^Δ); Δ = 1, the
    usual step, is φ itself (exact derivative at φ = 0, where |φ| has none)."""
    if kind == "car1":
        return jnp.exp(dt * jnp.log(phi))
    odd = jnp.mod(dt, 2.0) == 1.0
    zero = phi == 0
    # at φ = 0 (the start) φ^Δ = 0 with derivative 0 for Δ ≥ 2: no log of 0 anywhere, even in a
    # branch not taken (its derivative would turn into NaN)
    mag = jnp.where(zero, 0.0, jnp.exp(dt * jnp.log(jnp.where(zero, 1.0, jnp.abs(phi)))))
    return jnp.where(dt == 1.0, phi, jnp.where(odd, jnp.sign(phi), 1.0) * mag)


def correlation_matrix(structure: CorrelationStructure, nat: np.ndarray, time, coords, n: int) -> np.ndarray:
    """The correlation matrix of one group's n rows (host; for results and simulation)."""
    nat = np.asarray(nat, float)
    if structure.kind in ("ar1", "car1"):
        dt = np.abs(np.subtract.outer(time, time))
        if structure.kind == "ar1":
            return np.sign(nat[0]) ** dt * np.abs(nat[0]) ** dt
        return nat[0] ** dt
    if structure.kind == "cs":
        return nat[0] + (1.0 - nat[0]) * np.eye(n)
    d = np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1))
    C = np.exp(-d / nat[0])
    if structure.nugget:
        C = (1.0 - nat[1]) * C
    np.fill_diagonal(C, 1.0)
    return C


# ---- variance functions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class VarianceFunction:
    """A residual standard-deviation ratio per row (base class; see the module docstring)."""

    form: str = "~ 1"
    kind = ""
    title = ""

    def __post_init__(self):
        covs, _ = _parse_form(self.form, type(self).__name__)
        if "fitted" in covs:
            raise FormulaError(f"{type(self).__name__}: variance as a function of the fitted values "
                               "('~ fitted') is not supported; use a covariate, e.g. '~ age'")

    @property
    def covariates(self):
        return _parse_form(self.form, type(self).__name__)[0]

    @property
    def groups(self):
        return _parse_form(self.form, type(self).__name__)[1]

    def bind(self, frame: pd.DataFrame) -> "BoundVariance":
        what = type(self).__name__
        covs = self.covariates
        if len(covs) > 1:
            raise FormulaError(f"{what}: form {self.form!r} takes one covariate, got {len(covs)}")
        x = _numeric(frame, covs[0], what) if covs else np.zeros(len(frame))
        codes, labels = _strata(frame, self.groups, what)
        return BoundVariance(self, x, codes, labels)

    def param_names(self, bound) -> tuple[str, ...]:
        raise NotImplementedError

    def nparams(self, bound) -> int:
        return len(self.param_names(bound))

    def start(self, bound) -> np.ndarray:
        return np.zeros(self.nparams(bound))

    def natural(self, u):
        return u


@dataclass(frozen=True)
class BoundVariance:
    structure: VarianceFunction
    x: np.ndarray
    strata: np.ndarray
    labels: tuple[str, ...]


@dataclass(frozen=True)
class varIdent(VarianceFunction):
    """A different residual SD per stratum, as nlme's ``varIdent(form = ~ 1 | s)``: the SD of
    stratum s is σ δ_s, δ = 1 for the reference stratum — the first level of s (a Categorical's
    first category, else the smallest value). nlme takes the stratum of the first row of the data
    instead; the fit is the same, only the reference differs (make s a Categorical with that level
    first to report nlme's ratios)."""

    kind = "ident"
    title = "Different standard deviations per stratum"

    def bind(self, frame):
        if self.covariates:
            raise FormulaError("varIdent takes no covariate: form='~ 1 | stratum'")
        if not self.groups:
            raise FormulaError("varIdent needs strata: form='~ 1 | stratum'")
        b = VarianceFunction.bind(self, frame)
        if len(b.labels) < 2:
            raise DataError(f"varIdent: the stratum {'/'.join(self.groups)!r} has one level in the rows "
                            "used, so there is no ratio to estimate")
        return b

    def param_names(self, bound):
        return bound.labels[1:]

    def natural(self, u):
        return jnp.exp(u)


@dataclass(frozen=True)
class varPower(VarianceFunction):
    """Residual SD ∝ |x|^δ, as nlme's ``varPower(form = ~ x)`` (``"~ x | s"``: δ per stratum)."""

    kind = "power"
    title = "Power of variance covariate"

    def bind(self, frame):
        b = VarianceFunction.bind(self, frame)
        if not self.covariates:
            raise FormulaError("varPower needs a covariate: form='~ x'")
        if np.any(b.x == 0):
            raise DataError(f"varPower: the covariate {self.covariates[0]!r} is 0 in some rows, where |x|^δ "
                            "is 0 or infinite; shift it or use varExp")
        return b

    def param_names(self, bound):
        return ("power",) if not bound.labels else bound.labels


@dataclass(frozen=True)
class varExp(VarianceFunction):
    """Residual SD ∝ exp(δ x), as nlme's ``varExp(form = ~ x)`` (``"~ x | s"``: δ per stratum)."""

    kind = "exp"
    title = "Exponential of variance covariate"

    def bind(self, frame):
        if not self.covariates:
            raise FormulaError("varExp needs a covariate: form='~ x'")
        return VarianceFunction.bind(self, frame)

    def param_names(self, bound):
        return ("expon",) if not bound.labels else bound.labels


@dataclass(frozen=True)
class varFixed(VarianceFunction):
    """Residual variance ∝ x (known, no parameter), as nlme's ``varFixed(~ x)``."""

    kind = "fixed"
    title = "Fixed variance function"

    def bind(self, frame):
        if not self.covariates or self.groups:
            raise FormulaError("varFixed takes one covariate and no strata: varFixed('~ x')")
        b = VarianceFunction.bind(self, frame)
        if np.any(b.x <= 0):
            raise DataError(f"varFixed: the variance covariate {self.covariates[0]!r} must be > 0")
        return b

    def param_names(self, bound):
        return ()


def log_sd_ratio(kind: str, nat, x, strata):
    """log dᵢ per row for the natural parameters ``nat`` (traceable)."""
    if kind == "ident":
        ratios = jnp.concatenate([jnp.zeros(1, nat.dtype), jnp.log(nat)])
        return ratios[strata]
    if kind == "power":
        return nat[strata] * jnp.log(jnp.abs(x))
    if kind == "exp":
        return nat[strata] * x
    if kind == "fixed":
        return 0.5 * jnp.log(x)
    return jnp.zeros_like(x)

"""Covariance structures of random-effects terms: parameters ↔ relative covariance factor.

A term with k columns has random effects b_l ~ N(0, Σ) per level l, and the
engine works with the relative factor T (k × k, lower triangular) of
Σ = σ² T Tᵀ (Bates et al. 2015, §2.2). A structure maps its parameter vector
to T. The structures are those of glmmTMB and lme4 ≥ 2.0 (its ``Covariance``
classes and covariance-structures vignette), written in the formula as
``us(1 + x | g)``, ``diag(...)``, ``cs(...)`` and ``ar1(...)``:

==========  ==========================================  ================================
structure   Σ / σ²                                      parameters
==========  ==========================================  ================================
us          T Tᵀ, T any lower triangle (lme4's default)  T's lower triangle, column-wise
diag        diag(s₁², …, s_k²)                           s_i (T's diagonal)
diag, hom   s² I (Stata's ``cov(identity)``)             t, s = t²
cs          D C D, C = (1 − ρ) I + ρ 11ᵀ, D = diag(s)    t₁…t_k, s_i = t_i²; η → ρ
cs, hom     s² C (Stata's ``cov(exchangeable)``)         t, s = t²; η → ρ
ar1         s² C, C_ij = ρ^|i−j| (ar1's default hom)     t, s = t²; η → ρ = tanh η
ar1, hom=F  D C D                                       t₁…t_k; η
==========  ==========================================  ================================

For cs, ρ = (e^η − 1)/(e^η + k − 1) ∈ (−1/(k−1), 1), the range where C is
positive definite; η = 0 is ρ = 0. The scales enter squared (s = t²): the
criterion is then smooth and even in each t, flat at t = 0, like the
diagonal of an unstructured T, so the optimizer's sign canonicalization
(t ≥ 0) and boundary snapping (t → 0) apply unchanged. us and diag (not
hom) are *linear*: each parameter is one entry of T, which the engine's
closed-form derivatives use; the others are differentiated by autodiff.

Each structure also says which of its parameters are scales (bounded at 0),
where the optimizer starts (Σ = σ² I: lme4's start), and which rows
``VarCorr`` shows (diag: no covariances).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

__all__ = ["CovarianceStructure", "Structure", "make_structure"]


class CovarianceStructure:
    """The protocol every covariance structure implements; subclass it for a structure of your own.

    A structure maps a parameter vector (``nparams`` entries, traced) to the relative
    factor T of its term (``factor``: k × k, Σ = σ² T Tᵀ). The engine needs only that
    and, for the optimizer, ``scale_mask`` (parameters whose sign does not change Σ, made
    ≥ 0 and snapped to 0 at the boundary) and ``sign_columns``. The start is 1 for every
    scale parameter and 0 for the others: that point must give a positive definite Σ.
    Instances must be hashable and immutable (a frozen dataclass): they are part of the
    engine's static layout, one compiled program per structure value.

    The defaults below serve a structure with a general Σ: its SDs and all its
    correlations as natural parameters, parameters named ``group.par1``, ….
    A structure is attached to a term with :func:`jaxmlm.core.with_structure`.
    """

    # A structure has (as attributes or dataclass fields) ``kind``, its name in formulas and
    # in :meth:`text`, ``k``, its term's number of columns, and ``hom`` (one variance for all).
    hom = False

    @property
    def linear(self) -> bool:
        """Whether every parameter is one entry of T (only the built-in us and diag are)."""
        return False

    @property
    def nparams(self) -> int:
        raise NotImplementedError("a covariance structure says how many parameters it has (nparams)")

    @property
    def nscales(self) -> int:
        return int(np.sum(self.scale_mask()))

    def factor(self, par) -> jnp.ndarray:
        """T (k × k) from the parameters (traceable, differentiable)."""
        raise NotImplementedError("a covariance structure maps its parameters to T (factor)")

    def scale_mask(self) -> np.ndarray:
        """Which parameters are scales: Σ is even in each, so it is made ≥ 0 and may be snapped to 0."""
        return np.zeros(self.nparams, bool)

    def sign_columns(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """(scale parameter, parameters whose sign flips with it) that leave Σ unchanged."""
        return tuple((int(i), (int(i),)) for i in np.flatnonzero(self.scale_mask()))

    def sdcor_labels(self) -> tuple[tuple[str, int, int], ...]:
        """Natural parameters ("sd", i, i) / ("cor", i, j), in lme4's order for a general Σ."""
        k = self.k
        return tuple(("sd", i, i) if i == j else ("cor", i, j) for j in range(k) for i in range(j, k))

    def sdcor_names(self, columns: tuple[str, ...], group: str) -> list[str]:
        """lme4's ``confint(oldNames = FALSE)`` names of :meth:`sdcor_labels`: ``sd_x|g``, ``cor_x.(Intercept)|g``."""
        return [f"sd_{columns[i]}|{group}" if kind == "sd" else f"cor_{columns[i]}.{columns[j]}|{group}"
                for kind, i, j in self.sdcor_labels()]

    def sdcor(self, S: np.ndarray) -> np.ndarray:
        """The natural parameters from covariance matrices S (..., k, k): SDs √S_ii and
        correlations S_ij/(sd_i sd_j) (NaN where an SD is 0, as lme4's Cv_to_Sv)."""
        sd = np.sqrt(np.diagonal(S, axis1=-2, axis2=-1))
        out = []
        with np.errstate(invalid="ignore", divide="ignore"):
            for kind, i, j in self.sdcor_labels():
                out.append(sd[..., i] if kind == "sd" else S[..., i, j] / (sd[..., i] * sd[..., j]))
        return np.stack(out, axis=-1)

    def params_from_sdcor(self, sd, cor, sigma):
        raise NotImplementedError(f"{type(self).__name__} has no map from SDs and correlations to its parameters")

    def param_names(self, columns: tuple[str, ...], group: str) -> list[str]:
        return [f"{group}.par{i + 1}" for i in range(self.nparams)]

    def text(self, expr: str, group: str) -> str:
        return f"{self.kind}({expr} | {group})"

    def shows_covariances(self) -> bool:
        """Whether VarCorr lists the covariances of the term's columns."""
        return True


@dataclass(frozen=True)
class Structure(CovarianceStructure):
    """The built-in structures (hashable: part of the engine's static layout).

    ``kind``: "us", "diag", "cs" or "ar1"; ``k``: the term's columns; ``hom``:
    one variance for every column.
    """

    kind: str
    k: int
    hom: bool = False

    @property
    def linear(self) -> bool:
        """Whether every parameter is one entry of T (the engine's closed-form derivatives apply)."""
        return self.kind == "us" or (self.kind == "diag" and not self.hom)

    @property
    def nscales(self) -> int:
        return 1 if self.hom else self.k

    @property
    def correlated(self) -> bool:
        """Whether the structure has a correlation parameter η (cs and ar1 over 2+ columns)."""
        return self.kind in ("cs", "ar1") and self.k >= 2

    @property
    def nparams(self) -> int:
        if self.kind == "us":
            return self.k * (self.k + 1) // 2
        return self.nscales + int(self.correlated)  # diag: scales; cs, ar1: and the correlation's η

    def positions(self) -> tuple[int, ...]:
        """Flat positions (row · k + column) in T of each parameter of a linear structure."""
        k = self.k
        if self.kind == "us":
            return tuple(i * k + j for j in range(k) for i in range(j, k))
        if self.linear:
            return tuple(i * k + i for i in range(k))
        raise ValueError(f"{self.kind} is not a linear structure")

    def scale_mask(self) -> np.ndarray:
        """Which parameters are ≥ 0 at the canonical optimum and may be snapped to 0."""
        if self.kind == "us":
            return np.array([i == j for j in range(self.k) for i in range(j, self.k)])
        mask = np.zeros(self.nparams, bool)
        mask[: self.nscales] = True
        return mask

    def sign_columns(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """(scale parameter, parameters whose sign flips with it) that leave Σ unchanged."""
        if self.kind == "us":
            k, out, t = self.k, [], 0
            for j in range(k):
                out.append((t, tuple(range(t, t + k - j))))
                t += k - j
            return tuple(out)
        return tuple((i, (i,)) for i in range(self.nscales))

    def rho(self, eta):
        """The correlation of cs and ar1 from its unconstrained parameter η."""
        if self.kind == "ar1":
            return jnp.tanh(eta)
        e = jnp.exp(eta)
        return (e - 1.0) / (e + self.k - 1.0)

    def eta(self, rho):
        """η from the correlation: the inverse of :meth:`rho` (traceable)."""
        if self.kind == "ar1":
            return jnp.arctanh(rho)
        return jnp.log1p((self.k - 1) * rho) - jnp.log1p(-rho)

    def rho_range(self) -> tuple[float, float]:
        """The open range of the cs or ar1 correlation: (−1/(k−1), 1) for cs, where C is
        positive definite, (−1, 1) for ar1."""
        return (-1.0 / (self.k - 1), 1.0) if self.kind == "cs" else (-1.0, 1.0)

    def factor(self, par) -> jnp.ndarray:
        """T (k × k, lower triangular) from the parameters (traceable)."""
        k = self.k
        par = jnp.asarray(par)
        if self.linear:
            return jnp.zeros(k * k, par.dtype).at[jnp.asarray(self.positions())].set(par).reshape(k, k)
        scales = jnp.broadcast_to(par[: self.nscales] ** 2, (k,))
        if not self.correlated:
            return jnp.diag(scales)
        rho = self.rho(par[self.nscales])
        if self.kind == "ar1":
            # Cholesky factor of C_ij = ρ^|i−j|: L_i0 = ρ^i, L_ij = ρ^(i−j) √(1 − ρ²) for 1 ≤ j ≤ i.
            i, j = np.tril_indices(k)
            pw = [jnp.ones((), par.dtype)]
            for _ in range(k - 1):
                pw.append(pw[-1] * rho)  # products, not rho ** d: the derivative of 0 ** 0 is NaN
            powers = jnp.zeros((k, k), par.dtype).at[i, j].set(jnp.stack(pw)[i - j])
            col = jnp.where(jnp.arange(k) == 0, 1.0, jnp.sqrt(1.0 - rho**2)).astype(par.dtype)
            L = powers * col[None, :]
        else:
            L = _cs_cholesky(rho, k, par.dtype)
        return scales[:, None] * L

    # ---- natural parameters: SDs and correlations ------------------------------------------

    def sdcor_labels(self) -> tuple[tuple[str, int, int], ...]:
        """The structure's natural parameters as ("sd", i, i) and ("cor", i, j): for us lme4's
        order (per column j its sd, then the correlations of rows i > j); diag the SDs; cs and
        ar1 the SDs (one if hom) then their one correlation, read at (1, 0)."""
        k = self.k
        if self.kind == "us":
            return tuple(("sd", i, i) if i == j else ("cor", i, j) for j in range(k) for i in range(j, k))
        sds = tuple(("sd", i, i) for i in range(self.nscales))
        return sds + (("cor", 1, 0),) if self.correlated else sds

    def params_from_sdcor(self, sd, cor, sigma):
        """The structure's parameters from its SDs (``nscales`` of them, or k for us), its
        correlations (in :meth:`sdcor_labels` order) and σ (traceable): the inverse of T's map."""
        k = self.k
        if self.kind == "us":
            R = jnp.eye(k, dtype=sd.dtype)
            pairs = [(i, j) for kind, i, j in self.sdcor_labels() if kind == "cor"]
            if pairs:
                il, jl = np.array(pairs).T
                R = R.at[il, jl].set(cor).at[jl, il].set(cor)
            T = sd[:, None] * jnp.linalg.cholesky(R) / sigma
            jj, ii = np.triu_indices(k)
            return T[ii, jj]
        if not self.correlated:
            return sd / sigma if self.linear else jnp.sqrt(sd / sigma)
        return jnp.concatenate([jnp.sqrt(sd / sigma), self.eta(cor[0])[None]])

    def param_names(self, columns: tuple[str, ...], group: str) -> list[str]:
        """Names of the parameters (θ): lme4's ``group.column`` / ``group.row.column`` for us and
        diag; for cs and ar1 ``group.column`` for each scale and ``group.eta`` for the correlation."""
        if self.linear:
            return [f"{group}.{columns[p // self.k]}" if p // self.k == p % self.k
                    else f"{group}.{columns[p // self.k]}.{columns[p % self.k]}" for p in self.positions()]
        return [f"{group}.{columns[i]}" for i in range(self.nscales)] + ([f"{group}.eta"] if self.correlated else [])

    def text(self, expr: str, group: str) -> str:
        """The term as written in a formula: ``(expr | g)`` for us, else ``cs(expr | g)`` (``, hom = …``)."""
        if self.kind == "us":
            return f"({expr} | {group})"
        default_hom = self.kind == "ar1"
        hom = "" if self.hom == default_hom else f", hom = {'TRUE' if self.hom else 'FALSE'}"
        return f"{self.kind}({expr} | {group}{hom})"

    def shows_covariances(self) -> bool:
        """Whether VarCorr lists the covariances of the term's columns (not for diag)."""
        return self.kind != "diag"


def _cs_cholesky(rho, k: int, dtype) -> jnp.ndarray:
    """Cholesky factor of C = (1 − ρ) I + ρ 11ᵀ in closed form.

    Column j has L_jj = √(d_j) and L_ij = c_j for i > j, with d₀ = 1, c₀ = ρ and
    d_{j+1} = d_j − c_j², c_{j+1} = (ρ − Σ_{m≤j} c_m²) / √d_{j+1}: every row below
    the diagonal is the same, so each column needs one number."""
    L = jnp.zeros((k, k), dtype)
    acc = jnp.zeros((), dtype)  # Σ_{m<j} c_m²
    for j in range(k):
        d = jnp.sqrt(1.0 - acc)
        c = (rho - acc) / d
        L = L.at[j, j].set(d)
        if j + 1 < k:
            L = L.at[j + 1 :, j].set(c)
        acc = acc + c**2
    return L


def make_structure(kind: str, k: int, hom: bool = False) -> Structure:
    """The structure object of a term (kind as written in the formula)."""
    if kind not in ("us", "diag", "cs", "ar1"):
        raise ValueError(kind)
    if kind in ("cs", "ar1") and k < 2:
        hom = True
    return Structure(kind, k, bool(hom) if kind != "us" else False)

"""Leverage and Cook's distance of each row: lme4's ``hatvalues`` and ``cooks.distance``.

The fitted values of a linear mixed model at θ̂ are a linear function of y: with the
weighted rows a_iᵀ = √w_i [z_iᵀΛ, x_iᵀ] (Λ the relative covariance factor, Σ = σ²ΛΛᵀ),
μ̂ = A M⁻¹ Aᵀ y* for the penalized normal equations M = AᵀA + diag(I_q, 0_p) (Bates et al.
2015, §3.2). The hat value of row i is h_i = a_iᵀ M⁻¹ a_i — lme4's ``hatvalues.merMod``,
which forms the same quantity from its Cholesky factors L, R_ZX and R_X. Cook's distance is
lme4's ``cooks.distance.merMod``: (r_i / (1 − h_i))² h_i / (σ̂² p), r_i the Pearson residual
√w_i (y_i − μ̂_i) and p the number of fixed effects.

a_i has Σ_b k_b + p non-zeros (one level of each grouping factor), so h_i needs only the
entries of M⁻¹ at those places: with one grouping factor, M⁻¹ by block elimination (per level
k×k, k×p, and the p×p Schur complement), for any size; with several, M⁻¹ dense, for up to
:data:`DENSE_MAX` random effects plus fixed effects.

Deletion diagnostics (:func:`influence`, ``LinearMixedModel.influence``) — influence.ME's
(Nieuwenhuis, te Grotenhuis & Pelzer 2012, *R Journal* 4(2), 38–47): each group (or row) j is
left out in turn, the model refitted, and β̂₍₋ⱼ₎ compared with β̂:

    Cook's distance   Cⱼ = (β̂ − β̂₍₋ⱼ₎)ᵀ V̂⁻¹ (β̂ − β̂₍₋ⱼ₎) / p      V̂ = vcov(β̂) of the full fit
    DFBETASⱼₖ = (β̂ₖ − β̂₍₋ⱼ₎ₖ) / se₍₋ⱼ₎(β̂ₖ)                          the deleted fit's standard errors

(influence.ME 0.9-9's ``cooks.distance.estex`` uses the deleted fit's vcov V̂₍₋ⱼ₎ in place of V̂:
``vcov="deleted"``; the full fit's V̂ is Cook's (1977) own scaling and HLMdiag's.)

* ``method="exact"``: the refits themselves, all in one compiled program
  (:func:`jaxmlm._refit.refit_weights`): deleting rows is giving them prior weight 0, which
  is the same model as the data without them (their cross-products vanish and a deleted
  group's random effect meets no data, so it adds log|I| = 0 to the criterion), each refit
  started at the full fit's θ̂.
* ``method="approximate"``: one Newton step per deletion (the one-step approximation of
  Pregibon 1981, *Ann. Statist.* 9(4), 705–724, and Cook & Weisberg 1982, *Residuals and
  Influence in Regression*, applied here to the variance parameters): from the full fit's θ̂, on the deleted data's profiled criterion fⱼ,
  θ₁ = θ̂ − ∇²fⱼ(θ̂)⁻¹ ∇fⱼ(θ̂) (exact gradient and Hessian; a variance at 0 stays at 0), then
  β̂₍₋ⱼ₎ and its vcov from the deleted data at θ₁ — exact given θ, so the error is second order
  in θ̂₍₋ⱼ₎ − θ̂. No iterations, no line search, no convergence test: one Newton iteration of
  the exact refits (where those converge in a few steps from θ̂, as on Exam, both cost about
  the same: making each deleted data set's statistics dominates). (The infinitesimal jackknife in the rows' prior weights,
  β̂ extrapolated linearly from weight 1 to 0, fails for whole groups: a group's information
  about β saturates in its rows' weights — halving them barely changes it, because its random
  effect dominates its variance — so the tangent at weight 1 misses most of the deletion:
  leaving out sleepstudy's subject 308 moves the Days slope by −0.66, the tangent by −0.12.)
* ``method="both"``: the exact values, with the approximate ones beside them
  (``Influence.approximate``) and their difference (``Influence.difference``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp

from . import _compiled, _programs, _x64  # noqa: F401
from ._errors import DataError, InferenceError
from ._stats import weighted_rows

__all__ = ["DENSE_MAX", "Influence", "cooks_distance", "hat_values", "influence"]

#: Largest q + p for which M⁻¹ is formed densely (several grouping factors): 4000² doubles = 128 MB.
DENSE_MAX = 4000


def _weighted_rows(m):
    """The design and its weighted rows √w z_iᵀΛ per block and √w x_iᵀ."""
    d = m._rows("hat values")
    w = weighted_rows(d)
    return d, [Z @ T for Z, T in zip(w.Z, m._templates)], w.X


def _one_factor(codes: np.ndarray, U: np.ndarray, X: np.ndarray, nlev: int) -> np.ndarray:
    k, p = U.shape[1], X.shape[1]
    A = np.zeros((nlev, k, k))
    np.add.at(A, codes, U[:, :, None] * U[:, None, :])
    A += np.eye(k)
    B = np.zeros((nlev, k, p))
    np.add.at(B, codes, U[:, :, None] * X[:, None, :])
    Ainv = np.linalg.inv(A)
    AinvB = Ainv @ B
    S = X.T @ X - np.einsum("lkp,lkr->pr", B, AinvB)
    Sinv = np.linalg.inv(S) if p else np.zeros((0, 0))
    u, g = U, codes
    AB = AinvB[g]  # (n, k, p)
    t = np.einsum("nk,nkp->np", u, AB)  # u_iᵀ A_g⁻¹ B_g
    h = np.einsum("nk,nkj,nj->n", u, Ainv[g], u)  # u_iᵀ A_g⁻¹ u_i
    # + (x_i − B_gᵀA_g⁻¹u_i)ᵀ S⁻¹ (x_i − B_gᵀA_g⁻¹u_i): the Schur complement's part
    r = X - t
    return h + np.einsum("np,pq,nq->n", r, Sinv, r)


def _dense(d, U: list, X: np.ndarray) -> np.ndarray:
    n, p = X.shape
    offsets = np.cumsum([0] + [blk.nlev * blk.k for blk in d.blocks])
    q = int(offsets[-1])
    if q + p > DENSE_MAX:
        raise InferenceError(
            f"hat values of a model with several grouping factors form M⁻¹ densely, and this one has {q} random "
            f"effects and {p} fixed effects (more than {DENSE_MAX} together); not available for it yet")
    cols = [off + blk.codes[:, None] * blk.k + np.arange(blk.k)[None, :] for off, blk in zip(offsets, d.blocks)]
    idx = np.concatenate(cols + [q + np.broadcast_to(np.arange(p), (n, p))], axis=1)
    vals = np.concatenate(U + [X], axis=1)
    A = sp.csr_matrix((vals.ravel(), idx.ravel(), np.arange(0, idx.size + 1, idx.shape[1])), shape=(n, q + p))
    M = (A.T @ A).toarray()
    M[np.arange(q), np.arange(q)] += 1.0
    Minv = sla.cho_solve(sla.cho_factor(M, lower=True), np.eye(q + p))
    return np.einsum("ns,nst,nt->n", vals, Minv[idx[:, :, None], idx[:, None, :]], vals)


def hat_values(m) -> np.ndarray:
    """Diagonal of the hat matrix at θ̂, one value per row used in the fit (lme4's ``hatvalues``)."""
    d, U, X = _weighted_rows(m)
    if len(d.blocks) == 1:
        return _one_factor(d.blocks[0].codes, U[0], X, d.blocks[0].nlev)
    return _dense(d, U, X)


def cooks_distance(m) -> np.ndarray:
    """Cook's distance of each row used in the fit, as lme4's ``cooks.distance``:
    (r_i / (1 − h_i))² h_i / (σ̂² p), r_i = √w_i (y_i − μ̂_i); NaN where h_i = 1."""
    h = hat_values(m)
    r = m.pearson_resid  # √w_i (y_i − μ̂_i) / σ̂
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (r / (1.0 - h)) ** 2 * h / m.design.p
    out[~np.isfinite(out)] = np.nan
    return out


# ---- deletion diagnostics (influence.ME) -----------------------------------------------------------

_METHODS = ("exact", "approximate", "both")
_VCOVS = ("full", "deleted")


@dataclass(frozen=True, eq=False)
class Influence:
    """Deletion diagnostics of the fixed effects, one row per deleted group (or row): see
    :func:`influence`. Frames are indexed by the group's levels (lme4's level order) or, for
    rows, by the data's index labels of the rows used.

    ``fixef_deleted``, ``se_deleted``: β̂₍₋ⱼ₎ and its standard errors; ``vcov_deleted``
    (J, p, p); ``theta_deleted``: θ̂₍₋ⱼ₎ (lme4's order and names; the approximation's θ₁); ``fixef``, ``vcov``: the full fit's; ``converged`` (exact refits; all True for
    the approximation); ``approximate``: the approximate diagnostics beside the exact ones
    (``method="both"``), else None; ``seconds``: wall time."""

    group: str | None
    method: str
    vcov_for_cooks: str
    labels: pd.Index
    fixef: pd.Series
    vcov: pd.DataFrame
    fixef_deleted: pd.DataFrame
    se_deleted: pd.DataFrame
    theta_deleted: pd.DataFrame
    vcov_deleted: np.ndarray = field(repr=False)
    converged: pd.Series = field(repr=False)
    seconds: float = 0.0
    approximate: "Influence | None" = field(default=None, repr=False)

    @property
    def dfbeta(self) -> pd.DataFrame:
        """β̂ − β̂₍₋ⱼ₎, levels × fixed effects."""
        return self.fixef - self.fixef_deleted

    @property
    def dfbetas(self) -> pd.DataFrame:
        """DFBETAS: (β̂ − β̂₍₋ⱼ₎) / se₍₋ⱼ₎, the deleted fit's standard errors (influence.ME's
        ``dfbetas.estex``), levels × fixed effects. |DFBETAS| > 2/√J flags a group
        (Belsley, Kuh & Welsch 1980; influence.ME's suggestion): :attr:`dfbetas_cutoff`."""
        return self.dfbeta / self.se_deleted

    @property
    def cooks_distance(self) -> pd.Series:
        """Cook's distance (β̂ − β̂₍₋ⱼ₎)ᵀ V⁻¹ (β̂ − β̂₍₋ⱼ₎) / p per level, V the full fit's vcov
        (``vcov="full"``, the default) or the deleted fit's (``vcov="deleted"``, influence.ME
        0.9-9's ``cooks.distance.estex``). Above 4/J: :attr:`cutoff`."""
        D = self.dfbeta.to_numpy()
        p = D.shape[1]
        if self.vcov_for_cooks == "full":
            Vinv = np.linalg.inv(self.vcov.to_numpy())
            vals = np.einsum("jp,pq,jq->j", D, Vinv, D) / p
        else:
            vals = np.array([d @ np.linalg.solve(V, d) for d, V in zip(D, self.vcov_deleted)]) / p
        return pd.Series(vals, index=self.labels, name="cooks_distance")

    @property
    def cutoff(self) -> float:
        """4/J, J the number of groups (or rows) deleted: influence.ME's reference for Cook's distance."""
        return 4.0 / len(self.labels)

    @property
    def dfbetas_cutoff(self) -> float:
        """2/√J: the usual reference for |DFBETAS|."""
        return 2.0 / np.sqrt(len(self.labels))

    @property
    def difference(self) -> pd.DataFrame:
        """Exact against approximate (``method="both"``): per level Cook's distance of each, their
        difference (approximate − exact), and the DFBETAS differences per fixed effect."""
        if self.approximate is None:
            raise DataError('the difference between exact and approximate needs m.influence(..., method="both")')
        a, e = self.approximate, self
        out = pd.DataFrame({"cooks_exact": e.cooks_distance, "cooks_approximate": a.cooks_distance})
        out["cooks_difference"] = out.cooks_approximate - out.cooks_exact
        dd = a.dfbetas - e.dfbetas
        for name in dd.columns:
            out[f"dfbetas_difference[{name}]"] = dd[name]
        return out

    def frame(self) -> pd.DataFrame:
        """One row per level: Cook's distance, then DFBETAS per fixed effect (``dfbetas[name]``)."""
        out = pd.DataFrame({"cooks_distance": self.cooks_distance})
        for name, col in self.dfbetas.items():
            out[f"dfbetas[{name}]"] = col
        return out

    def __repr__(self) -> str:
        what = "rows" if self.group is None else f"levels of {self.group!r}"
        top = self.cooks_distance.sort_values(ascending=False).head(3)
        lead = ", ".join(f"{k}: {v:.3g}" for k, v in top.items())
        return (f"Influence({self.method}, {len(self.labels)} {what}; largest Cook's distance {lead}; "
                f"cutoff 4/J = {self.cutoff:.3g})")


def _deletion_sets(m, group):
    """(labels, codes (n,), number of sets): which deletion set each row used belongs to."""
    d = m._rows("influence diagnostics")
    if group is None:
        return pd.Index(d.rows), np.arange(d.n), d.n
    if not isinstance(group, str):
        raise DataError(f"group must be None (rows) or the name of a grouping factor or column, got {group!r}")
    for blk in d.blocks:
        if blk.group == group:
            return pd.Index(blk.levels), np.asarray(blk.codes), blk.nlev
    frame = d.frame
    if frame is not None and group in frame.columns:
        codes, levels = pd.factorize(frame[group], sort=True)
        if np.any(codes < 0):
            raise DataError(f"the column {group!r} has missing values in the rows used: it cannot define groups")
        return pd.Index(levels), codes, len(levels)
    names = [blk.group for blk in d.blocks]
    raise DataError(f"group {group!r} is neither a grouping factor of the model ({', '.join(map(repr, names))}) "
                    "nor a column of its model frame")


def _result(m, group, method, vcov, labels, beta_del, vcov_del, theta_del, converged, seconds,
            approximate=None) -> Influence:
    from ._refit import _theta_names

    names = list(m.design.fixef_names)
    se = np.sqrt(np.diagonal(vcov_del, axis1=1, axis2=2))
    return Influence(
        group=group, method=method, vcov_for_cooks=vcov, labels=labels, fixef=m.fixef.copy(), vcov=m.vcov.copy(),
        fixef_deleted=pd.DataFrame(beta_del, index=labels, columns=names),
        se_deleted=pd.DataFrame(se, index=labels, columns=names),
        theta_deleted=pd.DataFrame(theta_del, index=labels, columns=_theta_names(m.design)), vcov_deleted=vcov_del,
        converged=pd.Series(converged, index=labels, name="converged"), seconds=seconds, approximate=approximate)


def _exact(m, codes, nsets, chunk_size):
    from ._refit import Deletions, refit_weights

    # row i has weight 0 in the refit of its own set, 1 in the others
    r = refit_weights(m, Deletions(codes, nsets), chunk_size=chunk_size, desc="deletions", sdcor=False)
    return np.asarray(r.beta), np.asarray(r.vcov), np.asarray(r.theta), np.asarray(r.ok)


@partial(_compiled.jit, static_argnames="layout", tiered=False)
def _one_step(theta, C, base, ops, reml, free, layout):
    """For each row of C (b, n), the case weights of one deletion: one Newton step on the deleted
    data's criterion from θ̂, θ₁ = θ̂ − H⁻¹∇f (free components; boundary ones stay 0), then β̂
    and vcov(β̂) of the deleted data at θ₁ (exact given θ₁)."""
    from ._objective import _deviance
    from ._refit import case_weight_stats
    from ._solution import solve

    both = free[:, None] & free[None, :]
    eye = jnp.eye(theta.shape[0], dtype=theta.dtype)

    def one(c):
        st = case_weight_stats(c, base, ops, layout)

        def f(t):
            return _deviance(t, st, reml, layout)

        g = jnp.where(free, jax.grad(f)(theta), 0.0)
        H = jnp.where(both, jax.hessian(f)(theta), eye)
        theta1 = theta - jnp.linalg.solve(H, g)
        sol = solve(theta1, st, reml, layout)
        return sol.beta, sol.vcov, theta1

    return jax.vmap(one)(C)


def _approximate(m, codes, nsets, chunk_size):
    """One Newton step per deletion (module docstring), batched as the exact refits are."""
    from ._optimize import diagonal_mask
    from ._refit import Deletions, _chunk_size, _padded, row_ops
    from ._stats import make_schema

    d = m.design
    schema = make_schema(d)
    layout = schema.layout
    ops, base = row_ops(d, schema)
    theta = jnp.asarray(np.asarray(m.theta, float))
    reml = jnp.asarray(1.0 if m.REML else 0.0)
    # A variance on the boundary stays there: its diagonal of θ̂ is held at 0.
    free = jnp.asarray(~(np.asarray(diagonal_mask(layout), bool) & (np.asarray(m.theta) == 0.0)))
    C = Deletions(codes, nsets)
    c = _chunk_size(nsets, d.n, chunk_size, layout)
    beta, vcov, thetas = [], [], []
    for lo in range(0, nsets, c):
        b, v, t = _programs.call(_one_step, (theta, jnp.asarray(_padded(C[lo:lo + c], c)), base, ops, reml, free),
                              dict(layout=layout))
        take = min(c, nsets - lo)
        beta.append(np.asarray(b)[:take])
        vcov.append(np.asarray(v)[:take])
        thetas.append(np.asarray(t)[:take])
    return np.concatenate(beta), np.concatenate(vcov), np.concatenate(thetas)


def influence(m, group: str | None = None, method: str = "exact", vcov: str = "full",
              chunk_size: int | None = None) -> Influence:
    """Deletion diagnostics of the fixed effects (module docstring): leave out each level of
    ``group`` (a grouping factor of the model, or any column of its model frame) or, for
    ``group=None``, each row used in the fit, and compare β̂₍₋ⱼ₎ with β̂.

    ``method``: "exact" (the leave-one-out refits, batched in one compiled program), "approximate"
    (one Newton step from θ̂ per deletion) or "both" (exact, with
    ``.approximate`` and ``.difference``). ``vcov``: Cook's distance scaled by the full fit's
    vcov ("full", default) or by each deleted fit's ("deleted", as influence.ME 0.9-9 computes it).
    For rows, the exact path is n refits, each over all n rows (cost ∝ n² times the
    iterations; the approximation ∝ n² with one step each): fine for thousands of rows."""
    if method not in _METHODS:
        raise DataError(f"method must be one of {', '.join(map(repr, _METHODS))}, got {method!r}")
    if vcov not in _VCOVS:
        raise DataError(f"vcov must be 'full' or 'deleted', got {vcov!r}")
    if m.design.p == 0:
        raise DataError("the model has no fixed effects: there is nothing for deletion diagnostics to measure")
    labels, codes, nsets = _deletion_sets(m, group)
    if nsets < 2:
        raise DataError(f"deletion diagnostics need at least 2 groups; {group!r} has {nsets}")
    approx = None
    if method in ("approximate", "both"):
        t0 = time.perf_counter()
        beta, V, th = _approximate(m, codes, nsets, chunk_size)
        approx = _result(m, group, "approximate", vcov, labels, beta, V, th, np.ones(nsets, bool),
                         time.perf_counter() - t0)
        if method == "approximate":
            return approx
    t0 = time.perf_counter()
    beta, V, th, ok = _exact(m, codes, nsets, chunk_size)
    return _result(m, group, method, vcov, labels, beta, V, th, ok, time.perf_counter() - t0, approximate=approx)

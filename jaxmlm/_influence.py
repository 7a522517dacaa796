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
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ._errors import InferenceError
from ._stats import weighted_rows

__all__ = ["DENSE_MAX", "cooks_distance", "hat_values"]

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

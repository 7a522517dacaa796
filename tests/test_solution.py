"""Estimates at a given θ (β̂, σ̂, b̂ and the conditional variances) against a dense computation.

The engine forms lme4's condVar, the diagonal blocks of σ² Λ (ΛᵀZᵀZΛ + I)⁻¹ Λᵀ, from its
blocked factor: block 1 from the pair list of the sparse B Bᵀ (or the dense rows of B),
the rest blocks from the inverse of the dense fill-in block. The reference builds Z and Λ
as full matrices (tests/_dense.py) and inverts ΛᵀZᵀZΛ + I directly.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from _dense import dense_criterion, dense_z_lambda
from conftest import CASES, case_data

from jaxmlm._frontend import build_design
from jaxmlm._solution import solve
from jaxmlm._stats import sufficient_stats


def _dense_solution(design, theta, reml):
    Z, Lam = dense_z_lambda(design, theta)
    X, y = design.X, design.y
    n, p = X.shape
    _, beta = dense_criterion(design, theta, reml)
    ZL = Z @ Lam
    M = ZL.T @ ZL + np.eye(Z.shape[1])
    Minv = np.linalg.inv(M)
    u = Minv @ (ZL.T @ (y - X @ beta))
    r2 = np.sum((y - X @ beta - ZL @ u) ** 2) + u @ u
    sigma2 = r2 / (n - reml * p)
    b = Lam @ u
    V = sigma2 * Lam @ Minv @ Lam.T
    out, o = [], 0
    for blk in design.blocks:
        k, lev = blk.k, blk.nlev
        idx = o + np.arange(lev * k).reshape(lev, k)
        out.append((b[idx], V[idx[:, :, None], idx[:, None, :]]))
        o += lev * k
    return beta, np.sqrt(sigma2), out


def _engine_blocks(sol, layout, design):
    res = [(np.asarray(sol.b1)[: design.blocks[0].nlev], np.asarray(sol.var1)[: design.blocks[0].nlev])]
    b_rest = np.asarray(sol.b_rest)
    for (off, lev, k), blk, v in zip(layout.rest, design.blocks[1:], sol.var_rest):
        res.append((b_rest[off : off + lev * k].reshape(lev, k)[: blk.nlev], np.asarray(v)[: blk.nlev]))
    return res


@pytest.mark.parametrize("bbt", ["sparse", "dense"])
@pytest.mark.parametrize("cid", ["penicillin_crossed", "crossed_item_slope", "crossed_subj_slope", "pastes_nested"])
def test_condvar_matches_dense_inverse(cid, bbt):
    """Both ways of forming B Bᵀ (the pair list, forced here also where the cost model picks the
    dense product); crossed_item_slope has a rest block with k = 2 (Λ_r not diagonal),
    crossed_subj_slope k₁ = 2."""
    c = CASES[cid]
    d = build_design(c["formula"], case_data(c))
    layout, st, _ = sufficient_stats(d, bbt=bbt)
    assert layout.qr > 0 and layout.bbt == bbt
    # A θ away from the optimum, with correlations (off-diagonal template entries) where there are any.
    theta = np.linspace(0.45, 1.3, layout.ntheta) * np.where(np.arange(layout.ntheta) % 3 == 1, -1.0, 1.0)
    for reml in (1.0, 0.0):
        sol = solve(jnp.asarray(theta), st, jnp.asarray(reml), layout)
        beta, sigma, blocks = _dense_solution(d, theta, reml)
        np.testing.assert_allclose(np.asarray(sol.beta), beta, rtol=1e-9, atol=1e-9)
        assert float(sol.sigma) == pytest.approx(sigma, rel=1e-10)
        for (b, v), (b_ref, v_ref) in zip(_engine_blocks(sol, layout, d), blocks):
            scale = np.max(np.abs(v_ref))
            np.testing.assert_allclose(v, v_ref, rtol=1e-9, atol=1e-11 * scale)
            np.testing.assert_allclose(b, b_ref, rtol=1e-8, atol=1e-10 * np.max(np.abs(b_ref)))


"""The profiled criterion: against an independent dense implementation, and its autodiff
derivatives against finite differences."""

import jax.numpy as jnp
import numpy as np
import pytest
from _dense import dense_criterion
from conftest import CASES, case_data

from jaxmlm._frontend import build_design
from jaxmlm._objective import deviance, deviance_and_grad, deviance_hessian
from jaxmlm._solution import solve
from jaxmlm._stats import sufficient_stats

# Small cases covering: one factor (scalar, vector, ||), nested, crossed, vector terms on
# either factor of a crossed design, three correlated slopes.
SMALL = [
    "sleepstudy_rs", "sleepstudy_uncorr", "penicillin_crossed", "pastes_nested",
    "crossed_subj_slope", "crossed_item_slope", "nested_slash", "slopes3_corr", "factors_na",
]


def _setup(cid):
    c = CASES[cid]
    d = build_design(c["formula"], case_data(c))
    layout, stats, _ = sufficient_stats(d)
    return c, d, layout, stats


def _thetas(layout, seed):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.uniform(0.2, 1.5, layout.ntheta)) * rng.choice([-1, 1], layout.ntheta) for _ in range(2)]


@pytest.mark.parametrize("cid", SMALL)
@pytest.mark.parametrize("reml", [True, False])
def test_criterion_matches_dense_marginal_likelihood(cid, reml):
    c, d, layout, stats = _setup(cid)
    for theta in _thetas(layout, 1) + [np.atleast_1d(c["theta"])]:
        ours = float(deviance(jnp.asarray(theta), stats, float(reml), layout))
        ref, beta = dense_criterion(d, theta, reml)
        assert ours == pytest.approx(ref, rel=1e-10, abs=1e-8)
        sol = solve(jnp.asarray(theta), stats, float(reml), layout)
        np.testing.assert_allclose(np.asarray(sol.beta), beta, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("cid", SMALL)
def test_gradient_and_hessian_match_finite_differences(cid):
    c, d, layout, stats = _setup(cid)
    f = lambda t: float(deviance(jnp.asarray(t), stats, 1.0, layout))  # noqa: E731
    for theta in _thetas(layout, 2):
        _, g = deviance_and_grad(jnp.asarray(theta), stats, 1.0, layout)
        H = np.asarray(deviance_hessian(jnp.asarray(theta), stats, 1.0, layout))
        h = 1e-5
        fd_g = np.array([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(len(theta))])
        np.testing.assert_allclose(np.asarray(g), fd_g, rtol=1e-5, atol=1e-5)
        gfun = lambda t: np.asarray(deviance_and_grad(jnp.asarray(t), stats, 1.0, layout)[1])  # noqa: E731
        fd_H = np.array([(gfun(theta + h * e) - gfun(theta - h * e)) / (2 * h) for e in np.eye(len(theta))])
        np.testing.assert_allclose(H, fd_H, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(H, H.T, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("cid", ["sleepstudy_rs", "slopes3_corr", "crossed_item_slope"])
def test_criterion_is_even_in_each_template_column(cid):
    """Flipping the sign of a template column leaves ΛΛᵀ, hence the criterion, unchanged."""
    c, d, layout, stats = _setup(cid)
    theta = _thetas(layout, 3)[0]
    base = float(deviance(jnp.asarray(theta), stats, 1.0, layout))
    for kb, pos, idx in layout.templates:
        pos, idx = np.asarray(pos), np.asarray(idx)
        for j in range(kb):
            flipped = theta.copy()
            flipped[idx[pos % kb == j]] *= -1
            assert float(deviance(jnp.asarray(flipped), stats, 1.0, layout)) == pytest.approx(base, rel=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 6, 7])
def test_batched_small_linear_algebra_matches_lapack(k):
    from jaxmlm._objective import batched_cholesky, batched_solve_lower, batched_solve_upper_t

    rng = np.random.default_rng(k)
    A = rng.normal(size=(5, k, k))
    M = A @ np.swapaxes(A, 1, 2) + np.eye(k)
    B = rng.normal(size=(5, k, 3))
    L = np.asarray(batched_cholesky(jnp.asarray(M)))
    np.testing.assert_allclose(L, np.linalg.cholesky(M), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(batched_solve_lower(jnp.asarray(L), jnp.asarray(B))), np.linalg.solve(L, B), rtol=1e-10, atol=1e-12)
    Lt = np.swapaxes(L, 1, 2)
    np.testing.assert_allclose(np.asarray(batched_solve_upper_t(jnp.asarray(L), jnp.asarray(B))), np.linalg.solve(Lt, B), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [1, 7, 384, 385, 800, 1201])
def test_inverse_from_cholesky_matches_numpy(n):
    """The blocked inverse (leaf size 384: sizes on both sides, odd splits, two levels)."""
    import jax

    from jaxmlm._objective import _inverse_from_cholesky

    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, n))
    M = X @ X.T / n + np.eye(n) * 0.5
    L = np.linalg.cholesky(M)
    got = np.asarray(jax.jit(_inverse_from_cholesky)(jnp.asarray(L)))
    ref = np.linalg.inv(M)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    np.testing.assert_allclose(got, got.T, rtol=0, atol=1e-13 * np.abs(ref).max())

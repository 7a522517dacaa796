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


def test_gram_rows_blocks_equal_the_full_product():
    """gram_rows (blocks on and below the diagonal, mirrored) and its hand-written reverse
    rule against the plain product, for sizes that do and do not split evenly."""
    import jax

    from jaxmlm._objective import _gram_rows_vjp, _row_bounds, gram_rows

    rng = np.random.default_rng(3)
    for q, c, min_rows in [(1000, 300, 256), (1000, 300, 7), (37, 5, 4), (600, 40, 1000)]:
        bounds = _row_bounds(q, min_rows)
        assert bounds[0] == 0 and bounds[-1] == q and len(bounds) - 1 == max(1, min(4, q // min_rows))
        B = rng.normal(size=(q, c))
        G = np.asarray(gram_rows(jnp.asarray(B), min_rows))
        np.testing.assert_allclose(G, B @ B.T, rtol=1e-12, atol=1e-10)
        assert np.array_equal(G, G.T)
    B = jnp.asarray(rng.normal(size=(700, 50)))
    Wt = jnp.asarray(rng.normal(size=(700, 700)))  # not symmetric: the rule must symmetrize
    g = jax.grad(lambda b: jnp.sum(Wt * _gram_rows_vjp(b)))(B)
    np.testing.assert_allclose(np.asarray(g), np.asarray((Wt + Wt.T) @ B), rtol=1e-12, atol=1e-10)


def _big_crossed(slope: bool):
    """A crossed design whose rest block (q_r ≥ 576) the dense B Bᵀ splits into row blocks."""
    import pandas as pd

    rng = np.random.default_rng(5)
    n = 2400
    a, b = rng.integers(0, 700, n), rng.integers(0, 520, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=700)[a] + 0.7 * rng.normal(size=520)[b] * (1 + 0.3 * x) + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)}).astype({"a": "category", "b": "category"})
    return build_design("y ~ x + (1|a) + (1 + x|b)" if slope else "y ~ x + (1|a) + (1|b)", df)


@pytest.mark.parametrize("slope", [False, True])
def test_dense_bbt_in_blocks_matches_sparse_and_dense_reference(slope):
    """The dense B Bᵀ (several row blocks) against the pair sum and the independent dense
    marginal likelihood: values at 1e-10, gradients (criterion_rest's hand-written dense
    rule against autodiff of the sparse criterion) at 1e-8."""
    import jax

    from jaxmlm._objective import _row_bounds, criterion_rest, criterion_rest_value_and_grad

    d = _big_crossed(slope)
    lay_d, st_d, _ = sufficient_stats(d, bbt="dense")
    lay_s, st_s, _ = sufficient_stats(d, bbt="sparse")
    assert lay_d.bbt == "dense" and lay_s.bbt == "sparse" and len(_row_bounds(lay_d.qr)) - 1 >= 2
    rng = np.random.default_rng(8)
    for reml in (1.0, 0.0):
        theta = rng.uniform(0.3, 1.2, lay_d.ntheta)
        t = jnp.asarray(theta)
        ref, _ = dense_criterion(d, theta, bool(reml))
        f_d, g_d = deviance_and_grad(t, st_d, reml, lay_d)
        f_s, g_s = deviance_and_grad(t, st_s, reml, lay_s)
        assert float(f_d) == pytest.approx(ref, rel=1e-10)
        assert float(f_d) == pytest.approx(float(f_s), rel=1e-12)
        np.testing.assert_allclose(np.asarray(g_d), np.asarray(g_s), rtol=1e-8, atol=1e-7)
        f_r, g_r, _ = criterion_rest_value_and_grad(t, st_d, reml, lay_d)
        assert float(f_r) == pytest.approx(ref, rel=1e-10)
        np.testing.assert_allclose(np.asarray(g_r), np.asarray(g_s), rtol=1e-8, atol=1e-7)
        g_auto = jax.grad(lambda u: criterion_rest(u, st_s, reml, lay_s)[0])(t)
        np.testing.assert_allclose(np.asarray(g_r), np.asarray(g_auto), rtol=1e-8, atol=1e-7)


def test_bbt_choice_by_time_then_memory():
    """The pair list of a 1M-row 5,000 × 2,000 crossed design (10⁸ pairs, ~3 GB) gives way to
    the dense product (84 MB a copy); InstEval's (~1M pairs) stays sparse; without the memory
    budget the time rule alone decides."""
    from jaxmlm._stats import PAIR_BYTES_MAX, choose_bbt, dense_bytes, pair_bytes

    assert pair_bytes(98_500_000, 1) > PAIR_BYTES_MAX > dense_bytes(2048, 5120, 1)
    assert choose_bbt(98_500_000, 2048, 5120, 1) == "dense"
    assert choose_bbt(98_500_000, 2048, 5120, 1, budget=1 << 40) == "sparse"
    assert choose_bbt(1_100_000, 1152, 3072, 1) == "sparse"
    # both large: the smaller of the two
    assert choose_bbt(200_000_000, 20_000, 100_000, 1) == "sparse"
    assert choose_bbt(100_000, 100, 50, 1) == "dense"  # time: a small dense product

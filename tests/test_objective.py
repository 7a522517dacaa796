"""The profiled criterion: against an independent dense implementation, and its autodiff
derivatives against finite differences."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
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


@pytest.mark.parametrize("batch", [5, 1])  # (above 6 columns: loops for a batch, LAPACK for one matrix)
@pytest.mark.parametrize("k", [1, 2, 3, 6, 7, 9])
def test_batched_small_linear_algebra_matches_lapack(k, batch):
    from jaxmlm._objective import batched_cholesky, batched_solve_lower, batched_solve_upper_t

    rng = np.random.default_rng(k)
    A = rng.normal(size=(batch, k, k))
    M = A @ np.swapaxes(A, 1, 2) + np.eye(k)
    B = rng.normal(size=(batch, k, 3))
    L = np.asarray(batched_cholesky(jnp.asarray(M)))
    np.testing.assert_allclose(L, np.linalg.cholesky(M), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(batched_solve_lower(jnp.asarray(L), jnp.asarray(B))), np.linalg.solve(L, B), rtol=1e-10, atol=1e-12)
    Lt = np.swapaxes(L, 1, 2)
    np.testing.assert_allclose(np.asarray(batched_solve_upper_t(jnp.asarray(L), jnp.asarray(B))), np.linalg.solve(Lt, B), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [3, 8])
def test_batched_linear_algebra_derivatives_match_lapacks(k):
    """Forward and reverse derivatives through the batched factorization and both solves
    (unrolled for k ≤ 6, loops above) agree with JAX's own LAPACK-based rules."""
    from jax.scipy.linalg import solve_triangular

    from jaxmlm._objective import batched_cholesky, batched_solve_lower, batched_solve_upper_t

    rng = np.random.default_rng(10 + k)
    A = rng.normal(size=(4, k, k))
    M0 = jnp.asarray(A @ np.swapaxes(A, 1, 2) + k * np.eye(k))
    B = jnp.asarray(rng.normal(size=(4, k, 2)))
    D = jnp.asarray(rng.normal(size=(4, k, k)))

    def ours(t):
        L = batched_cholesky(M0 + t[0] * (D + jnp.swapaxes(D, 1, 2)))
        X = batched_solve_upper_t(L, batched_solve_lower(L, B * t[1]))
        return jnp.sum(jnp.log(jnp.diagonal(L, axis1=1, axis2=2))) + jnp.sum(X**2)

    def lapack(t):
        L = jnp.linalg.cholesky(M0 + t[0] * (D + jnp.swapaxes(D, 1, 2)))
        Y = solve_triangular(L, B * t[1], lower=True)
        X = solve_triangular(jnp.swapaxes(L, 1, 2), Y, lower=False)
        return jnp.sum(jnp.log(jnp.diagonal(L, axis1=1, axis2=2))) + jnp.sum(X**2)

    t = jnp.asarray([0.05, 1.3])
    np.testing.assert_allclose(float(ours(t)), float(lapack(t)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.grad(ours)(t)), np.asarray(jax.grad(lapack)(t)), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(jax.hessian(ours)(t)), np.asarray(jax.hessian(lapack)(t)), rtol=1e-8)


def test_large_random_effects_blocks_compile_without_batched_lapack():
    """A 7-column random-effects block (above the unrolled sizes) fits with no LAPACK custom
    call in the optimizer's program: batched LAPACK calls inside its while loop deadlocked
    XLA's CPU thread pool once the batch was large (a (1 + x1 + … + x6 | g) model on 2,000
    groups hung in every run; benchmarks/jax_cpu_deadlock_repro.py). The only LAPACK calls
    left are on single matrices (the fixed-effects block, the Newton step's eigenvalues)."""
    from jaxmlm._fit import fit_and_solve
    from jaxmlm._optimize import lme4_start

    rng = np.random.default_rng(7)
    g = np.repeat(np.arange(40), 9)
    X = rng.normal(size=(len(g), 6))
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(1, 7)])
    df["y"] = X.sum(1) + rng.normal(size=len(g))[g % 40] + rng.normal(size=len(g))
    df["g"] = g
    design = build_design("y ~ x1 + (1 + x1 + x2 + x3 + x4 + x5 + x6 | g)", df)
    layout, stats, _ = sufficient_stats(design)
    assert layout.k1 == 7
    text = jax.jit(fit_and_solve.fn, static_argnames=("layout", "method", "penalty")).lower(
        lme4_start(layout), stats, np.asarray(1.0), np.int32(5), layout=layout, method="newton").as_text()
    lapack = [line for line in text.splitlines() if "custom_call @lapack" in line]
    assert lapack, "expected the single-matrix LAPACK calls in the program (is this the right text?)"
    # a LAPACK factorization or solve on one matrix is fine; never on a batch of them
    assert not [line for line in lapack if re.search(r"tensor<\d+x\d+x\d+x", line)]


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


# ---- nested designs: the block-diagonal fill-in ------------------------------------------------

NESTED = [
    "y ~ x + (1 | school/class)",
    "y ~ x + (1 + x | school/class)",
    "y ~ x + (1 | school) + (0 + x | school:class)",
    "y ~ x + (x | school) + (1 | school:class)",
]


def _nested_frame(seed=11, span=False):
    """Pupils in classes in schools, unbalanced (2–5 classes of 2–7 pupils; ``class`` labels
    reused across schools, ``cls_id`` unique). ``span``: two pupils of school s1 get the
    ``cls_id`` of a class of school s0, so that cls_id is no longer nested in school."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for s in range(14):
        for c in range(rng.integers(2, 6)):
            rows += [(s, c)] * int(rng.integers(2, 8))
    school, cls = np.array(rows).T
    x = rng.normal(size=len(school))
    u, v = rng.normal(size=14), rng.normal(size=(14, 6))
    y = 1 + 0.5 * x + u[school] + 0.6 * v[school, cls] * (1 + 0.4 * x) + rng.normal(size=len(school))
    df = pd.DataFrame({"y": y, "x": x, "school": [f"s{s}" for s in school], "class": [f"c{c}" for c in cls]})
    df["cls_id"] = df["school"] + df["class"]
    if span:
        df.loc[df.index[df["school"] == "s1"][:2], "cls_id"] = "s0c0"
    return df


@pytest.mark.parametrize("formula", NESTED)
def test_nested_designs_are_detected(formula):
    """Nesting is read from the data: every design above is nested; a crossed design and a
    class factor whose label spans two schools (bare ``(1 | class)``) are not."""
    assert sufficient_stats(build_design(formula, _nested_frame()))[0].bbt == "nested"
    explicit = "y ~ x + (1 | school) + (1 | cls_id)"
    assert sufficient_stats(build_design(explicit, _nested_frame()))[0].bbt == "nested"
    assert sufficient_stats(build_design(explicit, _nested_frame(span=True)))[0].bbt in ("sparse", "dense")
    assert sufficient_stats(build_design("y ~ x + (1 | class) + (1 | school)", _nested_frame()))[0].bbt != "nested"
    c = CASES["penicillin_crossed"]
    assert sufficient_stats(build_design(c["formula"], case_data(c)))[0].bbt != "nested"


@pytest.mark.parametrize("formula", NESTED)
@pytest.mark.parametrize("reml", [1.0, 0.0])
def test_nested_factorization_matches_the_general_one_and_the_dense_criterion(formula, reml):
    """Per-level factorization against the general one (dense fill-in, forced by bbt="sparse")
    and the independent dense marginal likelihood: criterion, its gradient, and every output
    of the solution (β̂, σ̂, b̂ of both factors and their conditional variances)."""
    d = build_design(formula, _nested_frame())
    lay_n, st_n, _ = sufficient_stats(d)
    lay_g, st_g, _ = sufficient_stats(d, bbt="sparse")
    assert lay_n.bbt == "nested" and lay_g.bbt == "sparse"
    rng = np.random.default_rng(4)
    for theta in [rng.uniform(0.2, 1.5, lay_n.ntheta) * rng.choice([-1, 1], lay_n.ntheta) for _ in range(2)]:
        t = jnp.asarray(theta)
        f_n, g_n = deviance_and_grad(t, st_n, reml, lay_n)
        f_g, g_g = deviance_and_grad(t, st_g, reml, lay_g)
        ref, beta = dense_criterion(d, theta, bool(reml))
        assert float(f_n) == pytest.approx(ref, rel=1e-10)
        assert float(f_n) == pytest.approx(float(f_g), rel=1e-12)
        np.testing.assert_allclose(np.asarray(g_n), np.asarray(g_g), rtol=1e-8, atol=1e-8)
        s_n, s_g = solve(t, st_n, reml, lay_n), solve(t, st_g, reml, lay_g)
        np.testing.assert_allclose(np.asarray(s_n.beta), beta, rtol=1e-8, atol=1e-8)
        for a, b in zip(jax.tree.leaves(s_n), jax.tree.leaves(s_g)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cid", ["pastes_nested", "nested_slash", None])
@pytest.mark.parametrize("reml", [1.0, 0.0])
def test_nested_scalar_criterion_equals_the_factorization(cid, reml):
    """The vector form of (1 | a/b)'s criterion against the per-level factorization, at
    random θ (either sign) and with a variance at 0."""
    from jaxmlm._objective import nested_scalar, nested_scalar_criterion, nested_scalar_data

    if cid is None:
        d = build_design("y ~ x + (1 | school/class)", _nested_frame(seed=2))
    else:
        d = build_design(CASES[cid]["formula"], case_data(CASES[cid]))
    layout, stats, _ = sufficient_stats(d)
    assert nested_scalar(layout)
    data = nested_scalar_data(stats, layout)
    rng = np.random.default_rng(7)
    for theta in [rng.uniform(0.1, 2.0, 2) * rng.choice([-1, 1], 2) for _ in range(3)] + [np.array([0.0, 0.8]), np.array([0.6, 0.0])]:
        t = jnp.asarray(theta)
        got = float(nested_scalar_criterion(t, data, stats, reml, layout))
        assert got == pytest.approx(float(deviance(t, stats, reml, layout)), rel=1e-12)
        assert got == pytest.approx(dense_criterion(d, theta, bool(reml))[0], rel=1e-10)


def _psi_reference(S, a, b, p):
    """a·log|S_XX| + b·log r² from S's lower triangle with NumPy-style dense algebra (no custom rules)."""
    S = jnp.tril(S) + jnp.tril(S, -1).T
    Sxx, sxy = S[:p, :p], S[:p, p]
    r2 = S[p, p] - (sxy @ jnp.linalg.solve(Sxx, sxy) if p else 0.0)
    logdet = jnp.linalg.slogdet(Sxx)[1] if p else 0.0
    return a * logdet + b * jnp.log(r2)


@pytest.mark.parametrize("p", [0, 1, 3, 7])
@pytest.mark.parametrize("a", [1.0, 0.0])
def test_phi_closed_form_derivatives_match_autodiff_of_dense_algebra(p, a):
    """ψ = a·log|S_XX| + b·log r², the S-dependent part of φ: value, first and second directional
    derivatives in (S, a, b) along symmetric S-directions (S is symmetric wherever φ is used), forward
    and reverse, by the closed-form rules of ``_psi`` and ``_psi_grad``, against autodiff of an
    independent dense implementation; and ``psi_grad_tangent``, which ``blockdiag_fgh`` calls."""
    from jaxmlm._objective import _psi, psi_grad_tangent

    rng = np.random.default_rng(p)
    X = rng.normal(size=(3 * (p + 1), p + 1))
    S = jnp.asarray(X.T @ X + 0.1 * np.eye(p + 1))
    b = 37.0

    def sym():
        V = rng.normal(size=(p + 1, p + 1))
        return jnp.asarray(V + V.T)

    f = lambda x: _psi(x[0], x[1], x[2], p)  # noqa: E731
    ref = lambda x: _psi_reference(x[0], x[1], x[2], p)  # noqa: E731
    x = (S, jnp.asarray(a), jnp.asarray(b))
    assert float(f(x)) == pytest.approx(float(ref(x)), rel=1e-12)
    for _ in range(3):
        u = (sym(), jnp.asarray(rng.normal()), jnp.asarray(rng.normal()))
        v = (sym(), jnp.asarray(rng.normal()), jnp.asarray(rng.normal()))
        d1 = jax.jvp(f, (x,), (u,))[1]
        assert float(d1) == pytest.approx(float(jax.jvp(ref, (x,), (u,))[1]), rel=1e-9, abs=1e-12)
        d2 = jax.jvp(lambda y: jax.jvp(f, (y,), (u,))[1], (x,), (v,))[1]
        d2_ref = jax.jvp(lambda y: jax.jvp(ref, (y,), (u,))[1], (x,), (v,))[1]
        assert float(d2) == pytest.approx(float(d2_ref), rel=1e-8, abs=1e-10)
        # reverse over forward, as Newton's autodiff Hessians take it
        g2 = jax.grad(lambda y: jax.jvp(f, (y,), (u,))[1])(x)
        g2_ref = jax.grad(lambda y: jax.jvp(ref, (y,), (u,))[1])(x)
        assert float(jnp.sum(g2[0] * v[0]) + g2[1] * v[1] + g2[2] * v[2]) == pytest.approx(float(d2_ref), rel=1e-8, abs=1e-10)
        np.testing.assert_allclose(g2[1:], g2_ref[1:], rtol=1e-8, atol=1e-10)
        # G's derivative along a symmetric S-direction, as blockdiag_fgh uses it
        G_ref = lambda S_: jax.grad(ref)((S_, x[1], x[2]))[0]  # noqa: E731
        dG_ref = jax.jvp(G_ref, (S,), (u[0],))[1]
        dG = psi_grad_tangent(S, a, b, p, u[0])
        assert float(jnp.sum(dG * v[0])) == pytest.approx(float(jnp.sum(dG_ref * v[0])), rel=1e-8, abs=1e-10)
        np.testing.assert_allclose(dG, dG.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reml", [0.0, 1.0])
def test_the_criterion_at_theta_zero_is_the_linear_models(reml, weighted):
    """ols_criterion (numpy, on the host): −2 logLik of the weighted least-squares fit of the
    same X and y, computed here from its residuals (REML adds log|XᵀWX| and counts n − p),
    and the engine's criterion at θ = 0."""
    import jaxmlm
    from jaxmlm._objective import ols_criterion

    d = jaxmlm.load_example("sleepstudy")
    w = np.linspace(0.5, 2.0, len(d)) if weighted else np.ones(len(d))
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d.assign(w=w), weights="w" if weighted else None)
    X = np.column_stack([np.ones(len(d)), d["Days"].to_numpy(float)])
    y = d["Reaction"].to_numpy(float)
    sw = np.sqrt(w)
    beta = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)[0]
    rss = np.sum(w * (y - X @ beta) ** 2)
    n, p = len(y), X.shape[1]
    dof = n - reml * p
    expected = dof * (1 + np.log(2 * np.pi * rss / dof)) - np.sum(np.log(w))
    expected += reml * np.linalg.slogdet(X.T @ (w[:, None] * X))[1]
    got = ols_criterion(m.stats, reml)
    assert abs(got - expected) < 1e-8 * abs(expected)
    engine = float(deviance(np.zeros(m.layout.ntheta), m.stats, np.asarray(reml), m.layout))
    assert abs(got - engine) < 1e-9 * abs(expected)

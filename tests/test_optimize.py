"""The optimizer's fast derivative kernels and the "ai" method.

* blockdiag_fgh (one grouping factor, closed-form per-level derivatives) against the
  autodiff gradient/Hessian of the criterion and against finite differences;
* criterion_rest (q_r > 0, custom derivative of the dense step, pair sums through W_g)
  against the criterion and its autodiff gradient, both B Bᵀ code paths;
* criterion_rest_value_and_grad (hand-written reverse pass for scalar terms) against
  autodiff of criterion_rest, on and off the boundary, and its fallback elsewhere;
* average_information against an independent dense computation from Z, Λ, X, y;
* fits by every method reach the same optimum;
* _clip_diagonals keeps diagonals on their side of 0 and keeps descent;
* Newton with (f, ∇f, H) at every trial point (trial_fgh) against Newton with a value
  line search, on functions whose optimum is known.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from _dense import dense_z_lambda
from conftest import CASES, case_data

from jaxmlm._frontend import build_design
from jaxmlm._objective import (
    LAPACK_SAFE,
    _deviance,
    average_information,
    blockdiag_fgh,
    criterion_rest,
    criterion_rest_value_and_grad,
    deviance,
    deviance_and_grad,
    deviance_hessian,
    lapack_cost,
    levels_last,
    pair_data,
)
from jaxmlm._optimize import _clip_diagonals, _fgh_fd, canonical_theta, choose_method, diagonal_mask, fd_batch, fit_theta
from jaxmlm._stats import sufficient_stats

ONE_FACTOR = ["sleepstudy_rs", "sleepstudy_uncorr", "slopes3_corr", "hsb_ses_slope", "dyestuff2_singular"]
CROSSED = ["penicillin_crossed", "pastes_nested", "crossed_subj_slope", "crossed_item_slope", "nested_slash"]


def _setup(cid, bbt=None):
    c = CASES[cid]
    d = build_design(c["formula"], case_data(c))
    layout, stats, _ = sufficient_stats(d, bbt=bbt)
    return c, d, layout, stats


def _thetas(layout, seed, n=2):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.2, 1.5, layout.ntheta) * rng.choice([-1, 1], layout.ntheta) for _ in range(n)]


@pytest.mark.parametrize("cid", ONE_FACTOR)
@pytest.mark.parametrize("reml", [1.0, 0.0])
def test_blockdiag_fgh_matches_autodiff_and_finite_differences(cid, reml):
    c, d, layout, stats = _setup(cid)
    assert layout.qr == 0
    A, Z = levels_last(stats.A11, stats.Z1W)
    for theta in _thetas(layout, 4) + [np.atleast_1d(c["theta"])]:
        t = jnp.asarray(theta, dtype=float)
        f, g, H = (np.asarray(v) for v in blockdiag_fgh(t, A, Z, stats, reml, layout))
        f_ref, g_ref = deviance_and_grad(t, stats, reml, layout)
        H_ref = np.asarray(deviance_hessian(t, stats, reml, layout))
        assert f == pytest.approx(float(f_ref), rel=1e-12)
        np.testing.assert_allclose(g, np.asarray(g_ref), rtol=1e-8, atol=1e-7)
        np.testing.assert_allclose(H, H_ref, rtol=1e-8, atol=1e-6)
        # and against finite differences of the criterion / of the new gradient
        h = 1e-5
        E = np.eye(len(theta))
        fv = lambda x: float(deviance(jnp.asarray(x), stats, reml, layout))  # noqa: E731
        gv = lambda x: np.asarray(blockdiag_fgh(jnp.asarray(x), A, Z, stats, reml, layout)[1])  # noqa: E731
        fd_g = np.array([(fv(theta + h * e) - fv(theta - h * e)) / (2 * h) for e in E])
        fd_H = np.array([(gv(theta + h * e) - gv(theta - h * e)) / (2 * h) for e in E])
        np.testing.assert_allclose(g, fd_g, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(H, fd_H, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cid", CROSSED)
@pytest.mark.parametrize("bbt", ["sparse", "dense"])
@pytest.mark.parametrize("reml", [1.0, 0.0])
def test_criterion_rest_value_and_gradient(cid, bbt, reml):
    c, d, layout, stats = _setup(cid, bbt)
    assert layout.qr > 0 and layout.bbt == bbt
    vg = jax.value_and_grad(lambda t: criterion_rest(t, stats, reml, layout)[0])
    pairs = pair_data(stats, layout)
    for theta in _thetas(layout, 5) + [np.atleast_1d(c["theta"])]:
        t = jnp.asarray(theta, dtype=float)
        f, g = vg(t)
        f_ref, g_ref = deviance_and_grad(t, stats, reml, layout)
        assert float(f) == pytest.approx(float(f_ref), rel=1e-12)
        assert float(criterion_rest(t, stats, reml, layout, pairs)[0]) == pytest.approx(float(f_ref), rel=1e-12)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-8, atol=1e-7)
        h = 1e-5
        fv = lambda x: float(_deviance(jnp.asarray(x), stats, reml, layout))  # noqa: E731
        fd_g = np.array([(fv(theta + h * e) - fv(theta - h * e)) / (2 * h) for e in np.eye(len(theta))])
        np.testing.assert_allclose(np.asarray(g), fd_g, rtol=1e-5, atol=1e-5)


def _three_crossed():
    """Three crossed scalar factors: two rest blocks (λ holds two scales), and block 1 (37
    levels) and the first rest block (23) padded to the bucket grid (40, 24)."""
    rng = np.random.default_rng(11)
    n = 600
    a, b, c = rng.integers(0, 37, n), rng.integers(0, 23, n), rng.integers(0, 5, n)
    x = rng.normal(size=n)
    u = rng.normal(size=37)[a] + 0.7 * rng.normal(size=23)[b] + 0.3 * rng.normal(size=5)[c]
    y = 1 + 0.5 * x + u + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "a": a, "b": b, "c": c})
    for col in "abc":
        df[col] = df[col].astype(str).astype("category")
    return build_design("y ~ x + (1|a) + (1|b) + (1|c)", df)


SCALAR_CROSSED = ["penicillin_crossed", "pastes_nested", "nested_slash", "pastes_interaction", "three_crossed"]
FALLBACK = [("crossed_item_slope", "sparse"), ("crossed_subj_slope", "sparse"), ("penicillin_crossed", "dense")]


def _vg_setup(cid, bbt):
    d = _three_crossed() if cid == "three_crossed" else build_design(CASES[cid]["formula"], case_data(CASES[cid]))
    layout, stats, _ = sufficient_stats(d, bbt=bbt)
    return layout, stats


_vg = jax.jit(criterion_rest_value_and_grad, static_argnames="layout")
_vg_autodiff = jax.jit(jax.value_and_grad(criterion_rest, has_aux=True), static_argnames="layout")


def _check_value_and_grad(theta, stats, reml, layout, pairs):
    t = jnp.asarray(theta, dtype=float)
    f, g, pieces = _vg(t, stats, reml, layout, pairs)
    (f_ref, pieces_ref), g_ref = _vg_autodiff(t, stats, reml, layout, pairs)
    assert float(f) == pytest.approx(float(f_ref), rel=1e-12)
    g, g_ref = np.asarray(g), np.asarray(g_ref)
    np.testing.assert_allclose(g, g_ref, rtol=1e-8, atol=1e-9 * max(1.0, np.max(np.abs(g_ref))))
    assert set(pieces) == set(pieces_ref)
    for k in pieces:
        np.testing.assert_allclose(np.asarray(pieces[k]), np.asarray(pieces_ref[k]), rtol=1e-12, atol=1e-12)
    return g


@pytest.mark.parametrize("cid", SCALAR_CROSSED)
@pytest.mark.parametrize("reml", [1.0, 0.0])
def test_value_and_grad_scalar_terms_match_autodiff(cid, reml):
    layout, stats = _vg_setup(cid, "sparse")
    assert layout.k1 == 1 and all(k == 1 for _, _, k in layout.rest) and layout.bbt == "sparse"
    pairs = pair_data(stats, layout)
    thetas = _thetas(layout, 7, 3)
    if cid in CASES:
        thetas.append(np.atleast_1d(CASES[cid]["theta"]))
    for theta in thetas:
        _check_value_and_grad(theta, stats, reml, layout, pairs)
    # Near and on the boundary: each entry in turn small (a rest block's gradient then takes
    # the direct form, not the diagonal identity) or 0, where the criterion is even in it and
    # its derivative vanishes.
    for i in range(layout.ntheta):
        for v in (3e-3, 0.0):
            theta = np.array(thetas[0], dtype=float)
            theta[i] = v
            g = _check_value_and_grad(theta, stats, reml, layout, pairs)
            if v == 0.0:
                assert g[i] == pytest.approx(0.0, abs=1e-10)
    _check_value_and_grad(thetas[0], stats, reml, layout, None)  # pairs made inside


@pytest.mark.parametrize("cid,bbt", FALLBACK)
@pytest.mark.parametrize("reml", [1.0, 0.0])
def test_value_and_grad_falls_back_to_autodiff(cid, bbt, reml):
    layout, stats = _vg_setup(cid, bbt)
    assert not (layout.k1 == 1 and all(k == 1 for _, _, k in layout.rest) and layout.bbt == "sparse")
    pairs = pair_data(stats, layout)
    for theta in _thetas(layout, 8, 2):
        g = _check_value_and_grad(theta, stats, reml, layout, pairs)
        # and against autodiff of the independent blocked factorization
        f_dev, g_dev = deviance_and_grad(jnp.asarray(theta, dtype=float), stats, reml, layout)
        f = criterion_rest_value_and_grad(jnp.asarray(theta, dtype=float), stats, reml, layout, pairs)[0]
        assert float(f) == pytest.approx(float(f_dev), rel=1e-10)
        np.testing.assert_allclose(g, np.asarray(g_dev), rtol=1e-7, atol=1e-8 * max(1.0, np.max(np.abs(g))))


@pytest.mark.parametrize("cid", CROSSED + ["sleepstudy_rs", "slopes3_corr", "sleepstudy_uncorr"])
def test_canonical_theta_in_a_program_matches_the_host_version(cid):
    from jaxmlm._optimize import canonical_theta, canonical_theta_jax

    _, _, layout, _ = _setup(cid)
    rng = np.random.default_rng(11)
    for _ in range(5):
        theta = rng.normal(size=layout.ntheta)
        ref = canonical_theta(theta, layout)
        assert np.all(ref[diagonal_mask(layout)] >= 0)
        got = np.asarray(jax.jit(canonical_theta_jax, static_argnums=1)(jnp.asarray(theta), layout))
        np.testing.assert_array_equal(got, ref)


def _dense_average_information(d, theta, reml):
    """c/r² (wᵢᵀPwⱼ − (wᵢᵀê)(wⱼᵀê)/r²), wᵢ = Hᵢê, from full n×n matrices (Hᵢ by differences of ZΛΛᵀZᵀ)."""
    X, y = d.X, d.y
    n, p = X.shape
    Z, Lam = dense_z_lambda(d, theta)
    H = Z @ Lam @ Lam.T @ Z.T + np.eye(n)
    Hi = np.linalg.inv(H)
    P = Hi - Hi @ X @ np.linalg.solve(X.T @ Hi @ X, X.T @ Hi)
    e = P @ y
    r2 = y @ P @ y
    Hs = []
    for i in range(len(theta)):
        tp, tm = theta.copy(), theta.copy()
        tp[i] += 1e-6
        tm[i] -= 1e-6
        Zp, Lp = dense_z_lambda(d, tp)
        Zm, Lm = dense_z_lambda(d, tm)
        Hs.append((Zp @ Lp @ Lp.T @ Zp.T - Zm @ Lm @ Lm.T @ Zm.T) / 2e-6)
    w = np.stack([Hk @ e for Hk in Hs], 1)
    ehe = w.T @ e
    c = n - reml * p
    return c / r2 * (w.T @ P @ w - np.outer(ehe, ehe) / r2), ehe


@pytest.mark.parametrize("cid", ["penicillin_crossed", "pastes_nested", "crossed_subj_slope", "crossed_item_slope"])
@pytest.mark.parametrize("reml", [1.0, 0.0])
def test_average_information_matches_dense(cid, reml):
    c, d, layout, stats = _setup(cid, "sparse")
    for theta in _thetas(layout, 6, 1) + [np.atleast_1d(c["theta"])]:
        t = jnp.asarray(theta, dtype=float)
        _, pieces = criterion_rest(t, stats, reml, layout)
        AI, ehe = (np.asarray(v) for v in average_information(t, pieces, stats, reml, layout))
        AI_ref, ehe_ref = _dense_average_information(d, np.asarray(theta, float), reml)
        np.testing.assert_allclose(AI, AI_ref, rtol=1e-6, atol=1e-6 * np.max(np.abs(AI_ref)))
        np.testing.assert_allclose(ehe, ehe_ref, rtol=1e-6, atol=1e-6 * np.max(np.abs(ehe_ref)))
        assert np.all(np.linalg.eigvalsh(AI) > -1e-8 * np.max(np.abs(AI)))  # PSD


@pytest.mark.parametrize("cid", CROSSED + ["sleepstudy_rs", "slopes3_corr"])
def test_every_method_reaches_the_same_optimum(cid):
    c, d, layout, stats = _setup(cid)
    theta0 = jnp.asarray(np.where(diagonal_mask(layout), 1.0, 0.0))
    reml = jnp.asarray(1.0 if c["REML"] else 0.0)
    out = {}
    for method in ("newton", "ai", "bfgs"):
        st = fit_theta(theta0, stats, reml, layout, max_iter=200, method=method)
        assert int(st.status) in (0, 1), (method, int(st.status))
        out[method] = st
    for method in ("ai", "bfgs"):
        assert float(out[method].f) == pytest.approx(float(out["newton"].f), rel=1e-10, abs=1e-8)


def test_choose_method():
    _, _, layout, _ = _setup("penicillin_crossed")
    assert choose_method(layout) == "newton"  # q_r = 6
    assert choose_method(layout._replace(qr=112)) == "ai"  # crossed, 112 rows: Newton's Hessian costs 5x a fit with AI
    assert choose_method(layout._replace(qr=300)) == "ai"
    # nested (classroom's schools): the fill-in is per level, its Hessian cheap
    assert choose_method(layout._replace(qr=112, bbt="nested")) == "newton"


@pytest.mark.parametrize("formula", ["y ~ x + (1 | school/class)", "y ~ x + (1 + x | school/class)"])
@pytest.mark.parametrize("reml", [1.0, 0.0])
def test_nested_fits_reach_the_optimum_of_the_general_criterion(formula, reml):
    """Every method on the per-level nested criterion (the vector form for (1 | a/b); the
    gradient in forward mode for two θ entries, reverse for six, and the Hessian by its
    differences) stops where Newton on the general factorization (dense fill-in) does."""
    from test_objective import _nested_frame

    d = build_design(formula, _nested_frame())
    lay_n, st_n, _ = sufficient_stats(d)
    lay_g, st_g, _ = sufficient_stats(d, bbt="sparse")
    assert lay_n.bbt == "nested"
    theta0 = jnp.asarray(np.where(diagonal_mask(lay_n), 1.0, 0.0))
    ref = fit_theta(theta0, st_g, reml, lay_g, max_iter=200, method="newton")
    assert int(ref.status) in (0, 1)
    for method in ("newton", "ai", "bfgs"):
        st = fit_theta(theta0, st_n, reml, lay_n, max_iter=200, method=method)
        assert int(st.status) in (0, 1), (method, int(st.status))
        assert float(st.f) == pytest.approx(float(ref.f), rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(canonical_theta(np.asarray(st.x), lay_n), canonical_theta(np.asarray(ref.x), lay_g),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | school/class)", "y ~ x + (1 + x | school/class)"])
def test_differenced_hessian_matches_autodiff_side_by_side_and_in_turn(formula):
    """_fgh_fd's (f, ∇f, ∇²f) on the nested criterion, its gradients run side by side (vmap) and
    one after another (lax.map): f and ∇f exactly autodiff's, ∇²f within the differences'
    ~1e-5 of ``jax.hessian``'s, at the start and away from it."""
    from test_objective import _nested_frame

    d = build_design(formula, _nested_frame())
    layout, stats, _ = sufficient_stats(d)
    f = lambda t: _deviance(t, stats, 1.0, layout)  # noqa: E731
    exact = jax.jit(lambda x: (f(x), jax.grad(f)(x), jax.hessian(f)(x)))
    points = [jnp.asarray(x) for x in [np.where(diagonal_mask(layout), 1.0, 0.0), *_thetas(layout, 7)]]
    want = [exact(x) for x in points]
    for side_by_side in (True, False):
        fgh = jax.jit(_fgh_fd(f, forward=layout.ntheta <= 3, side_by_side=side_by_side))
        for x, (fx, gx, Hx) in zip(points, want):
            fv, g, H = fgh(x)
            assert float(fv) == pytest.approx(float(fx), rel=1e-13)
            np.testing.assert_allclose(g, gx, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(H, Hx, rtol=1e-4, atol=1e-4 * np.abs(Hx).max())


def test_fd_batch_runs_gradients_side_by_side_where_no_lapack_call_can_be_split():
    """Nested designs of more than three θ entries and crossed ones with a small fill-in take
    their m + 1 gradients side by side. One after another (1): a one-factor layout (closed
    forms, or for a wide term single-matrix LAPACK calls only), and a crossed design whose
    fill-in block is large enough that m + 1 batched copies of its Cholesky factor could be
    split over XLA's CPU threads (and deadlock them)."""
    from test_objective import _nested_frame

    lay_n, _, _ = sufficient_stats(build_design("y ~ x + (1 + x | school/class)", _nested_frame()))
    lay_s, _, _ = sufficient_stats(build_design("y ~ x + (1 | school/class)", _nested_frame()))
    _, _, lay_c, _ = _setup("penicillin_crossed")
    _, _, lay_1, _ = _setup("sleepstudy_rs")
    assert fd_batch(lay_n) == lay_n.ntheta + 1 == 7
    assert fd_batch(lay_s) == 1  # two θ: its gradient is already 2 forward tangents side by side
    # A nested design's rest factor is per-level algebra, no LAPACK call, however many levels ...
    assert lapack_cost(lay_s) == lapack_cost(lay_s._replace(rest=((lay_s.rest[0][0], 500, 1),)))
    # ... unless it is one level over more columns than are unrolled: one LAPACK matrix.
    assert lapack_cost(lay_s._replace(rest=((lay_s.rest[0][0], 1, 10),))) >= 10**3
    assert fd_batch(lay_c) == lay_c.ntheta + 1  # q_r = 6
    assert fd_batch(lay_1) == 1
    assert fd_batch(lay_1._replace(k1=7, ntheta=28)) == 1  # one wide factor: single-matrix LAPACK only
    big = lay_c._replace(qr=40)
    assert fd_batch(big) == 1
    for lay in (lay_n, lay_c, big):
        assert fd_batch(lay) * lapack_cost(lay) * 16 <= LAPACK_SAFE or fd_batch(lay) == 1


def test_clip_diagonals_keeps_side_and_descent():
    rng = np.random.default_rng(0)
    diag = jnp.asarray([True, False, True])
    for _ in range(200):
        x = jnp.asarray(rng.normal(size=3))
        g = jnp.asarray(rng.normal(size=3))
        d = -g * jnp.asarray(rng.uniform(0.1, 20, size=3))  # a descent direction
        dc = np.asarray(_clip_diagonals(d, x, g, diag))
        xn = np.asarray(x) + dc
        xd = np.asarray(x)
        for i in (0, 2):
            assert np.sign(xn[i]) == np.sign(xd[i]) and abs(xn[i]) >= 0.1 * abs(xd[i]) - 1e-12
        assert float(np.asarray(g) @ dc) < 0
    # a step that crosses no limit is left alone
    x, g = jnp.asarray([1.0, 2.0, -1.0]), jnp.asarray([1.0, 1.0, -1.0])
    d = jnp.asarray([-0.5, -5.0, 0.5])
    np.testing.assert_array_equal(np.asarray(_clip_diagonals(d, x, g, diag)), np.asarray(d))


def _fgh(fun):
    def fgh(x):
        return fun(x), jax.grad(fun)(x), jax.hessian(fun)(x)

    return fgh


@pytest.mark.parametrize("name", ["quadratic", "pseudo_huber", "rosenbrock"])
def test_newton_with_trial_fgh_is_newton_with_a_value_line_search(name):
    """_newton(trial_fgh=True) (one (f, ∇f, H) per trial point, the first pass at the
    start) reaches the optimum of the value-line-search Newton; on a quadratic every step
    is a full one and costs one evaluation; where full steps overshoot (pseudo-Huber from
    x = 3: Newton's step, -30, capped at -15, lands at -12) it backtracks and converges."""
    from jaxmlm._optimize import _newton

    A = jnp.asarray([[3.0, 1.0], [1.0, 2.0]])
    funs = {
        "quadratic": (lambda x: 0.5 * x @ A @ x - x @ jnp.asarray([1.0, -2.0]), jnp.asarray([4.0, -3.0]),
                      np.linalg.solve(np.asarray(A), [1.0, -2.0])),
        "pseudo_huber": (lambda x: jnp.sum(jnp.sqrt(1.0 + x**2)), jnp.asarray([3.0, -0.5]), np.zeros(2)),
        "rosenbrock": (lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2, jnp.asarray([-1.2, 1.0]), np.ones(2)),
    }
    fun, x0, xstar = funs[name]
    a = jax.jit(lambda x: _newton(None, x, 200, 1e-14, 1e-10, fgh=_fgh(fun), trial_fgh=True))(x0)
    b = jax.jit(lambda x: _newton(fun, x, 200, 1e-14, 1e-10))(x0)  # autodiff H, value line search
    assert int(a.status) in (0, 1) and int(b.status) in (0, 1)
    np.testing.assert_allclose(np.asarray(a.x), xstar, atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.x), np.asarray(b.x), atol=1e-6)
    if name == "quadratic":
        assert int(a.nfev) == int(a.it) + 1 and int(a.it) <= 2
    if name == "pseudo_huber":
        assert int(a.nfev) > int(a.it) + 1  # some step was backtracked


def test_newton_near_stops_one_evaluation_earlier_at_a_point_it_returns_whole():
    """``near``: an accepted point whose own Newton decrement is below it ends the fit there,
    one evaluation before the usual rule, within ``near`` of the minimum; the state and the
    kept extra value (here x itself) belong to the same point. Not while a diagonal's step
    is clipped (a θᵢ heading for 0 keeps going)."""
    from jaxmlm._optimize import _newton

    fun = lambda x: jnp.sum(jnp.sqrt(1.0 + x**2)) + 0.1 * x[0] ** 4  # noqa: E731  (minimum at 0)

    def fgh(x):
        return fun(x), jax.grad(fun)(x), jax.hessian(fun)(x), x

    def run(near, diag=None, x0=(0.8, -0.6)):
        return jax.jit(lambda x: _newton(None, x, 200, 1e-14, 1e-12, fgh=fgh, trial_fgh=True, aux0=jnp.zeros(2),
                                         near=near, diag=diag))(jnp.asarray(x0))

    full, (early, kept) = run(None)[0], run(1e-6)
    assert int(full.status) in (0, 1) and int(early.status) == 0
    assert int(early.nfev) < int(full.nfev)
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(early.x))
    assert float(early.f) - float(full.f) < 1e-6
    assert float(fun(early.x)) == pytest.approx(float(early.f), abs=0)
    # x₀ shrinks tenfold per clipped step towards 0: no early stop while that goes on
    clipped = run(1e-6, diag=jnp.asarray([True, False]))[0]
    assert abs(float(clipped.x[0])) < 1e-5


def test_newton_with_trial_fgh_stops_on_a_non_finite_start():
    from jaxmlm._optimize import _newton

    fun = lambda x: jnp.sum(jnp.log(x))  # noqa: E731  (nan for x < 0)
    st = jax.jit(lambda x: _newton(None, x, 200, 1e-12, 1e-8, fgh=_fgh(fun), trial_fgh=True))(jnp.asarray([-1.0, 2.0]))
    assert int(st.status) == 4 and int(st.nfev) == 1 and int(st.it) == 0


def test_newton_with_trial_fgh_reports_a_failed_line_search_at_the_point_kept():
    """Every trial point of a step is rejected (f is NaN past a wall the Newton step
    crosses): after 40 halvings the step fails with status 3 ("line search failed"), judged
    at the point kept, as the value line search does, not 4 from the rejected NaN."""
    from jaxmlm._optimize import _newton

    def fun(x):
        return jnp.where(x[0] >= 1.0, x[0] + (x[1] - 2.0) ** 2, jnp.nan)

    x0 = jnp.asarray([1.0, 2.0])
    a = jax.jit(lambda x: _newton(None, x, 200, 1e-12, 1e-8, fgh=_fgh(fun), trial_fgh=True))(x0)
    b = jax.jit(lambda x: _newton(fun, x, 200, 1e-12, 1e-8))(x0)
    assert int(a.status) == int(b.status) == 3
    assert float(a.f) == float(b.f) == 1.0 and int(a.nfev) == 42


def test_a_wide_single_factor_term_fits_to_the_dense_optimum():
    """A 4-column term on one grouping factor (``(0 + t | g)``, 10 θ entries) is minimized
    with autodiff derivatives of the dense per-level criterion (the closed-form Hessian's
    program grows as k⁶: its compile took ~8 s here at k = 4, 33–39 s at k = 5). The result
    is the optimum of an independent dense implementation of the criterion."""
    from _dense import dense_criterion

    import jaxmlm

    rng = np.random.default_rng(5)
    G, k = 40, 4
    g = np.repeat(np.arange(G), 2 * k)
    t = np.tile(np.repeat(np.arange(k), 2), G)
    L = np.linalg.cholesky(0.5 * np.eye(k) + 0.5)
    x = rng.normal(size=g.size)
    y = (rng.normal(size=(G, k)) @ L.T)[g, t] + 0.5 * x + rng.normal(size=g.size)
    df = pd.DataFrame({"y": y, "x": x, "t": pd.Categorical(t), "g": g.astype(str)})
    m = jaxmlm.lmer("y ~ x + (0 + t | g)", df)
    assert m.record.converged and m.theta.size == k * (k + 1) // 2
    f, beta = dense_criterion(m.design, m.theta, True)
    assert m.objective == pytest.approx(f, rel=1e-10)
    np.testing.assert_allclose(m.fixef.to_numpy(), beta, rtol=1e-8)
    for i in range(m.theta.size):
        for s in (-1.0, 1.0):
            th = m.theta.copy()
            th[i] += s * 1e-3 * max(1.0, abs(th[i]))
            assert dense_criterion(m.design, th, True)[0] >= f - 1e-8


# ---- an optimizer stopped by its iteration limit: the same warning and record for every kind of fit ----

def _stopped_fit(kind: str):
    import jaxmlm

    df = jaxmlm.load_example("sleepstudy")
    f = "Reaction ~ Days + (Days | Subject)"
    if kind == "lmer":
        return jaxmlm.lmer(f, df, max_iter=1)
    if kind == "blmer":
        return jaxmlm.blmer(f, df, max_iter=1)
    if kind == "lmer, corAR1":
        return jaxmlm.lmer(f, df, correlation=jaxmlm.corAR1(form="~ Days | Subject"), max_iter=1)
    if kind == "gls, corAR1":
        return jaxmlm.gls("Reaction ~ Days", df, correlation=jaxmlm.corAR1(form="~ Days | Subject"), max_iter=1)
    slow = df.assign(slow=(df["Reaction"] > df["Reaction"].median()).astype(float))
    return jaxmlm.glmer("slow ~ Days + (Days | Subject)", slow, family="binomial", max_iter=1)


@pytest.mark.parametrize("kind", ["lmer", "blmer", "lmer, corAR1", "gls, corAR1", "glmer"])
def test_iteration_limit_warns_on_the_callers_line_and_is_recorded(kind):
    import jaxmlm

    with pytest.warns(jaxmlm.ConvergenceWarning) as caught:
        m = _stopped_fit(kind)
    limit = [w for w in caught if "iteration limit" in str(w.message)]
    assert len(limit) == 1
    assert str(limit[0].message).startswith("optimizer stopped: iteration limit reached after 1 iterations")
    assert limit[0].filename == __file__  # the user's line, not a line inside jaxmlm
    rec = m.record
    assert rec.status == 2 and not rec.converged
    assert str(limit[0].message) in rec.warnings
    assert f"{rec.max_abs_gradient:.2e}" in str(limit[0].message) and rec.max_abs_gradient > 0

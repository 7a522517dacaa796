"""Derivatives of a fit's estimates with respect to its data (jaxmlm.core.fit is differentiable).

Expected values are central finite differences of full refits by ``jaxmlm.lmer`` — its own
pass over the rows, its own fit program and host-side snapping — with one prior weight or
one response value moved by ±h: an independent computation of the same derivative. The
derivatives under test come from the implicit function theorem at θ̂ (jaxmlm/_implicit.py).

Step: h = 1e-4 relative (of the weight, or of the response's sd). The refits converge to
~1e-10 in θ, so the differences' rounding error is ~1e-6 of the derivative at h = 1e-5 and
~1e-8 at h = 1e-4, where the truncation error (~h²) is ~1e-8 too (measured on sleepstudy).
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm
import jaxmlm.core as core

MODELS = {
    # id: (data, formula, REML, prior weights random (True) or all 1)
    "one_factor": ("Dyestuff", "Yield ~ 1 + (1 | Batch)", True, True),
    "slopes_reml": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", True, True),
    "slopes_ml": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", False, False),
    "nested": ("Pastes", "strength ~ 1 + (1 | batch/cask)", True, True),
    "crossed_ml": ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", False, False),
    "singular": ("Dyestuff2", "Yield ~ 1 + (1 | Batch)", True, False),
    # a boundary fit inside a 2 × 2 term: the slope's variance is 0, its covariance row free
    "singular_slope": ("no_slope_variance", "y ~ x + (1 + x | g)", True, True),
}


def _no_slope_variance():
    """Intercepts vary by g, slopes do not (the slope's diagonal is snapped to 0)."""
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(40), 8)
    x = rng.normal(size=g.size)
    y = rng.normal(size=40)[g] + x + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})

H_REL = 1e-4
TOL = 1e-5


def _setup(mid):
    name, formula, reml, random_w = MODELS[mid]
    data = _no_slope_variance() if name == "no_slope_variance" else jaxmlm.load_example(name)
    d = core.design(formula, data)
    assert d.n == len(data)  # no rows dropped: design rows are the data's rows, in order
    s = core.schema(d)
    rows = core.row_data(d, s)
    rng = np.random.default_rng(zlib.crc32(mid.encode()))  # not hash(): str hashes change per process
    w = rng.uniform(0.5, 1.5, d.n) if random_w else np.ones(d.n)
    return data, formula, reml, d, s, rows, w, rng


def _estimates(s, rows, reml):
    """(w, y) → [β̂, θ̂, σ̂] by core.fit on statistics made from the rows: the function differentiated."""
    def est(w, y):
        r = core.fit(core.statistics_of(s, rows._replace(weights=w, y=y)), s.layout, reml)
        v = jnp.concatenate([r.solution.beta, r.theta, r.solution.sigma[None]])
        return v, v  # the value as aux: the Jacobian's program returns it too

    return est


def _refit(data, formula, reml, w, y, response):
    """[β̂, θ̂, σ̂] of lmer's refit with prior weights w and response y."""
    m = jaxmlm.lmer(formula, data.assign(**{response: y, "_w": w}), REML=reml, weights="_w")
    return np.r_[np.asarray(m.fixef, float), np.asarray(m.theta, float), m.sigma]


def _rel_error(ad, fd):
    scale = np.max(np.abs(fd))
    if scale < 1e-12:  # a quantity held at its bound: both derivatives are 0
        return np.max(np.abs(ad))
    return np.max(np.abs(ad - fd)) / scale


@pytest.mark.parametrize("mid", list(MODELS))
def test_gradients_match_central_differences_of_refits(mid):
    data, formula, reml, d, s, rows, w, rng = _setup(mid)
    p, m = s.layout.p, s.layout.ntheta
    y = np.asarray(d.y, float)
    est = _estimates(s, rows, reml)
    (Jw, Jy), est0 = jax.jit(jax.jacobian(est, argnums=(0, 1), has_aux=True))(jnp.asarray(w), jnp.asarray(y))
    Jw, Jy, est0 = np.asarray(Jw), np.asarray(Jy), np.asarray(est0)
    assert np.all(np.isfinite(Jw)) and np.all(np.isfinite(Jy))
    response = formula.split("~")[0].strip()
    base = _refit(data, formula, reml, w, y, response)
    np.testing.assert_allclose(est0, base, rtol=1e-7, atol=1e-9)  # the same fit, two paths
    blocks = {"beta": slice(0, p), "theta": slice(p, p + m), "sigma": slice(p + m, p + m + 1)}
    idx = rng.choice(d.n, 3, replace=False)
    ad = {"w": [], "y": []}
    fd = {"w": [], "y": []}
    for i in idx:
        hw = H_REL * w[i]
        e = np.zeros(d.n)
        e[i] = hw
        fd["w"].append((_refit(data, formula, reml, w + e, y, response)
                        - _refit(data, formula, reml, w - e, y, response)) / (2 * hw))
        ad["w"].append(Jw[:, i])
        hy = H_REL * np.std(y)
        e[i] = hy
        fd["y"].append((_refit(data, formula, reml, w, y + e, response)
                        - _refit(data, formula, reml, w, y - e, response)) / (2 * hy))
        ad["y"].append(Jy[:, i])
    for wrt in ("w", "y"):
        A, F = np.array(ad[wrt]), np.array(fd[wrt])
        for q, sl in blocks.items():
            err = _rel_error(A[:, sl], F[:, sl])
            assert err <= TOL, f"{mid}: d{q}/d{wrt} at rows {idx}: relative error {err:.2e}\nAD {A[:, sl]}\nFD {F[:, sl]}"
    if mid.startswith("singular"):
        # lme4's boundary fit: a diagonal of θ̂ at 0, and it stays there (derivative 0)
        at0 = np.flatnonzero(base[p:p + m] == 0.0)
        assert len(at0) == 1 and (mid == "singular" or at0[0] == 2)
        assert np.all(Jw[p + at0] == 0.0) and np.all(Jy[p + at0] == 0.0)
        assert np.any(Jw[:p] != 0.0) and np.any(Jw[p + m] != 0.0)


def test_statistics_of_equal_the_pass_with_weights_and_offset():
    data = jaxmlm.load_example("Penicillin")
    rng = np.random.default_rng(7)
    data = data.assign(w=rng.uniform(0.5, 2.0, len(data)), o=rng.normal(0, 0.3, len(data)))
    for formula in ("diameter ~ 1 + (1 | plate) + (1 | sample)", "diameter ~ 1 + (1 | plate)"):
        d = core.design(formula, data, weights="w", offset="o")
        s = core.schema(d)
        ref = core.statistics(s, d)
        got = core.statistics_of(s, core.row_data(d, s))
        for name, a, b in zip(ref._fields, ref, got):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-9, err_msg=name)


def test_forward_mode_and_design_matrix_derivatives():
    """jax.jvp (forward mode) through the fit, with respect to a predictor's value in one row:
    Days enters X and Z (the random slope), so both leaves move; against lmer refits."""
    data, formula, reml, d, s, rows, w, rng = _setup("slopes_ml")
    p = s.layout.p
    i = int(rng.integers(d.n))

    def est(dx):
        r = rows._replace(X=rows.X.at[i, 1].add(dx), Z1=rows.Z1.at[i, 1].add(dx))
        res = core.fit(core.statistics_of(s, r), s.layout, reml)
        return jnp.concatenate([res.solution.beta, res.theta, res.solution.sigma[None]])

    _, ad = jax.jit(lambda t: jax.jvp(est, (0.0,), (t,)))(1.0)
    h = H_REL * float(np.std(data["Days"]))

    def refit(dx):
        days = data["Days"].to_numpy(float).copy()
        days[i] += dx
        m = jaxmlm.lmer(formula, data.assign(Days=days), REML=reml)
        return np.r_[np.asarray(m.fixef, float), np.asarray(m.theta, float), m.sigma]

    fd = (refit(h) - refit(-h)) / (2 * h)
    ad = np.asarray(ad)
    for sl in (slice(0, p), slice(p, len(fd) - 1), slice(len(fd) - 1, None)):
        assert _rel_error(ad[sl], fd[sl]) <= TOL, (ad, fd)


def test_vmap_over_a_batch_of_weights():
    data, formula, reml, d, s, rows, w, rng = _setup("one_factor")

    def beta_sigma(w):
        r = core.fit(core.statistics_of(s, rows._replace(weights=w)), s.layout, reml)
        return r.solution.beta[0] + r.solution.sigma

    W = jnp.asarray(rng.uniform(0.5, 1.5, (4, d.n)))
    g = jax.jit(jax.vmap(jax.grad(beta_sigma)))(W)
    one = jax.jit(jax.grad(beta_sigma))
    for k in range(W.shape[0]):
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(one(W[k])), rtol=1e-10, atol=1e-13)
    assert not np.allclose(g[0], g[1])  # each element its own fit

"""Simulation and batched refits (jaxmlm/_refit.py).

* refit_many: every replicate equals an individual lmer fit of the same response
  (criterion within 1e-6 relative, fixed effects within 1e-6 SE), for REML and
  ML, one, crossed and nested grouping factors; failed replicates are flagged
  without touching the others; chunking changes nothing and does not recompile.
* simulate: the moments the model implies (mean Xβ̂, covariance
  σ²(Z Λ Λᵀ Zᵀ + I)), over many simulations with a fixed seed and generous bounds.
* bootstrap / pb_test: lme4's names; boot's percentile rule; Monte-Carlo
  agreement with lme4 ``confint(method = "boot")`` and pbkrtest ``PBmodcomp``
  (tests/reference/refit/, made by make_refit_reference.R; loose tolerances).
* power: Clopper–Pearson as R's binom.test; power near its normal-theory value.
"""

import json
import warnings
from pathlib import Path

import jax
import jax.monitoring
import numpy as np
import pandas as pd
import pytest

import jaxmlm
from conftest import CASES, case_data
from jaxmlm import _refit
from jaxmlm._objective import LAPACK_SAFE
from jaxmlm._optimize import fd_batch

REF = json.loads((Path(__file__).parent / "reference" / "refit" / "refit_reference.json").read_text())

_COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: _COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
)

NSIM = 20  # parity replicates (two chunks of the CPU default 16)


def _lmer_on(case: dict, m, y: np.ndarray):
    """An individual lmer fit of the case's formula to response y (on the rows m used)."""
    d = case_data(case)
    resp = case["formula"].split("~")[0].strip()
    d[resp] = d[resp].astype(float)
    d.loc[m.design.rows, resp] = y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxmlm.JaxmlmWarning)
        return jaxmlm.lmer(case["formula"], d, REML=case["REML"])


# ---- refit_many = individual fits ------------------------------------------------------------


@pytest.mark.parametrize("cid", ["sleepstudy_rs", "penicillin_crossed", "penicillin_crossed_ml", "pastes_nested"])
def test_refit_many_matches_individual_fits(fits, cid):
    case, m = CASES[cid], fits(cid)
    Y = np.vstack([m.design.y, m.simulate(NSIM - 1, seed=11)])  # row 0: the observed response
    r = m.refit_many(Y, progress=False)
    assert r.nsim == NSIM and r.REML == case["REML"]
    assert r.ok.all() and r.converged.all(), r.messages
    assert list(r.fixef.columns) == list(m.fixef.index)
    for i in range(NSIM):
        mi = m if i == 0 else _lmer_on(case, m, Y[i])
        assert abs(r.objective[i] - mi.objective) <= 1e-6 * abs(mi.objective), i
        np.testing.assert_array_less(np.abs(r.beta[i] - mi.fixef.to_numpy()), 1e-6 * mi.se.to_numpy() + 1e-12)
        np.testing.assert_allclose(r.se.to_numpy()[i], mi.se.to_numpy(), rtol=1e-5)
        np.testing.assert_allclose(r.vcov[i], mi.vcov.to_numpy(), rtol=1e-5, atol=1e-9 * mi.se.max() ** 2)
        assert r.sigma[i] == pytest.approx(mi.sigma, rel=1e-6)
        np.testing.assert_allclose(r.theta[i], mi.theta, rtol=1e-4, atol=1e-5)
        # Both snap the same boundary components to exactly zero.
        assert np.array_equal(r.theta[i] == 0, mi.theta == 0), i
        np.testing.assert_allclose(
            r.sdcor.iloc[i].to_numpy()[-1], mi.sigma, rtol=1e-6
        )


def test_sdcor_columns_are_lme4_confint_names():
    from jaxmlm._frontend import build_design

    for cid in ["sleepstudy_rs", "sleepstudy_uncorr", "pastes_nested", "penicillin_crossed"]:
        design = build_design(CASES[cid]["formula"], case_data(CASES[cid]))
        names = [p[0] for p in _refit._vc_params(design)] + ["sigma"] + list(design.fixef_names)
        assert names == REF["confint_names"][cid], cid


def test_sdcor_values_match_varcorr(fits):
    m = fits("sleepstudy_rs")
    vals = _refit._sdcor(m.theta[None], np.array([m.sigma]), m.design, m.layout)[0]
    vc = m.varcorr
    expect = [vc.sdcor[0], vc.sdcor[2], vc.sdcor[1]]  # sd, cor, sd in θ order; VarCorr lists sds first
    np.testing.assert_allclose(vals, expect, rtol=1e-12)


# ---- failures, chunking, compilation ---------------------------------------------------------


def test_failed_replicates_are_flagged_and_do_not_spoil_others(fits):
    m = fits("penicillin_crossed")
    Y = m.simulate(NSIM, seed=5)
    clean = m.refit_many(Y, progress=False)
    bad = Y.copy()
    bad[3] = np.nan  # non-finite response
    bad[7, 2] = np.inf
    bad[11] = 23.5  # constant response: r² = 0, the criterion is -inf
    r = m.refit_many(bad, progress=False)
    flagged = np.zeros(NSIM, bool)
    flagged[[3, 7, 11]] = True
    assert not r.ok[flagged].any() and not r.converged[flagged].any()
    assert (r.status[flagged] == 4).all()
    keep = ~flagged
    assert r.ok[keep].all()
    np.testing.assert_allclose(r.objective[keep], clean.objective[keep], rtol=1e-13)
    np.testing.assert_allclose(r.beta[keep], clean.beta[keep], rtol=1e-13)
    np.testing.assert_allclose(r.theta[keep], clean.theta[keep], rtol=1e-11, atol=1e-14)


def test_chunks_give_the_same_fits_and_compile_once(fits, no_tier_up):
    m = fits("penicillin_crossed")
    Y = m.simulate(NSIM, seed=6)
    whole = m.refit_many(Y, progress=False)
    chunked = m.refit_many(Y, progress=False, chunk_size=8)  # 8 + 8 + 4 (padded to 8)
    assert _refit._chunk_size(NSIM, m.nobs, 8, m.layout) == 8
    np.testing.assert_allclose(chunked.objective, whole.objective, rtol=1e-13)
    np.testing.assert_allclose(chunked.beta, whole.beta, rtol=1e-13)
    np.testing.assert_array_equal(chunked.status, whole.status)
    before = len(_COMPILES)
    Y2 = m.simulate(NSIM, seed=7)
    again = m.refit_many(Y2, progress=False, chunk_size=8)  # same shapes, new data
    ml = m.refit_many(Y2, progress=False, chunk_size=8, REML=False)  # ML shares the program
    m.simulate(NSIM, seed=8)
    assert len(_COMPILES) == before, f"{len(_COMPILES) - before} recompilation(s)"
    assert again.ok.all() and ml.ok.all() and not ml.REML and again.REML
    assert np.all(np.abs(ml.objective - again.objective) > 1e-3)


def test_nested_refits_are_batched_and_every_lapack_call_stays_unsplit(fits):
    """A nested design's rest factor is per-level algebra (no LAPACK call however many levels),
    so its refits run in chunks of 4 (also where each replicate's differenced Hessian takes its
    m + 1 gradients side by side), where a crossed fill-in block of the same size keeps them
    one at a time; in every batch of more than one matrix, chunk × points × the largest LAPACK
    call's cost stays below the size at which jaxlib splits it over XLA's CPU threads (and can
    deadlock them; one matrix is never split)."""
    m = fits("pastes_nested")
    assert m.layout.bbt == "nested"
    for lay in (m.layout, m.layout._replace(qr=300), m.layout._replace(qr=300, bbt="sparse")):
        pts = fd_batch(lay)
        c = _refit._chunk_size(100, m.nobs, None, lay, points=pts)
        assert c * pts == 1 or c * _refit._lapack_cost(lay, points=pts) <= LAPACK_SAFE
        if lay.bbt == "nested":
            assert pts == 1 and c == 4  # two θ: the gradients of its differences run in turn
            lay6 = lay._replace(ntheta=6)  # as (1 + x | a/b): side by side
            assert fd_batch(lay6) == 7 and _refit._chunk_size(100, m.nobs, None, lay6, points=7) == 4
        else:
            assert pts == 1 and c == 1  # a 300-column dense Cholesky factor alone is past the bound


def test_refit_many_checks_its_input(fits):
    m = fits("penicillin_crossed")
    with pytest.raises(jaxmlm.JaxmlmError, match="nobs = 144"):
        m.refit_many(np.zeros((3, 29)))
    with pytest.raises(jaxmlm.JaxmlmError, match="chunk_size"):
        m.refit_many(np.zeros((3, 144)), chunk_size=0)
    with pytest.raises(jaxmlm.JaxmlmError, match="start"):
        m.refit_many(np.zeros((3, 144)), start=[1.0, 2.0, 3.0])
    with pytest.raises(jaxmlm.JaxmlmError, match="REML"):
        m.refit_many(np.zeros((3, 144)), REML="no")
    with pytest.raises(jaxmlm.JaxmlmError, match="nsim"):
        m.simulate(0)
    with pytest.raises(jaxmlm.JaxmlmError, match="seed"):
        m.simulate(2, seed="abc")


def test_progress_bar_is_optional(fits, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    assert _refit._progress_bar(10, True, "x") is None
    m = fits("penicillin_crossed")
    r = m.refit_many(m.simulate(NSIM, seed=9), progress=True)
    assert r.ok.all()


# ---- simulate: the implied moments -------------------------------------------------------------


def _check_moments(Y, mean, V, nsim):
    """Sample mean, variances and correlations against the implied ones (generous bounds)."""
    sd = np.sqrt(np.diag(V))
    z = (Y.mean(0) - mean) / (sd / np.sqrt(nsim))
    assert np.max(np.abs(z)) < 5.0
    C = np.cov(Y, rowvar=False)
    np.testing.assert_allclose(np.diag(C), np.diag(V), rtol=0.06)  # se ≈ √(2/nsim) = 1 %
    corr_err = (C - V) / np.outer(sd, sd)
    assert np.max(np.abs(corr_err)) < 0.05  # se ≈ 1/√nsim = 0.007 per entry


def test_simulated_moments_sleepstudy(fits):
    m = fits("sleepstudy_rs")
    nsim = 20000
    Y = m.simulate(nsim, seed=2024)
    assert Y.shape == (nsim, m.nobs)
    d = case_data(CASES["sleepstudy_rs"])
    days, subj = d["Days"].to_numpy(float), d["Subject"].astype(str).to_numpy()
    mean = m.fixef["(Intercept)"] + m.fixef["Days"] * days
    vc = m.varcorr
    S = np.array([[vc.vcov[0], vc.vcov[2]], [vc.vcov[2], vc.vcov[1]]])
    Zr = np.column_stack([np.ones_like(days), days])
    V = (Zr @ S @ Zr.T) * (subj[:, None] == subj[None, :]) + m.sigma**2 * np.eye(m.nobs)
    _check_moments(Y, mean, V, nsim)
    # Rows of different subjects are uncorrelated; same subject: correlated.
    C = np.corrcoef(Y[:, :20], rowvar=False)
    assert abs(C[0, 15]) < 0.05 and C[0, 5] > 0.3


def test_simulated_moments_crossed(fits):
    m = fits("penicillin_crossed")
    nsim = 20000
    Y = m.simulate(nsim, seed=99)
    d = case_data(CASES["penicillin_crossed"])
    vc = m.varcorr.set_index("grp")["vcov"]
    plate, sample = d["plate"].astype(str).to_numpy(), d["sample"].astype(str).to_numpy()
    V = (vc["plate"] * (plate[:, None] == plate[None, :]) + vc["sample"] * (sample[:, None] == sample[None, :])
         + vc["Residual"] * np.eye(len(d)))
    _check_moments(Y, np.full(len(d), m.fixef["(Intercept)"]), V, nsim)


def test_simulate_use_u_keeps_the_conditional_modes(fits):
    m = fits("sleepstudy_rs")
    nsim = 20000
    Y = m.simulate(nsim, seed=3, use_u=True)
    _check_moments(Y, m.fitted, m.sigma**2 * np.eye(m.nobs), nsim)


def test_simulate_is_reproducible(fits):
    m = fits("sleepstudy_rs")
    a, b, c = m.simulate(3, seed=1), m.simulate(3, seed=1), m.simulate(3, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    g1, g2 = np.random.default_rng(4), np.random.default_rng(4)
    np.testing.assert_array_equal(m.simulate(2, seed=g1), m.simulate(2, seed=g2))
    key = jax.random.PRNGKey(0)
    k1, k2 = m.simulate(2, seed=key), m.simulate(2, seed=key)
    np.testing.assert_array_equal(k1, k2)
    assert np.all(np.isfinite(k1)) and not np.allclose(k1, a[:2])
    np.testing.assert_array_equal(m.simulate(2, seed=jax.random.key(0)), k1)


# ---- bootstrap -------------------------------------------------------------------------------


def test_percentile_rule_is_boots_norm_inter():
    # boot:::norm.inter(t, alpha) from R (boot 1.3-28.1); t has 20 values.
    t = np.array([3.1, -0.4, 2.2, 5.9, 1.0, 0.3, 4.4, 2.8, -1.7, 0.9,
                  3.3, 1.5, 2.0, 6.1, -0.2, 1.1, 2.6, 0.0, 3.9, 1.8])
    got = _refit._norm_inter(t, np.array([0.025, 0.975, 0.1, 0.9, 0.5]))
    np.testing.assert_allclose(got, [-1.7, 6.1, -0.377135749282715, 5.728518119620364, 1.9], rtol=1e-12)
    got = _refit._norm_inter(np.concatenate([t, [np.nan, np.inf]]), np.array([0.05, 0.95]))
    np.testing.assert_allclose(got, [-1.61481854676675, 6.08689516104104], rtol=1e-12)


def test_bootstrap_against_lme4_confint_boot(fits):
    ref = REF["boot"]["sleepstudy_rs"]
    m = fits("sleepstudy_rs")
    b = m.bootstrap(ref["nsim"], seed=31, progress=False)
    assert list(b.replicates.columns) == ref["names"]
    assert b.refits.ok.all()
    ci = b.confint()
    assert list(ci.columns) == ["lower", "upper"] and list(ci.index) == ref["names"]
    lo, hi = np.array(ref["lower"]), np.array(ref["upper"])
    # Monte Carlo on both sides (1000 replicates each): a bound's SE is ~3 % of the width.
    tol = 0.15 * (hi - lo)
    np.testing.assert_array_less(np.abs(ci["lower"].to_numpy() - lo), tol)
    np.testing.assert_array_less(np.abs(ci["upper"].to_numpy() - hi), tol)
    np.testing.assert_allclose(b.t0[["(Intercept)", "Days"]], m.fixef.to_numpy())
    assert b.t0["sigma"] == m.sigma
    narrow = b.confint(0.5)
    assert np.all(narrow["lower"] > ci["lower"]) and np.all(narrow["upper"] < ci["upper"])
    tab = b.table()
    assert list(tab.columns) == ["original", "bias", "std_error"]
    assert abs(tab.loc["Days", "std_error"] / m.se["Days"] - 1) < 0.15


# ---- power -----------------------------------------------------------------------------------


def test_clopper_pearson_is_binom_test():
    # binom.test(x, n, conf.level)$conf.int in R 4.2.2.
    cp = _refit._clopper_pearson
    np.testing.assert_allclose(cp(107, 200, 0.95), [0.463299857788321, 0.605647264738543], rtol=1e-10)
    np.testing.assert_allclose(cp(0, 50, 0.95), [0.0, 0.0711217364641976], rtol=1e-10)
    np.testing.assert_allclose(cp(50, 50, 0.95), [0.928878263535802, 1.0], rtol=1e-10)
    np.testing.assert_allclose(cp(3, 40, 0.9), [0.0207536014757012, 0.1825868500159012], rtol=1e-10)
    lo, hi = _refit._wilson(107, 200, 0.95)
    assert lo < 107 / 200 < hi and hi - lo < 0.15


def test_power_of_the_wald_test_is_near_normal_theory(fits):
    from scipy.stats import norm

    m = fits("sleepstudy_rs")
    res = jaxmlm.power(m, "Days", effect=3.0, nsim=1000, seed=12, progress=False)
    assert res.trials == 1000 and res.effect == 3.0 and res.test == "z"
    # Normal theory with the model's SE: Φ(|β|/se − z) + Φ(−|β|/se − z).
    ratio = 3.0 / m.se["Days"]
    approx = norm.cdf(ratio - 1.959964) + norm.cdf(-ratio - 1.959964)
    assert abs(res.power - approx) < 0.06
    assert res.lower < res.power < res.upper
    assert (res.lower, res.upper) == pytest.approx(_refit._clopper_pearson(res.successes, 1000, 0.95))
    assert np.isclose(np.nanmean(res.estimates), 3.0, atol=0.15)
    assert "Power for predictor 'Days'" in str(res)
    # The null effect rejects at about the nominal rate; a large effect nearly always.
    null = jaxmlm.power(m, "Days", effect=0.0, nsim=1000, seed=13, progress=False,
                        fixef={"(Intercept)": 100.0})
    assert null.power < 0.1
    big = jaxmlm.power(m, "Days", fixef={"Days": 10.0}, nsim=1000, seed=14, progress=False)
    assert big.effect == 10.0 and big.power > 0.99
    # Larger random-slope variance → larger SE → less power.
    vc = m.varcorr
    S = np.array([[vc.vcov[0], vc.vcov[2]], [vc.vcov[2], vc.vcov[1] * 4]])
    noisy = jaxmlm.power(m, "Days", effect=3.0, nsim=1000, seed=12, progress=False, varcorr={"Subject": S})
    assert noisy.power < res.power - 0.1


def test_power_likelihood_ratio_test_agrees_with_wald(fits):
    m = fits("sleepstudy_rs")
    z = jaxmlm.power(m, "Days", effect=3.0, nsim=1000, seed=12, progress=False)
    lr = jaxmlm.power(m, "Days", effect=3.0, nsim=1000, seed=12, progress=False, test="lr")
    assert lr.trials == 1000
    assert abs(lr.power - z.power) < 0.06
    agree = np.mean((lr.pvalues < 0.05) == (z.pvalues < 0.05))
    assert agree > 0.9


def test_power_from_a_formula_and_parameters():
    g = np.repeat(np.arange(30), 8)
    x = np.tile(np.arange(8) - 3.5, 30)
    df = pd.DataFrame({"g": g.astype(str), "x": x})  # no response column: it is simulated
    kw = dict(data=df, fixef={"(Intercept)": 1.0, "x": 0.06}, varcorr={"g": 0.5}, sigma=1.0, progress=False)
    res = jaxmlm.power("y ~ x + (1 | g)", "x", nsim=NSIM * 10, seed=1, **kw)
    # Balanced within-group x: the slope's SE is σ / √Σ(x − x̄_g)² (random intercepts cancel).
    se = 1.0 / np.sqrt(np.sum((x - 0) ** 2))
    from scipy.stats import norm

    approx = norm.cdf(0.06 / se - 1.959964)  # ≈ 0.57
    assert abs(res.power - approx) < 0.12
    t = jaxmlm.power("y ~ x + (1 | g)", "x", nsim=NSIM * 10, seed=1, test="t", **kw)
    assert t.power <= res.power  # same statistics, heavier-tailed reference
    with pytest.raises(jaxmlm.JaxmlmError, match="sigma"):
        jaxmlm.power("y ~ x + (1 | g)", "x", nsim=10, data=df, fixef={"(Intercept)": 1.0, "x": 0.1}, varcorr={"g": 0.5})


def test_power_checks_its_arguments(fits):
    m = fits("sleepstudy_rs")
    with pytest.raises(jaxmlm.JaxmlmError, match="fixed effects are"):
        jaxmlm.power(m, "Nights", nsim=10)
    with pytest.raises(jaxmlm.JaxmlmError, match="test must be"):
        jaxmlm.power(m, "Days", nsim=10, test="kr")
    with pytest.raises(jaxmlm.JaxmlmError, match="terms are"):
        jaxmlm.power(m, "Days", nsim=10, varcorr={"Subj": 1.0})
    with pytest.raises(jaxmlm.JaxmlmError, match="2×2"):
        jaxmlm.power(m, "Days", nsim=10, varcorr={"Subject": 1.0})
    with pytest.raises(jaxmlm.JaxmlmError, match="semi-definite"):
        jaxmlm.power(m, "Days", nsim=10, varcorr={"Subject": [[1.0, 2.0], [2.0, 1.0]]})


def test_changing_sigma_keeps_random_effect_variances(fits):
    m = fits("sleepstudy_rs")
    spec = _refit._with_parameters(_refit._spec(m), sigma=2 * m.sigma)
    before = _refit._sdcor(m.theta[None], np.array([m.sigma]), m.design, m.layout)
    after = _refit._sdcor(spec.theta[None], np.array([spec.sigma]), m.design, m.layout)
    np.testing.assert_allclose(after, before, rtol=1e-12)
    assert spec.sigma == 2 * m.sigma


# ---- parametric-bootstrap LRT ------------------------------------------------------------------


def test_pb_test_against_pbkrtest():
    ref = REF["pb"]["sleepstudy_days2"]
    d = jaxmlm.load_example("sleepstudy")
    d["Days2"] = d["Days"].astype(float) ** 2
    large = jaxmlm.lmer(ref["large"], d)  # REML fits, as in the R reference
    small = jaxmlm.lmer(ref["small"], d)
    res = _refit.pb_test(small, large, nsim=1000, seed=21, progress=False)
    assert res.df == ref["df"]
    assert res.stat == pytest.approx(ref["stat"], abs=2e-4)  # LRT of the ML refits: deterministic
    assert res.p_chisq == pytest.approx(ref["p_chisq"], abs=1e-4)
    assert res.n_valid == 1000
    # Monte Carlo: pbkrtest used 2000 replicates, we use 1000; SE of the difference ≈ 0.016.
    assert abs(res.p_value - ref["p_pb"]) < 0.06
    assert abs(res.p_value_pbkrtest - ref["p_pb"]) < 0.06
    assert res.p_value == (1 + res.n_extreme) / (1 + res.n_valid)
    tab = res.table()
    assert list(tab.index) == ["LRT", "PBtest"] and tab.loc["PBtest", "p_value"] == res.p_value


def test_pb_test_checks_the_models(fits):
    m = fits("sleepstudy_rs")
    with pytest.raises(jaxmlm.JaxmlmError, match="smaller model"):
        _refit.pb_test(fits("sleepstudy_rs_ml"), m, nsim=10)  # same number of parameters
    with pytest.raises(jaxmlm.JaxmlmError, match="same response"):
        _refit.pb_test(fits("penicillin_crossed"), m, nsim=10)


def test_ml_refit_of_a_reml_model_is_lmers_ml_fit(fits):
    ml = _refit._ml_spec(fits("sleepstudy_rs"))
    ref = fits("sleepstudy_rs_ml")
    assert not ml.reml and ml.objective == pytest.approx(ref.objective, rel=1e-12)
    np.testing.assert_allclose(ml.beta, ref.fixef.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(ml.theta, ref.theta, rtol=1e-8)
    assert _refit._ml_spec(ref).objective == ref.objective

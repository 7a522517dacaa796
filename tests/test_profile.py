"""m.profile(): ζ on a grid (lme4's profile.merMod) against lme4's own profile of two fits,
against independent computations of the profiled deviance, and against confint's limits.

lme4's grids come from tests/reference/profile/make_profile_reference.R (lme4 1.1-31,
``as.data.frame(profile(m, signames = FALSE))``). Our ζ is interpolated (cubic, through a
grid 4 times finer than lme4's default, so the interpolation error is ~1e-6) at lme4's values.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import CubicSpline
from scipy.optimize import minimize, minimize_scalar
from scipy.special import chdtri

import jaxmlm
from jaxmlm import JaxmlmError

REF = json.loads((Path(__file__).parent / "reference" / "profile" / "profile_reference.json").read_text())
CASES = {c["id"]: c for c in REF["cases"]}
Z975 = 1.959963984540054


def _fit(case, REML=None):
    c = CASES[case]
    return jaxmlm.lmer(c["formula"], jaxmlm.load_example(c["dataset"]), REML=c["REML"] if REML is None else REML)


@pytest.fixture(scope="module")
def profiles():
    cache = {}

    def get(case, fine=True, REML=None):
        key = (case, fine, REML)
        if key not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("error", jaxmlm.ConvergenceWarning)
                m = _fit(case, REML)
                cache[key] = (m, m.profile(delta_cutoff=1 / 32) if fine else m.profile())
        return cache[key]

    return get


def _curve(prof, name):
    rows = prof[prof["parameter"] == name]
    return rows["value"].to_numpy(), rows["zeta"].to_numpy()


# ---- an independent profile: dense marginal covariances, numpy and scipy only -----------------------------


def _dense_ml(y, X, groups, Zg, S, sigma):
    """−2 log L at (Σ, σ) with β by GLS: V_g = Z_g Σ Z_gᵀ + σ² I per group."""
    logdet, XVX, XVy, yVy = 0.0, 0.0, 0.0, 0.0
    for rows in groups:
        Z = Zg[rows]
        L = np.linalg.cholesky(Z @ S @ Z.T + sigma**2 * np.eye(len(rows)))
        Xw, yw = np.linalg.solve(L, X[rows]), np.linalg.solve(L, y[rows])
        logdet += 2 * np.log(np.diag(L)).sum()
        XVX, XVy, yVy = XVX + Xw.T @ Xw, XVy + Xw.T @ yw, yVy + yw @ yw
    return logdet + yVy - XVy @ np.linalg.solve(XVX, XVy) + len(y) * np.log(2 * np.pi)


def _dyestuff():
    d = jaxmlm.load_example("Dyestuff")
    y = d["Yield"].to_numpy(float)
    groups = [np.flatnonzero(d["Batch"].to_numpy() == b) for b in pd.unique(d["Batch"])]
    return y, np.ones((len(y), 1)), groups, np.ones((len(y), 1))


def _sleep():
    d = jaxmlm.load_example("sleepstudy")
    y, days = d["Reaction"].to_numpy(float), d["Days"].to_numpy(float)
    X = np.column_stack([np.ones_like(days), days])
    groups = [np.flatnonzero(d["Subject"].to_numpy() == s) for s in pd.unique(d["Subject"])]
    return y, X, groups, X


def _dense_zeta_sleep_sd0(v, base, start):
    """ζ of sd_(Intercept)|Subject = v for sleepstudy: minimize over log sd_Days, atanh ρ, log σ."""
    y, X, groups, Z = _sleep()

    def dev(f):
        s1, r, sig = np.exp(f[0]), np.tanh(f[1]), np.exp(f[2])
        S = np.array([[v * v, r * v * s1], [r * v * s1, s1 * s1]])
        return _dense_ml(y, X, groups, Z, S, sig)

    res = minimize(dev, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 4000})
    return -np.sqrt(max(res.fun - base, 0.0)), res.fun


# ---- against lme4 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_zeta_matches_lme4_profile(case, profiles):
    m, prof = profiles(case)
    ref = pd.DataFrame(CASES[case]["profile"])
    assert list(dict.fromkeys(prof["parameter"])) == list(dict.fromkeys(ref["parameter"]))
    compared, off = 0, []
    for name, r in ref.groupby("parameter", sort=False):
        v, z = _curve(prof, name)
        inside = r[(r["value"] >= v.min()) & (r["value"] <= v.max())]
        assert len(inside) >= len(r) - 2  # our walk ends where lme4's does, give or take its last point
        got = CubicSpline(v, z)(inside["value"].to_numpy())
        for val, want, g in zip(inside["value"], inside["zeta"], got):
            compared += 1
            if abs(g - want) > 1e-4:
                off.append((name, val, want, g))
    assert compared >= 50
    # One point of lme4's is not at the minimum: at sd_(Intercept)|Subject = 4.239 (ζ = −3.96)
    # its optimizer stopped early. A dense computation finds a deviance lower than lme4's, and ours.
    if case == "sleepstudy_rs":
        assert len(off) == 1 and off[0][0] == "sd_(Intercept)|Subject", off
        name, val, want, got = off[0]
        ml = _fit(case, REML=False)
        base = -2 * ml.loglik
        vc = ml.varcorr
        start = [np.log(vc["sdcor"].iloc[1]), np.arctanh(vc["sdcor"].iloc[2]), np.log(ml.sigma)]
        dense, _ = _dense_zeta_sleep_sd0(val, base, start)
        assert abs(dense - got) < 1e-4 and abs(want) > abs(dense) + 2e-4, (dense, got, want)
    else:
        assert off == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_grid_reaches_lme4s_cutoff(case, profiles):
    """lme4's defaults: cutoff √χ²_npar(0.99); each walk ends past it or at a bound (sd 0, cor ±1);
    steps of about cutoff/8 in ζ."""
    m, prof = profiles(case, fine=False)
    npar = CASES[case]["npar"]
    cutoff = np.sqrt(chdtri(npar, 0.01))
    assert cutoff == pytest.approx(CASES[case]["cutoff"], rel=1e-12)
    for name in dict.fromkeys(prof["parameter"]):
        v, z = _curve(prof, name)
        assert z[-1] > cutoff or (name.startswith("cor_") and v[-1] == 1.0), name
        assert z[0] < -cutoff or (name.startswith("sd_") and v[0] == 0.0) or (name.startswith("cor_") and v[0] == -1.0)
        steps = np.diff(z)
        assert np.median(steps) == pytest.approx(cutoff / 8, rel=0.15), name
    assert (prof.columns == ["parameter", "value", "zeta"]).all()


# ---- shape of the profile -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_zero_at_the_ml_estimate_and_monotone(case, profiles):
    """ζ = 0 at the ML estimates (also for a REML fit, profiled on the ML deviance) and
    increases strictly with the value."""
    m, prof = profiles(case)
    ml = _fit(case, REML=False)
    want = {"sigma": ml.sigma, **ml.fixef.to_dict()}
    vc = ml.varcorr
    for _, r in vc[vc["grp"] != "Residual"].iterrows():
        if pd.isna(r["var2"]):
            want[f"sd_{r['var1']}|{r['grp']}"] = r["sdcor"]
        else:
            want[f"cor_{r['var2']}.{r['var1']}|{r['grp']}"] = r["sdcor"]
    assert set(want) == set(prof["parameter"])
    for name, value in want.items():
        v, z = _curve(prof, name)
        zero = np.flatnonzero(z == 0.0)
        assert len(zero) == 1 and v[zero[0]] == pytest.approx(value, rel=1e-6, abs=1e-8), name
        assert np.all(np.diff(v) > 0) and np.all(np.diff(z) > 0), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_zeta_crosses_196_at_confint_limits(case, profiles):
    """ζ interpolated through the grid at confint's limits (exact roots) is ±1.96."""
    m, prof = profiles(case)
    ci = m.confint()
    for name, (lo, hi) in ci.iterrows():
        v, z = _curve(prof, name)
        for limit, target in ((lo, -Z975), (hi, Z975)):
            if limit == 0.0 and name.startswith("sd_"):  # the profile stays above −z down to sd = 0
                assert z[0] > -Z975 and v[0] == 0.0
                continue
            assert float(CubicSpline(v, z)(limit)) == pytest.approx(target, abs=1e-4), (name, target)


# ---- independent profiles ---------------------------------------------------------------------------------------


def test_fixed_effect_zeta_equals_offset_refits(profiles):
    """ζ of Days at v: the ML fit of Reaction ~ 1 + (Days | Subject) with offset v·Days (the
    column removed, its coefficient fixed) against the full ML fit: sign · √(deviance increase)."""
    m, prof = profiles("sleepstudy_rs", fine=False)
    d = jaxmlm.load_example("sleepstudy")
    base = -2 * jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d, REML=False).loglik
    v, z = _curve(prof, "Days")
    for k in (0, 3, len(v) // 2 + 2, len(v) - 1):
        fit = jaxmlm.lmer("Reaction ~ 1 + (Days | Subject)", d, REML=False, offset=v[k] * d["Days"].to_numpy())
        want = np.sign(v[k] - m.fixef["Days"]) * np.sqrt(max(-2 * fit.loglik - base, 0.0))
        assert z[k] == pytest.approx(want, abs=1e-5), v[k]


def test_sd_and_sigma_zeta_equal_a_dense_profile(profiles):
    """Dyestuff (ML deviance by dense marginal covariances): ζ of the batch SD at v minimizes
    over σ; ζ of σ at v over the batch SD (scipy, bounded 1-D)."""
    m, prof = profiles("dyestuff", fine=False)
    y, X, groups, Z = _dyestuff()

    def dev(sd, sigma):
        return _dense_ml(y, X, groups, Z, np.array([[sd * sd]]), sigma)

    base = minimize(lambda f: dev(np.exp(f[0]), np.exp(f[1])), [np.log(40.0), np.log(50.0)],
                    method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12}).fun
    for name in ("sd_(Intercept)|Batch", "sigma"):
        v, z = _curve(prof, name)
        zero = v[np.flatnonzero(z == 0.0)[0]]
        for k in range(0, len(v), 3):
            if name == "sigma":
                d = minimize_scalar(lambda s: dev(s, v[k]), bounds=(0.0, 300.0), method="bounded",
                                    options={"xatol": 1e-9}).fun
            else:
                d = minimize_scalar(lambda s: dev(v[k], s), bounds=(1.0, 300.0), method="bounded",
                                    options={"xatol": 1e-9}).fun
            want = np.sign(v[k] - zero) * np.sqrt(max(d - base, 0.0))
            assert z[k] == pytest.approx(want, abs=1e-5), (name, v[k])


# ---- API -------------------------------------------------------------------------------------------------------


def test_parm_and_bad_arguments(profiles):
    m, _ = profiles("dyestuff", fine=False)
    one = m.profile(parm="sigma")
    assert set(one["parameter"]) == {"sigma"}
    assert set(m.profile(parm="beta_")["parameter"]) == {"(Intercept)"}
    for kw in (dict(alphamax=0), dict(alphamax=1.5), dict(maxpts=1), dict(delta=-1.0), dict(parm="nope")):
        with pytest.raises(JaxmlmError):
            m.profile(**kw)
    for bad in ("x", -0.1, 0, 2):  # the error names delta_cutoff, not the delta computed from it
        with pytest.raises(JaxmlmError, match="delta_cutoff"):
            m.profile(delta_cutoff=bad)


def test_parm_as_one_position(profiles):
    """parm = 1 (one position, as confint's and lme4's integer parm) is parm = [1], not a TypeError."""
    m, _ = profiles("dyestuff", fine=False)
    pd.testing.assert_frame_equal(m.profile(parm=1), m.profile(parm="sigma"))
    assert list(m.confint(parm=1).index) == ["sigma"]
    with pytest.raises(JaxmlmError):
        m.profile(parm=7)


def test_maxpts_bounds_each_walk(profiles):
    m, _ = profiles("dyestuff", fine=False)
    prof = m.profile(parm="sigma", maxpts=4)
    v, z = _curve(prof, "sigma")
    assert len(v) == 1 + 2 * 3  # the estimate and three points on each side


@pytest.mark.parametrize("structured, unstructured", [
    # exact equivalences (as in test_confint): a 2-column cs term has one free correlation in
    # (−1, 1), as us; diag is the double-bar model
    ("Reaction ~ Days + cs(1 + Days | Subject)", "Reaction ~ Days + (1 + Days | Subject)"),
    ("Reaction ~ Days + diag(1 + Days | Subject)", "Reaction ~ Days + (1 + Days || Subject)"),
])
def test_structure_profiles_equal_their_unstructured_twins(structured, unstructured):
    d = jaxmlm.load_example("sleepstudy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxmlm.ConvergenceWarning)
        got, want = jaxmlm.lmer(structured, d).profile(), jaxmlm.lmer(unstructured, d).profile()
    assert sorted(set(got["parameter"])) == sorted(set(want["parameter"]))
    for name in dict.fromkeys(want["parameter"]):
        v, z = _curve(want, name)
        gv, gz = _curve(got, name)
        inside = (gv >= v.min()) & (gv <= v.max())
        assert inside.sum() >= len(gv) - 2  # the grids may end a step apart
        np.testing.assert_allclose(gz[inside], CubicSpline(v, z)(gv[inside]), atol=5e-5, err_msg=name)

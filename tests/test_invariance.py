"""Property tests: what must not change when the data are presented differently.

* row order: a permutation of the rows changes nothing (ranef indexed by level);
* relabeled groups: renaming levels changes nothing but the labels;
* rescaled response y → a·y + c: β̂ (but the intercept) and σ̂ scale by a, the
  intercept becomes a·β₀ + c, θ is unchanged, and the criterion shifts by
  exactly (n − p·REML)·log(a²);
* rescaled predictors x_j → s_j·x_j (issue 11: x1 on a 1e-4 and x2 on a 1e4 scale in
  (1 + x1 + x2 | g) stalled ~10 deviance units above the optimum): the fit reaches the
  same optimum, β̂_j becomes β̂_j/s_j, each row i of the relative factor Λ is divided by
  the scale of Z's column i (b = Λu: b_i is in units of y per unit of column i), the
  standard deviations likewise, correlations and σ̂ are unchanged, and the criterion is
  the same (REML: shifted by 2·Σ_j log s_j, from log|R_X|²).
"""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxmlm

FORMULAS = {
    "sleepstudy": ("Reaction", "Reaction ~ Days + (Days | Subject)", "Subject"),
    "Penicillin": ("diameter", "diameter ~ 1 + (1 | plate) + (1 | sample)", "plate"),
    "Pastes": ("strength", "strength ~ 1 + (1 | batch/cask)", "batch"),
}
SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_BASE: dict = {}


def base(name, reml=True):
    if (name, reml) not in _BASE:
        _BASE[name, reml] = jaxmlm.lmer(FORMULAS[name][1], jaxmlm.load_example(name), REML=reml)
    return _BASE[name, reml]


def _same_fit(a, b, tol=1e-6):
    assert a.objective == pytest.approx(b.objective, abs=1e-7)
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=tol, atol=tol * 1e-2)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-5, atol=1e-6)
    for g, re in a.ranef.items():
        other = b.ranef[g].loc[re.index]
        np.testing.assert_allclose(re.to_numpy(), other.to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FORMULAS))
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_row_order_does_not_matter(name, seed):
    d = jaxmlm.load_example(name)
    perm = np.random.default_rng(seed).permutation(len(d))
    m = jaxmlm.lmer(FORMULAS[name][1], d.iloc[perm].reset_index(drop=True))
    _same_fit(base(name), m)
    # fitted values follow the rows
    np.testing.assert_allclose(m.fitted, base(name).fitted[perm], rtol=1e-7)


@pytest.mark.parametrize("name", sorted(FORMULAS))
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_relabeled_groups_do_not_matter(name, seed):
    d = jaxmlm.load_example(name)
    g = FORMULAS[name][2]
    levels = list(d[g].cat.categories)
    new = [f"L{i}" for i in np.random.default_rng(seed).permutation(len(levels))]
    mapping = dict(zip(levels, new))
    d2 = d.copy()
    d2[g] = d2[g].astype(str).map(mapping)  # plain strings: sorted levels, a different order
    m = jaxmlm.lmer(FORMULAS[name][1], d2)
    ref = base(name)
    assert m.objective == pytest.approx(ref.objective, abs=1e-7)
    np.testing.assert_allclose(m.theta, ref.theta, rtol=1e-5, atol=1e-6)
    # the same random effect for the same (renamed) level; nested labels carry the name inside
    key = [k for k in ref.ranef if k == g][0]
    renamed = ref.ranef[key].rename(index=mapping)
    np.testing.assert_allclose(m.ranef[key].loc[renamed.index].to_numpy(), renamed.to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("reml", [True, False])
@SETTINGS
@given(a=st.floats(0.01, 100.0), c=st.floats(-1e3, 1e3))
def test_rescaled_response(name, reml, a, c):
    y = FORMULAS[name][0]
    d = jaxmlm.load_example(name)
    d[y] = a * d[y].astype(float) + c
    m = jaxmlm.lmer(FORMULAS[name][1], d, REML=reml)
    ref = base(name, reml)
    n, p = ref.nobs, len(ref.fixef)
    shift = (n - p * reml) * math.log(a * a)
    assert m.objective == pytest.approx(ref.objective + shift, abs=1e-6)
    np.testing.assert_allclose(m.theta, ref.theta, rtol=1e-5, atol=1e-6)
    assert m.sigma == pytest.approx(a * ref.sigma, rel=1e-6)
    expected = a * ref.fixef.to_numpy()
    expected[0] += c
    np.testing.assert_allclose(m.fixef.to_numpy(), expected, rtol=1e-6, atol=1e-6 * a * ref.se.iloc[0])
    np.testing.assert_allclose(m.se.to_numpy(), a * ref.se.to_numpy(), rtol=1e-5)


SCALE_REF = Path(__file__).parent / "reference" / "scale"
SCALES = np.array([1.0, 1e-4, 1e4])  # units of the columns (1, x1, x2) of X and of Z in the scaled data
THETA_ROWS = np.array([i for j in range(3) for i in range(j, 3)])  # Z column (template row) of each θ entry


@pytest.fixture(scope="module")
def slopes():
    """tests/reference/scale (made by make_scale_reference.R): lme4's fits, and a function
    giving jaxmlm's fits (natural units, x1·1e-4 and x2·1e4), each made once, none warning."""
    import pandas as pd

    d = pd.read_csv(SCALE_REF / "slopes.csv")
    d["g"] = pd.Categorical(d["g"])
    ref = json.loads((SCALE_REF / "scale_reference.json").read_text())
    bad = d.assign(x1=d["x1"] * SCALES[1], x2=d["x2"] * SCALES[2])
    cache = {}

    def fits(reml):
        if reml not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no convergence warning
                cache[reml] = tuple(jaxmlm.lmer(ref["formula"], data, REML=reml) for data in (d, bad))
        return cache[reml]

    return ref, fits


@pytest.mark.parametrize("reml", [True, False])
def test_rescaled_predictors(slopes, reml):
    """The fit does not depend on the units of a random slope's predictor: x1 on a 1e-4 and x2
    on a 1e4 scale give the natural-units fit, transformed as the units are, and both are
    lme4's fit of the natural units (jaxmlm issue 11)."""
    ref, fits = slopes
    r = ref["reml" if reml else "ml"]
    nat, sc = fits(reml)
    s = SCALES
    assert nat.record.converged and sc.record.converged
    # lme4 on the natural units
    assert nat.objective == pytest.approx(r["criterion"], abs=1e-6)
    np.testing.assert_allclose(nat.fixef.to_numpy(), r["fixef"], rtol=1e-6)
    np.testing.assert_allclose(nat.theta, r["theta"], rtol=1e-5, atol=1e-6)
    assert nat.sigma == pytest.approx(r["sigma"], rel=1e-6)
    # the scaled fit is the same fit in other units, reached by the same path (the optimizer's
    # coordinates are unit-free: the same steps up to rounding)
    assert sc.record.iterations == nat.record.iterations
    shift = 2.0 * float(np.sum(np.log(s))) if reml else 0.0  # log|R_X|² with X → X·diag(s)
    assert sc.objective == pytest.approx(nat.objective + shift, abs=1e-6)
    assert sc.loglik == pytest.approx(nat.loglik - shift / 2.0, abs=1e-6)
    np.testing.assert_allclose(sc.fixef.to_numpy() * s, nat.fixef.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(sc.se.to_numpy() * s, nat.se.to_numpy(), rtol=1e-5)
    assert sc.sigma == pytest.approx(nat.sigma, rel=1e-7)
    # θ in lme4's order (column by column of the lower triangle): row i of Λ is in units of column i
    np.testing.assert_allclose(sc.theta * s[THETA_ROWS], nat.theta, rtol=1e-5, atol=1e-7)
    # standard deviations in the units of their column, correlations and σ unchanged
    col = {"(Intercept)": 0, "x1": 1, "x2": 2}
    vn, vs = nat.varcorr, sc.varcorr
    assert vn[["grp", "var1", "var2"]].equals(vs[["grp", "var1", "var2"]])
    sd_row = vn["var2"].isna() & (vn["grp"] != "Residual")
    factor = np.where(sd_row, [s[col[v]] if v in col else 1.0 for v in vn["var1"]], 1.0)
    np.testing.assert_allclose(vs["sdcor"].to_numpy() * factor, vn["sdcor"].to_numpy(), rtol=1e-5)


def test_rescaled_predictors_profile_and_refits(slopes):
    """Profile intervals and batched refits are unit-free too: their starts, steps and
    thresholds near 0 (snapping, lifting off 0) are taken in the optimizer's coordinates."""
    nat, sc = slopes[1](True)
    ci_n, ci_s = nat.confint(), sc.confint()
    assert list(ci_n.index) == list(ci_s.index)
    unit = {"x1": SCALES[1], "x2": SCALES[2]}
    factor = np.array([unit.get(name.removeprefix("sd_").removesuffix("|g"), 1.0) if not name.startswith("cor_")
                       else 1.0 for name in ci_n.index])
    np.testing.assert_allclose(ci_s.to_numpy() * factor[:, None], ci_n.to_numpy(), rtol=1e-6)
    Y = nat.simulate(8, seed=11)
    rn, rs = nat.refit_many(Y, progress=False), sc.refit_many(Y, progress=False)
    assert rn.ok.all() and rs.ok.all()
    np.testing.assert_allclose(rs.objective, rn.objective, rtol=0, atol=1e-6)  # REML shift 0: Σ log s = 0
    np.testing.assert_allclose(rs.theta * SCALES[THETA_ROWS], rn.theta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rs.beta * SCALES, rn.beta, rtol=1e-6)


def test_rescaled_predictor_boundary_fit(slopes):
    """A slope variance estimated at 0 is snapped to exactly 0 (lme4's singular fit) in any units
    of its predictor, by lmer and by batched refits, and the rest of the fit transforms as the
    units do. (Here Newton lands within ~1e-17 of 0 in unit-free coordinates, so an absolute
    snapping threshold would snap too; the relative one matters where the criterion is flat to
    fourth order at 0 and Newton stops ~1e-3 away.)"""
    import pandas as pd

    d = pd.read_csv(SCALE_REF / "slopes.csv")
    d["g"] = pd.Categorical(d["g"])
    rng = np.random.default_rng(0)
    d["y"] = 1 + 0.5 * d["x1"] + rng.normal(size=30)[d["g"].cat.codes.to_numpy()] + rng.normal(size=len(d))
    s = np.array([1.0, 1e-4])
    formula = "y ~ x1 + (1 + x1 | g)"
    nat = jaxmlm.lmer(formula, d)
    sc = jaxmlm.lmer(formula, d.assign(x1=d["x1"] * s[1]))
    rows = np.array([0, 1, 1])  # Z column of each θ entry
    assert nat.record.snapped == sc.record.snapped == (2,) and nat.theta[2] == sc.theta[2] == 0.0
    assert sc.objective == pytest.approx(nat.objective + 2.0 * math.log(s[1]), abs=1e-6)
    np.testing.assert_allclose(sc.theta * s[rows], nat.theta, rtol=1e-6)
    # batched refits snap the same way (their own in-program rule)
    Y = np.vstack([d["y"].to_numpy(), nat.simulate(7, seed=3)])
    rn, rs = nat.refit_many(Y, progress=False), sc.refit_many(Y, progress=False)
    assert rn.ok.all() and rs.ok.all() and (rn.theta[:, 2] == 0).sum() >= 4
    np.testing.assert_array_equal(rs.theta[:, 2] == 0, rn.theta[:, 2] == 0)
    np.testing.assert_allclose(rs.theta * s[rows], rn.theta, rtol=1e-5, atol=1e-7)

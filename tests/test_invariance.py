"""Property tests: what must not change when the data are presented differently.

* row order: a permutation of the rows changes nothing (ranef indexed by level);
* relabeled groups: renaming levels changes nothing but the labels;
* rescaled response y → a·y + c: β̂ (but the intercept) and σ̂ scale by a, the
  intercept becomes a·β₀ + c, θ is unchanged, and the criterion shifts by
  exactly (n − p·REML)·log(a²).
"""

import math

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

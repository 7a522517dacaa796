"""jaxmlm.core, the engine's public stages: design → schema → statistics (mergeable) → criterion → fit.

Checked against lme4's reference fits (criterion and estimates), finite differences (gradient),
one-pass statistics (merging of partitions) and fits of each simulated response on its own
(vmap over responses).
"""

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import CASES, case_data

import jaxmlm
import jaxmlm.core as core

CORE_CASES = ["sleepstudy_rs", "penicillin_crossed", "pastes_nested", "crossed_subj_slope", "dyestuff2_singular",
              "hsb_uncorr_ml"]


def _design(cid, **kwargs):
    c = CASES[cid]
    return c, core.design(c["formula"], case_data(c), **kwargs)


@pytest.mark.parametrize("cid", CORE_CASES)
def test_fit_gives_lme4s_estimates_and_criterion(cid):
    c, d = _design(cid)
    s = core.schema(d)
    st = core.statistics(s, d)
    res = core.fit(st, s.layout, REML=c["REML"])
    assert int(res.state.status) in (0, 1)
    names = list(c["fixef"])
    se = np.array([c["se"][k] for k in names])
    np.testing.assert_array_less(np.abs(np.asarray(res.solution.beta) - [c["fixef"][k] for k in names]), 0.002 * se)
    assert float(res.solution.sigma) == pytest.approx(c["sigma"], rel=2e-3)
    assert abs(float(res.objective) - c["deviance_or_reml"]) < 2e-4
    assert float(res.objective) <= c["deviance_or_reml"] + 1e-6
    # The criterion at lme4's θ is lme4's criterion (an evaluation, not an optimization).
    assert float(core.criterion(jnp.atleast_1d(jnp.asarray(c["theta"])), st, s.layout, c["REML"])) == pytest.approx(
        c["deviance_or_reml"], abs=1e-6)
    assert len(core.theta_names(d)) == s.layout.ntheta == np.size(c["theta"])


@pytest.mark.parametrize("cid", ["sleepstudy_rs", "crossed_item_slope"])
@pytest.mark.parametrize("reml", [True, False])
def test_criterion_gradient_matches_finite_differences(cid, reml):
    _, d = _design(cid)
    s = core.schema(d)
    st = core.statistics(s, d)
    rng = np.random.default_rng(3)
    theta = rng.uniform(0.2, 1.2, s.layout.ntheta)
    g = np.asarray(jax.grad(core.criterion)(jnp.asarray(theta), st, s.layout, reml))
    h = 1e-6
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        fd = (float(core.criterion(jnp.asarray(theta + e), st, s.layout, reml))
              - float(core.criterion(jnp.asarray(theta - e), st, s.layout, reml))) / (2 * h)
        assert g[i] == pytest.approx(fd, rel=1e-5, abs=1e-5)


def test_reml_and_ml_share_one_program():
    _, d = _design("sleepstudy_rs")
    s = core.schema(d)
    st = core.statistics(s, d)
    theta = jnp.asarray([0.9, 0.02, 0.2])
    core.criterion(theta, st, s.layout, True)
    before = core.criterion._cache_size()
    core.criterion(theta, st, s.layout, False)
    assert core.criterion._cache_size() == before


def test_fit_vmaps_over_responses_as_separate_fits():
    """vmap of fit over responses swapped into the statistics = each response's own design,
    pass and fit (an independent path through the front end and the pass)."""
    c, d = _design("sleepstudy_rs")
    data = case_data(c)
    s = core.schema(d)
    st = core.statistics(s, d)
    ops = core.response_operators(d, s.layout)
    m = jaxmlm.lmer(c["formula"], data)
    Y = m.simulate(4, seed=5)
    Y = Y.T if Y.shape[0] != 4 else Y
    batch = jax.vmap(lambda y: core.fit(core.response_statistics(st, y, ops, s.layout), s.layout))(jnp.asarray(Y))
    for r in range(4):
        dr = core.design(c["formula"], data.assign(Reaction=Y[r]))
        one = core.fit(core.statistics(core.schema(dr), dr), s.layout)
        np.testing.assert_allclose(np.asarray(batch.theta[r]), np.asarray(one.theta), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(np.asarray(batch.solution.beta[r]), np.asarray(one.solution.beta), rtol=1e-8)
        assert float(batch.objective[r]) == pytest.approx(float(one.objective), rel=1e-10)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the limit is a CPU one; elsewhere it is `wanted`")
def test_batch_limit_keeps_a_vmapped_batch_below_jaxlibs_split_size():
    """Penicillin, `(1 | plate) + (1 | sample)`: the fill-in block is sample's 6 × 6, so each
    Newton evaluation's largest LAPACK call is its Cholesky factor, 6³ = 216 in jaxlib's FLOP
    model, and a step takes m + 1 = 3 gradients side by side (the differenced Hessian):
    648 per replicate. jaxlib splits a batched call above 2·10⁵; the limit keeps the batch
    below half that, and is the largest batch that does."""
    data = jaxmlm.load_example("Penicillin")
    lay = core.schema(core.design("diameter ~ 1 + (1 | plate) + (1 | sample)", data)).layout
    per_replicate = 6**3 * (lay.ntheta + 1)
    limit = core.batch_limit(lay, 10_000)
    assert limit * per_replicate <= 100_000 < (limit + 1) * per_replicate
    assert core.batch_limit(lay, 7) == 7
    for bad in (0, -3, 2.5, "16", True):
        with pytest.raises(jaxmlm.DataError, match="positive whole number"):
            core.batch_limit(lay, bad)


def test_a_fitted_models_statistics_take_a_new_response_and_merge():
    """A model of 257-2,048 rows is fitted by one program whose X is padded; its statistics come
    back narrowed on the host (numpy arrays). They still take a new response and merge,
    eagerly, as the pass's statistics do: the model's own response gives its statistics back,
    and merging them with themselves doubles every sum (β₀ unchanged)."""
    c, d = _design("crossed_item_slope")  # 513 rows, p = 2 (padded to 3 in the program)
    m = jaxmlm.lmer(c["formula"], case_data(c))
    assert isinstance(m.stats.WW, np.ndarray) and m.stats.WW.shape == (m.layout.p + 1,) * 2
    ops = core.response_operators(m.design, m.layout)
    again = core.response_statistics(m.stats, m.design.y, ops, m.layout)
    for name in ("Z1W", "WW", "ZrW"):
        _close(getattr(again, name), getattr(m.stats, name), 1e-10, name)
    both = core.merge(m.stats, m.stats)
    for name in ("n", "A11", "Z1W", "WW", "A22", "ZrW", "A21"):
        _close(getattr(both, name), 2 * np.asarray(getattr(m.stats, name)), 1e-12, name)
    np.testing.assert_allclose(np.asarray(both.beta0), np.asarray(m.stats.beta0), rtol=1e-12)


def _close(a, b, rel: float, what: str) -> None:
    """|a − b| ≤ rel · max|a| over the whole array (entries near 0, as Xᵀr, judged on the array's scale)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape, what
    if a.size:
        assert float(np.max(np.abs(a - b))) <= rel * max(float(np.max(np.abs(a))), 1e-300), what


def _merge_tree(parts, rng):
    """Merge statistics in a random order and bracketing (the result must not depend on either)."""
    parts = list(parts)
    while len(parts) > 1:
        i, j = sorted(rng.choice(len(parts), 2, replace=False))
        merged = core.merge(parts[i], parts[j]) if rng.random() < 0.5 else core.merge(parts[j], parts[i])
        parts = [p for k, p in enumerate(parts) if k not in (i, j)] + [merged]
    return parts[0]


@pytest.mark.parametrize("cid,prior", [
    ("sleepstudy_rs", None),
    ("penicillin_crossed", None),
    ("pastes_nested", None),
    ("crossed_item_slope", None),
    ("factors_na", None),
    ("sleepstudy_rs", "weights+offset"),
    ("crossed_subj_slope", "weights+offset"),
])
def test_statistics_of_a_partition_merge_to_the_one_pass_statistics(cid, prior):
    """Statistics of the parts of random partitions of the shuffled rows (one part a single row,
    one part empty), merged in random order, equal the one-pass statistics to 1e-12; so do the
    criterion and the solution at any θ."""
    c = CASES[cid]
    data = case_data(c)
    rng = np.random.default_rng(11)
    kwargs = {}
    if prior:
        data = data.assign(w=rng.uniform(0.2, 3.0, len(data)), o=rng.normal(0, 5.0, len(data)))
        data.loc[data.index[3], "w"] = 0.0  # a row of weight 0 counts nowhere
        kwargs = dict(weights="w", offset="o")
    d = core.design(c["formula"], data, **kwargs)
    s = core.schema(d)
    layout = s.layout
    one = core.statistics(s, d)
    for trial in range(3):
        order = rng.permutation(d.n)
        cuts = np.sort(rng.choice(np.arange(2, d.n - 1), 3, replace=False))
        parts = [order[:1], order[1:1]] + np.split(order[1:], cuts - 1)
        merged = _merge_tree([core.statistics(s, d, rows) for rows in parts], rng)
        for name in ("n", "ldw", "A11", "A22", "A21", "Z1W", "ZrW", "WW", "beta0"):
            _close(getattr(one, name), getattr(merged, name), 1e-12, f"{cid} {name}")
        p = layout.p
        assert float(merged.WW[p, p]) == pytest.approx(float(one.WW[p, p]), rel=1e-12)  # rᵀr on its own scale
        for name in ("pair_a", "pair_g", "bb_e1", "bb_e2", "bb_t"):
            np.testing.assert_array_equal(np.asarray(getattr(merged, name)), np.asarray(getattr(one, name)))
        theta = jnp.asarray(rng.uniform(0.2, 1.5, layout.ntheta))
        for reml in (False, True):
            f1, f2 = float(core.criterion(theta, one, layout, reml)), float(core.criterion(theta, merged, layout, reml))
            assert f2 == pytest.approx(f1, rel=1e-12, abs=1e-9)
        s1, s2 = core.solve(theta, one, layout), core.solve(theta, merged, layout)
        _close(s1.beta, s2.beta, 1e-10, "beta")
        _close(s1.b1, s2.b1, 1e-10, "b1")


def test_merge_is_traceable():
    """merge runs inside jit (a reduction on devices), with the same result."""
    _, d = _design("penicillin_crossed")
    s = core.schema(d)
    a, b = core.statistics(s, d, np.arange(d.n) < 50), core.statistics(s, d, np.arange(d.n) >= 50)
    eager, traced = core.merge(a, b), jax.jit(core.merge)(a, b)
    for x, y in zip(eager, traced):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-13, atol=1e-10)


@pytest.mark.parametrize("cid", ["sleepstudy_rs", "pastes_nested", "penicillin_crossed_ml", "factors_na", "sleepstudy_log"])
def test_pieces_through_core_give_the_in_memory_fit(cid):
    """structure → combine_structures → plan → piece_statistics → merge → finish → fit, on pieces of
    unequal size in shuffled order (one of them empty), equals lmer on the whole frame."""
    import functools

    c = CASES[cid]
    formula, data, REML = c["formula"], case_data(c), c["REML"]
    rng = np.random.default_rng(0)
    shuffled = data.iloc[rng.permutation(len(data))]
    cuts = [0, 0, 7, len(data) // 3, len(data)]
    parts = [shuffled.iloc[a:b] for a, b in zip(cuts, cuts[1:])]
    st = functools.reduce(core.combine_structures, [core.structure(formula, d) for d in parts])
    pl = core.plan(st)
    design, layout, stats = core.finish(pl, functools.reduce(core.merge, [core.piece_statistics(pl, d)
                                                                          for d in parts]))
    res = core.fit(stats, layout, REML=REML)
    m = jaxmlm.lmer(formula, data, REML=REML)
    assert design.fixef_names == m.design.fixef_names and design.n == m.nobs
    assert abs(float(res.solution.criterion) - m.objective) <= 1e-9 * abs(m.objective)
    np.testing.assert_allclose(np.asarray(res.theta), m.theta, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(res.solution.beta), m.fixef.to_numpy(), rtol=1e-8, atol=1e-8 * m.se.min())


def test_statistics_refuse_rows_outside_the_design_or_the_schema():
    c, d = _design("penicillin_crossed")
    data = case_data(c)
    s = core.schema(d)
    assert core.statistics(s, d, np.arange(10)).A11.shape == (s.layout.l1, 1, 1)
    with pytest.raises(jaxmlm.DataError, match="rows must be positions"):
        core.statistics(s, d, np.array([0, d.n]))
    with pytest.raises(jaxmlm.DataError, match="rows must be positions"):
        core.statistics(s, d, np.array([0.5]))
    # A schema made from half the rows does not know every (plate, sample) pair of the rest.
    half = core.design(c["formula"], data.iloc[: len(data) // 2])
    small = core.schema(half)
    with pytest.raises(jaxmlm.DataError, match="schema"):
        core.statistics(small._replace(layout=s.layout), d)


# ---- a covariance structure of one's own ------------------------------------------------------------

@dataclass(frozen=True)
class _Exchangeable(core.CovarianceStructure):
    """A user's compound symmetry with one variance: Σ/σ² = s²((1 − ρ) I + ρ 11ᵀ), s = t²,
    ρ = (e^η − 1)/(e^η + k − 1) — the parametrization of the built-in cs(hom = TRUE), but T
    from a generic Cholesky factorization (not the built-in closed form)."""

    k: int
    kind: str = "exch"

    @property
    def nparams(self):
        return 2

    def scale_mask(self):
        return np.array([True, False])

    def factor(self, par):
        e = jnp.exp(par[1])
        rho = (e - 1.0) / (e + self.k - 1.0)
        C = (1.0 - rho) * jnp.eye(self.k) + rho * jnp.ones((self.k, self.k))
        return par[0] ** 2 * jnp.linalg.cholesky(C)


def _panel():
    return pd.read_csv(Path(__file__).parent / "reference" / "structures" / "panel.csv")


@pytest.mark.parametrize("reml", [True, False])
def test_a_users_structure_fits_as_the_builtin_one(reml):
    """A user's structure on (0 + time | g) gives the built-in cs(0 + time | g, hom = TRUE):
    the same criterion at every parameter value, the same fit."""
    panel = _panel()
    plain = core.design("y ~ x + (0 + time | g)", panel)
    mine = core.with_structure(plain, "g", _Exchangeable(5))
    builtin = core.design("y ~ x + cs(0 + time | g, hom = TRUE)", panel)
    sm, sb = core.schema(mine), core.schema(builtin)
    assert sm.layout.ntheta == sb.layout.ntheta == 2
    stm, stb = core.statistics(sm, mine), core.statistics(sb, builtin)
    for par in ([0.8, 0.3], [1.3, -0.5], [0.4, 2.0]):
        fm = float(core.criterion(jnp.asarray(par), stm, sm.layout, reml))
        fb = float(core.criterion(jnp.asarray(par), stb, sb.layout, reml))
        assert fm == pytest.approx(fb, rel=1e-12)
    rm, rb = core.fit(stm, sm.layout, reml), core.fit(stb, sb.layout, reml)
    assert int(rm.state.status) in (0, 1)
    assert float(rm.objective) == pytest.approx(float(rb.objective), abs=1e-7)
    np.testing.assert_allclose(np.asarray(rm.solution.beta), np.asarray(rb.solution.beta), rtol=1e-6)
    m = jaxmlm.lmer("y ~ x + cs(0 + time | g, hom = TRUE)", panel, REML=reml)
    assert float(rm.objective) == pytest.approx(m.objective, abs=1e-6)
    assert core.theta_names(mine) == ["g.par1", "g.par2"]


def test_with_structure_refuses_what_does_not_fit_the_term():
    plain = core.design("y ~ x + (0 + time | g)", _panel())
    with pytest.raises(jaxmlm.DataError, match="5 columns"):
        core.with_structure(plain, 0, _Exchangeable(4))
    with pytest.raises(jaxmlm.DataError, match="CovarianceStructure"):
        core.with_structure(plain, 0, object())
    with pytest.raises(jaxmlm.DataError, match="position"):
        core.with_structure(plain, 3, _Exchangeable(5))

    @dataclass(frozen=True)
    class Incomplete(core.CovarianceStructure):
        k: int
        kind: str = "incomplete"

    with pytest.raises(jaxmlm.DataError, match="protocol"):
        core.with_structure(plain, 0, Incomplete(5))

    @dataclass(frozen=True)
    class Upper(_Exchangeable):
        """The same Σ with an upper-triangular factor (Σ = UᵀU written as T = Uᵀ's transpose):
        the engine reads only T's lower triangle, so this would be fitted wrongly."""

        def factor(self, par):
            return _Exchangeable.factor(self, par).T

    with pytest.raises(jaxmlm.DataError, match="lower-triangular"):
        core.with_structure(plain, 0, Upper(5))

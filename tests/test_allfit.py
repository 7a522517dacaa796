"""all_fit: every optimizer, several starts, batched (lme4's allFit).

Reference: the ``allfit`` entry of tests/reference/anova/anova_reference.json
(make_anova_reference.R): lme4 1.1-31's ``allFit`` on nlschools
``lang ~ IQ + (1 + IQ | class)`` by ML, where lme4's default optimizer stops early and warns
(max|grad| 0.049). Its seven optimizers reach deviances between 15230.28191 and 15231.57.
"""

import json

import jax
import numpy as np
import pandas as pd
import pytest

import jaxmlm
from conftest import REF

ALLFIT = json.loads((REF / "anova" / "anova_reference.json").read_text())["allfit"]


@pytest.fixture(scope="module")
def nl():
    return jaxmlm.lmer(ALLFIT["formula"], jaxmlm.load_example("nlschools"), REML=ALLFIT["REML"])


def test_all_fit_where_lme4_default_warns(nl):
    af = nl.all_fit(n_random=3, seed=1)
    tab = af.table
    assert set(tab.index.get_level_values("optimizer")) == {"newton", "bfgs"}
    assert list(tab.index.get_level_values("start").unique()) == ["lme4", "random1", "random2", "random3"]
    assert tab["converged"].all()
    best_lme4 = min(f["deviance"] for f in ALLFIT["fits"])
    # every refit reaches the optimum: none above the best of lme4's seven optimizers ...
    assert np.all(tab["criterion"] <= best_lme4 + 1e-6)
    # ... and below the fit lme4's default optimizer stopped at (with its warning)
    assert np.all(tab["criterion"] < ALLFIT["default_fit"]["deviance"] - 5e-6)
    assert np.all(tab["diff"] < 1e-6)
    np.testing.assert_allclose(tab["criterion"], nl.objective, rtol=0, atol=1e-6)
    best = min(ALLFIT["fits"], key=lambda f: f["deviance"])
    np.testing.assert_allclose(af.fixef.to_numpy(), np.tile(list(best["fixef"].values()), (len(tab), 1)), rtol=2e-6)
    np.testing.assert_allclose(af.theta.to_numpy(), np.tile(best["theta"], (len(tab), 1)), rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(af.llik, -0.5 * tab["criterion"])
    assert list(af.sdcor.columns) == ["sd_(Intercept)|class", "cor_IQ.(Intercept)|class", "sd_IQ|class", "sigma"]
    np.testing.assert_allclose(af.sdcor["sigma"], best["sigma"], rtol=1e-6)
    text = str(af)
    for part in ("$which.OK", "$fixef", "$llik", "$sdcor", "$theta", "$times", "$feval", "newton", "bfgs"):
        assert part in text


def test_all_fit_of_a_crossed_model_uses_every_optimizer_and_the_moment_start():
    m = jaxmlm.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", jaxmlm.load_example("Penicillin"))
    af = m.all_fit(n_random=1)
    assert set(af.table.index.get_level_values("optimizer")) == {"newton", "ai", "bfgs"}
    assert "moment" in set(af.table.index.get_level_values("start"))
    assert af.table["converged"].all()
    np.testing.assert_allclose(af.table["criterion"], m.objective, rtol=0, atol=1e-7)
    np.testing.assert_allclose(af.fixef.to_numpy()[:, 0], m.fixef.iloc[0], rtol=1e-8)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the split, and its deadlock, are XLA:CPU's")
def test_all_fit_batches_its_starts_below_the_lapack_split(monkeypatch):
    """With a dense block of 32 levels the starts are refitted in batches small enough that no
    batched LAPACK call is split over XLA's CPU threads (two at once can deadlock there:
    benchmarks/jax_cpu_deadlock_repro.py); every refit still reaches the fit's optimum."""
    import jaxmlm._programs as P

    rng = np.random.default_rng(8)
    g, h = rng.integers(0, 30, 900), rng.integers(0, 40, 900)
    d = pd.DataFrame({"y": rng.normal(size=30)[g] + rng.normal(size=40)[h] + rng.normal(size=900), "g": g, "h": h})
    m = jaxmlm.lmer("y ~ 1 + (1 | g) + (1 | h)", d)
    sizes, real = [], P.call

    def spy(fn, args, static=None, **kwargs):
        if getattr(fn, "__name__", "") == "_fit_starts":
            sizes.append(len(args[0]))
        return real(fn, args, static, **kwargs)

    monkeypatch.setattr(P, "call", spy)
    af = m.all_fit(optimizers=["newton"], n_random=3)
    assert len(af.table) == 5 and max(sizes) * m.layout.qr**3 <= 2e5 and len(sizes) > 1  # lme4, moment, 3 random
    np.testing.assert_allclose(af.table["criterion"], m.objective, rtol=0, atol=1e-6)


def test_all_fit_bad_input(nl):
    with pytest.raises(jaxmlm.JaxmlmError, match="optimizers"):
        nl.all_fit(optimizers=["nelder_mead"])
    with pytest.raises(jaxmlm.JaxmlmError, match="n_random"):
        nl.all_fit(n_random=-1)

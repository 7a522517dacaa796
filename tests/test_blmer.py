"""jaxmlm.blmer against blme 1.0-5 (tests/reference/blme/make_blme_reference.R).

The reference fits run each model with blme's three optimizers and keep the one with the lowest
penalized criterion (blme's "REML criterion" + "Prior dev": what its optimizer minimizes); blme's
deviance function is also evaluated at fixed θ, which checks the criterion itself, apart from any
optimizer.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from jaxmlm import DataError, InferenceError, JaxmlmError

HERE = Path(__file__).parent / "reference" / "blme"
REF = json.loads((HERE / "blme_reference.json").read_text())

# jaxmlm's spelling of each reference model's priors (R's spelling is in the JSON's cov_prior/fixef_prior)
SPECS = {
    "sleep_wishart_reml": {},
    "sleep_wishart_ml": {},
    "sleep_invwishart_reml": dict(cov_prior="invwishart"),
    "sleep_normal_reml": dict(fixef_prior="normal"),
    "sleep_normal_sd_ml": dict(cov_prior=None, fixef_prior=("normal", {"sd": [20, 1]})),
    "dyestuff_gamma_reml": dict(cov_prior="gamma"),
    "dyestuff2_gamma_reml": dict(cov_prior="gamma"),
    "dyestuff2_wishart_ml": {},
    "penicillin_gamma_rate_reml": dict(cov_prior=("gamma", {"shape": 3, "rate": 0.5})),
    "penicillin_invgamma_ml": dict(cov_prior="invgamma"),
    "penicillin_per_term_reml": dict(cov_prior={"plate": "gamma", "sample": ("invgamma", {"shape": 1, "scale": 2})}),
    "dyestuff_resid_invgamma_reml": dict(cov_prior="gamma", resid_prior=("invgamma", {"shape": 2, "scale": 1000})),
    "sleep_resid_gamma_ml": dict(fixef_prior="normal", resid_prior=("gamma", {"shape": 2})),
    "orthodont_wishart_reml": {},
}


@lru_cache(maxsize=None)
def data(name: str) -> pd.DataFrame:
    if name in ("Dyestuff2", "Orthodont"):  # exported by the R script (lme4's and nlme's data)
        return pd.read_csv(HERE / f"{name}.csv")
    return jaxmlm.load_example(name)


@lru_cache(maxsize=None)
def fitted(key: str):
    r = REF[key]
    return jaxmlm.blmer(r["formula"], data(r["data"]), REML=r["REML"], **SPECS[key])


def test_every_reference_model_is_tested():
    assert set(SPECS) == set(REF) - {"versions"}
    assert REF["versions"]["blme"] == "1.0.5"


@pytest.mark.parametrize("key", sorted(SPECS))
def test_matches_blme(key):
    r, m = REF[key], fitted(key)
    assert m.record.converged
    se = np.array(list(r["se"].values()))
    assert list(m.fixef.index) == list(r["fixef"])
    np.testing.assert_array_less(np.abs(m.fixef.to_numpy() - np.array(list(r["fixef"].values()))), 0.01 * se)
    theta = np.atleast_1d(r["theta"])
    np.testing.assert_allclose(m.theta, theta, rtol=0.01)
    assert abs(m.objective - r["criterion"]) < 1e-3
    assert abs(m.prior_penalty - r["prior_penalty"]) < 1e-3  # blme's "Prior dev"
    # blme's logLik (and so AIC/BIC) is the likelihood's part, without the prior
    assert abs(m.loglik + 0.5 * r["likelihood_part"]) < 1e-3
    assert m.aic == pytest.approx(r["likelihood_part"] + 2 * m.npar)
    np.testing.assert_allclose(m.sigma, r["sigma"], rtol=1e-4)
    np.testing.assert_allclose(m.se.to_numpy(), se, rtol=1e-3)
    # never worse than any of blme's optimizers
    assert m.objective <= min(r["criteria_by_optimizer"].values()) + 1e-6


@pytest.mark.parametrize("key", sorted(SPECS))
def test_criterion_equals_blme_deviance_function(key):
    m = fitted(key)
    for pt in REF[key]["devfun_points"]:
        assert abs(m.criterion_at(pt["theta"]) - pt["criterion"]) < 1e-6 * max(1.0, abs(pt["criterion"]))


def test_orthodont_blme_optimizers_disagree_jaxmlm_lowest():
    """blme's default Wishart prior on Orthodont (age | Subject): its optimizers stop ~27 units apart
    (nloptwrap and bobyqa with "degenerate Hessian" warnings); jaxmlm's criterion is the lowest."""
    r, m = REF["orthodont_wishart_reml"], fitted("orthodont_wishart_reml")
    crits = r["criteria_by_optimizer"]
    assert max(crits.values()) - min(crits.values()) > 20
    for name, c in crits.items():
        assert m.objective <= c + 1e-6, name
    assert m.objective < crits["nloptwrap"] - 3 and m.objective < crits["bobyqa"] - 20


def test_dyestuff2_singular_in_lmer_not_in_blmer():
    d2 = data("Dyestuff2")
    r = REF["dyestuff2_gamma_reml"]
    assert np.atleast_1d(r["lme4_theta"]).tolist() == [0]  # lme4: singular
    m0 = jaxmlm.lmer("Yield ~ 1 + (1 | Batch)", d2)
    assert m0.is_singular and m0.theta[0] == 0.0
    m = fitted("dyestuff2_gamma_reml")
    assert not m.is_singular and m.theta[0] > 0.4


def test_summary_names_priors():
    s = fitted("sleep_normal_reml").summary()
    assert "Cov prior  : Subject ~ wishart(df = 4.5, scale = Inf, posterior.scale = cov, common.scale = TRUE)" in s
    assert "Fixef prior: normal(sd = c(10, 2.5), common.scale = TRUE)" in s
    # blme's best fit (Nelder_Mead): Prior dev 27.95358, REML (the likelihood's part) 1743.935
    assert "Prior dev  : 27.9536" in s
    assert "REML criterion at convergence: 1743.94" in s
    assert "['blmerMod']" in s and "t value" in s
    assert "Resid prior: invgamma(shape = 2, scale = 1000" in fitted("dyestuff_resid_invgamma_reml").summary()


def test_inference_without_the_priors_is_refused():
    m = fitted("dyestuff_gamma_reml")
    for call in (m.anova, m.ranova, m.confint, lambda: m.coef_table(ddf="Satterthwaite")):
        with pytest.raises(InferenceError):
            call()
    tab = m.coef_table()
    assert list(tab.columns) == ["Estimate", "Std. Error", "t value"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(cov_prior="lkj"), "unknown cov_prior 'lkj'"),
    (dict(cov_prior=("wishart", {"df": 0.5})), "df must exceed"),
    (dict(cov_prior=("wishart", {"dof": 3})), "no hyperparameter dof"),
    (dict(cov_prior=("wishart", {"scale": [[1, 2], [2, 1]]})), "positive definite"),
    (dict(cov_prior="gamma"), "scalar term"),
    (dict(cov_prior={"Subj": "wishart"}), "'Subj'.*not a grouping factor"),
    (dict(cov_prior=42), "must be one of"),
    (dict(fixef_prior="cauchy"), "unknown fixef_prior 'cauchy'"),
    (dict(fixef_prior=("normal", {"sd": [-1, 2]})), "sd must be positive"),
    (dict(resid_prior=("gamma", {"shape": 2, "rate": 1})), "quadratic"),
    (dict(resid_prior=("invgamma", {"shape": -1})), "must be finite and ≥ 0"),
    (dict(REML="yes"), "REML must be True or False"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(DataError, match=match) as err:
        jaxmlm.blmer("Reaction ~ Days + (Days | Subject)", data("sleepstudy"), **kwargs)
    assert isinstance(err.value, JaxmlmError)


def test_gamma_shape_hyperparameters_checked():
    with pytest.raises(DataError, match="shape and rate"):
        jaxmlm.blmer("Yield ~ 1 + (1 | Batch)", data("Dyestuff"), cov_prior=("gamma", {"shape": -2}))


def test_data_not_mutated_and_no_prior_is_lmer():
    d = data("Dyestuff").copy()
    before = d.copy()
    m = jaxmlm.blmer("Yield ~ 1 + (1 | Batch)", d, cov_prior=None)
    pd.testing.assert_frame_equal(d, before)
    m0 = jaxmlm.lmer("Yield ~ 1 + (1 | Batch)", d)
    np.testing.assert_allclose(m.theta, m0.theta, rtol=1e-8)
    assert abs(m.objective - m0.objective) < 1e-8 and m.prior_penalty == 0.0


def test_nested_layout_is_a_stationary_point_of_the_penalized_criterion():
    """The penalty rides on every optimizer path: a nested design (its own criterion restatement,
    ``nested_scalar_criterion``) must stop where the penalized criterion — evaluated here by the
    general kernel through ``criterion_at`` — has zero gradient (central differences)."""
    m = jaxmlm.blmer("strength ~ 1 + (1 | batch/cask)", data("Pastes"), cov_prior="gamma")
    assert m.record.converged and np.all(m.theta > 0)
    h = 1e-5
    for i in range(len(m.theta)):
        e = np.zeros_like(m.theta)
        e[i] = h
        g = (m.criterion_at(m.theta + e) - m.criterion_at(m.theta - e)) / (2 * h)
        assert abs(g) < 1e-4, (i, g)
    assert abs(m.criterion_at(m.theta) - m.objective) < 1e-8
    # and the penalty moved the fit: lmer's θ differs
    m0 = jaxmlm.lmer("strength ~ 1 + (1 | batch/cask)", data("Pastes"))
    assert np.max(np.abs(m.theta - m0.theta)) > 1e-3


def test_average_information_path_is_a_stationary_point_of_the_penalized_criterion():
    """A crossed design with more than 64 levels in both factors is fitted by the
    average-information Newton method (``criterion_rest`` and its hand-written gradient): the
    penalty is added there too."""
    rng = np.random.default_rng(16)
    a, b = np.repeat(np.arange(70), 75), np.tile(np.arange(75), 70)
    y = 1.0 + 0.8 * rng.normal(size=70)[a] + 0.05 * rng.normal(size=75)[b] + rng.normal(size=a.size)
    d = pd.DataFrame({"y": y, "a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b]})
    m = jaxmlm.blmer("y ~ 1 + (1 | a) + (1 | b)", d, cov_prior="gamma")
    assert m.record.method == "ai" and m.record.converged and np.all(m.theta > 0)
    h = 1e-6
    for i in range(len(m.theta)):
        e = np.zeros_like(m.theta)
        e[i] = h
        g = (m.criterion_at(m.theta + e) - m.criterion_at(m.theta - e)) / (2 * h)
        assert abs(g) < 1e-3, (i, g)

"""jaxmlm's warnings name the user's line (``_errors.warn_user``), wherever in the package they
arise, for fits, tests and comparisons alike: a warning that points into jaxmlm tells the user
nothing about which of their calls it concerns."""

import warnings

import numpy as np
import pytest

import jaxmlm


def _sleep():
    return jaxmlm.load_example("sleepstudy")


def _rank_deficient():
    d = _sleep().assign(Days2=lambda x: 2.0 * x["Days"])
    return jaxmlm.lmer("Reaction ~ Days + Days2 + (1 | Subject)", d)


def _mixed_column():
    d = _sleep()
    d["m"] = np.array([1 if i % 2 == 0 else "a" for i in range(len(d))], dtype=object)
    return jaxmlm.lmer("Reaction ~ Days + m + (1 | Subject)", d)


def _reml_and_ml():
    d = _sleep()
    return jaxmlm.anova(jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", d),
                        jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d, REML=False), refit=False)


def _non_integer_successes():
    d = _sleep().assign(p=lambda x: (x["Reaction"] - 190) / 300)
    return jaxmlm.glmer("p ~ Days + (1 | Subject)", d, family="binomial")


CASES = {
    "dropped aliased column": (_rank_deficient, jaxmlm.RankDeficiencyWarning, "rank deficient"),
    "column of numbers and text": (_mixed_column, jaxmlm.DataWarning, "mixes numbers"),
    "REML and ML criteria compared": (_reml_and_ml, UserWarning, "REML and some by ML"),
    "binomial proportions without weights": (_non_integer_successes, jaxmlm.DataWarning, "non-integer #successes"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_warning_names_the_callers_line(case):
    make, category, text = CASES[case]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    ours = [w for w in caught if issubclass(w.category, category) and text in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert ours[0].filename == __file__

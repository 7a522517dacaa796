"""A second fit of the same model shape must not recompile anything."""

import logging
import re

import jax.monitoring
import pytest

import jaxmlm

# Counts compilations of new programs: a program's one tier-up (test_compiled.py) is not one.
pytestmark = pytest.mark.usefixtures("no_tier_up")

_COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: _COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
)


def test_second_fit_of_same_shape_does_not_recompile():
    d = jaxmlm.load_example("sleepstudy")
    m1 = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d)
    before = len(_COMPILES)
    d2 = d.copy()
    d2["Reaction"] = d2["Reaction"].to_numpy()[::-1] * 1.5  # new data, same shape
    m2 = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d2)
    m3 = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d, REML=False)  # ML shares the program
    assert len(_COMPILES) == before, f"{len(_COMPILES) - before} recompilation(s)"
    assert m2.objective != m1.objective and m3.objective != m1.objective


def test_bucketed_group_counts_share_compiled_code():
    """17 and 18 subjects pad to the same bucket: no new compilation."""
    d = jaxmlm.load_example("sleepstudy")
    jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d)
    before = len(_COMPILES)
    sub = d[d["Subject"] != "308"].copy()
    sub["Subject"] = sub["Subject"].cat.remove_unused_categories()
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", sub)
    assert m.ngroups == {"Subject": 17}
    assert len(_COMPILES) == before


def test_a_subset_of_a_nested_design_shares_compiled_code():
    """The classroom data's complete cases of another column (1081 of 1190 rows; 285 of 312 classes,
    105 of 107 schools) fit without compiling: levels and pair lists are padded on a grid with
    four points per octave (issue 12: 'the same formula on the complete-case subset compiled again')."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    schools = np.arange(312) % 107  # 107 schools of 2 or 3 classes
    classes = pd.DataFrame({"classid": np.arange(312), "schoolid": schools})
    sizes = np.where(np.arange(312) < 254, 4, 3)  # 1190 pupils, every class present
    rows = classes.loc[np.repeat(np.arange(312), sizes)].reset_index(drop=True)
    rows["y"] = rng.normal(size=1190) + rng.normal(size=107)[rows.schoolid] + rng.normal(size=312)[rows.classid]
    # 'other' is missing for every pupil of 27 classes (one in each of 27 schools), as in the data
    gone = (rows.classid % 3 == 0) & (rows.classid < 81)
    rows["other"] = np.where(gone, np.nan, 1.0)
    formula = "y ~ 1 + (1 | schoolid/classid)"
    jaxmlm.lmer(formula, rows)
    before = len(_COMPILES)
    sub = rows.dropna(subset=["other"])
    m = jaxmlm.lmer(formula, sub)
    jaxmlm.lmer(formula, sub, REML=False)
    assert m.ngroups == {"classid:schoolid": 285, "schoolid": 107}
    assert len(_COMPILES) == before, f"{len(_COMPILES) - before} compilation(s)"


def _subset_without(d, subject):
    sub = d[d["Subject"] != subject].copy()
    sub["Subject"] = sub["Subject"].cat.remove_unused_categories()
    return sub


def test_summary_ranova_and_refits_of_a_fitted_shape_do_not_compile():
    """Once a model shape has been fitted with its summary, Satterthwaite table, ranova and an
    ML refit, a second fit on a subset of the rows, its ML refit, its ranova and its summary
    (issue 12) reuse every program: nothing compiles."""
    d = jaxmlm.load_example("sleepstudy")
    f = "Reaction ~ Days + (Days | Subject)"
    m = jaxmlm.lmer(f, d)
    m.summary(), m.coef_table(), m.ranova(), m.update(REML=False).summary()
    before = len(_COMPILES)
    m2 = jaxmlm.lmer(f, _subset_without(d, "308"))
    ml = m2.update(REML=False)
    table = m2.ranova()
    text = m2.summary() + ml.summary()
    assert len(_COMPILES) == before, f"{len(_COMPILES) - before} compilation(s): {_COMPILES[before:]}"
    assert m2.ngroups == {"Subject": 17} and not ml.REML
    assert len(table) == 2 and "Satterthwaite" in text


def test_programs_stay_warm_within_the_bound():
    """The LRU bound keeps every program of a model in use warm: a fitted shape refitted after
    a few other shapes (fewer than the bound allows) compiles nothing."""
    from jaxmlm import _compiled

    d = jaxmlm.load_example("sleepstudy")
    f = "Reaction ~ Days + (Days | Subject)"
    jaxmlm.lmer(f, d).coef_table()
    jaxmlm.lmer("Reaction ~ 1 + (1 | Subject)", d).coef_table()  # another shape in between
    before = len(_COMPILES)
    jaxmlm.lmer(f, d).coef_table()
    assert len(_COMPILES) == before
    assert 0 < _compiled.program_count() <= _compiled.max_programs()


def test_anova_and_ranova_refits_run_the_fitted_models_programs(caplog):
    """anova's ML refits and ranova's reduced models run on the statistics of a fitted model:
    they run the program lmer fitted it with (same layout and shapes, REML or ML a traced
    argument), so they compile nothing (issue 12: the ML refits of a course session's
    anova compiled a program of their own for every model). The models here (2,400 rows, over
    the one-program fits' 2,048) are fitted on statistics made apart, as larger data are, the
    nested one from moment estimates; test_anova_and_ranova_refits_of_small_data_run_the_one_program_fit
    covers small data."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(11)
    schools = np.arange(600) % 200
    rows = pd.DataFrame({"classid": np.repeat(np.arange(600), 4), "schoolid": np.repeat(schools, 4)})
    rows["x"] = rng.normal(size=len(rows))
    rows["y"] = (0.5 * rows.x + rng.normal(size=200)[rows.schoolid] + 0.7 * rng.normal(size=600)[rows.classid]
                 + rng.normal(size=len(rows)))
    assert len(rows) > 2048
    m0 = jaxmlm.lmer("y ~ x + (1 | schoolid)", rows)
    m1 = jaxmlm.lmer("y ~ x + (1 | schoolid/classid)", rows)
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        table = jaxmlm.anova(m0, m1)
        reduced = m1.ranova()
    compiled = set(re.findall(r"Finished XLA compilation of jit\((\w+)\)", caplog.text))
    # what may compile: θ's scale on the host and moving arrays to the device (~10-40 ms each)
    assert compiled <= {"theta_scale", "stage"}, compiled
    # the refits reached the ML optimum: the ML fit itself gives the same deviance
    ml = jaxmlm.lmer("y ~ x + (1 | schoolid/classid)", rows, REML=False)
    assert abs(table["deviance"].iloc[1] - ml.deviance) < 1e-6
    assert len(reduced) == 3


def test_anova_and_ranova_refits_of_small_data_run_the_one_program_fit(caplog):
    """Small data (at most 2,048 rows) are fitted by one program that also makes the statistics;
    anova's ML refits and ranova's reduced models of such models run that program again (REML
    a traced argument; a removed term's Z columns zeroed in the rows), not the program that fits
    on statistics alone, so they compile nothing (before: a fit program and its widening for
    each layout). The refits reach the ML fit's own deviance, and a reduced model's criterion is
    the one fitted on the statistics with the columns zeroed (crossed: a second block's column)."""
    import numpy as np

    from jaxmlm._compare import refit_criterion, zero_columns

    d = jaxmlm.load_example("sleepstudy")
    m0 = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", d)
    m1 = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d)
    pen = jaxmlm.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", jaxmlm.load_example("Penicillin"))
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        table = jaxmlm.anova(m0, m1)
        m1.ranova()
        pen.ranova()
    compiled = set(re.findall(r"Finished XLA compilation of jit\((\w+)\)", caplog.text))
    assert compiled <= {"theta_scale", "stage"}, compiled
    for f, dev in zip(["Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)"], table["deviance"]):
        assert abs(dev - jaxmlm.lmer(f, d, REML=False).deviance) < 1e-9
    for m, cols in [(m1, [(0, 1)]), (pen, [(0, 0)]), (pen, [(1, 0)])]:
        theta0 = np.array(m.theta)
        on_rows = refit_criterion(m, True, theta0=theta0, zeroed=cols)[0]
        on_stats = refit_criterion(m, True, stats=zero_columns(m, cols), theta0=theta0)[0]
        assert abs(on_rows - on_stats) < 1e-8 * abs(on_stats), (cols, on_rows, on_stats)


def test_small_nested_models_differing_in_fixed_effects_share_the_one_program(caplog):
    """A nested design of sleepstudy's size (240 rows, in the 256-row chunk) is fitted by one
    program that also makes its moment start; X is padded in its rows (as above 256 rows), so
    a covariate added compiles no new fit. (Found in review: the unpadded program compiled
    again, 1.1 s, where the statistics path had shared its fit program.) The start is the
    moment estimate also with ``max_iter=0``, as on the statistics path."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(2)
    rows = pd.DataFrame({"c": np.repeat(np.arange(60), 4), "s": np.repeat(np.arange(60) % 20, 4)})
    rows["x"], rows["z"] = rng.normal(size=240), rng.normal(size=240)
    rows["y"] = 0.5 * rows.x + rng.normal(size=20)[rows.s] + rng.normal(size=60)[rows.c] + rng.normal(size=240)
    m0 = jaxmlm.lmer("y ~ x + (1 | s/c)", rows)
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        jaxmlm.lmer("y ~ x + z + (1 | s/c)", rows)
    compiled = set(re.findall(r"Finished XLA compilation of jit\((\w+)\)", caplog.text))
    assert compiled <= {"theta_scale", "stage"}, compiled
    with pytest.warns(jaxmlm.ConvergenceWarning, match="iteration limit"):
        at_start = jaxmlm.lmer("y ~ x + (1 | s/c)", rows, max_iter=0)
    np.testing.assert_allclose(at_start.record.theta_start, m0.record.theta_start, rtol=1e-12)
    assert not np.allclose(m0.record.theta_start, 1.0)  # the moment start, not lme4's θ = 1


@pytest.mark.parametrize("groups", [60, 400])
def test_models_differing_in_fixed_effects_share_the_fit_and_summary_programs(caplog, groups):
    """A covariate added, or the null model: W's fixed-effects columns are padded to a common
    width (3, 7 or 15 columns: ``jaxmlm._stats.fixed_width``), so the fit and its Satterthwaite
    table run the programs of the first model. 360 rows: the one program that also makes the
    statistics (X padded in its rows), no fit, pass or summary program compiles; 2,400 rows:
    only the pass over the rows (its width is the data's) compiles. Issue 12: a course session compiled a fit program
    for each of Hsb82's null and ``ses`` models and each of three nested classroom models."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(5)
    n = 6 * groups
    rows = pd.DataFrame({"g": np.repeat(np.arange(groups), 6)})
    rows["x"], rows["z"] = rng.normal(size=n), rng.normal(size=n)
    rows["y"] = 1.0 + 0.5 * rows.x - 0.3 * rows.z + rng.normal(size=groups)[rows.g] + rng.normal(size=n)
    m0 = jaxmlm.lmer("y ~ 1 + (1 | g)", rows)
    m0.coef_table()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        m1 = jaxmlm.lmer("y ~ x + (1 | g)", rows)
        m2 = jaxmlm.lmer("y ~ x + z + (1 | g)", rows, REML=False)
        t1, t2 = m1.coef_table(), m2.coef_table()
    compiled = set(re.findall(r"Finished XLA compilation of jit\((\w+)\)", caplog.text))
    # the pass and the padding of its statistics (~20-100 ms each) compile for the data's width
    passes = {"_accumulate", "_widen_arrays"} if n > 2048 else set()
    assert compiled <= passes | {"templates", "theta_scale", "stage"}, compiled
    assert list(t1.index) == ["(Intercept)", "x"] and list(t2.index) == ["(Intercept)", "x", "z"]
    assert np.all(np.isfinite(t2.to_numpy()))


_AHEAD_CASES = {
    "crossed, one program": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin"),
    "nested, one program": ("mathkind ~ ses + (1 | schoolid/classid)", "classroom"),
    "slopes, statistics made apart": ("lang ~ IQ + (IQ | class)", "nlschools"),
}


@pytest.mark.parametrize("programs", ["program cache off", "program cache on"])
@pytest.mark.parametrize("case", list(_AHEAD_CASES))
def test_the_summary_program_asked_for_ahead_is_the_one_summary_runs(monkeypatch, tmp_path, case, programs):
    """lmer asks for its summary's Satterthwaite program on a background thread before the fit
    (jaxmlm/_compiled.py: ahead). Its shapes are worked out without the statistics, so a
    mistake there would compile a program nobody runs: summary() must then compile nothing,
    and give the table it gives without the program asked ahead."""
    import pandas as pd

    from jaxmlm import _compiled, _programs

    formula, name = _AHEAD_CASES[case]
    d = jaxmlm.load_example(name)
    if programs.endswith("on"):
        assert _programs.enable(tmp_path)
    try:
        monkeypatch.setenv("JAXMLM_COMPILE_AHEAD", "0")
        _compiled.clear()
        plain = jaxmlm.lmer(formula, d).coef_table()
        _compiled.clear()
        monkeypatch.setenv("JAXMLM_COMPILE_AHEAD", "1")
        m = jaxmlm.lmer(formula, d)
        _compiled.wait_ahead()
        before = len(_COMPILES)
        table = m.coef_table()
        assert len(_COMPILES) == before, f"{len(_COMPILES) - before} compilation(s) in coef_table()"
        pd.testing.assert_frame_equal(table, plain, rtol=1e-12)
    finally:
        _programs.disable()
        _compiled.clear()

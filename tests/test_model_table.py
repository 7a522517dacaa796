"""compare_models (jaxmlm/_model_table.py): the course notes' Model A/B/C table on the High School
and Beyond data (Hsb82), every printed number reproduced to the notes' precision."""

from __future__ import annotations

import pytest

import jaxmlm
from jaxmlm import DataError

# The notes' table (REML fits; "Deviance" there is the REML criterion): value per (row, model).
NOTES = {
    ("(Intercept)", "Model A"): (12.64, 0.24), ("(Intercept)", "Model B"): (12.66, 0.19),
    ("(Intercept)", "Model C"): (12.67, 0.19), ("ses", "Model B"): (2.39, 0.11), ("ses", "Model C"): (2.39, 0.12),
    ("Residual: variance", "Model A"): 39.148, ("Residual: variance", "Model B"): 37.03,
    ("Residual: variance", "Model C"): 36.83, ("school: var((Intercept))", "Model A"): 8.61,
    ("school: var((Intercept))", "Model B"): 4.76, ("school: var((Intercept))", "Model C"): 4.83,
    ("school: var(ses)", "Model C"): 0.41, ("REML criterion", "Model A"): 47116.79,
    ("REML criterion", "Model B"): 46645.17, ("REML criterion", "Model C"): 46640.4, ("AIC", "Model A"): 47122.79,
    ("AIC", "Model B"): 46653.17, ("AIC", "Model C"): 46652.4, ("BIC", "Model A"): 47143.43,
    ("BIC", "Model B"): 46680.69, ("BIC", "Model C"): 46693.68,
}


@pytest.fixture(scope="module")
def table():
    hsb = jaxmlm.load_example("Hsb82")
    fits = [jaxmlm.lmer(f, hsb) for f in ("mAch ~ 1 + (1 | school)", "mAch ~ ses + (1 | school)",
                                          "mAch ~ ses + (ses | school)")]
    return jaxmlm.compare_models(fits), fits


def test_the_notes_table(table):
    t, _ = table
    long = t.long.set_index(["row", "model"])
    for key, printed in NOTES.items():
        value, se = printed if isinstance(printed, tuple) else (printed, None)
        decimals = len(repr(value).split(".")[1])
        # the notes truncate at times (4.768 printed 4.76): within one unit of the last digit
        assert abs(long.loc[key, "value"] - value) <= 10.0 ** -decimals, key
        if se is not None:
            assert abs(long.loc[key, "se"] - se) <= 0.01, key
    assert long.loc[("ICC: school", "Model A"), "value"] == pytest.approx(0.180, abs=5e-4)
    assert ("ICC: school", "Model C") not in long.index  # slopes: no single ICC
    assert long.loc[("Observations", "Model C"), "value"] == 7185
    assert long.loc[("Groups: school", "Model A"), "value"] == 160


def test_views(table):
    t, fits = table
    frame = t.frame()
    assert list(frame.columns) == ["Model A", "Model B", "Model C"]
    assert frame.loc[("Fixed effects", "ses"), "Model A"] == ""
    assert frame.loc[("Fixed effects", "ses"), "Model B"] == "2.39 (0.11)"
    rows = [r for _, r in frame.index]
    assert rows.index("school: var(ses)") < rows.index("school: cor((Intercept), ses)") < rows.index("ICC: school")
    text = str(t)
    assert text.splitlines()[1] == "Fixed effects" and "REML criterion" in text
    html = t._repr_html_()
    assert "<table" in html and "12.64 (0.24)" in html
    tex = t.to_latex()
    assert tex.startswith(r"\begin{tabular}{lrrr}") and r"12.64 (0.24) & 12.66 (0.19) & 12.67 (0.19) \\" in tex
    ml = jaxmlm.compare_models([jaxmlm.lmer(fits[0].formula, jaxmlm.load_example("Hsb82"), REML=False)], names=["ML"])
    assert ("Fit", "Deviance") in ml.frame().index and ("Fit", "REML criterion") not in ml.frame().index


def test_bad_names(table):
    _, fits = table
    with pytest.raises(DataError, match="distinct labels"):
        jaxmlm.compare_models(fits, names=["a", "a", "b"])
    with pytest.raises(DataError, match="at least one"):
        jaxmlm.compare_models([])


def test_a_model_shows_its_summary_in_a_notebook(table):
    _, fits = table
    html = fits[1]._repr_html_()
    assert html.startswith("<pre>") and html.endswith("</pre>")
    assert "REML criterion at convergence: 46645.2" in html and "Pr(&gt;|t|)" in html  # escaped


def test_mixed_fits_rows_and_bad_input(table):
    _, fits = table
    hsb = jaxmlm.load_example("Hsb82")
    ml = jaxmlm.lmer("mAch ~ ses + (ses || school)", hsb, REML=False)
    t = jaxmlm.compare_models([fits[2], ml], names=["REML", "ML"])
    rows = [r for sec, r in t.frame().index if sec == "Fit"]
    assert rows[:4] == ["REML criterion", "Deviance", "AIC", "BIC"]
    long = t.long.set_index(["row", "model"])
    assert ("school: var(ses)", "ML") in long.index  # (ses || school)'s slope: still the school's
    with pytest.raises(DataError, match="list of fitted models"):
        jaxmlm.compare_models(fits[0])
    with pytest.raises(DataError, match="got str"):
        jaxmlm.compare_models([fits[0], "x"])

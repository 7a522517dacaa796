"""Hat values and Cook's distance (jaxmlm/_influence.py) against an independent dense computation
in the marginal form: μ̂ = Xβ̂ + G V⁻¹ (y − Xβ̂), G = ZΛΛᵀZᵀ, V = G + W⁻¹, β̂ the GLS estimate, so
H = P + G V⁻¹ (I − P) with P = X (XᵀV⁻¹X)⁻¹ XᵀV⁻¹. (broom.mixed's values: tests/test_tidy.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from _dense import dense_z_lambda

import jaxmlm
from jaxmlm import RowsNotHeldError

CASES = [
    ("Reaction ~ Days + (Days | Subject)", "sleepstudy", None),  # one factor: block elimination
    ("Reaction ~ Days + (Days | Subject)", "sleepstudy", "w"),  # prior weights
    ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin", None),  # crossed: dense
    ("strength ~ 1 + (1 | batch/cask)", "Pastes", None),  # nested: dense
]


def _dense_hat(m):
    d = m.design
    Z, Lam = dense_z_lambda(d, m.theta)
    G = Z @ Lam @ Lam.T @ Z.T
    w = np.ones(d.n) if d.weights is None else d.weights
    V = G + np.diag(1.0 / w)
    Vi = np.linalg.inv(V)
    X = d.X
    P = X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    H = P + G @ Vi @ (np.eye(d.n) - P)
    return H


@pytest.mark.parametrize("formula, data, weights", CASES)
def test_hat_values_match_the_dense_hat_matrix(formula, data, weights):
    df = jaxmlm.load_example(data)
    if weights:
        df = df.assign(w=np.random.default_rng(0).uniform(0.5, 2.0, len(df)))
    m = jaxmlm.lmer(formula, df, weights=weights)
    H = _dense_hat(m)
    np.testing.assert_allclose(H @ m.design.y, m.fitted, rtol=1e-8)  # H is the fit's hat matrix
    np.testing.assert_allclose(m.hatvalues(), np.diag(H), rtol=1e-8, atol=1e-12)
    h = np.diag(H)
    w = m.weights
    r = np.sqrt(w) * (m.design.y - m.fitted)
    cook = (r / (1 - h)) ** 2 * h / (m.sigma**2 * m.design.p)
    np.testing.assert_allclose(m.cooks_distance(), cook, rtol=1e-7)


def test_hat_values_need_the_rows():
    dd = pytest.importorskip("dask.dataframe")
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", dd.from_pandas(jaxmlm.load_example("sleepstudy"), npartitions=2))
    with pytest.raises(RowsNotHeldError):
        m.hatvalues()
    with pytest.raises(RowsNotHeldError):
        m.augment()


# ---- deletion diagnostics (m.influence): leave-one-out refits in R with lme4 ------------------------
# tests/reference/influence/make_influence_reference.R refits each model without each group (or
# row) with lme4 and computes influence.ME's Cook's distance (full-fit and deleted-fit vcov) and
# DFBETAS from those refits.

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from jaxmlm import DataError  # noqa: E402

_REF = json.loads((Path(__file__).parent / "reference" / "influence" / "influence_reference.json").read_text())
_CASES = {c["name"]: c for c in _REF["cases"]}
_DATA = {"sleepstudy_slopes": "sleepstudy", "exam_intercept": "Exam", "exam_slopes": "Exam",
         "hsb82_level2_ML": "Hsb82", "penicillin_crossed_sample": "Penicillin", "sleepstudy_rows": "sleepstudy"}


def _model(name):
    c = _CASES[name]
    return jaxmlm.lmer(c["formula"], jaxmlm.load_example(_DATA[name]), REML=c["REML"])


def _in_r_order(frame, c):
    """Rows of ``frame`` (indexed by level, or by row label for rows) in the reference's order."""
    if c["group"] is None:  # R's labels are the row numbers 1 … n
        return frame.iloc[np.asarray(c["labels"], int) - 1]
    return frame.set_axis([str(x) for x in frame.index]).loc[c["labels"]]


@pytest.fixture(scope="module")
def influences():
    out = {}
    for name in _CASES:
        m = _model(name)
        out[name] = (m, m.influence(_CASES[name]["group"], method="both" if name in ("exam_slopes",
                                                                                    "sleepstudy_slopes") else "exact"))
    return out


@pytest.mark.parametrize("name", list(_CASES))
def test_exact_influence_matches_lme4_refits(name, influences):
    c = _CASES[name]
    m, inf = influences[name]
    assert list(inf.dfbetas.columns) == list(np.atleast_1d(c["fixef_names"]))
    assert inf.converged.all()
    assert len(inf.labels) == len(c["labels"])
    # the refits themselves
    np.testing.assert_allclose(_in_r_order(inf.fixef_deleted, c).to_numpy(), np.reshape(c["fixef_deleted"], (len(c["labels"]), -1)),
                               rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(_in_r_order(inf.se_deleted, c).to_numpy(),
                               np.reshape(c["se_deleted"], (len(c["labels"]), -1)), rtol=1e-6)
    # influence.ME's statistics, within 1e-5 relative
    np.testing.assert_allclose(_in_r_order(inf.cooks_distance, c).to_numpy(), c["cooks_distance"], rtol=1e-5)
    np.testing.assert_allclose(_in_r_order(inf.dfbetas, c).to_numpy(),
                               np.reshape(c["dfbetas"], (len(c["labels"]), -1)), rtol=1e-5)
    deleted = m.influence(c["group"], vcov="deleted") if name == "sleepstudy_slopes" else None
    if deleted is not None:
        np.testing.assert_allclose(_in_r_order(deleted.cooks_distance, c).to_numpy(),
                                   c["cooks_distance_deleted_vcov"], rtol=1e-5)


@pytest.mark.parametrize("data, formula, group, weights", [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", "Subject", None),  # block 1
    ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "sample", None),  # a crossed factor, not block 1
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", "Subject", "w"),  # prior weights
    ("Dyestuff2", "Yield ~ 1 + (1 | Batch)", "Batch", None),  # singular: θ̂ = 0
])
def test_zero_weight_is_the_group_removed(data, formula, group, weights):
    """A group given weight 0 is the model fitted without it: θ̂, β̂ and vcov of the batched
    refits equal those of lmer on the data without the group."""
    df = jaxmlm.load_example(data)
    if weights:
        df = df.assign(w=np.random.default_rng(1).uniform(0.5, 2.0, len(df)))
    m = jaxmlm.lmer(formula, df, weights=weights)
    inf = m.influence(group)
    assert inf.converged.all()
    for lev in [inf.labels[1], inf.labels[-1]]:
        sub = jaxmlm.lmer(formula, df[df[group].astype(str) != str(lev)], weights=weights)
        np.testing.assert_allclose(inf.theta_deleted.loc[lev].to_numpy(), sub.theta, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(inf.fixef_deleted.loc[lev].to_numpy(), sub.fixef.to_numpy(), rtol=1e-8)
        np.testing.assert_allclose(inf.vcov_deleted[inf.labels.get_loc(lev)], sub.vcov.to_numpy(), rtol=1e-6)
    if data == "Dyestuff2":  # the one-step approximation keeps θ at its bound: finite, no NaN
        a = m.influence(group, method="approximate")
        assert np.all(a.theta_deleted.to_numpy() == 0.0) and np.all(np.isfinite(a.cooks_distance))


@pytest.mark.parametrize("name", ["sleepstudy_slopes", "exam_slopes"])
def test_approximate_agrees_with_exact_to_first_order(name, influences):
    _, inf = influences[name]
    a = inf.approximate
    assert a is not None and a.method == "approximate"
    e_cook, a_cook = inf.cooks_distance, a.cooks_distance
    # one Newton step from θ̂: the error is second order in θ̂₍₋ⱼ₎ − θ̂, so a few per cent of the
    # largest Cook's distance, and the same groups stand out
    assert np.max(np.abs(a_cook - e_cook)) < 0.1 * e_cook.max()
    assert e_cook.idxmax() == a_cook.idxmax()
    assert np.max(np.abs((a.dfbetas - inf.dfbetas).to_numpy())) < 0.1 * np.abs(inf.dfbetas.to_numpy()).max()
    # the same to first order: the step beats keeping θ̂ (β̂₍₋ⱼ₎ at the full fit's θ̂) by far
    diff = inf.difference
    np.testing.assert_allclose(diff.cooks_difference, a_cook - e_cook)
    assert list(diff.columns[:3]) == ["cooks_exact", "cooks_approximate", "cooks_difference"]


def test_influence_frame_cutoffs_and_rows(influences):
    m, inf = influences["sleepstudy_slopes"]
    assert inf.cutoff == pytest.approx(4 / 18)
    assert inf.dfbetas_cutoff == pytest.approx(2 / np.sqrt(18))
    fr = inf.frame()
    assert list(fr.columns) == ["cooks_distance", "dfbetas[(Intercept)]", "dfbetas[Days]"]
    assert "Influence(both, 18 levels of 'Subject'" in repr(inf)
    _, rows = influences["sleepstudy_rows"]
    assert len(rows.cooks_distance) == m.nobs and rows.group is None
    # lme4's one-step cooks.distance (m.cooks_distance) is unchanged by the new code
    assert m.cooks_distance().shape == (m.nobs,)


def test_influence_bad_input(influences):
    m, _ = influences["sleepstudy_slopes"]
    with pytest.raises(DataError, match="method"):
        m.influence("Subject", method="jackknife")
    with pytest.raises(DataError, match="neither a grouping factor"):
        m.influence("school")
    with pytest.raises(DataError, match="vcov"):
        m.influence("Subject", vcov="mine")
    with pytest.raises(DataError, match="difference"):
        m.influence("Subject").difference  # noqa: B018


def test_influence_by_a_model_frame_column():
    """Any column of the model frame defines groups (as influence.ME's ``group``): Days on
    sleepstudy, each day's 18 rows left out in turn, equals lmer without that day."""
    df = jaxmlm.load_example("sleepstudy")
    m = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", df)
    inf = m.influence("Days")
    assert list(inf.labels) == list(range(10))
    sub = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", df[df.Days != 3])
    np.testing.assert_allclose(inf.fixef_deleted.loc[3].to_numpy(), sub.fixef.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(inf.se_deleted.loc[3].to_numpy(), sub.se.to_numpy(), rtol=1e-6)


def test_influence_plot_draws_the_cooks_distances(influences):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import jaxmlm.plot

    _, inf = influences["exam_intercept"]
    ax = jaxmlm.plot.influence(inf)
    xs = np.concatenate([ln.get_xdata() for ln in ax.lines if ln.get_marker() == "o"])
    np.testing.assert_allclose(np.sort(xs), np.sort(inf.cooks_distance.to_numpy()))
    refs = [ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]
    assert refs == [pytest.approx(4 / 65)]
    red = [ln for ln in ax.lines if ln.get_marker() == "o" and ln.get_color() == "C3"][0]
    np.testing.assert_allclose(np.sort(red.get_xdata()), np.sort(inf.cooks_distance[inf.cooks_distance > 4 / 65]))
    # sorted: the top tick is the school with the largest Cook's distance
    assert ax.get_yticklabels()[-1].get_text() == str(inf.cooks_distance.idxmax())
    fig = jaxmlm.plot.influence(inf, which="dfbetas", max_levels=10)
    assert len(fig.axes) == 2 and "largest 10 of 65" in fig._suptitle.get_text()
    with pytest.raises(DataError, match="which"):
        jaxmlm.plot.influence(inf, which="covratio")
    m, ss = influences["sleepstudy_slopes"]  # a model: its exact diagnostics are computed first
    ax = jaxmlm.plot.influence(m, group="Subject")
    xs = np.concatenate([ln.get_xdata() for ln in ax.lines if ln.get_marker() == "o"])
    np.testing.assert_allclose(np.sort(xs), np.sort(ss.cooks_distance.to_numpy()), rtol=1e-8)
    plt.close("all")

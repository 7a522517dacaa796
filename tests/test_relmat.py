"""The animal model through jaxmlm.core: a known relationship matrix A between the levels of a
factor (jaxmlm.core.RelationshipMatrix), checked against an independent dense computation.

The reference is the marginal likelihood written out with numpy: y ~ N(Xβ, V),
V = σ²_a Z A Zᵀ + σ² I (Z: the animals' indicators, every animal of A a column, those without
data zero columns), maximized by scipy over γ = σ²_a/σ² with β and σ² profiled out in closed
form (generalized least squares; Harville 1977, Searle, Casella & McCulloch 1992 §6.6). A comes
from a simulated three-generation pedigree by the tabular method (Henderson 1976; Mrode 2014,
§2.1), computed here and not by the library.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar

import jaxmlm
import jaxmlm.core as core

LOG2PI = np.log(2.0 * np.pi)


# ---- an independent reference ------------------------------------------------------------------

def pedigree(seed: int = 3):
    """A three-generation pedigree: 12 founders, then 24 and 30 offspring of random parents of the
    generation before (some with one parent unknown). Returns (ids, sire, dam) in birth order."""
    rng = np.random.default_rng(seed)
    ids = [f"f{i:02d}" for i in range(12)]
    sire, dam = [None] * 12, [None] * 12
    prev = list(ids)
    for g, size in ((1, 24), (2, 30)):
        cur = []
        for j in range(size):
            s, d = rng.choice(prev, 2, replace=False)
            if j % 7 == 3:
                d = None  # an unknown dam
            a = f"g{g}_{j:02d}"
            ids.append(a)
            sire.append(str(s))
            dam.append(None if d is None else str(d))
            cur.append(a)
        prev = cur
    return ids, sire, dam


def tabular_A(ids, sire, dam) -> np.ndarray:
    """The numerator relationship matrix by the tabular method (parents before offspring):
    A_ij = ½(A_j,sire(i) + A_j,dam(i)) for j < i, A_ii = 1 + ½ A_sire(i),dam(i)."""
    pos = {a: i for i, a in enumerate(ids)}
    q = len(ids)
    A = np.zeros((q, q))
    for i in range(q):
        s = pos.get(sire[i]) if sire[i] is not None else None
        d = pos.get(dam[i]) if dam[i] is not None else None
        for j in range(i):
            A[i, j] = A[j, i] = 0.5 * ((A[j, s] if s is not None else 0.0) + (A[j, d] if d is not None else 0.0))
        A[i, i] = 1.0 + (0.5 * A[s, d] if s is not None and d is not None else 0.0)
    return A


def dense_m2loglik(y, X, Z, A, s2a, s2, reml: bool, beta=None):
    """−2 log-likelihood (ML) or −2 restricted log-likelihood (REML) of y ~ N(Xβ, σ²_a Z A Zᵀ + σ² I),
    at the GLS β̂(V) unless ``beta`` is given; REML as lme4 (no log|XᵀX| term)."""
    n, p = X.shape
    V = s2a * Z @ A @ Z.T + s2 * np.eye(n)
    cV = np.linalg.cholesky(V)
    Vi_X = np.linalg.solve(V, X)
    XtViX = X.T @ Vi_X
    if beta is None:
        beta = np.linalg.solve(XtViX, Vi_X.T @ y)
    r = y - X @ beta
    out = 2.0 * np.sum(np.log(np.diag(cV))) + r @ np.linalg.solve(V, r)
    if reml:
        return out + np.linalg.slogdet(XtViX)[1] + (n - p) * LOG2PI, beta
    return out + n * LOG2PI, beta


def dense_fit(y, X, Z, A, reml: bool):
    """Maximize the dense likelihood: over γ = σ²_a/σ² (bounded Brent on log γ), with σ² and β
    profiled: V = σ² H, H = γ Z A Zᵀ + I, σ̂² = r̂ᵀH⁻¹r̂ / (n − reml·p)."""
    n, p = X.shape
    ZAZ = Z @ A @ Z.T

    def profiled(lg):
        H = np.exp(lg) * ZAZ + np.eye(n)
        Hi_X = np.linalg.solve(H, X)
        beta = np.linalg.solve(X.T @ Hi_X, Hi_X.T @ y)
        r = y - X @ beta
        s2 = r @ np.linalg.solve(H, r) / (n - reml * p)
        return s2, beta

    def objective(lg):
        s2, _ = profiled(lg)
        return dense_m2loglik(y, X, Z, A, np.exp(lg) * s2, s2, reml)[0]

    best = minimize_scalar(objective, bounds=(-8.0, 6.0), method="bounded", options={"xatol": 1e-11})
    s2, beta = profiled(best.x)
    return {"s2a": np.exp(best.x) * s2, "s2": s2, "beta": beta, "crit": objective(best.x)}


def herd_data(seed: int = 5):
    """Records on the animals of generations 1 and 2 (founders have none: ancestors only in A),
    1–3 records each, with sex and age as fixed effects; u ~ N(0, 4 A), e ~ N(0, 2.25)."""
    ids, sire, dam = pedigree()
    A = tabular_A(ids, sire, dam)
    rng = np.random.default_rng(seed)
    u = np.linalg.cholesky(A) @ rng.normal(size=len(ids)) * 2.0
    animals = [a for a in ids if not a.startswith("f")]
    nrec = rng.integers(1, 4, size=len(animals))
    rows = np.repeat(np.arange(len(animals)), nrec)
    pos = np.array([ids.index(animals[r]) for r in rows])
    sex = rng.integers(0, 2, size=len(rows))
    age = rng.uniform(1, 5, size=len(rows)).round(1)
    y = 50 + 3.0 * sex + 0.8 * age + u[pos] + rng.normal(size=len(rows)) * 1.5
    data = pd.DataFrame({"y": y, "sex": np.where(sex == 1, "M", "F"), "age": age,
                         "animal": [animals[r] for r in rows]})
    return data, pd.DataFrame(A, index=ids, columns=ids), pos


FORMULA = "y ~ sex + age + (1 | animal)"


def _fit(formula, data, structure=None, reml=True):
    d = core.design(formula, data)
    if structure is not None:
        d = core.with_structure(d, "animal", structure)
    s = core.schema(d)
    res = core.fit(core.statistics(s, d), s.layout, REML=reml)
    assert int(res.state.status) in (0, 1)
    return d, res


def _estimates(res):
    sol = res.solution
    sigma = float(sol.sigma)
    return {"s2a": (float(res.theta[0]) * sigma) ** 2, "s2": sigma**2, "beta": np.asarray(sol.beta),
            "crit": float(sol.criterion)}


@pytest.fixture(scope="module")
def herd():
    return herd_data()


@pytest.mark.parametrize("reml", [True, False])
def test_animal_model_matches_the_dense_marginal_likelihood(herd, reml):
    data, A, pos = herd
    d, res = _fit(FORMULA, data, core.RelationshipMatrix(A), reml)
    mine = _estimates(res)
    y, X = d.y, d.X
    Z = np.zeros((len(y), A.shape[0]))
    Z[np.arange(len(y)), pos] = 1.0  # every animal of A a column: ancestors without records too
    Av = A.to_numpy()
    # The criterion is the dense −2 log-likelihood at jaxmlm's own estimates …
    at_mine, _ = dense_m2loglik(y, X, Z, Av, mine["s2a"], mine["s2"], reml, beta=mine["beta"])
    assert abs(at_mine - mine["crit"]) < 1e-6
    # … and the estimates are the dense likelihood's maximum.
    ref = dense_fit(y, X, Z, Av, reml)
    assert abs(ref["crit"] - mine["crit"]) < 1e-6
    for key in ("s2a", "s2"):
        assert abs(mine[key] / ref[key] - 1.0) < 1e-4, (key, mine[key], ref[key])
    np.testing.assert_allclose(mine["beta"], ref["beta"], rtol=1e-4)
    assert mine["s2a"] > 0.5  # a genetic variance, not a boundary fit
    # The predicted breeding values: E(u | y) = σ²_a A Zᵀ V⁻¹ (y − Xβ̂), read by label.
    V = mine["s2a"] * Z @ Av @ Z.T + mine["s2"] * np.eye(len(y))
    blup = mine["s2a"] * Av @ Z.T @ np.linalg.solve(V, y - X @ mine["beta"])
    t = d.terms[0]
    b = pd.Series(np.asarray(res.solution.b1[0]), index=list(t.columns))
    np.testing.assert_allclose(b.to_numpy(), blup[A.index.get_indexer(b.index)], rtol=1e-6, atol=1e-8)
    assert core.theta_names(d) == ["animal.(Intercept)"]


def test_identity_relationship_is_the_ordinary_random_intercept(herd):
    data, _, _ = herd
    levels = sorted(data["animal"].unique())
    I = pd.DataFrame(np.eye(len(levels)), index=levels, columns=levels)
    for reml in (True, False):
        _, plain = _fit(FORMULA, data, None, reml)
        _, rel = _fit(FORMULA, data, core.RelationshipMatrix(I), reml)
        a, b = _estimates(plain), _estimates(rel)
        assert abs(a["crit"] - b["crit"]) < 1e-8
        assert abs(float(plain.theta[0]) - float(rel.theta[0])) < 1e-7
        np.testing.assert_allclose(b["beta"], a["beta"], rtol=1e-9)
        assert abs(a["s2"] / b["s2"] - 1) < 1e-9


def test_label_order_and_form_of_A_do_not_matter(herd):
    data, A, _ = herd
    _, ref = _fit(FORMULA, data, core.RelationshipMatrix(A))
    perm = np.random.default_rng(0).permutation(A.shape[0])
    shuffled = A.iloc[perm, perm]
    _, res = _fit(FORMULA, data, core.RelationshipMatrix(shuffled))
    cols_shuffled = A.iloc[:, perm]  # columns in another order than the index
    _, res2 = _fit(FORMULA, data, core.RelationshipMatrix(cols_shuffled))
    _, res3 = _fit(FORMULA, data, core.RelationshipMatrix(shuffled.to_numpy(), labels=shuffled.index))
    for other in (res, res2, res3):
        assert abs(float(other.solution.criterion) - float(ref.solution.criterion)) < 1e-8
        assert abs(float(other.theta[0]) / float(ref.theta[0]) - 1) < 1e-6
        np.testing.assert_allclose(np.asarray(other.solution.beta), np.asarray(ref.solution.beta), rtol=1e-8)


def test_integer_labels_match_integer_levels(herd):
    data, A, _ = herd
    code = {a: i + 100 for i, a in enumerate(A.index)}
    data2 = data.assign(animal=data["animal"].map(code))
    _, ref = _fit(FORMULA, data, core.RelationshipMatrix(A))
    _, res = _fit(FORMULA, data2, core.RelationshipMatrix(A.to_numpy(), labels=[code[a] for a in A.index]))
    assert abs(float(res.solution.criterion) - float(ref.solution.criterion)) < 1e-8


def test_a_semidefinite_relationship_matrix_clones(herd):
    """Clones (two labels of one genotype: equal rows of A) make A singular; the model is still
    the dense one, fitted through the pivoted Cholesky factor."""
    data, A, pos = herd
    clone_of = "g2_05"
    ids = list(A.index) + ["clone"]
    Av = np.zeros((len(ids), len(ids)))
    Av[:-1, :-1] = A.to_numpy()
    j = A.index.get_loc(clone_of)
    Av[-1, :-1] = Av[:-1, -1] = Av[j, :-1]
    Av[-1, -1] = Av[j, j]
    assert np.linalg.matrix_rank(Av) == len(ids) - 1
    extra = data[data["animal"] == clone_of].assign(animal="clone", y=lambda f: f["y"] + 0.3)
    data2 = pd.concat([data, extra], ignore_index=True)
    Adf = pd.DataFrame(Av, index=ids, columns=ids)
    d, res = _fit(FORMULA, data2, core.RelationshipMatrix(Adf))
    mine = _estimates(res)
    Z = np.zeros((d.n, len(ids)))
    Z[np.arange(d.n), pd.Index(ids).get_indexer(data2["animal"])] = 1.0
    ref = dense_fit(d.y, d.X, Z, Av, True)
    assert abs(ref["crit"] - mine["crit"]) < 1e-6
    assert abs(mine["s2a"] / ref["s2a"] - 1) < 1e-4
    # The clone and its original have one predicted value.
    b = pd.Series(np.asarray(res.solution.b1[0]), index=list(d.terms[0].columns))
    assert abs(b["clone"] - b[clone_of]) < 1e-8


@pytest.mark.parametrize("other, nlev", [("pen", 9), ("day", 70)])
def test_beside_an_ordinary_factor(herd, other, nlev):
    """(1 | other) + (1 | animal) against the dense REML criterion with V = σ²_a ZAZᵀ + σ²_o Z_o Z_oᵀ + σ² I
    at jaxmlm's estimates, which must be its minimum. With 9 pens the relationship block is the
    engine's first block; with 70 days (more levels than the 54 animals) it is in the dense rest."""
    data, A, pos = herd
    rng = np.random.default_rng(11)
    lev = rng.integers(0, nlev, size=len(data))
    data = data.assign(**{other: [f"o{i:02d}" for i in lev]}, y=data["y"] + rng.normal(size=nlev)[lev] * 1.2)
    d = core.design(f"y ~ sex + age + (1 | {other}) + (1 | animal)", data)
    d = core.with_structure(d, "animal", core.RelationshipMatrix(A))
    s = core.schema(d)
    res = core.fit(core.statistics(s, d), s.layout)
    assert int(res.state.status) in (0, 1)
    th = dict(zip(core.theta_names(d), np.asarray(res.theta)))
    sigma = float(res.solution.sigma)
    est = np.array([(th["animal.(Intercept)"] * sigma) ** 2, (th[f"{other}.(Intercept)"] * sigma) ** 2, sigma**2])
    assert np.all(est > 0.1)  # inside the parameter space: the minimum is a stationary point
    y, X = d.y, d.X
    Z = np.zeros((len(y), A.shape[0]))
    Z[np.arange(len(y)), pos] = 1.0
    Zo = pd.get_dummies(data[other]).to_numpy(float)
    Av = A.to_numpy()

    def m2(v):
        V = v[0] * Z @ Av @ Z.T + v[1] * Zo @ Zo.T + v[2] * np.eye(len(y))
        Vi_X = np.linalg.solve(V, X)
        XVX = X.T @ Vi_X
        beta = np.linalg.solve(XVX, Vi_X.T @ y)
        r = y - X @ beta
        return (np.linalg.slogdet(V)[1] + r @ np.linalg.solve(V, r) + np.linalg.slogdet(XVX)[1]
                + (len(y) - X.shape[1]) * LOG2PI), beta

    at, beta = m2(est)
    assert abs(at - float(res.solution.criterion)) < 1e-6
    np.testing.assert_allclose(np.asarray(res.solution.beta), beta, rtol=1e-6)
    # The dense criterion's gradient in log-variances vanishes there (central differences).
    h = 1e-4
    for i in range(3):
        up, down = est.copy(), est.copy()
        up[i] *= np.exp(h)
        down[i] *= np.exp(-h)
        assert abs((m2(up)[0] - m2(down)[0]) / (2 * h)) < 1e-3


def test_a_covariate_term_and_the_criterion_gradient(herd):
    """(0 + age | animal) under A: Z holds the covariate, V = σ²_a (Z A Zᵀ) + σ² I with Z_ij = age_i
    for row i of animal j; the criterion at jaxmlm's estimates is the dense one, and
    jax.grad of core.criterion is the central difference of the dense criterion in θ."""
    import jax

    data, A, pos = herd
    d = core.with_structure(core.design("y ~ sex + age + (0 + age | animal)", data), "animal", core.RelationshipMatrix(A))
    s = core.schema(d)
    st = core.statistics(s, d)
    res = core.fit(st, s.layout)
    assert int(res.state.status) in (0, 1)
    y, X = d.y, d.X
    Z = np.zeros((len(y), A.shape[0]))
    Z[np.arange(len(y)), pos] = data["age"].to_numpy()
    Av = A.to_numpy()
    sigma, th = float(res.solution.sigma), float(res.theta[0])
    at, _ = dense_m2loglik(y, X, Z, Av, (th * sigma) ** 2, sigma**2, True)
    assert abs(at - float(res.solution.criterion)) < 1e-6
    assert th * sigma > 0.1

    def dense_profiled(t):  # the dense criterion at θ, σ² and β profiled (σ² = r'H⁻¹r/(n − p))
        H = t * t * Z @ Av @ Z.T + np.eye(len(y))
        Hi_X = np.linalg.solve(H, X)
        beta = np.linalg.solve(X.T @ Hi_X, Hi_X.T @ y)
        r = y - X @ beta
        s2 = r @ np.linalg.solve(H, r) / (len(y) - X.shape[1])
        return dense_m2loglik(y, X, Z, Av, t * t * s2, s2, True)[0]

    t0 = 0.5 * th
    g = float(jax.grad(core.criterion)(np.array([t0]), st, s.layout)[0])
    h = 1e-5
    fd = (dense_profiled(t0 + h) - dense_profiled(t0 - h)) / (2 * h)
    assert abs(g - fd) < 1e-5 * max(1.0, abs(fd))
    assert abs(float(core.criterion(np.array([t0]), st, s.layout)) - dense_profiled(t0)) < 1e-6


# ---- bad input --------------------------------------------------------------------------------

def test_bad_relationship_matrices_get_clear_errors(herd):
    data, A, _ = herd
    d = core.design(FORMULA, data)
    labels = list(A.index)
    Av = A.to_numpy()
    with pytest.raises(jaxmlm.DataError, match="not positive semi-definite"):
        bad = Av.copy()
        bad[0, 1] = bad[1, 0] = 1.5  # a correlation above one
        core.RelationshipMatrix(bad, labels=labels)
    with pytest.raises(jaxmlm.DataError, match="not symmetric"):
        bad = Av.copy()
        bad[2, 3] += 0.1
        core.RelationshipMatrix(bad, labels=labels)
    with pytest.raises(jaxmlm.DataError, match="duplicated"):
        core.RelationshipMatrix(Av, labels=labels[:-1] + labels[:1])
    with pytest.raises(jaxmlm.DataError, match="duplicated"):
        core.RelationshipMatrix(pd.DataFrame(Av, index=labels[:-1] + labels[:1], columns=labels))
    with pytest.raises(jaxmlm.DataError, match="square"):
        core.RelationshipMatrix(Av[:, :-1], labels=labels)
    with pytest.raises(jaxmlm.DataError, match="labels"):
        core.RelationshipMatrix(Av, labels=labels[:-1])
    with pytest.raises(jaxmlm.DataError, match="labels="):
        core.RelationshipMatrix(Av)
    with pytest.raises(jaxmlm.DataError, match="same labels"):
        core.RelationshipMatrix(pd.DataFrame(Av, index=labels, columns=[f"x{i}" for i in range(len(labels))]))
    with pytest.raises(jaxmlm.DataError, match="missing or infinite"):
        bad = Av.copy()
        bad[0, 0] = np.nan
        core.RelationshipMatrix(bad, labels=labels)
    # A level with records but no row in A.
    keep = [a for a in labels if a != "g2_07"]
    with pytest.raises(jaxmlm.DataError, match="'g2_07'"):
        core.with_structure(d, "animal", core.RelationshipMatrix(A.loc[keep, keep]))
    # Only on a one-column term alone on its factor.
    d2 = core.design("y ~ sex + age + (1 + age | animal)", data)
    with pytest.raises(jaxmlm.DataError, match="one column"):
        core.with_structure(d2, "animal", core.RelationshipMatrix(A))
    # Every error is jaxmlm's (and a ValueError).
    with pytest.raises(ValueError):
        core.RelationshipMatrix(Av, labels=labels[:-1])
    # The user's frame is not touched.
    before = A.copy()
    core.with_structure(d, "animal", core.RelationshipMatrix(A))
    pd.testing.assert_frame_equal(A, before)

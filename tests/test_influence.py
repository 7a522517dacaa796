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

"""An independent, dense reference implementation for the tests (numpy only, small n).

Builds Z and Λθ as full matrices from a Design and evaluates the profiled
criterion by the marginal-covariance formulas, V = Z Λ Λᵀ Zᵀ + I:

    r²   = (y − Xβ̂)ᵀ V⁻¹ (y − Xβ̂),  β̂ = (XᵀV⁻¹X)⁻¹ XᵀV⁻¹y   (GLS)
    ML   = log|V| + n (1 + log(2π r²/n))
    REML = log|V| + log|XᵀV⁻¹X| + (n−p)(1 + log(2π r²/(n−p)))

using |ΛᵀZᵀZΛ + I| = |ZΛΛᵀZᵀ + I| (Sylvester). No blocking, no sufficient
statistics, no JAX: an implementation that shares nothing with the engine.
"""

import numpy as np


def dense_z_lambda(design, theta):
    Zs, Ls = [], []
    t = 0
    # θ in lme4 order: terms in order, lower triangle column by column.
    term_T = []
    for term in design.terms:
        T = np.zeros((term.k, term.k))
        for j in range(term.k):
            for i in range(j, term.k):
                T[i, j] = theta[t]
                t += 1
        term_T.append(T)
    for b, blk in enumerate(design.blocks):
        n, k = blk.Z.shape
        lev = blk.nlev
        Z = np.zeros((n, lev * k))
        for j in range(k):
            Z[np.arange(n), blk.codes * k + j] = blk.Z[:, j]
        Tb = np.zeros((k, k))
        for ti, term in enumerate(design.terms):
            if term.block == b:
                o = term.offset
                Tb[o : o + term.k, o : o + term.k] = term_T[ti]
        Zs.append(Z)
        Ls.append(np.kron(np.eye(lev), Tb))
    Z = np.hstack(Zs)
    q = Z.shape[1]
    Lam = np.zeros((q, q))
    o = 0
    for L in Ls:
        Lam[o : o + L.shape[0], o : o + L.shape[0]] = L
        o += L.shape[0]
    return Z, Lam


def dense_criterion(design, theta, reml):
    Z, Lam = dense_z_lambda(design, np.asarray(theta, float))
    X, y = design.X, design.y
    n, p = X.shape
    ZL = Z @ Lam
    V = ZL @ ZL.T + np.eye(n)
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    r2 = r @ Vi @ r
    logdetV = np.linalg.slogdet(V)[1]
    if reml:
        return logdetV + np.linalg.slogdet(XtViX)[1] + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p))), beta
    return logdetV + n * (1 + np.log(2 * np.pi * r2 / n)), beta

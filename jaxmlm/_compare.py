"""Model comparison and variance decompositions: anova, ranova, LR test vs OLS, ICC, R².

Likelihood-ratio tables
-----------------------
* :func:`anova` — lme4's ``anova.merMod`` for two or more fits of the same data:
  rows ordered by the number of parameters, ``Chisq = 2·max(0, Δ logLik)`` between
  consecutive rows, ``Df = Δ npar``, ``Pr(>Chisq)`` from χ²_Df (NA when Df = 0).
  REML fits are refitted by maximum likelihood first (``refit=True``), as lme4
  does (Bates et al. 2015, *J. Stat. Softw.* 67(1), §5). ``method="pb"`` adds a
  parametric-bootstrap p-value as pbkrtest's ``PBmodcomp`` (Halekoh & Højsgaard 2014).
* :func:`ranova` — lmerTest's single-term deletion table for the random-effect
  terms (Kuznetsova, Brockhoff & Christensen 2017, *J. Stat. Softw.* 82(13), §4;
  ``lmerTest::ranova``): ``(1 | g)`` is removed, ``(f1 + f2 | g)`` is reduced by
  one droppable term of its left-hand side at a time (R's ``drop.scope``), a
  one-term left-hand side ``(f | g)`` / ``(0 + f | g)`` becomes ``(1 | g)``.
  The reduced models keep the REML setting; when no random term is left the
  model is a linear model whose (REML) log-likelihood is lmerTest's
  ``logLik(lm, REML = isREML)``.
* :func:`lrt_vs_ols` — Stata's "LR test vs. linear model" printed under
  ``mixed``: LR = 2(ℓ_mixed − ℓ_OLS). With one variance component the null
  value is on the boundary and LR ~ χ̄²(01) = ½χ²₀ + ½χ²₁ (Self & Liang 1987;
  Stata manual ``[ME] mixed``), p = ½ P(χ²₁ ≥ LR) (1 when LR = 0); with k > 1
  variance parameters Stata reports χ²_k and calls the test conservative.

How reduced models are fitted
-----------------------------
A reduced random-effects structure whose terms are subsets of the full one
(``(x | g)`` → ``(1 | g)``, removing a term, removing every term) is the full
model with some columns of Z set to zero: the rows of Λ that multiply them drop
out of ΛᵀZᵀZΛ + I and of r², so the criterion is exactly the reduced model's.
Those fits therefore zero the matching rows and columns of the sufficient
statistics (:func:`zero_columns`) and call the already compiled
:func:`~jaxmlm._fit.fit` of the full model's layout: no new design,
no recompilation. With every column zeroed the criterion is the OLS one
(log|L|² = 0). Only a reduction that adds a column the full model lacks
(``(0 + x | g)`` → ``(1 | g)``) is refitted with :func:`~jaxmlm._results.lmer`
on the model frame ``m.design.frame``.

Variance decompositions
-----------------------
For the random-effects term t with covariance Σ_t and model-matrix rows z_i,
its variance is Johnson's (2014, *Methods Ecol. Evol.* 5, 944) mean
σ²_t = (1/n) Σ_i z_iᵀ Σ_t z_i, which is Σ_t itself for a random intercept.

* :func:`icc` — σ²_g / (Σ_h σ²_h + σ²_ε) per grouping factor g (terms on the
  same factor summed), plus Stata's ``estat icc`` cumulative version for nested
  factors: the correlation of two observations that share the level of g and
  hence of every factor g is nested in.
* :func:`r2_nakagawa` — marginal R² = σ²_f / (σ²_f + Σσ²_t + σ²_ε) and
  conditional R² = (σ²_f + Σσ²_t) / (…), σ²_f = var(Xβ̂) with the n − 1
  denominator (Nakagawa & Schielzeth 2013, *Methods Ecol. Evol.* 4, 133;
  Nakagawa, Johnson & Schielzeth 2017, *J. R. Soc. Interface* 14).
* :func:`pseudo_r2` — Raudenbush & Bryk's (2002, *Hierarchical Linear Models*,
  2nd ed., §4) proportional reduction of the level-1 variance σ² and of each
  grouping factor's intercept variance τ₀₀ from a base (null) model.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import chdtrc  # χ² survival chdtrc(k, x); scipy.stats takes ~0.5–4 s to import

from . import _x64  # noqa: F401
from ._errors import ConvergenceWarning, DataError, InferenceError, JaxmlmError, warn_user
from ._objective import ols_criterion
from ._fit import fit_snapped, fit_stats, one_program_refit
from ._optimize import choose_method, diagonal_mask, theta_scale_host
from ._present import AnovaTable
from ._rnum import deparse_formula
from ._solution import Solution

__all__ = ["anova", "ranova", "lrt_vs_ols", "LRTest", "icc", "r2_nakagawa", "pseudo_r2", "zero_columns", "refit_criterion"]

_SYNTACTIC = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


# ---- refits on the compiled program of the full model ----------------------------------------


def zero_columns(m, columns) -> object:
    """m.stats with the Z columns ``columns`` — (block, column in block) pairs — set to zero.

    Zeroes the matching rows/columns of A11, Z1W, A21 (block 1) or A22, ZrW,
    A21 (other blocks); shapes are unchanged, so compiled programs are reused.
    """
    st, lay = m.stats, m.layout
    A11, Z1W, A21 = np.array(st.A11), np.array(st.Z1W), np.array(st.A21)
    A22, ZrW = np.array(st.A22), np.array(st.ZrW)
    pair_a = np.asarray(st.pair_a)
    for b, c in columns:
        if b == 0:
            A11[:, c, :] = 0.0
            A11[:, :, c] = 0.0
            Z1W[:, c, :] = 0.0
            if A21.shape[0]:
                A21[:, c] = 0.0
        else:
            off, lev, k = lay.rest[b - 1]
            rows = off + np.arange(lev) * k + c
            if A22.ndim == 3:  # a nested layout keeps A22's diagonal blocks (one rest block)
                A22[:, c, :] = 0.0
                A22[:, :, c] = 0.0
            else:
                A22[rows, :] = 0.0
                A22[:, rows] = 0.0
            ZrW[rows, :] = 0.0
            A21[np.isin(pair_a, rows), :] = 0.0
    # host arrays: the kernels take them as they are (jnp.asarray here compiled a
    # one-operation program per shape, outside any kernel)
    return st._replace(A11=A11, Z1W=Z1W, A21=A21, A22=A22, ZrW=ZrW)


def lift_zero_diagonals(theta: np.ndarray, layout, scale, value: float = 0.1) -> np.ndarray:
    """θ with template diagonals below 1e-4·cᵢ set to ``value``·cᵢ, c = ``scale``
    (:func:`~jaxmlm._optimize.theta_scale` of the statistics: both thresholds in the
    optimizer's unit-free coordinates, so that they mean the same in any units).

    The criterion is even in every template column, so θ = 0 in a column is a
    stationary point that a Newton method cannot leave even where it is not a
    minimum (a singular fit refitted with other constraints); start off it.
    """
    theta = np.array(theta, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    lift = diagonal_mask(layout) & (np.abs(theta) < 1e-4 * scale)
    theta[lift] = value * scale[lift]
    return theta


def refit_criterion(m, reml: bool, stats=None, theta0=None, zeroed=()) -> tuple[float, np.ndarray, Solution]:
    """Minimum of the ML deviance (reml=False) or REML criterion over θ on ``stats``
    (default: the model's own, with the Z columns ``zeroed`` set to 0: :func:`zero_columns`),
    started from ``theta0`` (default θ̂). Runs the program
    ``lmer`` fits with (:func:`~jaxmlm._fit.fit_stats`: same layout, statistics' shapes and
    method; for small data fitted by one program, that program: :func:`~jaxmlm._fit.one_program_refit`),
    so that refitting a fitted shape compiles nothing. Returns (criterion, θ̂ with
    canonical signs and lmer's boundary snapping, the estimates there: β̂, σ̂ and vcov(β̂) of
    the refit, from the same program)."""
    small = one_program_refit(m, reml, zeroed) if stats is None and hasattr(m, "record") else None
    if stats is None:
        stats = zero_columns(m, zeroed) if zeroed else m.stats
    c = theta_scale_host(stats, m.layout)
    theta0 = lift_zero_diagonals(np.asarray(m.theta if theta0 is None else theta0, dtype=np.float64), m.layout, c)
    if small is not None:  # small data: the program that fitted m (its pass gives m.stats again)
        run, wide = small
        _, _, st, theta, sol, _ = fit_snapped(run, theta0 / c, 200, wide, p=m.layout.p)
    else:
        _, _, st, theta, sol, _ = fit_stats(theta0 / c, stats, np.asarray(1.0 if reml else 0.0), m.layout,
                                            choose_method(m.layout))
    f, status = float(sol.criterion), int(st.status)
    if not np.isfinite(f):
        raise JaxmlmError("refitting the model gave a non-finite criterion; check the model for near-constant columns")
    if status not in (0, 1):
        warn_user(f"refit of {m.formula!r} stopped before convergence (status {status})",
                  ConvergenceWarning)
    return f, np.asarray(theta, dtype=np.float64), sol


def ml_deviance(m) -> float:
    """−2 log-likelihood at the ML estimates (lme4's ``refitML`` for REML fits)."""
    if not m.REML:
        return float(m.objective)
    if getattr(m, "residual", None) is not None:  # a residual structure: refit all of it (gls, lme)
        return float(m.update(REML=False).objective)
    return refit_criterion(m, reml=False)[0]


def _ols_criterion(m, reml: bool) -> float:
    """The criterion at θ = 0: −2 × logLik(lm(...), REML = reml) for the same X and y."""
    return ols_criterion(m.stats, 1.0 if reml else 0.0)


# ---- checks shared by the comparisons ------------------------------------------------------------


def _check_model(m, what: str, glmm: bool = False, gls: bool = False) -> None:
    """A fitted model is what these functions read: its design, layout, statistics and estimates
    (checked by what it has, so that this module needs no model class). ``gls``: a model without
    random effects (jaxmlm.gls: no layout) is accepted too — by the likelihood-ratio test only."""
    if not all(hasattr(m, a) for a in ("design", "layout", "theta", "objective", "REML")):
        raise JaxmlmError(f"{what} must be a model fitted with jaxmlm.lmer or jaxmlm.glmer, got {type(m).__name__}")
    if m.layout is None and not gls:
        raise InferenceError(f"{what} is a gls model (no random effects): only likelihood-ratio tests between "
                             "models (jaxmlm.anova(m0, m1)) take it")
    if not glmm and not hasattr(m, "stats"):
        raise JaxmlmError(f"{what} must be a linear mixed model (jaxmlm.lmer); this is a {type(m).__name__}")


def _check_families(models, names) -> None:
    """GLMMs compare with GLMMs of the same family and link only (their likelihoods are of the same
    distribution), never with linear models."""
    fams = [getattr(m, "family", None) for m in models]
    if all(f is None for f in fams):
        return
    if any(f is None for f in fams):
        raise DataError("anova compares linear mixed models with each other and GLMMs with each other; "
                        f"got both ({', '.join(names)})")
    # Poisson against negative binomial (the same link) is the usual test of overdispersion
    counts = {"poisson": "count", "negative_binomial": "count"}
    kinds = {(counts.get(f.name, f.name), f.link.name) for f in fams}
    if len(kinds) > 1:
        shown = sorted({(f.name, f.link.name) for f in fams})
        raise DataError("the GLMMs have different families or links "
                        f"({', '.join(f'{a} ({b})' for a, b in shown)}): their likelihoods are not comparable")


def _variables(models) -> list[str]:
    seen: list[str] = []
    for m in models:
        frame = getattr(m.design, "frame", None)
        cols = list(frame.columns) if frame is not None else []
        seen += [c for c in cols if c not in seen]
    return seen


def _check_same_rows(models, names) -> None:
    """Refuse models fitted to different rows (lme4: 'models were not all fitted to the same size of dataset')."""
    first, n0 = models[0], names[0]
    for m, nm in zip(models[1:], names[1:]):
        if not (m.design.held and first.design.held):
            _check_same_pieces(first, n0, m, nm)
            continue
        same = m.nobs == first.nobs and m.design.rows.equals(first.design.rows)
        if not same:
            cols = _variables([first, m])
            subset = f"subset={cols!r}" if cols else "subset=[<every variable of both formulas>]"
            raise DataError(
                f"the models were fitted to different rows: {n0} ({first.formula!r}) uses {first.nobs} rows, "
                f"{nm} ({m.formula!r}) uses {m.nobs} rows (rows with a missing value in a variable of a "
                "formula are dropped). Likelihoods of different data are not comparable: fit every model on "
                f"the common complete cases, e.g. df = df.dropna({subset}), and compare those fits"
            )
        if not np.array_equal(m.design.y, first.design.y):
            raise DataError(
                f"the models have different responses ({n0}: {first.formula!r}, {nm}: {m.formula!r}); "
                "likelihoods of different responses are not comparable: fit every model to the same "
                "response and data"
            )
        if not (_same(m.design.weights, first.design.weights) and _same(m.design.offset, first.design.offset)):
            raise DataError(
                f"the models have different prior weights or offsets ({n0}: {first.formula!r}, {nm}: "
                f"{m.formula!r}); likelihoods of differently weighted data are not comparable: fit every model "
                "with the same weights= and offset"
            )


def _check_same_pieces(first, n0: str, m, nm: str) -> None:
    """Models fitted from data in pieces (jaxmlm/_partitioned.py): the same rows, response, weights and
    offset, by the rows' fingerprints and the response's formula text."""
    if m.design.held != first.design.held:
        raise DataError(f"{n0} and {nm}: one model was fitted to a pandas frame and the other to data in pieces (a Dask "
                        "frame or a Parquet dataset); compare fits made the same way from the same data")
    if m.nobs != first.nobs or m.design.fingerprint != first.design.fingerprint:
        raise DataError(
            f"the models were fitted to different rows, or to rows with different responses, weights or offsets: "
            f"{n0} ({first.formula!r}) uses {first.nobs} rows, {nm} ({m.formula!r}) {m.nobs}, and their rows' "
            "fingerprints differ (rows with a missing value in a variable of a formula are dropped). Likelihoods "
            "of different data are not comparable: fit every model on the same complete rows")
    if m.design.formula.lhs != first.design.formula.lhs:
        raise DataError(f"the models have different responses ({n0}: {first.formula!r}, {nm}: {m.formula!r}); "
                        "likelihoods of different responses are not comparable")


# ---- anova -------------------------------------------------------------------------------------------


def anova(*models, refit: bool = True, names=None, method: str = "lrt", nsim: int = 1000, seed=None,
          type=3, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """Likelihood-ratio comparison of nested models, as lme4's ``anova(m0, m1, ...)``.

    With one model, ``anova(m, type=3, ddf="Satterthwaite")`` is lmerTest's
    table of F tests of its fixed-effects terms (``m.anova()``).

    Returns a DataFrame indexed by model name (``names``, default ``m0``, ``m1``,
    … in argument order), rows ordered by ``npar`` (stable), columns ``npar``,
    ``AIC``, ``BIC``, ``logLik``, ``deviance`` (−2 logLik), ``Chisq``
    (2·max(0, logLik_i − logLik_{i−1})), ``Df`` (npar_i − npar_{i−1}) and
    ``Pr(>Chisq)``. REML fits are compared on their ML refits unless
    ``refit=False`` (then the REML criteria are compared, which is only valid
    for models with the same fixed effects). ``method="pb"`` adds ``Pr(PB)``:
    the parametric-bootstrap p-value of each row against the previous one
    (pbkrtest's ``PBmodcomp``, ``nsim`` simulations from the smaller model);
    the objects returned by the bootstrap are in ``table.attrs["pb"]``.
    ``table.attrs["formulas"]`` maps names to formulas.
    """
    if len(models) == 1 and isinstance(models[0], (list, tuple)):
        models = tuple(models[0])
    if len(models) == 1:
        _check_model(models[0], "the argument of anova")
        return models[0].anova(type=type, ddf=ddf)
    if len(models) < 2:
        raise JaxmlmError("anova needs a fitted model, or several to compare: anova(m) or anova(m0, m1)")
    for i, m in enumerate(models):
        _check_model(m, f"argument {i + 1} of anova", glmm=True, gls=method == "lrt")
    if method not in ("lrt", "pb"):
        raise JaxmlmError(f"method must be 'lrt' (likelihood-ratio test) or 'pb' (parametric bootstrap), got {method!r}")
    names = [f"m{i}" for i in range(len(models))] if names is None else [str(n) for n in names]
    if len(names) != len(models) or len(set(names)) != len(names):
        raise JaxmlmError(f"names must give one distinct name per model ({len(models)} models), got {names!r}")
    _check_same_rows(models, names)
    _check_families(models, names)
    reml = [m.REML for m in models]
    if refit:
        dev = [ml_deviance(m) for m in models]
    else:
        if any(reml) and not all(reml):
            warn_user("some models were fitted by REML and some by ML: their criteria are not comparable",
                      UserWarning)
        dev = [float(m.objective) for m in models]
    npar = np.array([m.npar for m in models])
    order = np.argsort(npar, kind="stable")
    ll = np.array([-0.5 * dev[i] for i in order])
    k = npar[order]
    n = models[0].nobs
    chisq = np.r_[np.nan, 2.0 * np.maximum(0.0, np.diff(ll))]
    df = np.r_[np.nan, np.diff(k)].astype(float)
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, chdtrc(np.where(df > 0, df, 1.0), np.maximum(chisq, 0.0)), np.nan)
    p[0] = np.nan
    table = pd.DataFrame(
        {
            "npar": k.astype(int),
            "AIC": -2.0 * ll + 2.0 * k,
            "BIC": -2.0 * ll + math.log(n) * k,
            "logLik": ll,
            "deviance": -2.0 * ll,
            "Chisq": chisq,
            "Df": df,
            "Pr(>Chisq)": p,
        },
        index=pd.Index([names[i] for i in order]),
    )
    table.attrs["formulas"] = {names[i]: deparse_formula(models[i].formula) for i in order}
    table.attrs["refitted"] = [names[i] for i in order if refit and models[i].REML]
    if method == "pb":
        table = _add_pb(table, [models[i] for i in order], nsim, seed)
    data = models[order[0]].data_name
    heading = ([f"Data: {data}"] if data else []) + ["Models:"] + [f"{nm}: {f}" for nm, f in table.attrs["formulas"].items()]
    return AnovaTable.of(table, heading)


def _add_pb(table: pd.DataFrame, ordered, nsim: int, seed) -> pd.DataFrame:
    from ._refit import pb_test  # written alongside the batched refits

    pvals, results = [np.nan], [None]
    for small, large in zip(ordered[:-1], ordered[1:]):
        res = pb_test(small, large, nsim, seed)
        results.append(res)
        pvals.append(_pb_p_value(res))
    out = table.copy()
    out["Pr(PB)"] = pvals
    out.attrs = dict(table.attrs, pb=results)
    return out


def _pb_p_value(res) -> float:
    """The parametric-bootstrap p-value from what ``pb_test`` returns (PBmodcomp's 'PBtest' row)."""
    if isinstance(res, pd.DataFrame):
        for row in ("PBtest", "PB", "pb"):
            if row in res.index:
                for col in ("p.value", "p_value", "Pr(PB)", "p"):
                    if col in res.columns:
                        return float(res.loc[row, col])
    if isinstance(res, dict):
        for key in ("p_value", "p.value", "pb_p_value", "p"):
            if key in res:
                return float(res[key])
    for attr in ("p_value", "pb_p_value", "p"):
        if hasattr(res, attr):
            return float(getattr(res, attr))
    raise JaxmlmError(f"cannot read a p-value from pb_test's result {type(res).__name__}")


# ---- ranova --------------------------------------------------------------------------------------------


def _formula_positions(design) -> list[int]:
    """For each bar term in formula order, its index in ``design.terms`` (lme4 order).

    Replays ``build_design``'s ordering: lme4's ``rev(order(nl))``, applied only
    when the number of levels is not already non-increasing.
    """
    parsed = design.formula.random
    nlev = {b.group: b.nlev for b in design.blocks}
    nl = [nlev[t.group_name] for t in parsed]
    order = list(range(len(parsed)))
    if any(b > a for a, b in zip(nl, nl[1:])):
        order = sorted(range(len(parsed)), key=lambda i: nl[i])[::-1]
    pos = [0] * len(parsed)
    for j, i in enumerate(order):
        pos[i] = j
    for i, t in enumerate(parsed):
        if design.terms[pos[i]].group != t.group_name:  # pragma: no cover - guards the replay
            raise JaxmlmError("internal error: cannot match the formula's random terms to the design's")
    return pos


def _deparse(expr: str) -> str:
    """A term's left-hand side as R's deparse prints it: ``1+x`` → ``1 + x``, ``x**2`` → ``x^2``."""
    return deparse_formula(expr)


def _quote(name: str) -> str:
    return name if _SYNTACTIC.fullmatch(name) else f"`{name}`"


def _group_text(term) -> str:
    return ":".join(_quote(f) for f in term.factors)


def _reductions(design, i: int, pos: list[int]):
    """lmerTest's reductions of bar term i (formula order): list of (label, action, payload).

    action "zero": payload (Z columns to zero as (block, column) pairs, θ entries removed);
    action "refit": payload = the reduced formula's random terms as text.
    """
    parsed = design.formula.random
    rt = parsed[i]
    term = design.terms[pos[i]]
    lhs = _deparse(rt.expr)
    label_form = f"({lhs} | {rt.group_name})"
    spec = term.spec
    by_term = [(str(t), list(spec.term_indices[t]), t) for t in spec.terms]
    intercept = any(s == "1" for s, _, _ in by_term)
    nonint = [(s, idx, t) for s, idx, t in by_term if s != "1"]
    k = term.k
    block_cols = [(term.block, term.offset + c) for c in range(k)]
    ntheta = term.cov.nparams
    if term.cov.kind != "us":  # a structured term is removed whole (its structure has no smaller version)
        return [(term.cov.text(lhs, rt.group_name), "zero", (block_cols, ntheta))]
    if not nonint:
        return [(label_form, "zero", (block_cols, ntheta))]
    fsets = [frozenset(str(f) for f in t.factors) for _, _, t in nonint]
    out = []
    for j, (s, idx, _) in enumerate(nonint):
        if any(fsets[j] < fsets[h] for h in range(len(nonint)) if h != j):
            continue  # not in drop.scope: marginal to a higher-order term
        label = f"{s} in {label_form}"
        if len(nonint) == 1:
            new_cols, new_lhs = ("(Intercept)",), "1"
        else:
            keep = [c for c in range(k) if c not in idx]
            new_cols = tuple(term.columns[c] for c in keep)
            rest = [ss for ss, _, _ in nonint if ss != s]
            new_lhs = " + ".join(rest) if intercept else "0 + " + " + ".join(rest)
        others = [design.terms[pos[h]] for h in range(len(parsed)) if h != i]
        if any(o.group == term.group and set(o.columns) == set(new_cols) for o in others):
            # the reduced term duplicates another one: R's formula algebra merges them
            out.append((label, "zero", (block_cols, ntheta)))
        elif set(new_cols) <= set(term.columns):
            drop = [c for c in range(k) if term.columns[c] not in new_cols]
            kk = len(new_cols)
            out.append((label, "zero", ([(term.block, term.offset + c) for c in drop], ntheta - kk * (kk + 1) // 2)))
        else:
            terms = [design.terms[pos[h]].cov.text(parsed[h].expr, _group_text(parsed[h]))
                     for h in range(len(parsed)) if h != i]
            terms.append(f"({new_lhs} | {_group_text(rt)})")
            out.append((label, "refit", terms))
    return out


def ranova(m, reduce_terms: bool = True) -> pd.DataFrame:
    """lmerTest's ``ranova``: likelihood-ratio tests of single random-term reductions.

    Rows: ``<none>`` (the model), then per bar term in formula order (after
    lme4's expansion of ``||`` and ``/``) its reductions, labelled as lmerTest
    labels them (``Days in (Days | Subject)``, ``(1 | school)``). Columns
    ``npar``, ``logLik`` (REML log-likelihood for REML fits), ``AIC``,
    ``LRT = 2(logLik_full − logLik_reduced)``, ``Df = npar_full − npar_reduced``,
    ``Pr(>Chisq)`` (χ²_Df; NaN when Df ≤ 0, e.g. ``(0 + x | g)`` reduced to
    ``(1 | g)``, which is not a nested comparison). ``reduce_terms=False``
    removes whole terms instead, as lmerTest's ``reduce.terms = FALSE``.
    """
    _check_model(m, "ranova's argument")
    design = m.design
    pos = _formula_positions(design)
    rows = [("<none>", m.npar, float(m.objective))]
    for i in range(len(design.formula.random)):
        if reduce_terms:
            reds = _reductions(design, i, pos)
        else:
            t = design.terms[pos[i]]
            rt = design.formula.random[i]
            reds = [(t.cov.text(_deparse(rt.expr), rt.group_name), "zero",
                     ([(t.block, t.offset + c) for c in range(t.k)], t.cov.nparams))]
        for label, action, payload in reds:
            if action == "zero":
                cols, removed = payload
                f = _zeroed_fit(m, cols)
                rows.append((label, m.npar - removed, f))
            else:
                rows.append((label, *_refit_terms(m, payload)))
    npar = np.array([r[1] for r in rows])
    ll = -0.5 * np.array([r[2] for r in rows])
    lrt = np.r_[np.nan, 2.0 * (ll[0] - ll[1:])]
    df = np.r_[np.nan, npar[0] - npar[1:]].astype(float)
    with np.errstate(invalid="ignore"):
        # chdtrc(k, x) is NaN for x < 0 (a rounding-level negative LRT); the χ² survival there is 1
        p = np.where(df > 0, chdtrc(np.where(df > 0, df, 1.0), np.maximum(lrt, 0.0)), np.nan)
    p[0] = np.nan
    table = pd.DataFrame(
        {"npar": npar.astype(int), "logLik": ll, "AIC": -2.0 * ll + 2.0 * npar, "LRT": lrt, "Df": df, "Pr(>Chisq)": p},
        index=pd.Index([r[0] for r in rows]),
    )
    heading = ["ANOVA-like table for random-effects: Single term deletions", "", "Model:", _model_formula(design)]
    return AnovaTable.of(table, heading)


def _model_formula(design) -> str:
    """The model's formula as lmerTest's ``ranova`` prints it: ``update(formula, . ~ fixed + bars)``,
    which R simplifies into its terms: the first-order fixed terms, every random term in formula
    order with nested factors and ``||`` expanded (``(1 | cask:batch) + (1 | batch)``), then the
    higher-order fixed terms (interactions expanded, ``Days + z + (1 | Subject) + Days:z``),
    offsets, and ``- 1`` last when the intercept is removed; terms removed (``+ z - z``) are gone."""
    from ._anova import fixed_terms
    from ._design import r_column_name

    parsed = design.formula
    bars = [design.terms[q].cov.text(_deparse(rt.expr), rt.group_name)
            for rt, q in zip(parsed.random, _formula_positions(design))]
    ft = fixed_terms(design)  # term labels in R's order: by degree, then as written
    first = [r_column_name(lab) for lab, f in zip(ft.labels, ft.factors) if len(f) <= 1]
    higher = [r_column_name(lab) for lab, f in zip(ft.labels, ft.factors) if len(f) > 1]
    offsets = [r_column_name(str(s.term)) for s in design.fixed_spec.structure
               if any(f.expr.startswith("offset(") for f in s.term.factors)]
    rhs = " + ".join(first + bars + higher + offsets)
    return f"{parsed.lhs} ~ {rhs}" + ("" if ft.intercept else " - 1")


def _zeroed_fit(m, cols) -> float:
    """Criterion (same REML setting) of the model with the Z columns ``cols`` removed.

    Where the fit already has those effects at zero (every θ entry of their rows of Λ is
    0: a singular term), the reduced model's optimum is the fit itself, and its
    criterion is the fit's, exactly: computed again by another program it would differ
    in the last bits, and the table would show a rounding-level LRT (±2e-13) where
    lmerTest shows 0.
    """
    theta0 = np.array(m.theta, dtype=np.float64)
    zero_rows = set(cols)
    in_rows = [t_ for b, (kb, posn, idx) in enumerate(m.layout.templates)
               for p_, t_ in zip(posn, idx) if (b, p_ // kb) in zero_rows]
    structured = any(b == sb and off <= c < off + cov.k for b, c in cols for sb, off, cov, _ in m.layout.structured)
    if in_rows and not structured and not np.any(theta0[in_rows]):
        return float(m.objective)
    if len(cols) == sum(b.k for b in m.design.blocks):
        return _ols_criterion(m, m.REML)
    theta0[in_rows] = 0.0  # θ entries in a zeroed row no longer matter; start them at 0
    return refit_criterion(m, m.REML, theta0=theta0, zeroed=cols)[0]


def _same(a, b) -> bool:
    """Whether two optional arrays (weights, offsets) are the same (None: none given)."""
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


def _refit_terms(m, terms: list[str]) -> tuple[int, float]:
    """Fit the formula with the random terms ``terms`` on the model frame (same REML setting)."""
    parsed = m.design.formula
    formula = f"{parsed.lhs} ~ {parsed.fixed_rhs} + " + " + ".join(terms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = m.update(formula)
    if r.nobs != m.nobs:
        raise DataError(f"the reduced model {formula!r} uses {r.nobs} rows, the model {m.nobs}; "
                        "remove rows with missing values before fitting")
    return r.npar, float(r.objective)


# ---- LR test vs. linear regression ----------------------------------------------------------------


@dataclass(frozen=True)
class LRTest:
    """Stata's "LR test vs. linear model" (``mixed``), see :func:`lrt_vs_ols`.

    ``statistic`` LR = 2(logLik − logLik_OLS); ``df`` number of variance
    parameters tested; ``distribution`` ``"chibar2(01)"`` or ``"chi2(k)"``;
    ``p_value``; ``conservative`` True for k > 1 (Stata's note); ``loglik`` and
    ``loglik_ols`` (REML log-likelihoods for REML fits).
    """

    statistic: float
    df: int
    p_value: float
    distribution: str
    conservative: bool
    loglik: float
    loglik_ols: float
    REML: bool

    @property
    def note(self) -> str:
        return "LR test is conservative and provided only for reference." if self.conservative else ""

    def __str__(self) -> str:
        if self.distribution.startswith("chibar2"):
            line = f"LR test vs. linear model: chibar2(01) = {self.statistic:.2f}   Prob >= chibar2 = {self.p_value:.4f}"
        else:
            line = f"LR test vs. linear model: {self.distribution} = {self.statistic:.2f}   Prob > chi2 = {self.p_value:.4f}"
        return line + (f"\nNote: {self.note}" if self.note else "")


def lrt_vs_ols(m) -> LRTest:
    """Likelihood-ratio test of all variance components against the linear regression (Stata).

    LR = 2(ℓ_mixed − ℓ_OLS) with ℓ_OLS the log-likelihood of ``lm`` on the same
    X and y (the REML one for REML fits; both the criterion at θ = 0). One
    variance component: the null is on the boundary of the parameter space and
    LR ~ χ̄²(01) = ½χ²₀ + ½χ²₁ (Self & Liang 1987, *JASA* 82, 605), p = ½ P(χ²₁ ≥ LR)
    (1 at LR = 0). k > 1 variance parameters (random slopes, several factors):
    the boundary distribution is not a simple mixture; like Stata we report the
    χ²_k p-value, which is conservative (too large), with a note saying so.
    """
    _check_model(m, "lrt_vs_ols's argument")
    k = int(m.layout.ntheta)
    ols = _ols_criterion(m, m.REML)
    lr = max(0.0, ols - float(m.objective))
    if k == 1:
        p = 1.0 if lr <= 0 else 0.5 * float(chdtrc(1, lr))
        dist = "chibar2(01)"
    else:
        p = float(chdtrc(k, max(lr, 0.0)))
        dist = f"chi2({k})"
    return LRTest(lr, k, p, dist, k > 1, -0.5 * float(m.objective), -0.5 * ols, bool(m.REML))


# ---- variance decompositions --------------------------------------------------------------------------


def _term_variances(m) -> list[tuple[str, float]]:
    """Johnson's mean of diag(Z_t Σ_t Z_tᵀ) for each term (lme4 order), with its grouping factor."""
    out = []
    for t, term in enumerate(m.design.terms):
        Z = m.design.blocks[term.block].Z[:, term.offset : term.offset + term.k]
        S = m._term_cov(t)
        out.append((term.group, float(np.mean(np.einsum("ni,ij,nj->n", Z, S, Z)))))
    return out


def _group_variances(m) -> dict[str, float]:
    var: dict[str, float] = {}
    for g, v in _term_variances(m):
        var[g] = var.get(g, 0.0) + v
    return var


def _nested_in(m, g: str) -> list[str]:
    """Grouping factors h such that every level of g lies within one level of h (g nested in h)."""
    blocks = {b.group: b for b in m.design.blocks}
    bg = blocks[g]
    out = []
    for h, bh in blocks.items():
        if h == g or bh.nlev >= bg.nlev:
            continue
        pairs = np.unique(np.stack([bg.codes, bh.codes], axis=1), axis=0)
        if len(pairs) == bg.nlev:
            out.append(h)
    return out


def icc(m) -> pd.DataFrame:
    """Intraclass correlations per grouping factor.

    Columns: ``variance`` σ²_g (Johnson's mean of diag(Z_g Σ_g Z_gᵀ): the
    intercept variance for a random intercept; with random slopes, the random
    part's variance averaged over the observed covariate values — our choice,
    as ``performance::icc``), ``ICC`` = σ²_g / (Σ_h σ²_h + σ²_ε), and
    ``ICC_cumulative`` = (σ²_g + Σ_{h ⊃ g} σ²_h) / (Σ_h σ²_h + σ²_ε), summing the
    factors h that g is nested in (each level of g within one level of h): the
    correlation of two observations in the same level of g, as Stata's
    ``estat icc`` (equal to ``ICC`` for crossed or single factors).
    ``attrs["ICC_adjusted"]`` is Σσ²_g / (Σσ²_g + σ²_ε) (Nakagawa et al. 2017).
    """
    _check_model(m, "icc's argument")
    var = _group_variances(m)
    total = sum(var.values()) + m.sigma**2
    rows = []
    for g, v in var.items():
        cum = v + sum(var[h] for h in _nested_in(m, g))
        rows.append((g, v, v / total, cum / total))
    out = pd.DataFrame(rows, columns=["group", "variance", "ICC", "ICC_cumulative"]).set_index("group")
    out.index.name = None
    out.attrs["ICC_adjusted"] = sum(var.values()) / total
    out.attrs["residual_variance"] = m.sigma**2
    return out


def r2_nakagawa(m) -> pd.Series:
    """Nakagawa & Schielzeth's marginal and conditional R² of a linear mixed model.

    σ²_f = var(Xβ̂) (n − 1 denominator), σ²_r = Σ_t mean(diag(Z_t Σ_t Z_tᵀ))
    (Johnson 2014: random slopes included), σ²_ε = σ̂²;
    R²_m = σ²_f / (σ²_f + σ²_r + σ²_ε), R²_c = (σ²_f + σ²_r) / (σ²_f + σ²_r + σ²_ε).
    Returns a Series with ``R2_marginal``, ``R2_conditional``, ``var_fixed``,
    ``var_random``, ``var_residual``.
    """
    _check_model(m, "r2_nakagawa's argument")
    xb = m.design.X @ np.asarray(m._beta)
    vf = float(np.var(xb, ddof=1)) if len(xb) > 1 else 0.0
    vr = sum(v for _, v in _term_variances(m))
    ve = m.sigma**2
    tot = vf + vr + ve
    return pd.Series({"R2_marginal": vf / tot, "R2_conditional": (vf + vr) / tot, "var_fixed": vf,
                      "var_random": vr, "var_residual": ve}, name="R2_nakagawa")


def _intercept_variances(m) -> dict[str, float]:
    out: dict[str, float] = {}
    for t, term in enumerate(m.design.terms):
        if "(Intercept)" in term.columns:
            i = term.columns.index("(Intercept)")
            out[term.group] = out.get(term.group, 0.0) + float(m._term_cov(t)[i, i])
    return out


def pseudo_r2(base, model) -> pd.Series:
    """Raudenbush & Bryk's proportional reduction in variance from ``base`` to ``model``.

    ``Residual``: (σ²_base − σ²_model) / σ²_base (level 1); for every grouping
    factor with a random intercept in both models: (τ00_base − τ00_model) / τ00_base.
    Usually ``base`` is the null (intercept-only) model. Values can be negative:
    adding level-1 predictors can increase τ00 (Snijders & Bosker 2012, §7.1).
    """
    _check_model(base, "pseudo_r2's base model")
    _check_model(model, "pseudo_r2's model")
    _check_same_rows([base, model], ["base", "model"])
    out = {"Residual": (base.sigma**2 - model.sigma**2) / base.sigma**2}
    tb, tm = _intercept_variances(base), _intercept_variances(model)
    for g in tb:
        if g in tm:
            out[g] = (tb[g] - tm[g]) / tb[g] if tb[g] > 0 else float("nan")
    return pd.Series(out, name="pseudo_R2")

"""Estimated marginal means and their contrasts, as the R package emmeans (Lenth) computes them.

The **reference grid** (``ref_grid``) crosses every factor of the fixed part
at all of its levels with every numeric covariate at its mean over the
fit's rows; a covariate with at most two distinct values keeps both values
and counts as a factor (emmeans' ``cov.keep = "2"``); ``at=`` sets values.
Each grid row gives a linear function xᵀβ of the fixed effects, through the
fit's frozen formula spec (so transforms and codings are those of the fit).

A **marginal mean** of the ``specs`` (within each ``by`` group) is the
equally weighted average of the grid rows with those levels, over every
other grid dimension (``weights = "equal"``). With empty cells some of them
are not estimable: a linear function l is estimable when ‖Nᵀl‖² < 1e-8 ‖l‖²
for an orthonormal basis N of the null space of the full model matrix
(estimability's ``is.estble``); those get NA, as emmeans prints "nonEst".

Standard errors are sqrt(lᵀVl) with V the fit's vcov, or Kenward-Roger's
adjusted Φ_A; degrees of freedom are Satterthwaite's or Kenward-Roger's for
that l (as emmeans' ``lmer.df``), or infinite (``ddf="asymptotic"``).
``pairs`` gives every difference of two means in a ``by`` group, with
p-values adjusted within the group: Tukey (studentized range with the
family's number of means), Holm, Bonferroni, Šidák or none.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._errors import InferenceError

__all__ = ["emmeans", "ref_grid", "EMMeans", "EMMContrasts", "ReferenceGrid"]

_DF_METHODS = {
    "satterthwaite": "satterthwaite",
    "kenward-roger": "kenward-roger",
    "kenward_roger": "kenward-roger",
    "kr": "kenward-roger",
    "asymptotic": "asymptotic",
    "none": "asymptotic",
}
_ADJUST = ("tukey", "holm", "bonferroni", "sidak", "none")
_ESTBLE_TOL = 1e-8


# ---- the reference grid -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceGrid:
    """emmeans' ``ref_grid``: the grid of predictor values and its linear functions of the fixed effects.

    ``grid`` one row per combination (the first variable varying fastest);
    ``factors`` the variables that are grid dimensions (factors, covariates
    kept at their values); ``covariates`` the numeric variables at one value
    and that value; ``linfct`` (rows, all model-matrix columns, aliased ones
    included) and ``keep`` the positions of the fitted coefficients in it;
    ``nbasis`` an orthonormal basis of the non-estimable directions (or None).
    """

    grid: pd.DataFrame
    factors: tuple[str, ...]
    levels: dict
    covariates: dict
    linfct: np.ndarray
    keep: tuple[int, ...]
    nbasis: np.ndarray | None


def _variables(m) -> list[str]:
    """The data columns the fixed part reads, in order of first appearance in the formula."""
    spec = m.design.fixed_spec
    names = {str(v) for vs in spec.factor_variables.values() for v in vs}
    cols = [c for c in m.design.frame.columns if c in names]
    text = m.design.formula.fixed
    return sorted(cols, key=lambda c: (text.find(c) if text.find(c) >= 0 else len(text), cols.index(c)))


def _coerced_factors(m) -> set[str]:
    """Numeric columns the formula turns into factors (``C(x)``): their values are levels."""
    from formulaic.parser.types import Factor

    spec = m.design.fixed_spec
    out = set()
    for f, variables in spec.factor_variables.items():
        kind = spec.encoder_state.get(f.expr, (None,))[0]
        if kind is Factor.Kind.CATEGORICAL:
            out |= {str(v) for v in variables}
    return out


def _check_at(at, variables) -> dict:
    if at is None:
        return {}
    if not isinstance(at, dict):
        raise InferenceError(f"at must be a dict of variable -> value(s), got {type(at).__name__}")
    unknown = [k for k in at if k not in variables]
    if unknown:
        raise InferenceError(
            f"at names {unknown}, which the fixed part of the model does not use; it uses {variables}"
        )
    return {k: (list(v) if isinstance(v, (list, tuple, np.ndarray, pd.Series, pd.Index)) else [v]) for k, v in at.items()}


def _null_basis(m, X_all: np.ndarray) -> np.ndarray | None:
    if not m.design.dropped_columns:
        return None
    _, s, vt = np.linalg.svd(X_all, full_matrices=True)
    tol = max(X_all.shape) * np.finfo(float).eps * (s[0] if s.size else 0.0)
    rank = int(np.sum(s > max(tol, 1e-7 * (s[0] if s.size else 0.0))))
    return vt[rank:].T


def ref_grid(m, at=None) -> ReferenceGrid:
    """emmeans' reference grid of a fitted model (see the module docstring)."""
    from ._design import _doubles
    from ._predict import _column, _evaluate

    if getattr(m, "layout", True) is None:
        raise InferenceError("emmeans takes mixed models; a gls model (no random effects) has none of their "
                             "degrees of freedom yet")
    design = m._rows("emmeans' reference grid (the covariates' means and the factors' levels in the data)")
    if design.offset is not None:
        raise InferenceError("estimated marginal means of a model with an offset are not supported yet (emmeans "
                             "evaluates the offset on the reference grid); use m.predict on a grid of your own")
    frame = design.frame
    variables = _variables(m)
    at = _check_at(at, variables)
    coerced = _coerced_factors(m)
    levels: dict = {}
    covariates: dict = {}
    for v in variables:
        col = _column(frame[v])
        if isinstance(col.dtype, pd.CategoricalDtype):
            present = col.cat.categories[np.unique(col.cat.codes[col.cat.codes >= 0])]
            known = list(present)
            values = known
            if v in at:
                bad = [x for x in at[v] if x not in known]
                if bad:
                    raise InferenceError(f"at gives level(s) {bad} of {v!r}, which the fit does not have; "
                                         f"its levels are {known}")
                values = list(at[v])
            levels[v] = values
            continue
        x = col.to_numpy(dtype=float)
        if v in at:
            try:
                vals = [float(a) for a in at[v]]
            except (TypeError, ValueError):
                raise InferenceError(f"at gives non-numeric value(s) for the numeric variable {v!r}") from None
            if len(vals) == 1 and v not in coerced:
                covariates[v] = vals[0]
            else:
                levels[v] = vals
            continue
        uniq = np.unique(x)
        if v in coerced or len(uniq) <= 2:
            levels[v] = list(uniq)
        else:
            covariates[v] = float(np.mean(x))
    factors = tuple(levels)
    combos = list(itertools.product(*[levels[f] for f in reversed(factors)]))
    grid = pd.DataFrame({f: [c[len(factors) - 1 - i] for c in combos] for i, f in enumerate(factors)})
    for v, x in covariates.items():
        grid[v] = x
    if grid.shape[1] == 0:
        grid = pd.DataFrame(index=range(1))
    grid = grid[[v for v in variables if v in grid.columns]] if variables else grid
    for f in factors:
        col = _column(frame[f])
        if isinstance(col.dtype, pd.CategoricalDtype):
            grid[f] = pd.Categorical(grid[f], categories=col.cat.categories)
    evaluate_on = _doubles(grid) if grid.shape[1] else pd.DataFrame({"__rows__": np.zeros(len(grid))})
    linfct, names = _evaluate(design.fixed_spec, evaluate_on, "the reference grid")
    keep = tuple(design.fixed_columns_all.index(nm) for nm in design.fixef_names)
    nbasis = None
    if design.dropped_columns:
        fit_frame = _doubles(pd.DataFrame({c: _column(frame[c]) for c in frame.columns}, index=frame.index))
        X_all, _ = _evaluate(design.fixed_spec, fit_frame, "the fixed-effects part")
        nbasis = _null_basis(m, X_all)
    return ReferenceGrid(grid, factors, levels, covariates, linfct, keep, nbasis)


# ---- estimates of linear functions ------------------------------------------------------------------------------


def _df_method(m, ddf) -> str:
    if ddf is None:
        if m.REML and getattr(m, "residual", None) is None:  # no Kenward-Roger with a residual structure
            from ._inference import KR_MAX_BYTES, kr_bytes

            if kr_bytes(m) <= KR_MAX_BYTES:
                return "kenward-roger"
        return "satterthwaite"
    key = str(ddf).lower()
    if key not in _DF_METHODS:
        raise InferenceError(f"ddf must be 'Kenward-Roger', 'Satterthwaite' or 'asymptotic', got {ddf!r}")
    method = _DF_METHODS[key]
    if method == "kenward-roger" and not m.REML:
        raise InferenceError("Kenward-Roger's df need a REML fit (as pbkrtest); use ddf='Satterthwaite'")
    return method


def _estimable(L: np.ndarray, nbasis: np.ndarray | None) -> np.ndarray:
    if nbasis is None:
        return np.ones(L.shape[0], dtype=bool)
    chk = L @ nbasis
    ssq = np.sum(L * L, axis=1)
    ssq = np.where(ssq < _ESTBLE_TOL, 1.0, ssq)
    return np.sum(chk * chk, axis=1) < _ESTBLE_TOL * ssq


def _estimate(m, L_all: np.ndarray, keep, nbasis, method: str):
    """Estimates, SEs and df of the rows of L_all (NaN where not estimable)."""
    from ._inference import kenward_roger, kr_ddf, satterthwaite_df

    k = L_all.shape[0]
    ok = _estimable(L_all, nbasis)
    L = L_all[:, list(keep)]
    est = np.full(k, np.nan)
    se = np.full(k, np.nan)
    df = np.full(k, np.nan)
    if not ok.any():
        return est, se, df
    Lk = L[ok]
    est[ok] = Lk @ m.fixef.to_numpy()
    if method == "kenward-roger":
        Phi, PhiA, P, W = kenward_roger(m)
        se[ok] = np.sqrt(np.einsum("cp,pq,cq->c", Lk, PhiA, Lk))
        df[ok] = [kr_ddf(row, Phi, P, W) for row in Lk]
    else:
        se[ok] = np.sqrt(np.einsum("cp,pq,cq->c", Lk, m.vcov.to_numpy(), Lk))
        df[ok] = satterthwaite_df(m, Lk) if method == "satterthwaite" else np.inf
    return est, se, df


def _t_quantile(level: float, df: np.ndarray) -> np.ndarray:
    from scipy import stats as sps

    return sps.t.ppf(0.5 + level / 2.0, df)


def _specs(specs, by) -> tuple[list[str], list[str]]:
    """``"a"``, ``["a", "b"]``, ``"a:b"``, ``"~ a * b | c"`` → (spec variables, by variables)."""
    by_list = [] if by is None else ([by] if isinstance(by, str) else list(by))
    if isinstance(specs, str):
        text = specs.strip()
        if text.startswith("~"):
            text = text[1:]
        if "|" in text:
            text, extra = text.split("|", 1)
            by_list = [b.strip() for b in extra.replace("*", "+").replace(":", "+").split("+") if b.strip()] + by_list
        spec_list = [s.strip() for s in text.replace("*", "+").replace(":", "+").split("+") if s.strip()]
    elif isinstance(specs, (list, tuple)):
        spec_list = [str(s) for s in specs]
    else:
        raise InferenceError(f"specs must be a variable name, a list of names or a formula such as '~ a | b', "
                             f"got {type(specs).__name__}")
    if not spec_list:
        raise InferenceError("specs names no variable")
    both = [v for v in spec_list if v in by_list]
    if both:
        raise InferenceError(f"{both} appear both in specs and in by")
    return spec_list, by_list


def _label(values) -> str:
    from ._design import _label as r_label

    return " ".join(r_label(v) for v in values)


# ---- results --------------------------------------------------------------------------------------------------


class _Table(pd.DataFrame):
    """A DataFrame that prints as emmeans prints its summaries; slices are plain DataFrames."""

    _metadata = ["_info"]

    @property
    def _constructor(self):
        return pd.DataFrame

    def __repr__(self) -> str:
        return self.__str__()

    def _repr_html_(self) -> str:
        return pd.DataFrame(self).to_html() + "".join(f"<p>{x}</p>" for x in self._footer())

    def _footer(self) -> list[str]:
        return list(self._info.get("footer", []))

    def _groups(self) -> list[tuple]:
        """(by levels, row positions) of each ``by`` group, in the table's order (one group without by)."""
        by = self._info.get("by", [])
        if not by:
            return [(None, np.arange(len(self)))]
        frame = pd.DataFrame(self).reset_index(drop=True)
        return [(key, np.sort(idx)) for key, idx in frame.groupby(by, sort=False, observed=True).indices.items()]

    def __str__(self) -> str:
        """emmeans' print: numbers as ``format(column, digits = 3)``, t ratios with 3 decimals,
        p-values with 4 (``<.0001`` when that rounds to 0), non-estimable means as ``nonEst``; one block per by group."""
        from ._rnum import r_format

        by = self._info.get("by", [])
        labels = set(self._info.get("labels", []))
        cells: dict[str, list[str]] = {}
        for c in [c for c in self.columns if c not in by]:
            v = self[c]
            if c in labels:
                cells[c] = [_label([x]) for x in v]
                continue
            x = v.to_numpy(dtype=float)
            ok = np.isfinite(x)
            if c == "p_value":
                txt = ["<.0001" if round(p, 4) == 0 else f"{p:.4f}" for p in x]
            elif c == "t_ratio":
                txt = [f"{t:.3f}" for t in x]
            else:
                txt = [s.strip() for s in r_format(x, 3)] if ok.any() else [""] * len(x)
            na = "nonEst" if c in ("emmean", "estimate") else "NA"
            cells[c.replace("_", ".")] = [t if f else na for t, f in zip(txt, ok)]
        width = {c: max([len(c)] + [len(s) for s in vals]) for c, vals in cells.items()}
        names = {c.replace("_", ".") for c in labels}

        def line(values: dict) -> str:
            return " " + " ".join(values[c].ljust(width[c]) if c in names else values[c].rjust(width[c]) for c in cells)

        out = []
        for key, idx in self._groups():
            if by:
                key = key if isinstance(key, tuple) else (key,)
                out.append(", ".join(f"{b} = {_label([k])}" for b, k in zip(by, key)) + ":")
            out.append(line({c: c for c in cells}).rstrip())
            out += [line({c: vals[i] for c, vals in cells.items()}).rstrip() for i in idx]
            out.append("")
        return "\n".join(out + self._footer())


class EMMeans(_Table):
    """Estimated marginal means (emmeans' summary): a DataFrame with the spec and by variables,
    ``emmean``, ``SE``, ``df``, ``lower_CL``, ``upper_CL``. ``pairs()`` and ``contrast()`` compare them."""

    def pairs(self, adjust: str = "tukey", reverse: bool = False) -> "EMMContrasts":
        """Every pairwise difference within each ``by`` group (emmeans' ``pairs``), p-values adjusted.

        Contrasts are "a - b" for each a before b in the means' order
        (``reverse=True``: "b - a", emmeans' ``revpairwise``); ``adjust`` is
        "tukey" (default), "holm", "bonferroni", "sidak" or "none", applied
        within each ``by`` group.
        """
        return self._compare("pairwise", adjust, reverse)

    def contrast(self, method, adjust: str = "none") -> "EMMContrasts":
        """General contrasts of the means within each ``by`` group (emmeans' ``contrast``).

        ``method``: "pairwise", "revpairwise", or a dict name → coefficients
        (one per mean in a group, in the table's order), or a DataFrame with
        one column per contrast and one row per mean.
        """
        if isinstance(method, str):
            if method not in ("pairwise", "revpairwise"):
                raise InferenceError(f"method must be 'pairwise', 'revpairwise', a dict or a DataFrame, got {method!r}")
            return self._compare("pairwise", adjust, method == "revpairwise")
        if isinstance(method, pd.DataFrame):
            method = {str(c): method[c].to_numpy(dtype=float) for c in method.columns}
        if not isinstance(method, dict) or not method:
            raise InferenceError("method must be 'pairwise', 'revpairwise', a non-empty dict or a DataFrame")
        return self._compare(method, adjust, False)

    def _compare(self, method, adjust: str, reverse: bool) -> "EMMContrasts":
        info = self._info
        adjust = str(adjust).lower()
        if adjust not in _ADJUST:
            raise InferenceError(f"adjust must be one of {list(_ADJUST)}, got {adjust!r}")
        by = info["by"]
        rows, L_rows, families, notes = [], [], [], []
        labels = info["row_labels"]
        if not isinstance(method, str) and adjust == "tukey":
            adjust = "sidak"
            notes.append("Note: adjust = 'tukey' was changed to 'sidak' because the contrasts are not pairwise")
        for key, idx in self._groups():
            if isinstance(method, str):
                coefs = []
                for a, b in itertools.combinations(range(len(idx)), 2):
                    a, b = (b, a) if reverse else (a, b)
                    c = np.zeros(len(idx))
                    c[a], c[b] = 1.0, -1.0
                    coefs.append((f"{labels[idx[a]]} - {labels[idx[b]]}", c))
            else:
                coefs = []
                for name, c in method.items():
                    c = np.asarray(c, dtype=float).ravel()
                    if c.shape[0] != len(idx):
                        raise InferenceError(
                            f"contrast {name!r} has {c.shape[0]} coefficients, but there are {len(idx)} means "
                            "in each group"
                        )
                    coefs.append((str(name), c))
            key_t = () if key is None else (key if isinstance(key, tuple) else (key,))
            families.append((list(range(len(rows), len(rows) + len(coefs))), len(idx)))
            for name, c in coefs:
                rows.append((name, *key_t))
                L_rows.append(c @ info["linfct"][idx])
        L = np.array(L_rows).reshape(len(L_rows), -1)
        m = info["model"]
        est, se, df = _estimate(m, L, info["keep"], info["nbasis"], info["method"])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = est / se
        p = _adjusted_p(t, df, families, adjust)
        out = EMMContrasts(
            {"contrast": [r[0] for r in rows], **{b: [r[1 + i] for r in rows] for i, b in enumerate(by)},
             "estimate": est, "SE": se, "df": df, "t_ratio": t, "p_value": p}
        )
        family = max((k for _, k in families), default=0)
        footer = [f"Degrees-of-freedom method: {info['method']}"]
        if info["averaged"]:
            footer.insert(0, f"Results are averaged over the levels of: {', '.join(info['averaged'])}")
        n_tests = max((len(r) for r, _ in families), default=0)
        if adjust == "tukey" and n_tests > 1:  # one test per family: nothing to adjust, and emmeans says nothing
            footer.append(f"P value adjustment: tukey method for comparing a family of {family} estimates")
        elif adjust != "none" and n_tests > 1:
            footer.append(f"P value adjustment: {adjust} method for {n_tests} tests")
        out._info = {"by": by, "labels": ["contrast"], "footer": footer + notes, "linfct": L, "adjust": adjust,
                     "model": m}
        return out


class EMMContrasts(_Table):
    """Contrasts of marginal means: ``contrast``, the by variables, ``estimate``, ``SE``, ``df``,
    ``t_ratio``, ``p_value`` (adjusted as the footer says)."""


def _adjusted_p(t, df, families, adjust: str) -> np.ndarray:
    """Two-sided p-values, adjusted within each family: (its rows, its number of means)."""
    from scipy import stats as sps

    raw = 2.0 * sps.t.sf(np.abs(t), df)
    if adjust == "none":
        return raw
    out = np.full(len(t), np.nan)
    for rows, k in families:
        rows = np.asarray(rows, dtype=int)
        ok = rows[np.isfinite(raw[rows])]
        n = len(ok)
        if not n:
            continue
        if adjust == "tukey":
            out[ok] = sps.studentized_range.sf(np.sqrt(2.0) * np.abs(t[ok]), k, df[ok])
        elif adjust == "bonferroni":
            out[ok] = np.minimum(1.0, raw[ok] * n)
        elif adjust == "sidak":
            out[ok] = 1.0 - (1.0 - raw[ok]) ** n
        elif adjust == "holm":
            order = np.argsort(raw[ok], kind="stable")
            out[ok[order]] = np.minimum(1.0, np.maximum.accumulate(raw[ok][order] * (n - np.arange(n))))
    return out


def emmeans(m, specs, by=None, at=None, ddf=None, level: float = 0.95) -> EMMeans:
    """Estimated marginal means of ``specs`` (within ``by`` groups), as emmeans' ``emmeans(m, specs, by, at)``.

    ``specs`` a factor name, a list of names, or a formula ``"~ a"``,
    ``"~ a * b"``, ``"~ a | b"``; ``by`` more grouping variables; ``at`` a
    dict of values for covariates (or a subset of levels of factors).
    ``ddf``: "Kenward-Roger" (the default for REML fits, as emmeans' default
    ``lmer.df``, unless the model is too large for its dense algebra),
    "Satterthwaite" (the default for ML fits), or "asymptotic" (z, df = inf).
    Returns an :class:`EMMeans` DataFrame (columns: the specs and by
    variables, ``emmean``, ``SE``, ``df``, ``lower_CL``, ``upper_CL``);
    ``.pairs(adjust=...)`` and ``.contrast(...)`` compare the means.
    """
    if not (hasattr(m, "design") and hasattr(m, "fixef") and hasattr(m, "layout")):
        raise InferenceError(f"emmeans needs a model fitted with jaxmlm.lmer, got {type(m).__name__}")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise InferenceError(f"level must be a number between 0 and 1, got {level!r}")
    spec_vars, by_vars = _specs(specs, by)
    method = _df_method(m, ddf)
    rg = ref_grid(m, at=at)
    variables = _variables(m)
    for v in spec_vars + by_vars:
        if v not in variables:
            raise InferenceError(
                f"{v!r} is not a variable of the model's fixed part; the factors there are {list(rg.factors)}"
            )
        if v not in rg.factors:
            raise InferenceError(
                f"{v!r} is a numeric covariate, held at its mean ({rg.covariates[v]:.6g}); marginal means are "
                f"for factors. Give the values to compare with at={{{v!r}: [...]}}, or use it as a factor (C({v}))"
            )
    names = spec_vars + by_vars
    grid = rg.grid
    keys = list(zip(*[grid[v].astype(object) for v in names])) if names else [()] * len(grid)
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    # emmeans' order: the spec variables (first fastest), then the by variables.
    order = list(itertools.product(*[rg.levels[v] for v in reversed(names)]))
    combos = [tuple(reversed(c)) for c in order]
    combos = [c for c in combos if c in groups]
    L = np.array([rg.linfct[groups[c]].mean(axis=0) for c in combos])
    est, se, df = _estimate(m, L, rg.keep, rg.nbasis, method)
    q = _t_quantile(level, df)
    with np.errstate(invalid="ignore"):
        lower, upper = est - q * se, est + q * se
    data = {v: [c[i] for c in combos] for i, v in enumerate(names)}
    out = EMMeans({**data, "emmean": est, "SE": se, "df": df, "lower_CL": lower, "upper_CL": upper})
    averaged = [f for f in rg.factors if f not in names]
    footer = []
    if averaged:
        footer.append(f"Results are averaged over the levels of: {', '.join(averaged)}")
    footer += [f"Degrees-of-freedom method: {method}", f"Confidence level used: {level:g}"]
    out._info = {
        "by": by_vars,
        "labels": spec_vars,
        "footer": footer,
        "linfct": L,
        "keep": rg.keep,
        "nbasis": rg.nbasis,
        "method": method,
        "model": m,
        "averaged": averaged,
        "row_labels": [_label(c[: len(spec_vars)]) for c in combos],
    }
    return out

"""Stata's ``mixed`` output: ``m.summary(style="stata")``.

Courses taught with Stata print a fitted mixed model as ``mixed`` does (Stata 13's layout,
as the course notes show it): a header with the number of observations and groups, the
observations per group, the Wald χ² test of the fixed effects and the (restricted)
log-likelihood; the fixed-effects table with z-tests and normal intervals; the table of
random-effects parameters, one block per grouping factor, with standard errors and
intervals; and the likelihood-ratio test against the linear regression without random
effects. This module writes that text from a fitted :class:`~jaxmlm.LinearMixedModel`; every
number comes from what the model already computes (StataCorp, *Stata Multilevel Mixed-Effects
Reference Manual*, Release 13, ``mixed``, Methods and formulas):

- fixed effects: z = β̂ / se, P>|z| = 2Φ(−|z|), interval β̂ ∓ z₀.₉₇₅ se, se from ``m.vcov``;
- Wald χ²(k) = β̂ᵀ V⁻¹ β̂ over the k coefficients other than the intercept, p = P(χ²_k > W);
- random-effects parameters (:func:`jaxmlm._inference.variance_components`): standard errors by
  the delta method from the Hessian of −2 log L (ML or REML, as fitted) in η = (log SD,
  atanh correlation, log σ); intervals exp(log sd ∓ z se) (squared for variances) and
  tanh(atanh ρ ∓ z se); a covariance ρ sd_i sd_j gets its SE from the gradient in η and a
  Wald interval on its own scale (it can be negative), as Stata prints it;
- LR test vs. linear regression (:func:`jaxmlm._compare.lrt_vs_ols`): χ̄²(01) for one variance
  parameter, else χ²(k) with Stata's note that it is conservative.

Stata's names: the intercept is ``_cons`` and comes last (in the fixed effects and within each
random-effects block); names are cut as Stata's ``abbrev()`` cuts them (12 characters in the
fixed-effects table, 8 inside the random-effects labels: ``lrt_gr~c``). Grouping factors are
printed outermost first (Stata's ``|| school: || class:`` order), the reverse of lme4's. A
structure's label follows Stata's ``cov()`` names: Identity (one column, or one variance for
all), Independent (``diag``, or several one-column terms on the factor, lme4's ``(x || g)``),
Unstructured, Exchangeable (``cs(..., hom = TRUE)``: one variance and one covariance, labelled
with all its columns); structures Stata does not have for random effects (``ar1``, ``cs`` with a
variance per column) are named AR(1) and Compound symmetry and show their one correlation.

The wording is Stata 13's, as in the course notes ("LR test vs. linear regression", "Coef.",
"Std. Err."); Stata 15 and later say "linear model", "Coefficient" and "Std. err.". A fit from
data in pieces keeps no rows, so its minimum and maximum observations per group print as ``.``.

Stata's log restricted-likelihood of a REML fit is printed as lme4 defines it (``logLik``);
the LR test compares restricted likelihoods of the same definition, so its statistic does not
depend on that constant.
"""

from __future__ import annotations

import math

import numpy as np

from ._errors import InferenceError

__all__ = ["stata_summary", "stata_number"]

WIDTH = 78
_RULE = "-" * WIDTH


def stata_number(x: float, width: int = 9) -> str:
    """``x`` in Stata's ``%width.0g`` format, as ``mixed`` prints its estimates: one place kept for
    the sign, the rest filled with digits (``width − 2`` of them: 7 for ``%9.0g``), trailing zeros
    and the ``0`` before the point dropped (``6.466099``, ``.2687824``, ``.0199474``, ``-4.5202``,
    ``10.27181``; ``%10.0g``: ``-14020.718``); an exponent where the number has too many integer
    digits or would show fewer than three significant ones; a missing value is Stata's ``.``."""
    if x is None or not np.isfinite(x):
        return "."
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    a = abs(float(x))
    mag = math.floor(math.log10(a))  # 10^mag <= a < 10^(mag+1)
    for _ in range(2):  # rounding can carry into one more integer digit (9.9999999 -> 10)
        int_digits = max(mag + 1, 0)
        decimals = max(width - 2 - int_digits, 0)
        text = f"{a:.{decimals}f}"
        if float(text) < 10 ** (mag + 1) or mag + 1 > width:
            break
        mag += 1
    significant = decimals + mag + 1  # digits from the first non-zero one
    if int_digits > width - 1 or significant < 3:
        mant, exp = f"{a:.{max(width - 7, 1)}e}".split("e")  # d.dde-XX: sign, point and exponent take 6
        mant = mant.rstrip("0").rstrip(".")
        return f"{sign}{mant}e{exp[0]}{int(exp[1:]):02d}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text.startswith("0."):
        text = text[1:]
    return sign + text


def _abbrev(name: str, n: int) -> str:
    """Stata's ``abbrev(name, n)``: a name longer than n keeps its first n − 2 characters, ``~``,
    and its last character."""
    return name if len(name) <= n else name[: n - 2] + "~" + name[-1]


def _stata_name(col: str, n: int) -> str:
    return "_cons" if col == "(Intercept)" else _abbrev(col, n)


def _stata_order(columns) -> list[int]:
    """Positions of a term's (or the fixed effects') columns in Stata's order: ``_cons`` last."""
    idx = list(range(len(columns)))
    return [i for i in idx if columns[i] != "(Intercept)"] + [i for i in idx if columns[i] == "(Intercept)"]


def _right(label: str, value: str, left: str = "") -> str:
    """One header line: ``left`` in 48 columns, then ``label`` in 19, ``=`` and the value in 10."""
    return f"{left:<48}{label:<19}={value:>10}"


def _factor_name(m, group: str) -> str:
    """Stata's name of a grouping factor: lme4 names a nested factor "class:school" (``(1 | school/class)``),
    Stata by its own variable, ``class``; other names stay."""
    parts = group.split(":")
    others = {b.group for b in m.design.blocks}
    return parts[0] if len(parts) > 1 and all(p in others for p in parts[1:]) else group


def _group_rows(m) -> list[tuple[str, int, int, float, int]]:
    """(name, groups, min, average, max observations per group), outermost factor first."""
    out = []
    for b in reversed(m._blocks_lme4_order):
        name = _factor_name(m, b.group)
        if m.design.held:
            n = np.bincount(np.asarray(b.codes), minlength=b.nlev)
            out.append((name, b.nlev, int(n.min()), float(n.mean()), int(n.max())))
        else:  # a fit from data in pieces keeps no rows to count
            out.append((name, b.nlev, None, float(m.nobs) / b.nlev, None))
    return out


def _header(m, wald, k, p_wald) -> list[str]:
    method = "REML" if m.REML else "ML"
    groups = _group_rows(m)
    lines = [_right("Number of obs", f"{m.nobs:10d}", f"Mixed-effects {method} regression")]

    def count(v):
        return "." if v is None else f"{v:10d}"

    if len(groups) == 1:
        name, ng, lo, avg, hi = groups[0]
        # cut (Stata's abbrev) to keep a blank before the right column
        lines.append(_right("Number of groups", f"{ng:10d}", f"Group variable: {_abbrev(name, 31)}"))
        lines.append("")
        lines.append(_right("Obs per group: min", count(lo)))
        lines.append(_right("               avg", f"{avg:10.1f}"))
        lines.append(_right("               max", count(hi)))
    else:
        rule = "-" * 59
        lines += ["", rule, "                |   No. of       Observations per Group",
                  " Group Variable |   Groups    Minimum    Average    Maximum",
                  "----------------+------------------------------------------"]
        for name, ng, lo, avg, hi in groups:
            lo_, hi_ = ("." if v is None else str(v) for v in (lo, hi))
            lines.append(f"{_abbrev(name, 14):>15} |{ng:9d}{lo_:>11}{avg:11.1f}{hi_:>11}")
        lines.append(rule)
    lines.append("")
    ll_label = "Log restricted-likelihood" if m.REML else "Log likelihood"
    stat = f"{wald:10.2f}" if k else "."
    lines.append(_right(f"Wald chi2({k})", stat))
    lines.append(_right("Prob > chi2", f"{p_wald:10.4f}" if k else ".",
                        f"{ll_label} = {stata_number(m.loglik, 10)}"))
    return lines


def _fixed_table(m) -> tuple[list[str], float, int, float]:
    from scipy.special import chdtrc, ndtr, ndtri

    names = list(m.design.fixef_names)
    beta = np.asarray(m.fixef, dtype=float)
    V = np.asarray(m.vcov, dtype=float)
    se = np.sqrt(np.diag(V))
    z0 = float(ndtri(0.975))
    # Wald chi2 over the coefficients other than the intercept
    k_idx = [i for i, n in enumerate(names) if n != "(Intercept)"]
    if k_idx:
        b = beta[k_idx]
        wald = float(b @ np.linalg.solve(V[np.ix_(k_idx, k_idx)], b))
        p_wald = float(chdtrc(len(k_idx), wald))
    else:
        wald, p_wald = math.nan, math.nan
    dep = _abbrev(m.design.formula.lhs.strip(), 12)
    lines = [_RULE,
             f"{dep:>12} |      Coef.   Std. Err.      z    P>|z|     [95% Conf. Interval]",
             "-" * 13 + "+" + "-" * 64]
    for i in _stata_order(names):
        z = beta[i] / se[i] if se[i] > 0 else math.nan
        p = 2.0 * float(ndtr(-abs(z))) if np.isfinite(z) else math.nan
        zs = f"{z:9.2f}" if np.isfinite(z) else f"{'.':>9}"
        ps = f"{p:8.3f}" if np.isfinite(p) else f"{'.':>8}"
        lines.append(f"{_stata_name(names[i], 12):>12} |  {stata_number(beta[i]):>9}  {stata_number(se[i]):>9}"
                     f"{zs}{ps}    {stata_number(beta[i] - z0 * se[i]):>9}   {stata_number(beta[i] + z0 * se[i]):>9}")
    lines.append(_RULE)
    return lines, wald, len(k_idx), p_wald


def _structure_label(terms) -> str:
    """Stata's name of a random-effects block's covariance structure (see the module docstring)."""
    if len(terms) > 1:  # several one-column terms on the factor: lme4's (x || g)
        return "Independent"
    cov = terms[0].cov
    if cov.kind == "us":
        return "Identity" if cov.k == 1 else "Unstructured"
    if cov.kind == "diag":
        return "Identity" if cov.hom or cov.k == 1 else "Independent"
    if cov.kind == "cs" and cov.hom:
        return "Exchangeable"
    return {"ar1": "AR(1)", "cs": "Compound symmetry"}.get(cov.kind, cov.kind)


def _blocks(m):
    """The random-effects blocks to print, outermost factor first: (header group name, [(t, term)])."""
    by_block: dict[int, list] = {}
    for t, term in enumerate(m.design.terms):
        by_block.setdefault(term.block, []).append((t, term))
    out = []
    for blk in reversed(m._blocks_lme4_order):
        items = by_block[m.design.blocks.index(blk)]
        name = _factor_name(m, blk.group)
        one_column = [it for it in items if it[1].k == 1 and it[1].cov.kind == "us"]
        if len(one_column) == len(items) and len(items) > 1:
            out.append((name, items))  # one Independent block, as Stata's cov(independent)
        else:
            out += [(name, [it]) for it in items]
    return out


def _re_rows(m, items, vc, stddev: bool, z0: float) -> list[tuple[str, float, float, float, float]]:
    """(label, estimate, SE, lower, upper) of one block, in Stata's order: the variances (or SDs)
    of the columns with ``_cons`` last, then the covariances (or correlations) of their pairs."""
    from ._inference import term_eta_cov

    scale = "sd" if stddev else "var"
    cols_of = [(t, term, i) for t, term in items for i in range(term.k)]
    cols_of = ([e for e in cols_of if e[1].columns[e[2]] != "(Intercept)"]
               + [e for e in cols_of if e[1].columns[e[2]] == "(Intercept)"])
    out = []
    for t, term, i in cols_of:
        rows = vc[(vc["grp"] == term.vc_name) & (vc["kind"] == scale) & (vc["var1"] == term.columns[i])]
        if not len(rows):
            continue  # one variance for all the term's columns (hom = TRUE): listed once, at the first
        if term.cov.kind != "us" and term.cov.hom:
            lab = " ".join(_stata_name(c, 8) for c in _ordered(term.columns))
        else:
            lab = _stata_name(term.columns[i], 8)
        r = rows.iloc[0]
        out.append((f"{scale}({lab})", r["Estimate"], r["Std. Error"], r["lower"], r["upper"]))
    for t, term in items:
        labels = term.cov.sdcor_labels()
        cols = list(term.columns)
        rank = {c: n for n, c in enumerate(_stata_order(cols))}
        pairs, C = [], None
        for n, (kind, i, j) in enumerate(labels):
            if kind != "cor":
                continue
            r = vc[(vc["grp"] == term.vc_name) & (vc["kind"] == "cor") & (vc["var1"] == cols[j])
                   & (vc["var2"] == cols[i])].iloc[0]
            a, b = sorted((i, j), key=rank.get)  # Stata's pair order: _cons second
            pair = f"{_stata_name(cols[a], 8)},{_stata_name(cols[b], 8)}"
            if term.cov.kind != "us":  # cs and ar1: one correlation for all the columns
                pair = " ".join(_stata_name(c, 8) for c in _ordered(cols))
            if stddev or not (term.cov.kind == "us" or (term.cov.kind == "cs" and term.cov.hom)):
                # ar1 and heterogeneous cs (no Stata structure) show their correlation
                row = (f"corr({pair})", r["Estimate"], r["Std. Error"], r["lower"], r["upper"])
            else:
                if C is None:
                    C = term_eta_cov(m, t)
                sd = term.cov.sdcor(m._term_cov(t))
                ki, kj = (labels.index(("sd", c, c) if ("sd", c, c) in labels else ("sd", 0, 0)) for c in (i, j))
                rho = float(r["Estimate"])
                cov = rho * sd[ki] * sd[kj]
                g = np.zeros(len(labels))  # d cov / d (log sd_i, log sd_j, atanh rho)
                g[ki] += cov
                g[kj] += cov
                g[n] = (1.0 - rho**2) * sd[ki] * sd[kj]
                se = float(np.sqrt(g @ C @ g)) if np.all(np.isfinite(C)) else math.nan
                row = (f"cov({pair})", cov, se, cov - z0 * se, cov + z0 * se)
            pairs.append(((rank[a], rank[b]), row))
        out += [row for _, row in sorted(pairs, key=lambda p: p[0])]
    return out


def _ordered(columns) -> list[str]:
    return [columns[i] for i in _stata_order(columns)]


def _re_line(label: str, est, se, lo, hi) -> str:
    return (f"{label:>28} |  {stata_number(est):>9}  {stata_number(se):>9}     {stata_number(lo):>9}"
            f"   {stata_number(hi):>9}")


def _random_table(m, stddev: bool) -> list[str]:
    from scipy.special import ndtri

    z0 = float(ndtri(0.975))
    vc = m.variance_components(level=0.95)
    sep = "-" * 29 + "+" + "-" * 48
    lines = [_RULE, "  Random-effects Parameters  |   Estimate   Std. Err.     [95% Conf. Interval]", sep]
    for name, items in _blocks(m):
        label = _structure_label([term for _, term in items])
        # the factor's name cut (Stata's abbrev) to keep the bar in its column
        lines.append(f"{_abbrev(name, min(12, 26 - len(label))) + ': ' + label:<28} |")
        for row in _re_rows(m, items, vc, stddev, z0):
            lines.append(_re_line(*row))
        lines.append(sep)
    res = vc.loc["sigma" if stddev else "var_Residual"]
    lines.append(_re_line("sd(Residual)" if stddev else "var(Residual)", res["Estimate"], res["Std. Error"],
                          res["lower"], res["upper"]))
    lines.append(_RULE)
    return lines


def _lr_lines(m) -> list[str]:
    lr = m.lrt_vs_ols()
    if lr.distribution.startswith("chibar2"):
        line = (f"LR test vs. linear regression: chibar2(01) ={lr.statistic:10.2f}"
                f"    Prob >= chibar2 = {lr.p_value:6.4f}")
    else:
        # the note's line: "LR test vs. linear regression:      chi2(3) =    835.32    Prob > chi2 = 0.0000"
        line = (f"LR test vs. linear regression:{f'chi2({lr.df})':>13} ={lr.statistic:10.2f}"
                f"    Prob > chi2 = {lr.p_value:6.4f}")
    return [line] + ([""] + [f"Note: {lr.note}"] if lr.conservative else [])


def stata_summary(m, stddev: bool = False) -> str:
    """The text Stata's ``mixed`` prints for this model (see the module docstring).

    ``stddev=False`` (Stata's default) lists variances and covariances, ``stddev=True`` standard
    deviations and correlations (Stata's ``stddev`` option). Intervals are 95%.
    """
    if not isinstance(stddev, (bool, np.bool_)):
        raise InferenceError(f"stddev must be True or False, got {stddev!r}")
    fixed, wald, k, p_wald = _fixed_table(m)
    lines = _header(m, wald, k, p_wald) + [""] + fixed + [""] + _random_table(m, bool(stddev)) + _lr_lines(m)
    return "\n".join(lines) + "\n"

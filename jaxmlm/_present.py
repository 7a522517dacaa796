"""Stage 7 — presentation: lme4/lmerTest-style text for a fitted model.

The summary is lmerTest's ``summary(lmerModLmerTest)``: lme4's text with the
fixed-effects table extended by Satterthwaite's df and the p-values
(Kuznetsova, Brockhoff & Christensen 2017, J. Stat. Softw. 82(13)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._errors import JaxmlmError
from ._rnum import abbreviate, deparse_formula, format_pvalues_r, r_format, zapsmall

__all__ = ["summary_text", "print_coefmat", "signif_stars", "format_anova", "format_matrix", "AnovaTable"]

SIGNIF_LEGEND = "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"


def signif_stars(p: float) -> str:
    """R's significance stars: *** < 0.001 ≤ ** < 0.01 ≤ * < 0.05 ≤ . < 0.1."""
    if not np.isfinite(p):
        return ""
    for cut, star in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p < cut:
            return star
    return ""


def format_matrix(cells: dict[str, list[str]], index: list[str]) -> str:
    """A character matrix as R's print.default(right = TRUE) prints it: row names left, cells right."""
    w0 = max([0] + [len(r) for r in index])
    widths = {c: max([len(c)] + [len(v) for v in vals]) for c, vals in cells.items()}
    lines = [" " * w0 + "".join(" " + c.rjust(widths[c]) for c in cells)]
    for i, r in enumerate(index):
        lines.append(r.ljust(w0) + "".join(" " + vals[i].rjust(widths[c]) for c, vals in cells.items()))
    return "\n".join(lines)


class AnovaTable(pd.DataFrame):
    """A DataFrame that prints as R prints an ANOVA table (``print.anova``): heading, table, stars.

    Used for lmerTest's F tests (``m.anova()``), lme4's likelihood-ratio
    table (``anova(m0, m1)``) and lmerTest's ``ranova``. ``attrs["heading"]``
    holds the heading lines; slices and arithmetic give plain DataFrames.
    """

    @property
    def _constructor(self):
        return pd.DataFrame

    def __str__(self) -> str:
        return format_anova(self)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        heading = self.attrs.get("heading") or []
        heading = [heading] if isinstance(heading, str) else heading
        import html

        return "".join(f"<p>{html.escape(line)}</p>" for line in heading if line) + pd.DataFrame(self).to_html()

    @classmethod
    def of(cls, table: pd.DataFrame, heading) -> "AnovaTable":
        """``table`` (its attrs kept) with ``heading`` (a line or a list of lines)."""
        out = cls(table)
        out.attrs = dict(table.attrs)
        out.attrs["heading"] = heading
        return out


def format_anova(table: pd.DataFrame, digits: int = 5) -> str:
    """An ANOVA table as R's ``print.anova`` prints it (printCoefmat with digits 5, stars, legend)."""
    heading = table.attrs.get("heading")
    out = ([heading] if isinstance(heading, str) else list(heading)) if heading else []
    cols = list(table.columns)
    cells: dict[str, list[str]] = {}
    p_col = cols[-1] if cols and cols[-1].startswith(("Pr(", "P(")) else None
    dig_tst = max(1, min(5, digits - 1))
    for c in cols:
        v = table[c].to_numpy(dtype=float)
        if c == p_col:
            cells[c] = format_pvalues_r(v, dig_tst)
        elif c.endswith(" value") or c in ("F", "Chisq"):
            cells[c] = r_format(np.round(v, dig_tst), digits)
        else:
            shown = zapsmall(v, digits)
            cells[c] = r_format(shown, digits)
            # printCoefmat: a non-zero value that prints as zero is printed alone with one digit less
            for j, (x, s) in enumerate(zip(v, cells[c])):
                if np.isfinite(x) and x != 0 and float(s) == 0:
                    cells[c][j] = r_format([x], max(1, digits - 1))[0]
        cells[c] = ["" if not np.isfinite(x) else s for x, s in zip(v, cells[c])]
    stars = False
    if p_col is not None:
        p = table[p_col].to_numpy(dtype=float)
        if np.any(np.isfinite(p) & (p < 0.1)):
            stars = True
            marks = [signif_stars(x) or (" " if np.isfinite(x) else "") for x in p]
            cells[""] = [m.ljust(3) for m in marks]
    out.append(format_matrix(cells, [str(i) for i in table.index]))
    if stars:
        out += ["---", SIGNIF_LEGEND]
    return "\n".join(out)


def print_coefmat(table: pd.DataFrame, digits: int = 4) -> list[str]:
    """The lines of R's ``printCoefmat(table, digits)`` (R 4.2), as lme4's summary calls it.

    The columns before the test statistic (estimate, standard error and, for lmerTest, df) are
    rounded together to ``digits − digmin`` decimals, digmin = 1 + ⌊log10 min|x|⌋ over their
    non-zero entries, and formatted as one block (one width); the statistic is rounded to
    ``dig.tst = digits − 1`` decimals; a last column named ``Pr(...)`` is ``format.pval`` with
    significance stars when any p < 0.1. A non-zero number that would print as zero is printed
    alone with one digit less. Columns are right-aligned under their names, rows left-aligned.
    """
    cols = list(table.columns)
    nc = len(cols)
    has_p = nc >= 4 and cols[-1][:3] in ("Pr(", "p-v")
    k = nc - has_p - 1
    xm = table.to_numpy(dtype=float)
    cells = np.full(xm.shape, "", dtype=object)
    dig_tst = max(1, min(5, digits - 1))
    cs = xm[:, :k]
    acs = np.abs(cs[np.isfinite(cs) & (cs != 0)])
    if np.isfinite(cs).any():
        digmin = 1 + int(np.floor(np.log10(acs.min()))) if acs.size else 1
        cells[:, :k] = np.array(r_format(np.round(cs, max(1, digits - digmin)).ravel(), digits),
                                dtype=object).reshape(cs.shape)
    cells[:, k] = r_format(np.round(xm[:, k], dig_tst), digits)
    for i, j in zip(*np.nonzero(np.isfinite(xm[:, :k]) & (xm[:, :k] != 0))):
        if float(cells[i, j]) == 0.0:  # R's "not both 0"
            cells[i, j] = r_format([xm[i, j]], max(1, digits - 1))[0]
    cells[:, :k + 1][np.isnan(xm[:, :k + 1])] = "NA"
    shown = {c: list(cells[:, j]) for j, c in enumerate(cols[:k + 1])}
    stars = False
    if has_p:
        p = xm[:, -1]
        shown[cols[-1]] = format_pvalues_r(p, dig_tst)
        shown[cols[-1]] = [s if np.isfinite(x) else "NA" for s, x in zip(shown[cols[-1]], p)]
        if np.any(np.isfinite(p) & (p < 0.1)):
            stars = True
            marks = [signif_stars(x) or " " for x in p]
            width = max(len(s) for s in marks)
            shown[""] = [s.ljust(width) for s in marks]
    lines = [line.rstrip() for line in format_matrix(shown, [str(i) for i in table.index]).split("\n")]
    if stars:
        lines += ["---", SIGNIF_LEGEND]
    return lines


def _fixed_effects_table(m) -> tuple[list[str], bool]:
    """lmerTest's fixed-effects table (Satterthwaite df and p-values) and whether it was computed.

    Falls back to lme4's table (Estimate, Std. Error, t value) when the
    Satterthwaite computation is refused, so that a summary always prints.
    """
    if len(m.fixef) == 0:
        return [], True
    if hasattr(m, "prior_penalty"):  # a blmer fit: blme's table, no denominator df
        return print_coefmat(m.coef_table()), False
    try:
        from ._inference import coef_table

        tab = coef_table(m, ddf="Satterthwaite")
    except JaxmlmError:
        tab = None
    if tab is None or not np.all(np.isfinite(tab["df"])):
        lme4 = pd.DataFrame({"Estimate": m.fixef, "Std. Error": m.se, "t value": m.fixef / m.se})
        return print_coefmat(lme4), False
    return print_coefmat(tab[["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]]), True


def _random_effects_table(m) -> str:
    lines = []
    header = ["Groups", "Name", "Variance", "Std.Dev.", "Corr"]
    body, variances, sds = [], [], []
    ncorr = max(t.k for t in m.design.terms if t.cov.shows_covariances()) - 1 if any(
        t.cov.shows_covariances() for t in m.design.terms) else 0
    for t, term in enumerate(m.design.terms):
        S = m._term_cov(t)
        sd = np.sqrt(np.diag(S))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = S / np.outer(sd, sd)
        # lme4's formatVC: format(round(corr, 2), nsmall = 2) over the whole matrix (one width),
        # the lower triangle shown, one column per correlation
        cells = [f"{v:.2f}" if np.isfinite(v) else "NaN" for v in corr.ravel()]
        width = max(len(c) for c in cells)
        cells = np.array([c.rjust(width) for c in cells]).reshape(term.k, term.k)
        for i, c in enumerate(term.columns):
            shown = [cells[i, j] if term.cov.shows_covariances() else "" for j in range(i)]
            body.append([term.vc_name if i == 0 else "", c, "", ""] + (shown + [""] * ncorr)[:ncorr])
            variances.append(S[i, i])
            sds.append(sd[i])
    resid = m._residual_rows()  # none for a GLMM without a scale
    for grp, _, _, var, sd in resid:
        body.append([grp, "", "", ""] + [""] * ncorr)
        variances.append(var)
        sds.append(sd)
    # As lme4's formatVC: each numeric column formatted as one vector (R's format, 4 digits),
    # then every column left-justified to its header.
    for row, var, sd in zip(body, r_format(variances, 4), r_format(sds, 4)):
        row[2], row[3] = var, sd
    header = header[:4] + (["Corr"] + [""] * (ncorr - 1) if ncorr else [])
    ncol = len(header)
    widths = [max(len(r[j]) for r in body + [header]) for j in range(ncol)]
    fmt = lambda r: " " + " ".join(r[j].ljust(widths[j]) for j in range(ncol))  # noqa: E731
    lines.append(fmt(header).rstrip())
    lines += [fmt(r).rstrip() for r in body]
    return "\n".join(lines)


def summary_text(m) -> str:
    """The text of lmerTest's ``summary(lmerModLmerTest)`` (lme4's, with Satterthwaite t-tests)."""
    crit = "REML" if m.REML else "maximum likelihood"
    fixed_lines, satterthwaite = _fixed_effects_table(m)
    if satterthwaite:
        head = f"Linear mixed model fit by {crit}. t-tests use Satterthwaite's method (jaxmlm)"
    else:
        head = f"Linear mixed model fit by {crit} ['lmerMod'] (jaxmlm)"
    out = [head, f"Formula: {deparse_formula(m.formula)}"]  # as lme4 deparses it: (Days | Subject)
    if m.data_name:
        out.append(f"   Data: {m.data_name}")
    if m.n_dropped:
        out.append(f"{m.n_dropped} observation{'s' if m.n_dropped != 1 else ''} deleted due to missingness")
    out.append("")
    if m.REML:
        out.append(f"REML criterion at convergence: {r_format([round(m.objective, 1)])[0]}")
    else:
        out += _aic_table(m)
    out.append("")
    if m.design.held:
        out += _scaled_residuals(m)
    else:
        out.append("Scaled residuals: not computed (fitted from data in pieces; the rows stay there)")
    out += _model_body(m, fixed_lines)
    if m.is_singular:
        out.append("optimizer (Newton) convergence code: 0 (OK)" if m.record.converged else "")
        out.append("boundary (singular) fit: see help('isSingular')")
    elif not m.record.converged:
        out.append(f"optimizer: {m.record.message}")
    return "\n".join(line for line in out if line is not None) + "\n"


def _aic_table(m) -> list[str]:
    """lme4's .prt.aictab: AIC, BIC, logLik, deviance (the ML criterion, −2 logLik) and df.resid as a named vector."""
    names = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
    vals = r_format(np.round([m.aic, m.bic, m.loglik, m.objective], 1)) + [str(int(m.nobs - m.npar))]
    w = max(len(x) for x in names + vals)
    return [" ".join(x.rjust(w) for x in names), " ".join(x.rjust(w) for x in vals)]


def _scaled_residuals(m) -> list[str]:
    """lme4's .prt.resids: quantiles of the Pearson residuals zapped to digits + 1, printed as a
    named vector (digits 4)."""
    q = zapsmall(np.quantile(m.pearson_resid, [0, 0.25, 0.5, 0.75, 1]), 5)
    names, vals = ["Min", "1Q", "Median", "3Q", "Max"], r_format(q, 4)
    w = max(len(x) for x in names + vals)
    return ["Scaled residuals: ", " ".join(x.rjust(w) for x in names), " ".join(x.rjust(w) for x in vals)]


def _model_body(m, fixed_lines: list[str]) -> list[str]:
    """The summary from "Random effects:" to the correlation of the fixed effects (lme4's
    .prt.VC, .prt.grps and the coefficient block), for every model class."""
    out = ["", "Random effects:", _random_effects_table(m)]
    groups = "; ".join(f"{g}, {n}" for g, n in m.ngroups.items())  # lme4: semicolons between factors
    out.append(f"Number of obs: {m.nobs}, groups:  {groups}")
    if m.design.dropped_columns:
        out.append(f"Dropped (aliased) fixed-effect columns: {', '.join(m.design.dropped_columns)}")
    if len(m.fixef):  # lme4 prints no block at all for a model without fixed effects
        out += ["", "Fixed effects:"] + fixed_lines
    p = len(m.fixef)
    if 1 < p <= 12:
        out += ["", "Correlation of Fixed Effects:"] + _fixef_correlation(m)
    elif p > 12:
        out += ["", f"Correlation matrix not shown by default, as p = {p} > 12.",
                "Use m.vcov (a DataFrame) if you need it"]
    return out


def glmer_summary_text(m) -> str:
    """The text of lme4's ``summary(glmerMod)``."""
    how = ("Laplace Approximation" if m.nAGQ == 1 else
           f"Adaptive Gauss-Hermite Quadrature, nAGQ = {m.nAGQ}")
    title = f"Generalized linear mixed model fit by maximum likelihood ({how}) ['glmerMod'] (jaxmlm)"
    fam = m.family
    label = fam.label if not fam.has_phi else f"Negative Binomial({r_format([m.nb_theta], 5)[0]})"
    out = [title, f" Family: {label}  ( {fam.link.name} )", f"Formula: {deparse_formula(m.formula)}"]
    if m.data_name:
        out.append(f"   Data: {m.data_name}")
    if m.n_dropped:
        out.append(f"{m.n_dropped} observation{'s' if m.n_dropped != 1 else ''} deleted due to missingness")
    out += [""] + _aic_table(m) + [""] + _scaled_residuals(m)
    out += _model_body(m, print_coefmat(m.coef_table()) if len(m.fixef) else [])
    if m.is_singular:
        out.append("boundary (singular) fit: see help('isSingular')")
    for w in m.record.warnings:
        out.append(f"Warning: {w}")
    return "\n".join(out) + "\n"


def _fixef_correlation(m) -> list[str]:
    """lme4's correlation of the fixed effects: format(round(r, 3), nsmall = 3) as one block,
    the lower triangle, rows named by abbreviate(minlength = 11), columns by minlength = 6,
    printed left-aligned (print of a character matrix)."""
    V = m.vcov.to_numpy()
    sd = np.sqrt(np.diag(V))
    C = V / np.outer(sd, sd)
    p = C.shape[0]
    text = [f"{v:.3f}" for v in np.round(C, 3).ravel()]
    w = max(len(t) for t in text)
    cells = np.array([t.rjust(w) for t in text], dtype=object).reshape(p, p)
    rows = abbreviate(m.fixef.index, 11)[1:]
    cols = abbreviate(m.fixef.index, 6)[:-1]
    widths = [max(len(c), w) for c in cols]
    w0 = max(len(r) for r in rows)
    lines = [" " * w0 + "".join(" " + c.ljust(wc) for c, wc in zip(cols, widths))]
    for i, r in enumerate(rows, start=1):
        lines.append(r.ljust(w0) + "".join(" " + (cells[i, j] if j < i else "").ljust(widths[j]) for j in range(p - 1)))
    return [line.rstrip() for line in lines]

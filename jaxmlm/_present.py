"""Stage 7 — presentation: lme4/lmerTest-style text for a fitted model.

The summary is lmerTest's ``summary(lmerModLmerTest)``: lme4's text with the
fixed-effects table extended by Satterthwaite's df and the p-values
(Kuznetsova, Brockhoff & Christensen 2017, J. Stat. Softw. 82(13)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._errors import JaxmlmError
from ._rnum import format_pvalues_r, r_format, zapsmall

__all__ = ["summary_text", "format_table", "format_pvalue", "signif_stars", "format_anova", "format_matrix", "AnovaTable"]

SIGNIF_LEGEND = "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"


def _sig(x: float, digits: int = 4) -> str:
    """R's format(x, digits = d): d significant digits."""
    if not np.isfinite(x):
        return "NA"
    return f"{x:.{digits}g}" if abs(x) >= 1e-4 or x == 0 else f"{x:.{digits - 1}e}"


def _decimals(values: np.ndarray, digits: int) -> int:
    """Decimals that show every value with at least ``digits`` significant digits (at most 6)."""
    v = np.abs(values[np.isfinite(values) & (values != 0)])
    if not v.size:
        return 0
    return int(min(6, max(0, np.max(digits - 1 - np.floor(np.log10(v))))))


def format_table(df: pd.DataFrame, digits: int = 4, together: tuple[str, ...] = ("Estimate", "Std. Error")) -> str:
    """Right-aligned numeric table in the manner of R's printCoefmat.

    The columns named in ``together`` share one number of decimals (R formats
    estimates and standard errors together); every column gets as many
    decimals as its smallest entry needs for ``digits`` significant digits.
    Columns of strings (object dtype, e.g. formatted p-values) are printed as they are.
    """
    shared = [c for c in together if c in df.columns]
    dec_shared = _decimals(df[shared].to_numpy(dtype=float).ravel(), digits) if shared else 0
    cols = {}
    for c in df.columns:
        if df[c].dtype == object:
            cols[c] = [str(x) for x in df[c]]
            continue
        v = df[c].to_numpy(dtype=float)
        dec = dec_shared if c in shared else _decimals(v, digits)
        cols[c] = ["NA" if not np.isfinite(x) else f"{x:.{dec}f}" for x in v]
    rows = [str(i) for i in df.index]
    w0 = max([len(r) for r in rows] + [0])
    widths = {c: max(len(str(c)), *(len(s) for s in cols[c])) for c in df.columns}
    lines = [" " * w0 + "".join(" " + str(c).rjust(widths[c]) for c in df.columns)]
    for i, r in enumerate(rows):
        lines.append(r.ljust(w0) + "".join(" " + cols[c][i].rjust(widths[c]) for c in df.columns))
    return "\n".join(lines)


def format_pvalue(p: float, digits: int = 3) -> str:
    """R's format.pval(p, digits = 3, eps = .Machine$double.eps) as printCoefmat uses it."""
    if not np.isfinite(p):
        return "NA"
    if p < 2.220446049250313e-16:
        return "< 2e-16"
    return _sig(p, digits)


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
        return "".join(f"<p>{line}</p>" for line in heading if line) + pd.DataFrame(self).to_html()

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


def _fixed_effects_table(m) -> tuple[list[str], bool]:
    """lmerTest's fixed-effects table (Satterthwaite df and p-values) and whether it was computed.

    Falls back to lme4's table (Estimate, Std. Error, t value) when the
    Satterthwaite computation is refused, so that a summary always prints.
    """
    if len(m.fixef) == 0:
        return [], True
    try:
        from ._inference import coef_table

        tab = coef_table(m, ddf="Satterthwaite")
    except JaxmlmError:
        tab = None
    if tab is None or not np.all(np.isfinite(tab["df"])):
        lme4 = pd.DataFrame({"Estimate": m.fixef, "Std. Error": m.se, "t value": m.fixef / m.se})
        return [format_table(lme4)], False
    p = tab["Pr(>|t|)"].to_numpy()
    shown = tab[["Estimate", "Std. Error", "df", "t value"]].copy()
    shown["Pr(>|t|)"] = pd.Series([format_pvalue(x) for x in p], index=tab.index, dtype=object)
    stars = [signif_stars(x) for x in p]
    shown[""] = pd.Series([s.ljust(3) for s in stars], index=tab.index, dtype=object)
    # Rows without stars would end in blanks: strip them, as R does not print trailing spaces.
    lines = ["\n".join(r.rstrip() for r in format_table(shown).split("\n"))]
    if any(stars):
        lines += ["---", SIGNIF_LEGEND]
    return lines, True


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
    body.append(["Residual", "", "", ""] + [""] * ncorr)
    # As lme4's formatVC: each numeric column formatted as one vector (R's format, 4 digits),
    # then every column left-justified to its header.
    for row, var, sd in zip(body, r_format(variances + [m.sigma**2], 4), r_format(sds + [m.sigma], 4)):
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
    out = [head, f"Formula: {m.formula}"]
    if m.data_name:
        out.append(f"   Data: {m.data_name}")
    if m.n_dropped:
        out.append(f"{m.n_dropped} observation{'s' if m.n_dropped != 1 else ''} deleted due to missingness")
    out.append("")
    if m.REML:
        out.append(f"REML criterion at convergence: {m.objective:.1f}")
    else:
        ic = pd.DataFrame(
            [[m.aic, m.bic, m.loglik, m.objective, m.nobs - m.npar]],
            columns=["AIC", "BIC", "logLik", "deviance", "df.resid"],
        )
        out.append(" " + "  ".join(f"{c:>9}" for c in ic.columns))
        out.append(" " + "  ".join(f"{v:>9.1f}" if c != "df.resid" else f"{int(v):>9d}" for c, v in ic.iloc[0].items()))
    out.append("")
    if m.design.held:
        r = m.pearson_resid
        q = np.quantile(r, [0, 0.25, 0.5, 0.75, 1])
        out.append("Scaled residuals: ")
        out.append(" ".join(f"{h:>8}" for h in ["Min", "1Q", "Median", "3Q", "Max"]))
        out.append(" ".join(f"{v:>8.4f}" for v in q))
    else:
        out.append("Scaled residuals: not computed (fitted from data in pieces; the rows stay there)")
    out.append("")
    out.append("Random effects:")
    out.append(_random_effects_table(m))
    groups = "; ".join(f"{g}, {n}" for g, n in m.ngroups.items())  # lme4: semicolons between factors
    out.append(f"Number of obs: {m.nobs}, groups:  {groups}")
    if m.design.dropped_columns:
        out.append(f"Dropped (aliased) fixed-effect columns: {', '.join(m.design.dropped_columns)}")
    out.append("")
    if len(m.fixef):
        out.append("Fixed effects:")
        out += fixed_lines
    else:
        out.append("No fixed effect coefficients")
    p = len(m.fixef)
    if 1 < p <= 12:
        out.append("")
        out.append("Correlation of Fixed Effects:")
        V = m.vcov.to_numpy()
        sd = np.sqrt(np.diag(V))
        C = V / np.outer(sd, sd)
        abbrev = [_abbreviate(n) for n in m.fixef.index]
        names = list(m.fixef.index)
        w0 = max(len(n) for n in names[1:])
        w = max(6, *(len(a) for a in abbrev[:-1]))
        out.append(" " * w0 + " " + " ".join(a.rjust(w) for a in abbrev[:-1]))
        for i in range(1, p):
            out.append(names[i].ljust(w0) + " " + " ".join(f"{C[i, j]:.3f}".rjust(w) for j in range(i)))
    if m.is_singular:
        out.append("optimizer (Newton) convergence code: 0 (OK)" if m.record.converged else "")
        out.append("boundary (singular) fit: see help('isSingular')")
    elif not m.record.converged:
        out.append(f"optimizer: {m.record.message}")
    return "\n".join(line for line in out if line is not None) + "\n"


def _abbreviate(name: str, minlength: int = 6) -> str:
    """A short column label in the spirit of R's abbreviate(minlength = 4) for vcov correlations."""
    if name == "(Intercept)":
        return "(Intr)"
    return name if len(name) <= minlength else name[:minlength]

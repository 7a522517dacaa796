"""Models side by side: the "Model A / B / C" table of a multilevel course.

:func:`compare_models` lines up several fits: fixed effects as estimate (SE), variance
components (the residual variance, each random effect's variance, correlations), the
intraclass correlation where a grouping factor has random intercepts only, deviance
(−2 log-likelihood; the REML criterion for REML fits), AIC, BIC, observations and groups —
the layout of texreg's ``screenreg`` and of the course notes' comparison tables. The numbers
stay available as a long table (``.long``); ``.frame()`` is the formatted grid, printed as
text, HTML (``_repr_html_``, for notebooks) or LaTeX (``.to_latex()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._errors import DataError

__all__ = ["ModelComparison", "compare_models"]

_SECTIONS = ("Fixed effects", "Variance components", "Fit")


def _rows(m, name: str) -> list[tuple]:
    """(section, row label, model, value, se) of one model."""
    out = [("Fixed effects", term, name, float(est), float(se)) for term, est, se in zip(m.fixef.index, m.fixef, m.se)]
    vc = m.varcorr
    group_of = {t.vc_name: t.group for t in m.design.terms}  # (x || g)'s "g.1" is still g
    out.append(("Variance components", "Residual: variance", name, float(m.sigma**2), np.nan))
    for r in vc.itertuples(index=False):
        if r.grp == "Residual":
            continue
        g = group_of.get(r.grp, r.grp)
        if pd.isna(r.var2):
            out.append(("Variance components", f"{g}: var({r.var1})", name, float(r.vcov), np.nan))
        else:
            out.append(("Variance components", f"{g}: cor({r.var1}, {r.var2})", name, float(r.sdcor), np.nan))
    intercepts_only = {g: all(t.columns == ("(Intercept)",) for t in m.design.terms if t.group == g)
                       for g in m.ngroups}
    if all(intercepts_only.values()) and getattr(m, "residual", None) is None:  # an ICC needs iid residuals
        icc = m.icc()
        for g in icc.index:
            out.append(("Variance components", f"ICC: {g}", name, float(icc.loc[g, "ICC"]), np.nan))
    crit = "REML criterion" if m.REML else "Deviance"
    out += [("Fit", crit, name, float(m.objective), np.nan), ("Fit", "AIC", name, float(m.aic), np.nan),
            ("Fit", "BIC", name, float(m.bic), np.nan), ("Fit", "Observations", name, float(m.nobs), np.nan)]
    out += [("Fit", f"Groups: {g}", name, float(n), np.nan) for g, n in m.ngroups.items()]
    return out


@dataclass(frozen=True)
class ModelComparison:
    """Several fits side by side (see :func:`compare_models`). ``long``: one row per (section, row,
    model) with ``value`` and ``se`` (fixed effects only); ``digits`` for the formatted views."""

    long: pd.DataFrame
    names: tuple[str, ...]
    digits: int = 2

    def frame(self) -> pd.DataFrame:
        """The grid as text cells: rows (section, row), one column per model; "" where a model lacks the row."""
        rows = list(dict.fromkeys(zip(self.long["section"], self.long["row"])))
        out = pd.DataFrame("", index=pd.MultiIndex.from_tuples(rows, names=["section", "row"]), columns=list(self.names))
        for r in self.long.itertuples(index=False):
            if r.row in ("Observations",) or r.row.startswith("Groups:"):
                text = f"{int(r.value)}"
            elif r.row.startswith("ICC") or ": cor(" in r.row:
                text = f"{r.value:.3f}"
            else:
                text = f"{r.value:.{self.digits}f}"
            if not np.isnan(r.se):
                text += f" ({r.se:.{self.digits}f})"
            out.loc[(r.section, r.row), r.model] = text
        return out

    def __str__(self) -> str:
        f = self.frame()
        width = max(len(r) for _, r in f.index) + 2
        cols = [max(len(c), *(len(v) for v in f[c])) + 2 for c in f.columns]
        lines = [" " * width + "".join(c.rjust(w) for c, w in zip(f.columns, cols))]
        section = None
        for (sec, row), vals in f.iterrows():
            if sec != section:
                lines.append(sec)
                section = sec
            lines.append(("  " + row).ljust(width) + "".join(v.rjust(w) for v, w in zip(vals, cols)))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.frame().to_html()

    def to_latex(self) -> str:
        """The grid as a LaTeX tabular (booktabs rules)."""
        f = self.frame()
        esc = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#"}

        def tex(s: str) -> str:
            return "".join(esc.get(ch, ch) for ch in s)

        lines = [r"\begin{tabular}{l" + "r" * len(f.columns) + "}", r"\toprule",
                 " & " + " & ".join(tex(c) for c in f.columns) + r" \\", r"\midrule"]
        section = None
        for (sec, row), vals in f.iterrows():
            if sec != section:
                if section is not None:
                    lines.append(r"\midrule")
                lines.append(r"\multicolumn{" + str(len(f.columns) + 1) + "}{l}{\\textit{" + tex(sec) + r"}} \\")
                section = sec
            lines.append(tex(row) + " & " + " & ".join(tex(v) for v in vals) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)


def compare_models(models, names=None, digits: int = 2) -> ModelComparison:
    """Fits side by side, as the course notes' Model A/B/C tables (see the module docstring).

    ``models``: fitted :class:`~jaxmlm.LinearMixedModel` objects; ``names``: their column
    labels (default "Model A", "Model B", …); ``digits``: decimals of the formatted views.
    Rows appear in order of first appearance across the models.
    """
    from ._results import LinearMixedModel

    if isinstance(models, LinearMixedModel) or not isinstance(models, (list, tuple)):
        raise DataError("compare_models takes a list of fitted models, e.g. compare_models([m_a, m_b])")
    models = list(models)
    if not models:
        raise DataError("compare_models needs at least one fitted model")
    bad = [type(m).__name__ for m in models if not isinstance(m, LinearMixedModel)]
    if bad:
        raise DataError(f"compare_models takes fitted models (jaxmlm.lmer's results), got {', '.join(bad)}")
    names = tuple(names) if names is not None else tuple(f"Model {chr(ord('A') + i)}" for i in range(len(models)))
    if len(names) != len(models) or len(set(names)) != len(names):
        raise DataError(f"names must be {len(models)} distinct labels, one per model; got {list(names)}")
    rows = [r for m, nm in zip(models, names) for r in _rows(m, nm)]
    long = pd.DataFrame(rows, columns=["section", "row", "model", "value", "se"])
    order = {s: i for i, s in enumerate(_SECTIONS)}
    first = {key: i for i, key in reversed(list(enumerate(zip(long["section"], long["row"]))))}
    # Within the variance components: the residual, variances, correlations, then ICCs; in the fit
    # section the criteria, AIC, BIC, then the counts (whatever mix of REML and ML fits).
    fit_rank = {"REML criterion": 0, "Deviance": 0, "AIC": 1, "BIC": 2, "Observations": 3}
    kind = [(0 if r.startswith("Residual") else 1 if ": var(" in r else 2 if ": cor(" in r else 3)
            if sec == "Variance components" else fit_rank.get(r, 4) if sec == "Fit" else 0
            for sec, r in zip(long["section"], long["row"])]
    long = long.assign(_s=long["section"].map(order), _k=kind,
                       _r=[first[k] for k in zip(long["section"], long["row"])])
    long = long.sort_values(["_s", "_k", "_r"], kind="stable").drop(columns=["_s", "_k", "_r"]).reset_index(drop=True)
    return ModelComparison(long, names, digits)

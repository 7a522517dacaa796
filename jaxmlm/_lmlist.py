"""Per-group least-squares fits, as lme4's ``lmList``: the "no pooling" estimates.

``lmList("Reaction ~ Days | Subject", data)`` fits ``Reaction ~ Days`` by ordinary least
squares within each level of ``Subject`` — what a course compares the mixed model's
conditional coefficients with (complete pooling: one regression; no pooling: these; partial
pooling: ``m.coef``), and what a shrinkage plot draws (:func:`jaxmlm.plot.shrinkage`). The
model matrix is built once on all rows (so a factor is coded alike in every group); a
coefficient a group's rows cannot estimate (fewer rows than columns, a column constant or
aliased within the group) is NaN, as R's ``lm`` gives NA.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._errors import FormulaError

__all__ = ["lmList"]


def lmList(formula: str, data: pd.DataFrame) -> pd.DataFrame:
    """Coefficients of one OLS fit per group (lme4's ``coef(lmList(formula, data))``).

    ``formula``: ``"y ~ x1 + x2 | g"`` (the grouping factor after ``|``; ``a/b`` or ``a:b``
    for combined levels). Returns a DataFrame indexed by the group levels (in lme4's order),
    one column per coefficient; rows with a missing value are dropped first.
    """
    from ._design import _prune_aliased
    from ._frontend import build_design

    if not isinstance(formula, str) or formula.count("|") != 1:
        raise FormulaError(f"lmList's formula is 'response ~ predictors | group', got {formula!r}")
    fixed, group = (part.strip() for part in formula.split("|"))
    if "~" not in fixed or not group:
        raise FormulaError(f"lmList's formula is 'response ~ predictors | group', got {formula!r}")
    design = build_design(f"{fixed} + (1 | {group})", data)
    blk = design.blocks[0]
    X, y, codes = design.X, design.y, blk.codes
    out = np.full((blk.nlev, X.shape[1]), np.nan)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(blk.nlev + 1))
    for g in range(blk.nlev):
        rows = order[starts[g]:starts[g + 1]]
        Xg, yg = X[rows], y[rows]
        keep = _prune_aliased(Xg, [])  # R's lm: the later of two aliased columns is NA
        if keep:
            out[g, keep] = np.linalg.lstsq(Xg[:, keep], yg, rcond=None)[0]
    return pd.DataFrame(out, index=blk.levels.copy(), columns=list(design.fixef_names))


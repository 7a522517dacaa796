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

import warnings

import numpy as np
import pandas as pd

from ._errors import FormulaError

__all__ = ["lmList"]


def lmList(formula: str, data: pd.DataFrame, weights=None, offset=None) -> pd.DataFrame:
    """Coefficients of one least-squares fit per group (lme4's ``coef(lmList(formula, data))``).

    ``formula``: ``"y ~ x1 + x2 | g"`` (the grouping factor after ``|``; ``a/b`` or ``a:b``
    for combined levels); ``offset()`` terms, ``weights=`` and ``offset=`` (column names or
    values, as in :func:`~jaxmlm.lmer`) enter each group's fit as they enter ``lm``'s. Returns
    a DataFrame indexed by the group levels (in lme4's order), one column per coefficient of
    the model matrix (a column aliased in all the data included, all NaN); rows with a missing
    value are dropped first.
    """
    from ._design import _prune_aliased, level_rows
    from ._errors import RankDeficiencyWarning
    from ._frontend import build_design
    from ._stats import weighted_rows

    if not isinstance(formula, str) or formula.count("|") != 1:
        raise FormulaError(f"lmList's formula is 'response ~ predictors | group', got {formula!r}")
    fixed, group = (part.strip() for part in formula.split("|"))
    if "~" not in fixed or not group:
        raise FormulaError(f"lmList's formula is 'response ~ predictors | group', got {formula!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)  # R's lm: an NA column, no warning
        design = build_design(f"{fixed} + (1 | {group})", data, weights=weights, offset=offset)
    blk = design.blocks[0]
    rows_w = weighted_rows(design)  # √w X and √w (y − offset)
    X, y, codes = rows_w.X, rows_w.y, blk.codes
    names = [c for c in design.fixed_columns_all if c not in design.offset_columns]
    cols = [names.index(c) for c in design.fixef_names]
    out = np.full((blk.nlev, len(names)), np.nan)
    informative = np.ones(len(y), bool) if design.weights is None else design.weights > 0
    for g, rows in enumerate(level_rows(codes, blk.nlev)):
        rows = rows[informative[rows]]
        Xg, yg = X[rows], y[rows]
        keep = _prune_aliased(Xg, [])  # R's lm: the later of two aliased columns is NA
        if keep:
            out[g, [cols[j] for j in keep]] = np.linalg.lstsq(Xg[:, keep], yg, rcond=None)[0]
    return pd.DataFrame(out, index=blk.levels.copy(), columns=names)

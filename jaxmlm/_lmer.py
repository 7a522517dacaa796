"""``jaxmlm.lmer``: lme4's ``lmer`` (:mod:`jaxmlm._results`), or with ``correlation=``/``variance=``
a model with a residual structure (:mod:`jaxmlm._residual_model`, imported only then, so that
``import jaxmlm; jaxmlm.lmer`` loads no more than lme4's path needs)."""

from __future__ import annotations

import numpy as np

from ._errors import DataError
from ._results import lmer as _lmer

__all__ = ["lmer"]


def lmer(formula: str, data, REML: bool = True, *, max_iter: int = 200, optimizer: str = "auto",
         dtype: str = "float64", polish: bool = True, data_name: str | None = None, weights=None, offset=None,
         subset=None, correlation=None, variance=None):
    if correlation is None and variance is None:
        return _lmer(formula, data, REML, max_iter=max_iter, optimizer=optimizer, dtype=dtype, polish=polish,
                     data_name=data_name, weights=weights, offset=offset, subset=subset)
    if not isinstance(REML, (bool, np.bool_)):
        raise DataError(f"REML must be True or False, got {REML!r}")
    if optimizer not in ("auto", "newton") or dtype != "float64":
        raise DataError("a residual structure (correlation=, variance=) is fitted by Newton in float64; "
                        "leave optimizer and dtype at their defaults")
    from ._residual_model import fit_structured  # only with a structure: lmer's import stays light

    return fit_structured(formula, data, REML, correlation, variance, max_iter=max_iter, data_name=data_name,
                          weights=weights, offset=offset, subset=subset)


lmer.__doc__ = (_lmer.__doc__.rstrip() + """

    ``correlation`` and ``variance``: a residual correlation structure and/or variance function
    with nlme's names and forms (:mod:`jaxmlm.residuals`: ``jaxmlm.corAR1(form="~ Days |
    Subject")``, ``jaxmlm.varIdent(form="~ 1 | Sex")``, ...), as nlme's ``lme(correlation=,
    weights=)`` — also with crossed random effects. The result is then a
    :class:`~jaxmlm.StructuredMixedModel`; such fits need the rows in memory and run Newton in float64.
    """)

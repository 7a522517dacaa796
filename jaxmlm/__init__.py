"""jaxmlm — linear mixed-effects models with lme4's formulas and lme4's numbers, on JAX.

>>> import jaxmlm
>>> m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", jaxmlm.load_example("sleepstudy"))
>>> print(m.summary())  # doctest: +SKIP

Importing jaxmlm turns on JAX's float64 mode: mixed-model criteria are sums
over many rows and need double precision (lme4 works in double precision too).
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from ._datasets import EXAMPLES, load_example  # noqa: E402
from ._errors import (  # noqa: E402
    ConvergenceError,
    ConvergenceWarning,
    DataError,
    FormulaError,
    FormulaSyntaxError,
    GroupingError,
    JaxmlmError,
    JaxmlmWarning,
    MissingDataWarning,
    RankDeficiencyWarning,
    UnknownColumnError,
)
from ._results import FitRecord, LinearMixedModel, lmer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "lmer",
    "LinearMixedModel",
    "FitRecord",
    "load_example",
    "EXAMPLES",
    "JaxmlmError",
    "FormulaError",
    "FormulaSyntaxError",
    "UnknownColumnError",
    "DataError",
    "GroupingError",
    "ConvergenceError",
    "JaxmlmWarning",
    "RankDeficiencyWarning",
    "ConvergenceWarning",
    "MissingDataWarning",
]

"""jaxmlm — linear mixed-effects models with lme4's formulas and lme4's numbers, on JAX.

>>> import jaxmlm
>>> m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", jaxmlm.load_example("sleepstudy"))
>>> print(m.summary())  # doctest: +SKIP

The fitting machinery (JAX, formulaic) is imported on first use, so that
``import jaxmlm`` and the command line's ``--help`` stay fast. The modules
that compute turn on JAX's float64 mode when they load (see ``_x64.py``).
"""

from __future__ import annotations

import importlib

from ._errors import (
    ConfigurationError,
    ConvergenceError,
    ConvergenceWarning,
    DataError,
    DataWarning,
    FormulaError,
    FormulaSyntaxError,
    GroupingError,
    InferenceError,
    InferenceWarning,
    JaxmlmError,
    JaxmlmWarning,
    MissingDataWarning,
    NewLevelsError,
    PredictArgumentError,
    RankDeficiencyWarning,
    RowsNotHeldError,
    UnknownColumnError,
)

__version__ = "0.1.0"

_LAZY = {
    "lmer": "._lmer",
    "blmer": "._blmer",
    "glmer": "._glmer",
    "glmer_nb": "._glmer",
    "GeneralizedLinearMixedModel": "._glmer",
    "LinearMixedModel": "._results",
    "gls": "._residual_model",
    "StructuredMixedModel": "._residual_model",
    "GlsModel": "._residual_model",
    "corAR1": ".residuals",
    "corCAR1": ".residuals",
    "corCompSymm": ".residuals",
    "corExp": ".residuals",
    "varIdent": ".residuals",
    "varPower": ".residuals",
    "varExp": ".residuals",
    "varFixed": ".residuals",
    "FitRecord": "._results",
    "load_example": "._datasets",
    "EXAMPLES": "._datasets",
    "anova": "._compare",
    "pseudo_r2": "._compare",
    "power": "._refit",
    "emmeans": "._emmeans",
    "lmList": "._lmlist",
    "compare_models": "._model_table",
    "ref_grid": "._emmeans",
    "set_cache_dir": "._cache",
    "cache_dir": "._cache",
    "set_max_programs": "._compiled",
    "max_programs": "._compiled",
}

__all__ = [
    "lmer",
    "blmer",
    "glmer",
    "glmer_nb",
    "GeneralizedLinearMixedModel",
    "families",
    "residuals",
    "gls",
    "StructuredMixedModel",
    "GlsModel",
    "corAR1",
    "corCAR1",
    "corCompSymm",
    "corExp",
    "varIdent",
    "varPower",
    "varExp",
    "varFixed",
    "LinearMixedModel",
    "FitRecord",
    "load_example",
    "EXAMPLES",
    "anova",
    "pseudo_r2",
    "power",
    "emmeans",
    "lmList",
    "compare_models",
    "ref_grid",
    "set_cache_dir",
    "cache_dir",
    "set_max_programs",
    "max_programs",
    "JaxmlmError",
    "FormulaError",
    "FormulaSyntaxError",
    "UnknownColumnError",
    "DataError",
    "GroupingError",
    "NewLevelsError",
    "PredictArgumentError",
    "RowsNotHeldError",
    "InferenceError",
    "ConvergenceError",
    "ConfigurationError",
    "JaxmlmWarning",
    "RankDeficiencyWarning",
    "ConvergenceWarning",
    "MissingDataWarning",
    "InferenceWarning",
    "DataWarning",
]


def __getattr__(name: str):
    if name in ("core", "families", "residuals"):  # the engine's stages (core.py), the GLMM families: loaded on first use
        return importlib.import_module("." + name, __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxmlm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

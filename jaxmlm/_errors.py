"""The package's exception and warning hierarchy.

Every error a user can provoke with bad input is a :class:`JaxmlmError`, so
``except jaxmlm.JaxmlmError`` catches all of them and nothing from deep inside
JAX leaks out. Each subclass also derives from the builtin exception a Python
user would expect (``KeyError`` for an unknown column, ``ValueError`` for bad
values), so existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations

import sys
import warnings

__all__ = [
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


class JaxmlmError(Exception):
    """Base class of every error raised by jaxmlm."""


class FormulaError(JaxmlmError, ValueError):
    """The model formula cannot describe a mixed model (e.g. no random-effects term)."""


class FormulaSyntaxError(FormulaError):
    """The formula text does not parse; the message shows where."""

    def __init__(self, message: str, formula: str | None = None, position: int | None = None):
        self.formula = formula
        self.position = position
        if formula is not None and position is not None:
            message = f"{message}\n    {formula}\n    {' ' * position}^"
        super().__init__(message)


class UnknownColumnError(JaxmlmError, KeyError):
    """A formula names a column the data does not have."""

    def __init__(self, name: str, close: list[str] | tuple[str, ...] = ()):
        self.name = name
        self.close = list(close)
        hint = f" Did you mean {', '.join(repr(c) for c in self.close)}?" if self.close else ""
        self.message = f"column {name!r} is not in the data.{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class DataError(JaxmlmError, ValueError):
    """The data cannot be used as given (non-numeric response, infinite values, ...)."""


class GroupingError(DataError):
    """A grouping factor is unusable: too few levels, or as many levels as observations."""


class NewLevelsError(DataError):
    """``newdata`` has grouping levels (or missing grouping values) the fit never saw.

    ``levels`` maps each grouping factor to its unseen level labels (in order
    of appearance); ``missing`` maps a factor to its number of rows with a
    missing grouping value. Pass ``allow_new_levels=True`` to predict such
    rows with zero random effects for that factor.
    """

    def __init__(self, message: str, levels: dict[str, list[str]], missing: dict[str, int]):
        self.levels = levels
        self.missing = missing
        super().__init__(message)

class RowsNotHeldError(JaxmlmError, ValueError):
    """A result that needs the model's rows, asked of a fit from data in pieces (a Dask frame or a
    Parquet dataset), which keeps only their statistics."""


class PredictArgumentError(JaxmlmError, TypeError):
    """An argument of ``predict`` has the wrong type or is not supported."""


class InferenceError(JaxmlmError, ValueError):
    """An inference request that cannot be honoured (unknown ddf method, Kenward-Roger on an ML fit, a bad contrast matrix)."""


class ConvergenceError(JaxmlmError, RuntimeError):
    """The optimizer produced no usable estimate (non-finite objective)."""


class ConfigurationError(JaxmlmError, ValueError):
    """A setting of jaxmlm itself (an environment variable or a set_* function) has a bad value."""


class JaxmlmWarning(UserWarning):
    """Base class of every warning jaxmlm emits."""


class RankDeficiencyWarning(JaxmlmWarning):
    """Aliased fixed-effects columns were dropped, as lme4 does."""


class ConvergenceWarning(JaxmlmWarning):
    """The optimizer stopped without meeting its convergence criteria."""


class InferenceWarning(JaxmlmWarning):
    """An inference result to read with care (e.g. a Hessian with a negative eigenvalue)."""


class MissingDataWarning(JaxmlmWarning):
    """Rows with missing values were dropped."""


class DataWarning(JaxmlmWarning):
    """The data are used, but perhaps not as meant (e.g. a column mixing numbers and text fitted as a factor)."""


def outside_jaxmlm(frame):
    """(the first frame from ``frame`` outwards whose code is not jaxmlm's — the user's — or None,
    the number of frames passed over): where warnings point and whose variables name the data."""
    passed = 0
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] == "jaxmlm":
        frame, passed = frame.f_back, passed + 1
    return frame, passed


def warn_user(message: str, category: type[Warning]) -> None:
    """Issue a warning on the user's line: the first caller outside jaxmlm, wherever inside the
    package it arises (a ``stacklevel`` counted by hand breaks whenever a call moves a level
    deeper, and the warning then names a line of jaxmlm's)."""
    _, passed = outside_jaxmlm(sys._getframe(1))
    warnings.warn(message, category, stacklevel=passed + 2)  # 1 is this function, 2 its caller

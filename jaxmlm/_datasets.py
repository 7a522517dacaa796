"""Example data sets shipped with jaxmlm, loaded the way R holds them.

The data sets are the classic mixed-model examples from the R packages lme4,
MASS and mlmRev (see ``jaxmlm/data/README.md`` for provenance and licences).
They travel inside the package as CSV files written by R's ``write.csv``, so
examples, tests and the command line work offline and from an installed wheel.

A CSV file forgets which columns were factors and in which order their levels
came; R's first level is the reference level of treatment contrasts, so the
order decides which coefficients a model reports. ``data/levels.json`` keeps
R's level order for every factor column, and :func:`load_example` restores it
as a pandas ``Categorical`` with string categories.
"""

from __future__ import annotations

import difflib
import functools
import json
from importlib import resources
from importlib.resources.abc import Traversable

import pandas as pd

from ._errors import DataError

__all__ = ["EXAMPLES", "load_example"]

#: Names of the example data sets, spelled as in their R packages.
EXAMPLES: tuple[str, ...] = (
    "sleepstudy",
    "Dyestuff",
    "Dyestuff2",
    "Penicillin",
    "Pastes",
    "nlschools",
    "Hsb82",
    "classroom",
    "Exam",
)

_BY_LOWER = {n.lower(): n for n in EXAMPLES}


def _data_dir() -> Traversable:
    return resources.files(__package__).joinpath("data")


def _canonical(name: str) -> str:
    """Map a case-insensitive data-set name to its canonical spelling.

    Raises
    ------
    DataError
        If ``name`` is not one of :data:`EXAMPLES`; the message lists the
        available names and the closest matches.
    """
    key = name.lower() if isinstance(name, str) else None
    if key in _BY_LOWER:
        return _BY_LOWER[key]
    close = difflib.get_close_matches(str(name).lower(), list(_BY_LOWER), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(_BY_LOWER[c]) for c in close)}?" if close else ""
    raise DataError(
        f"unknown example data set {name!r}.{hint} Available: {', '.join(EXAMPLES)}."
    )


@functools.lru_cache(maxsize=1)
def _levels() -> dict[str, dict[str, list[str]]]:
    """R's level order of every factor column, per data set (from levels.json)."""
    return json.loads(_data_dir().joinpath("levels.json").read_text(encoding="utf-8"))


def example_path(name: str) -> Traversable:
    """Locate the CSV file of an example data set inside the installed package.

    Parameters
    ----------
    name : str
        A name from :data:`EXAMPLES`, in any letter case.

    Returns
    -------
    importlib.resources.abc.Traversable
        The CSV file; a ``pathlib.Path`` when the package lives on disk. Wrap
        it in :func:`importlib.resources.as_file` where a real file path is
        required (e.g. a package imported from a zip archive).

    Raises
    ------
    DataError
        If ``name`` is not a known data set.
    """
    return _data_dir().joinpath(f"{_canonical(name)}.csv")


def load_example(name: str) -> pd.DataFrame:
    """Load an example data set with R's column types and factor level order.

    Each call reads the CSV afresh, so the caller may modify the result.

    Parameters
    ----------
    name : str
        One of :data:`EXAMPLES` (``"sleepstudy"``, ``"Dyestuff"``,
        ``"Dyestuff2"``, ``"Penicillin"``, ``"Pastes"``, ``"nlschools"``,
        ``"Hsb82"``, ``"classroom"``, ``"Exam"``), in any letter case.

    Returns
    -------
    pandas.DataFrame
        Columns that are factors in R are ``Categorical`` with string
        categories in R's level order (the first is R's reference level);
        e.g. sleepstudy's ``Subject`` has categories ``"308", "309", ...``.
        Numeric columns are ``float64`` or ``int64`` as read from the CSV.

    Raises
    ------
    DataError
        If ``name`` is not a known data set.

    Examples
    --------
    >>> df = load_example("sleepstudy")
    >>> df.shape
    (180, 3)
    >>> list(df["Subject"].cat.categories[:3])
    ['308', '309', '310']
    """
    canon = _canonical(name)
    factors = _levels().get(canon, {})
    with example_path(canon).open("rb") as fh:
        # Factor columns are read as text so that codes like "308" or "0"
        # stay the strings R has as levels; "NA" is how write.csv spells NA.
        df = pd.read_csv(
            fh, dtype={col: str for col in factors}, keep_default_na=False, na_values=["NA"]
        )
    for col, levels in factors.items():
        raw = df[col]
        cat = pd.Categorical(raw, categories=levels)
        # A value outside R's levels would silently become NaN: a corrupt file.
        if (pd.isna(cat) & raw.notna().to_numpy()).any():
            raise DataError(f"{canon}.csv: column {col!r} holds values that are not among R's levels")
        df[col] = cat
    return df

"""Data beyond one machine's memory: a Dask frame or a Parquet dataset → merged statistics.

The two passes of :mod:`jaxmlm._partitioned` as Dask graphs over the frame's partitions:
the structure of each partition, combined in a tree; then each partition's statistics
against the plan, merged in a tree. Whatever scheduler is active runs them — threads by
default, a ``distributed`` cluster's workers when a ``Client`` is open — and only the
small results (skeleton rows, statistics) travel. With several JAX devices in the process
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``, or GPUs), partitions are
accumulated on the devices in turn.
"""

from __future__ import annotations

import glob
import os

import jax
import pandas as pd

from ._errors import ConfigurationError, DataError, UnknownColumnError
from ._partitioned import (
    Structure,
    combine_structure,
    finish,
    formula_columns_of,
    make_plan,
    merge_pieces,
    piece_statistics,
    piece_structure,
)

__all__ = ["is_dask_frame", "is_dataset_path", "fit_statistics"]

#: Results combined per node of the reduction trees (dask's own default for tree reductions).
SPLIT_EVERY = 8


def is_dask_frame(data) -> bool:
    """Whether ``data`` is a Dask DataFrame (checked without importing Dask)."""
    return type(data).__module__.split(".")[0] in ("dask", "dask_expr") and hasattr(data, "to_delayed")


def is_dataset_path(data) -> bool:
    """Whether ``data`` names files (a path, directory or glob, or a list of paths) rather than holding rows."""
    if isinstance(data, (list, tuple)):
        return bool(data) and all(isinstance(p, (str, os.PathLike)) for p in data)
    return isinstance(data, (str, os.PathLike))


def _import_dask():
    try:
        import dask
        import dask.dataframe as dd
    except ImportError:  # pragma: no cover - the [dask] extra installs it
        raise ConfigurationError("fitting a Dask frame or a Parquet dataset needs dask: pip install 'jaxmlm[dask]'") \
            from None
    return dask, dd


def read_dataset(path) -> object:
    """A Parquet file, directory of files or glob as a Dask frame (read lazily, partition by partition)."""
    _, dd = _import_dask()
    texts = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [os.fspath(path)]
    for text in texts:
        if not (os.path.exists(text) or glob.glob(text)):
            raise DataError(f"no file matches {text!r}: give a Parquet file, a directory of Parquet files or a glob")
    text = texts if isinstance(path, (list, tuple)) else texts[0]
    try:
        return dd.read_parquet(text)
    except Exception as exc:  # noqa: BLE001 - pyarrow's and fsspec's errors; the user needs the reason
        raise DataError(f"cannot read the Parquet dataset {text!r} ({type(exc).__name__}: {exc})") from None


def _kind(dtype) -> str:
    """What a column's dtype means to a formula: a number, or levels of a factor."""
    if pd.api.types.is_bool_dtype(dtype):
        return "logical"
    if isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    return "numeric" if pd.api.types.is_numeric_dtype(dtype) else "text"


def _checked(part: pd.DataFrame, i: int, kinds: dict[str, tuple[str, object]]) -> pd.DataFrame:
    """``part`` after checking that each column means what the frame's metadata says (numbers or levels)."""
    for c, (kind, dtype) in kinds.items():
        if c not in part.columns:
            raise DataError(f"partition {i} has no column {c!r}, which the formula reads")
        got = part[c].dtype
        if _kind(got) != kind and not (len(part) and part[c].isna().all()):
            raise DataError(f"partition {i}'s column {c!r} has dtype {got}, but the frame's metadata (its first "
                            f"partition or schema) says {dtype}: the partitions disagree on the column's type; cast "
                            f"it to one type first (e.g. ddf[{c!r}].astype(...))")
    return part


def _structure(part: pd.DataFrame, i: int, kinds, columns, keys, required) -> Structure:
    return piece_structure(_checked(part, i, kinds), columns, keys, required)


def _statistics(plan, part: pd.DataFrame, i: int, kinds):
    devices = jax.local_devices()
    where = f"partition {i}"
    if len(devices) == 1:
        return piece_statistics(plan, _checked(part, i, kinds), where)
    with jax.default_device(devices[i % len(devices)]):
        return piece_statistics(plan, _checked(part, i, kinds), where)


def _tree(dask, combine, items: list):
    """Reduce delayed ``items`` with ``combine`` (associative) in a tree, ``SPLIT_EVERY`` at a node."""
    while len(items) > 1:
        nxt = []
        for k in range(0, len(items), SPLIT_EVERY):
            group = items[k:k + SPLIT_EVERY]
            acc = group[0]
            for other in group[1:]:
                acc = dask.delayed(combine, pure=True)(acc, other)
            nxt.append(acc)
        items = nxt
    return items[0]


def fit_statistics(formula, data, weights=None, offset=None):
    """The two passes over ``data`` (a Dask frame, or a path to a Parquet dataset):
    (design without rows, layout, merged statistics), ready for lmer's fit."""
    dask, _ = _import_dask()
    ddf = read_dataset(data) if is_dataset_path(data) else data
    meta = ddf._meta
    try:
        parsed, columns, lhs_cols, factors = formula_columns_of(formula, meta.columns, weights, offset)
    except UnknownColumnError as exc:
        if not is_dataset_path(data):
            raise
        err = UnknownColumnError(exc.name, exc.close)
        err.message = f"{exc.message} (the Parquet dataset {data!r} has columns {list(meta.columns)})"
        raise err from None
    kinds = {c: (_kind(meta[c].dtype), meta[c].dtype) for c in columns}
    for c in (weights, offset):
        if c is not None and kinds[c][0] != "numeric":
            raise DataError(f"column {c!r} ({'weights' if c == weights else 'offset'}) must be numeric, got dtype "
                            f"{kinds[c][1]}")
    keys = tuple(c for c in columns if c in factors or (kinds[c][0] != "numeric" and c not in lhs_cols
                                                        and c not in (weights, offset)))
    required = tuple(c for c in columns if c not in (weights, offset))
    parts = ddf[list(columns)].to_delayed()  # only the formula's columns are read
    structure = _tree(dask, combine_structure, [dask.delayed(_structure, pure=True)(p, i, kinds, columns, keys, required)
                                                for i, p in enumerate(parts)])
    structure = _compute(dask, structure, columns)
    plan = make_plan(parsed, structure, weights, offset)
    plan_node = dask.delayed(plan, pure=True)
    stats = _tree(dask, merge_pieces,
                  [dask.delayed(_statistics, pure=True)(plan_node, p, i, kinds) for i, p in enumerate(parts)])
    return finish(plan, _compute(dask, stats, columns))


def _compute(dask, node, columns):
    try:
        return dask.compute(node)[0]
    except KeyError as exc:  # a partition without a column its metadata promised (raised by Dask's selection)
        raise DataError(f"a partition of the data lacks column(s) {exc} that the frame's metadata lists and the "
                        f"formula reads ({list(columns)}): the partitions disagree on their columns") from None

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
    Columns,
    aliased,
    Structure,
    columns_of,
    combine_structure,
    finish,
    make_plan,
    merge_pieces,
    piece_statistics,
    piece_structure,
    without,
)

__all__ = ["check_files", "dataset_files", "fit_statistics", "is_dask_frame", "is_dataset_path", "read_dataset"]

#: Results combined per node of the reduction trees (dask's own default for tree reductions).
SPLIT_EVERY = 8


def is_dask_frame(data) -> bool:
    """Whether ``data`` is a Dask DataFrame (checked without importing Dask)."""
    return (type(data).__module__.split(".")[0] in ("dask", "dask_expr") and hasattr(data, "to_delayed")
            and hasattr(data, "columns"))


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


def _paths(path) -> list[str]:
    return [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [os.fspath(path)]


def dataset_files(path) -> list[str]:
    """The Parquet files a path, directory, glob or list of them names (directories as pyarrow
    lists them); a DataError for a name that matches none."""
    import pyarrow.dataset as ds

    out: list[str] = []
    for text in _paths(path):
        if os.path.isdir(text):
            files = ds.dataset(text, format="parquet").files
            if not files:
                raise DataError(f"the directory {text!r} holds no Parquet files")
        else:
            files = [text] if os.path.exists(text) else sorted(glob.glob(text))
            if not files:
                raise DataError(f"no file matches {text!r}: give a Parquet file, a directory of Parquet files or a glob")
        out.extend(files)
    return out


def read_dataset(path) -> tuple[object, list[str]]:
    """A Parquet file, directory of files or glob as a Dask frame (read lazily, partition by
    partition), and its files."""
    _, dd = _import_dask()
    files = dataset_files(path)
    text = _paths(path) if isinstance(path, (list, tuple)) else os.fspath(path)
    try:
        return dd.read_parquet(text), files
    except Exception as exc:  # noqa: BLE001 - pyarrow's and fsspec's errors; the user needs the reason
        raise DataError(f"cannot read the Parquet dataset {text!r} ({type(exc).__name__}: {exc})") from None


def _arrow_kind(t) -> str:
    import pyarrow as pa

    if pa.types.is_null(t):  # a column of only missing values: no type to disagree with
        return "null"
    if pa.types.is_boolean(t):
        return "logical"
    if pa.types.is_dictionary(t):
        return "categorical"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric"
    return "text"


def check_files(files: list[str], kinds: dict[str, tuple[str, object]]) -> None:
    """Each file of a Parquet dataset has the formula's columns, of the kinds the dataset's schema
    says (read from the files' footers only): a DataError naming the first file that does not."""
    import pyarrow.parquet as pq

    for f in files:
        schema = pq.read_schema(f)
        missing = [c for c in kinds if c not in schema.names]
        if missing:
            raise DataError(f"file {f!r} of the Parquet dataset has no column(s) {missing}, which the formula reads")
        for c, (kind, dtype) in kinds.items():
            got = schema.field(c).type
            if _arrow_kind(got) not in (kind, "null"):
                raise DataError(f"file {f!r} stores column {c!r} as {got}, but the dataset's schema says {dtype}: the "
                                "files disagree on the column's type; rewrite them with one type")


def _structure(part: pd.DataFrame, i: int, cols: Columns) -> Structure:
    return piece_structure(part, cols, f"partition {i}")


def _statistics(plan, part: pd.DataFrame, i: int):
    devices = jax.local_devices()
    where = f"partition {i}"
    if len(devices) == 1:
        return piece_statistics(plan, part, where)
    with jax.default_device(devices[i % len(devices)]):
        return piece_statistics(plan, part, where)


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
    ddf, files = read_dataset(data) if is_dataset_path(data) else (data, None)
    meta = ddf._meta
    try:
        cols = columns_of(formula, meta, weights, offset)
    except UnknownColumnError as exc:
        if not is_dataset_path(data):
            raise
        err = UnknownColumnError(exc.name, exc.close)
        err.message = f"{exc.message} (the Parquet dataset {data!r} has columns {list(meta.columns)})"
        raise err from None
    if files is not None:
        check_files(files, cols.kinds)
    columns = cols.columns
    parts = ddf[list(columns)].to_delayed()  # only the formula's columns are read
    structure = _tree(dask, combine_structure,
                      [dask.delayed(_structure, pure=True)(p, i, cols) for i, p in enumerate(parts)])
    plan = make_plan(_compute(dask, structure, columns))
    stats = _compute(dask, _statistics_of(dask, plan, parts), columns)
    drop = aliased(plan, stats)
    if drop:  # rare: one more pass, without the aliased columns (see _partitioned.aliased)
        plan = without(plan, drop)
        stats = _compute(dask, _statistics_of(dask, plan, parts), columns)
    return finish(plan, stats)


def _statistics_of(dask, plan, parts):
    node = dask.delayed(plan, pure=True)
    return _tree(dask, merge_pieces, [dask.delayed(_statistics, pure=True)(node, p, i) for i, p in enumerate(parts)])


def _compute(dask, node, columns):
    try:
        return dask.compute(node)[0]
    except KeyError as exc:  # a partition without a column its metadata promised (raised by Dask's selection)
        raise DataError(f"a partition of the data lacks column(s) {exc} that the frame's metadata lists and the "
                        f"formula reads ({list(columns)}): the partitions disagree on their columns") from None

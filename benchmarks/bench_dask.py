#!/usr/bin/env python
"""A Parquet dataset beyond comfortable memory, fitted through Dask on 2 cores: time and peak memory.

Run from the repository root (needs ``pip install -e ".[dask]"``)::

    PYTHONPATH=. python benchmarks/bench_dask.py                    # 100M rows, 100k groups
    PYTHONPATH=. python benchmarks/bench_dask.py --rows 10000000    # a smaller run

The data (fixed seed, written once to ``--dir``, one file per million rows, chunk by chunk so
the writer never holds more than a file): g with 100k levels drawn uniformly per row,
x1, x2 ~ N(0, 1), y = 1 + 0.5 x1 − 0.3 x2 + b0[g] + b1[g] x1 + e with SD(b0) 1, SD(b1) 0.5,
corr 0.3, SD(e) 2. The model is ``y ~ x1 + x2 + (1 + x1 | g)`` (REML).

Stages, each in its own fresh process so that peak RSS (``ru_maxrss``) is the stage's own:

* ``cluster`` — ``jaxmlm.lmer(formula, DIR)`` through a ``distributed.LocalCluster`` of 2 worker
  processes with 1 thread each: wall time, the client's peak RSS, each worker's peak RSS;
* ``chunks`` — the same files accumulated one after the other in one process (Dask's
  synchronous scheduler): the estimates the cluster's must equal;
* ``memory`` — on the first 10M rows only: ``jaxmlm.lmer`` on the rows read into one pandas
  frame, against the same 10M rows through Dask (threads): rows per second of each path.

Results go to ``benchmarks/results/dask.md`` (and are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMULA = "y ~ x1 + x2 + (1 + x1 | g)"
ROWS_PER_FILE = 1_000_000
GROUPS = 100_000
SEED = 20261205


def write(folder: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    L = np.linalg.cholesky(np.array([[1.0, 0.3 * 0.5], [0.3 * 0.5, 0.25]]))
    b = rng.normal(size=(GROUPS, 2)) @ L.T
    for i in range(rows // ROWS_PER_FILE):
        path = folder / f"part-{i:04d}.parquet"
        if path.exists():
            continue
        r = np.random.default_rng([SEED, i])
        g = r.integers(0, GROUPS, ROWS_PER_FILE).astype(np.int32)
        x1, x2 = r.normal(size=ROWS_PER_FILE), r.normal(size=ROWS_PER_FILE)
        y = 1 + 0.5 * x1 - 0.3 * x2 + b[g, 0] + b[g, 1] * x1 + 2 * r.normal(size=ROWS_PER_FILE)
        pq.write_table(pa.table({"y": y, "x1": x1, "x2": x2, "g": g}), path)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _estimates(m) -> dict:
    return {"objective": m.objective, "fixef": m.fixef.tolist(), "se": m.se.tolist(), "theta": m.theta.tolist(),
            "sigma": m.sigma, "nobs": m.nobs}


def stage_cluster(folder: Path, files: str) -> dict:
    import warnings

    import distributed

    import jaxmlm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      memory_limit="6GB") as cluster, distributed.Client(cluster) as client:
            t = time.perf_counter()
            m = jaxmlm.lmer(FORMULA, str(folder / files))
            seconds = time.perf_counter() - t
            workers = client.run(_peak_mb)
    return {"seconds": seconds, "client_mb": _peak_mb(), "worker_mb": sorted(workers.values()), **_estimates(m)}


def stage_chunks(folder: Path, files: str) -> dict:
    import dask

    import jaxmlm

    with dask.config.set(scheduler="synchronous"):
        t = time.perf_counter()
        m = jaxmlm.lmer(FORMULA, str(folder / files))
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "client_mb": _peak_mb(), **_estimates(m)}


def stage_memory(folder: Path, files: str) -> dict:
    import pandas as pd

    import jaxmlm

    paths = sorted(folder.glob(files))[:10]
    t = time.perf_counter()
    df = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    read = time.perf_counter() - t
    jaxmlm.lmer(FORMULA, df.iloc[:1_000_000])  # compile the programs of these shapes outside the timing
    t = time.perf_counter()
    m = jaxmlm.lmer(FORMULA, df)
    fit = time.perf_counter() - t
    del df
    t = time.perf_counter()
    md = jaxmlm.lmer(FORMULA, [str(p) for p in paths])
    dask_s = time.perf_counter() - t
    return {"rows": m.nobs, "read_s": read, "fit_s": fit, "dask_s": dask_s, "objective": m.objective,
            "objective_dask": md.objective}


def run_stage(name: str, folder: Path, files: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stage", name, "--dir", str(folder), "--files", files],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
    if out.returncode:
        raise SystemExit(f"stage {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--dir", default="/tmp/jaxmlm-bench-parquet")
    ap.add_argument("--stage")
    ap.add_argument("--files", default="part-*.parquet")
    a = ap.parse_args()
    folder = Path(a.dir)
    if a.stage:
        print(json.dumps({"cluster": stage_cluster, "chunks": stage_chunks, "memory": stage_memory}[a.stage](
            folder, a.files)))
        return
    t = time.perf_counter()
    write(folder, a.rows)
    nfiles = a.rows // ROWS_PER_FILE
    files = "part-*.parquet" if len(list(folder.glob("part-*.parquet"))) == nfiles else None
    if files is None:
        raise SystemExit(f"{folder} holds other files than the {nfiles} of this run; use a fresh --dir")
    print(f"data: {nfiles} files in {time.perf_counter() - t:.0f} s", flush=True)
    cl = run_stage("cluster", folder, files)
    print("cluster", cl, flush=True)
    ch = run_stage("chunks", folder, files)
    print("chunks", ch, flush=True)
    mem = run_stage("memory", folder, files)
    print("memory", mem, flush=True)
    import numpy as np

    dfix = float(np.max(np.abs(np.subtract(cl["fixef"], ch["fixef"]) / np.asarray(ch["se"]))))
    lines = [
        f"# Fitting a Parquet dataset through Dask ({time.strftime('%Y-%m-%d')}, `benchmarks/bench_dask.py`)",
        "",
        f"`{FORMULA}` (REML) on {cl['nobs']:,} rows in {nfiles} Parquet files, {GROUPS:,} groups; "
        f"{os.cpu_count()} cores. Peak RSS is each process's `ru_maxrss`.",
        "",
        "| path | wall (s) | rows / s | client peak RSS (MB) | worker peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
        f"| LocalCluster, 2 worker processes × 1 thread | {cl['seconds']:.1f} | {cl['nobs'] / cl['seconds']:,.0f} | "
        f"{cl['client_mb']:.0f} | {' / '.join(f'{w:.0f}' for w in cl['worker_mb'])} |",
        f"| one process, files one after the other | {ch['seconds']:.1f} | {ch['nobs'] / ch['seconds']:,.0f} | "
        f"{ch['client_mb']:.0f} | – |",
        f"| first 10M rows: in memory (pandas frame, after reading {mem['read_s']:.1f} s) | {mem['fit_s']:.1f} | "
        f"{mem['rows'] / mem['fit_s']:,.0f} | – | – |",
        f"| first 10M rows: through Dask (threads) | {mem['dask_s']:.1f} | {mem['rows'] / mem['dask_s']:,.0f} | – | – |",
        "",
        f"Cluster against one process: criterion difference {cl['objective'] - ch['objective']:.3g} "
        f"(relative {abs(cl['objective'] - ch['objective']) / abs(ch['objective']):.2g}), "
        f"fixed effects within {dfix:.2g} SE; 10M rows in memory against Dask: criterion difference "
        f"{mem['objective'] - mem['objective_dask']:.3g}.",
        "",
        f"Estimates (cluster): fixef {np.round(cl['fixef'], 4).tolist()}, theta {np.round(cl['theta'], 4).tolist()}, "
        f"sigma {cl['sigma']:.4f}.",
    ]
    text = "\n".join(lines) + "\n"
    (HERE / "results" / "dask.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

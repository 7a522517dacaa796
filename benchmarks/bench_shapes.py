#!/usr/bin/env python
"""Many model shapes in one process: memory mappings and RSS stay bounded (issue 12).

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_shapes.py                    # 500 shapes, a line every 25
    JAXMLM_MAX_PROGRAMS=4 PYTHONPATH=. python benchmarks/bench_shapes.py --shapes 20 --every 1
    PYTHONPATH=. python benchmarks/bench_shapes.py --json out.json    # every shape's figures

Each shape is a new model (a new number of fixed-effect columns, random-effects
structure — intercepts, slopes, uncorrelated slopes, crossed, nested — or
number of levels, across the padding buckets) fitted by REML to simulated data,
then ``summary()``, ``coef_table()`` (Satterthwaite) and ``predict()`` on ten
rows. After every shape the script reads the process's memory mappings
(lines of ``/proc/self/maps``; the kernel's limit is ``vm.max_map_count``,
65,530 by default) and its resident memory (``/proc/self/statm``), and counts
XLA compilations (``jax.monitoring``). Before jaxmlm bounded its compiled
programs (``jaxmlm/_compiled.py``) such a process gained ~800–1,700
mappings and ~30 MB per shape and aborted inside XLA after a few dozen shapes.

``tests/test_compiled.py`` runs this script on a few shapes with a small
bound, in a process of its own, and checks the figures it writes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np
import pandas as pd

RANDOM = ("(1 | g)", "(x1 | g)", "(x1 || g)", "(1 | g) + (1 | h)", "(1 | g) + (0 + x1 | h)", "(1 | g/h)")
LEVELS = (6, 9, 13, 19, 27, 38, 54, 76, 108, 152)  # about two per octave: each its own padding bucket
MAX_P = 9


def shapes():
    """(fixed-effect columns, random part, levels of g) of every shape, in the order fitted."""
    for lv in LEVELS:
        for r in RANDOM:
            for p in range(1, MAX_P + 1):
                yield p, r, lv


def formula(p: int, random: str) -> str:
    return "y ~ " + " + ".join(f"x{j}" for j in range(1, p + 1)) + " + " + random


def data(p: int, levels: int, rng) -> pd.DataFrame:
    """Simulated rows for a shape: g with ``levels`` levels, h crossed with (or nested in) it."""
    n = max(4 * levels, 60)
    d = pd.DataFrame({f"x{j}": rng.normal(size=n) for j in range(1, p + 1)})
    pair = np.arange(n) // 2  # every (g, h) pair on two rows at least: g/h has fewer levels than rows
    g = pair % levels
    d["g"] = pd.Categorical(g)
    d["h"] = pd.Categorical((pair // 2) % (levels // 2 + 2))
    d["y"] = d["x1"] + rng.normal(size=levels)[g] + rng.normal(size=n)
    return d


def maps() -> int:
    """The process's memory mappings (the kernel refuses new ones past vm.max_map_count)."""
    with open("/proc/self/maps") as fh:
        return sum(1 for _ in fh)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=500, help="how many shapes to fit (default 500)")
    ap.add_argument("--every", type=int, default=25, help="print a line every this many shapes")
    ap.add_argument("--start", type=int, default=0, help="skip this many shapes of the list first")
    ap.add_argument("--json", help="write every shape's figures to this file")
    args = ap.parse_args(argv)

    import jax.monitoring

    import jaxmlm
    from jaxmlm import _compiled

    compiles = [0]

    def on_event(name, *a, **k):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles[0] += 1

    jax.monitoring.register_event_duration_secs_listener(on_event)
    total = len(LEVELS) * len(RANDOM) * MAX_P
    if args.start + args.shapes > total:
        ap.error(f"at most {total} shapes")
    print(f"jaxmlm {jaxmlm.__version__}, JAX {jax.__version__}, bound {_compiled.max_programs()} programs; "
          f"start: {maps()} mappings, {rss_mb():.0f} MB", flush=True)
    rng = np.random.default_rng(1)
    rows, t0 = [], time.perf_counter()
    todo = itertools.islice(shapes(), args.start, args.start + args.shapes)
    for i, (p, random, levels) in enumerate(todo, args.start + 1):
        d = data(p, levels, rng)
        f = formula(p, random)
        m = jaxmlm.lmer(f, d)
        m.summary()
        m.coef_table()
        m.predict(d.head(10))
        row = {"shape": i, "formula": f, "levels": levels, "maps": maps(), "rss_mb": round(rss_mb(), 1),
               "compiles": compiles[0], "programs": _compiled.program_count(),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        if i % args.every == 0 or i == args.start + 1:
            print(f"{i:4d} shapes  {row['maps']:6d} mappings  {row['rss_mb']:7.1f} MB  {row['compiles']:5d} compiles  "
                  f"{row['programs']:3d} programs  {row['seconds']:7.1f} s   {f} ({levels} levels)", flush=True)
    peak_maps = max(r["maps"] for r in rows)
    peak_rss = max(r["rss_mb"] for r in rows)
    print(f"done: {len(rows)} shapes (from shape {args.start + 1}) in {rows[-1]['seconds']:.0f} s; peak {peak_maps} mappings, {peak_rss:.0f} MB",
          flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"max_programs": _compiled.max_programs(), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

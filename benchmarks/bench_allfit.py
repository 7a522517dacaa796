#!/usr/bin/env python
"""all_fit against lme4's allFit, side by side in one run.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_allfit.py            # writes benchmarks/results/allfit.md
    PYTHONPATH=. python benchmarks/bench_allfit.py --runs 7

Model: nlschools ``lang ~ IQ + (1 + IQ | class)`` by ML, where lme4's default optimizer
warns (max|grad| 0.049). lme4 (``Rscript``): ``allFit(m)`` with every optimizer it finds
(seven with optimx and dfoptim installed), median elapsed of 3 calls. jaxmlm, in fresh
processes: ``m.all_fit()`` (newton and bfgs, each from lme4's start and 3 random starts,
batched) the first time — tracing and compiling its two programs, or finding them in the
compilation cache — then the median of ``runs`` warm calls. Both report the spread of the
criterion over their refits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

R_SCRIPT = r"""
suppressMessages({library(lme4); library(MASS)})
m <- suppressWarnings(lmer(lang ~ IQ + (1 + IQ | class), nlschools, REML = FALSE))
times <- numeric(3)
for (r in 1:3) times[r] <- system.time(af <- suppressMessages(suppressWarnings(allFit(m, verbose = FALSE))))[["elapsed"]]
s <- summary(af)
cat(jsonlite::toJSON(list(seconds = times, n = length(af), deviance = -2 * s$llik,
                          version = as.character(packageVersion("lme4"))), digits = NA, auto_unbox = TRUE))
"""

PY_SCRIPT = r"""
import json, statistics, sys, time
import jaxmlm
m = jaxmlm.lmer("lang ~ IQ + (1 + IQ | class)", jaxmlm.load_example("nlschools"), REML=False)
t = time.perf_counter(); af = m.all_fit(); first = time.perf_counter() - t
warm = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter(); af = m.all_fit(); warm.append(time.perf_counter() - t)
print(json.dumps(dict(first=first, warm=warm, n=len(af.table), criterion=af.table["criterion"].tolist())))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/allfit.md")
    a = ap.parse_args()
    def jaxmlm_process(cache: str) -> dict:
        env = dict(os.environ, JAXMLM_CACHE_DIR=cache)
        out = subprocess.run([sys.executable, "-c", PY_SCRIPT, str(a.runs)], check=True, capture_output=True,
                             text=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as cache:
        cold = jaxmlm_process("off")
        jaxmlm_process(cache)  # fills the compilation cache
        cached = jaxmlm_process(cache)
    rows = [("jaxmlm all_fit, first call in a new process, no compilation cache", cold["first"], cold["n"],
             cold["criterion"]),
            ("jaxmlm all_fit, first call in a new process, compilation cache warm", cached["first"], cached["n"],
             cached["criterion"]),
            ("jaxmlm all_fit, warm (median)", statistics.median(cold["warm"] + cached["warm"]), cold["n"],
             cold["criterion"])]
    r = None
    if shutil.which("Rscript"):
        out = subprocess.run(["Rscript", "-e", R_SCRIPT], check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append((f"lme4 {r['version']} allFit (median of 3)", statistics.median(r["seconds"]), r["n"], r["deviance"]))
    lines = [
        f"all_fit vs lme4's allFit: nlschools lang ~ IQ + (1 + IQ | class), ML "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {platform.python_version()})",
        "",
        "| tool | seconds | refits | deviance min | deviance max |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, sec, n, crit in rows:
        lines.append(f"| {name} | {sec:.3f} | {n} | {min(crit):.5f} | {max(crit):.5f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Batched refits: jaxmlm's refit_many against lme4's refit() loop.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_refit.py                 # 1000 refits, 5 warm runs
    PYTHONPATH=. python benchmarks/bench_refit.py --nsim 2000 --runs 7 --r-nsim 200

Model: sleepstudy ``Reaction ~ Days + (Days | Subject)`` by REML. ``nsim``
responses are simulated from the fit (jaxmlm.simulate, fixed seed) and
refitted in one ``refit_many`` call: the first call is reported on its own
(it traces and compiles the batched program), then the median of ``runs``
warm calls. lme4 (if ``Rscript`` is on the PATH) refits the first
``r_nsim`` of the same responses with ``refit(m, newresp = y)`` in a loop,
timed inside R (median of 3 loops), and its REML criteria are compared with
jaxmlm's (negative differences: jaxmlm's optimum is lower; lme4's refit starts
at the original θ̂ and its optimizer stops earlier). Prints a small Markdown table.
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

import numpy as np

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
Y <- as.matrix(read.csv(args[1], header = FALSE))
m <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy)
fits <- vector("list", nrow(Y))
times <- numeric(3)
for (r in 1:3) {
  times[r] <- system.time(for (i in seq_len(nrow(Y))) fits[[i]] <- refit(m, newresp = Y[i, ]))[["elapsed"]]
}
# REMLcrit() of a refit() object is stale in lme4 1.1-31 (it can be ~8 above the criterion at the
# refitted θ); recompute the REML criterion from the fit's components instead.
n <- nrow(sleepstudy)
p <- length(fixef(m))
crit <- vapply(fits, function(f) {
  cm <- f@devcomp$cmp
  cm[["ldL2"]] + cm[["ldRX2"]] + (n - p) * (1 + log(2 * pi * cm[["pwrss"]] / (n - p)))
}, numeric(1))
cat(jsonlite::toJSON(list(seconds = times, criterion = crit, version = as.character(packageVersion("lme4"))),
                     digits = NA, auto_unbox = TRUE))
"""


def run_jaxmlm(nsim: int, runs: int, seed: int):
    import jaxmlm

    d = jaxmlm.load_example("sleepstudy")
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d)
    Y = m.simulate(nsim, seed=seed)
    t0 = time.perf_counter()
    first = m.refit_many(Y, progress=False)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = m.refit_many(Y, progress=False)
        warm.append(time.perf_counter() - t0)
    assert np.array_equal(res.objective, first.objective, equal_nan=True)
    return Y, res, cold, warm


def run_lme4(Y: np.ndarray):
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "Y.csv"
        np.savetxt(csv, Y, delimiter=",", fmt="%.17g")
        script = Path(tmp) / "refit.R"
        script.write_text(R_SCRIPT)
        out = subprocess.run(["Rscript", str(script), str(csv)], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        print("lme4 run failed:\n" + out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nsim", type=int, default=1000, help="responses refitted by jaxmlm in one call")
    ap.add_argument("--runs", type=int, default=5, help="warm jaxmlm calls (median reported)")
    ap.add_argument("--r-nsim", type=int, default=200, help="responses refitted by lme4's refit() loop")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--no-r", action="store_true", help="skip lme4")
    a = ap.parse_args(argv)

    Y, res, cold, warm = run_jaxmlm(a.nsim, a.runs, a.seed)
    med = statistics.median(warm)
    rows = [("jaxmlm refit_many (warm, median)", a.nsim, med), ("jaxmlm refit_many (first call)", a.nsim, cold)]
    r = None if a.no_r else run_lme4(Y[: a.r_nsim])
    if r is not None:
        rows.append((f"lme4 {r['version']} refit() loop (median of 3)", a.r_nsim, statistics.median(r["seconds"])))

    import jax

    print(f"\nsleepstudy Reaction ~ Days + (Days | Subject), REML; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, JAX {jax.__version__} ({jax.default_backend()})\n")
    print("| tool | refits | seconds | ms / refit | refits / s |")
    print("|---|---:|---:|---:|---:|")
    for name, k, s in rows:
        print(f"| {name} | {k} | {s:.3f} | {1000 * s / k:.3f} | {k / s:,.0f} |")
    print(f"\ncompile (first call − warm median): {cold - med:.2f} s; warm runs: "
          + ", ".join(f"{w:.3f}" for w in warm))
    print(f"replicates ok: {int(res.ok.sum())} / {a.nsim}; Newton iterations: median "
          f"{int(np.median(res.iterations))}, max {int(res.iterations.max())} (a batch runs as long as its slowest)")
    if r is not None:
        crit = np.asarray(r["criterion"], float)
        diff = res.objective[: len(crit)] - crit
        print(f"REML criterion, jaxmlm − lme4 on the same {len(crit)} responses: max {diff.max():+.2e}, "
              f"min {diff.min():+.2e} (negative: jaxmlm's optimum is lower)")
        print(f"speed-up per refit: {statistics.median(r['seconds']) / a.r_nsim / (med / a.nsim):.0f}×")


if __name__ == "__main__":
    main()

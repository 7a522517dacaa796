#!/usr/bin/env python
"""Exact group influence: jaxmlm's batched leave-one-group-out refits against lme4's loop.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_influence.py               # 5 warm runs, 3 R loops
    PYTHONPATH=. python benchmarks/bench_influence.py --runs 7 --r-runs 5

Model: Exam (mlmRev; 4,059 pupils in 65 schools), ``normexam ~ standLRT + (standLRT | school)``
by REML. jaxmlm: ``m.influence("school", method="exact")`` — 65 refits, each without one
school, in one compiled program (rows of the deleted school get weight 0), started at θ̂.
The first call in this process is reported on its own (it traces and compiles the program;
with jaxmlm's caches on — ``JAXMLM_CACHE_DIR`` a folder, or unset: the default — a later
process loads the exported, compiled program instead: run the script twice with the same
cache to see that), then the median of ``runs`` warm calls. The approximate diagnostics (one Newton
step per school) are timed the same way.

lme4 (if ``Rscript`` is on the PATH): the same 65 refits as influence.ME runs them,
``update(m, data = Exam[Exam$school != s, ])`` for each school s (lme4's default optimizer
and tolerances), then Cook's distance and DFBETAS; timed inside R with ``system.time``
around the loop (median of ``r_runs`` loops), so R's start-up and the data's loading are
not counted. Both fit the same CSV (jaxmlm/data/Exam.csv). The largest difference of the
Cook's distances is printed (lme4's default tolerances: about 1e-4 relative). Prints a
small Markdown table; the ratio is R's median over jaxmlm's warm median.
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

FORMULA = "normexam ~ standLRT + (standLRT | school)"

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
Exam <- read.csv(args[1], stringsAsFactors = TRUE)
Exam$school <- factor(Exam$school)
runs <- as.integer(args[2])
m <- lmer(normexam ~ standLRT + (standLRT | school), Exam)
b <- fixef(m); V <- vcov(m); p <- length(b)
schools <- levels(Exam$school)
times <- numeric(runs)
for (r in seq_len(runs)) {
  times[r] <- system.time({
    refits <- lapply(schools, function(s) update(m, data = Exam[Exam$school != s, ]))
    bj <- t(sapply(refits, fixef))
    sej <- t(sapply(refits, function(f) sqrt(diag(as.matrix(vcov(f))))))
    D <- sweep(-bj, 2, b, "+")
    cook <- rowSums((D %*% solve(as.matrix(V))) * D) / p
    dfbetas <- D / sej
  })[["elapsed"]]
}
cat(jsonlite::toJSON(list(seconds = times, cooks = unname(cook), labels = schools,
                          version = as.character(packageVersion("lme4")), R = R.version.string),
                     digits = NA, auto_unbox = TRUE))
"""


def run_jaxmlm(runs: int):
    import jax

    import jaxmlm

    df = jaxmlm.load_example("Exam")
    t0 = time.perf_counter()
    m = jaxmlm.lmer(FORMULA, df)
    fit_s = time.perf_counter() - t0
    out = {"fit_first": fit_s, "jax": jax.__version__, "device": str(jax.devices()[0])}
    for method in ("exact", "approximate"):
        t0 = time.perf_counter()
        inf = m.influence("school", method=method)
        out[f"{method}_first"] = time.perf_counter() - t0
        warm = []
        for _ in range(runs):
            t0 = time.perf_counter()
            inf = m.influence("school", method=method)
            warm.append(time.perf_counter() - t0)
        out[f"{method}_warm"] = warm
        out[f"{method}_cooks"] = inf.cooks_distance
        if method == "exact":
            out["converged"] = int(inf.converged.sum())
    return out


def run_r(r_runs: int):
    if shutil.which("Rscript") is None:
        return None, "Rscript not on PATH"
    csv = Path(__file__).resolve().parent.parent / "jaxmlm" / "data" / "Exam.csv"
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(R_SCRIPT)
        script = f.name
    try:
        res = subprocess.run(["Rscript", "--vanilla", script, str(csv), str(r_runs)], capture_output=True, text=True,
                             timeout=3600)
    finally:
        os.unlink(script)
    if res.returncode != 0:
        return None, res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "Rscript failed"
    return json.loads(res.stdout), None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="warm jaxmlm calls (median)")
    ap.add_argument("--r-runs", type=int, default=3, help="lme4 loops (median)")
    args = ap.parse_args(argv)
    r, why = run_r(args.r_runs)
    j = run_jaxmlm(args.runs)
    exact = statistics.median(j["exact_warm"])
    approx = statistics.median(j["approximate_warm"])
    print(f"# Exact group influence, Exam `{FORMULA}` (4,059 rows, 65 schools)\n")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, jax {j['jax']}, "
          f"{j['device']}; JAXMLM_CACHE_DIR={os.environ.get('JAXMLM_CACHE_DIR', '(default)')}\n")
    print("| what | seconds | R loop / this |")
    print("|---|---:|---:|")
    rs = statistics.median(r["seconds"]) if r else None

    def ratio(s):
        return f"{rs / s:.1f}×" if rs else "–"

    print(f"| jaxmlm exact, first call in the process (trace + compile + run) | {j['exact_first']:.3f} | "
          f"{ratio(j['exact_first'])} |")
    print(f"| jaxmlm exact, warm (median of {args.runs}: {', '.join(f'{s:.3f}' for s in j['exact_warm'])}) | "
          f"{exact:.3f} | {ratio(exact)} |")
    print(f"| jaxmlm approximate (one Newton step), first call | {j['approximate_first']:.3f} | "
          f"{ratio(j['approximate_first'])} |")
    print(f"| jaxmlm approximate, warm (median of {args.runs}) | {approx:.3f} | {ratio(approx)} |")
    if r:
        print(f"| lme4 {r['version']} loop of 65 `update()` refits (median of {args.r_runs}: "
              f"{', '.join(f'{s:.2f}' for s in r['seconds'])}) | {rs:.3f} | 1 |")
        ck = j["exact_cooks"].set_axis([str(x) for x in j["exact_cooks"].index]).loc[r["labels"]].to_numpy()
        rel = np.max(np.abs(ck / np.asarray(r["cooks"]) - 1))
        print(f"\nCook's distances, jaxmlm exact against lme4's loop: largest relative difference {rel:.2e} "
              f"(lme4's default tolerances); {j['converged']}/65 jaxmlm refits converged.")
    else:
        print(f"\nlme4 skipped: {why}")
    ap_rel = np.max(np.abs(j["approximate_cooks"] / j["exact_cooks"] - 1))
    print(f"Approximate against exact Cook's distance: largest relative difference {ap_rel:.3f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

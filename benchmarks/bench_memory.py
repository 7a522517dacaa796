#!/usr/bin/env python
"""Peak memory of a large crossed fit: jaxmlm's stages against lme4, side by side.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_memory.py                 # 1M rows, 5,000 × 2,000 levels
    PYTHONPATH=. python benchmarks/bench_memory.py --rows 200000 --stages fit

The data (fixed seed): g1 with ``--g1`` levels and g2 with ``--g2`` levels drawn uniformly
per row, x ~ N(0, 1), y = 1 + 0.5 x + b1[g1] + b2[g2] + e with SDs 1, 0.7 and 2. They are
written once to a CSV in a temporary folder; every stage reads that file in its own fresh
process, one at a time, and reports its peak resident set size (``ru_maxrss`` of the
process, data included) and wall time:

* ``data``  — jaxmlm's data pass alone (design + sufficient statistics);
* ``fit``   — ``jaxmlm.lmer("y ~ x + (1 | g1) + (1 | g2)", d)`` (REML);
* ``table`` — the fit and then ``m.coef_table()`` (Satterthwaite df);
* ``lme4``  — ``lme4::lmer`` on the same CSV, peak RSS by ``/usr/bin/time -v``;
* ``lmerTest`` — lmerTest's ``summary`` (Satterthwaite df) after the fit, likewise.

"RSS after data" is the process's RSS after reading the CSV (the baseline every stage
starts from). Results go to ``benchmarks/results/memory_run.md`` and are printed
(``memory.md`` holds the curated before/after table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEED = 20241204
FORMULA = "y ~ x + (1 | g1) + (1 | g2)"


def make_csv(path: Path, rows: int, g1: int, g2: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(SEED)
    a = rng.integers(0, g1, rows)
    b = rng.integers(0, g2, rows)
    x = rng.standard_normal(rows)
    y = 1.0 + 0.5 * x + rng.normal(0, 1.0, g1)[a] + rng.normal(0, 0.7, g2)[b] + rng.normal(0, 2.0, rows)
    pd.DataFrame({"y": y, "x": x, "g1": a, "g2": b}).to_csv(path, index=False, float_format="%.17g")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(stage: str, csv: str) -> None:
    import resource

    import pandas as pd

    d = pd.read_csv(csv)
    for c in ("g1", "g2"):
        d[c] = pd.Categorical(d[c])
    out = {"stage": stage, "rss_after_data_mib": _rss_mib()}
    t0 = time.perf_counter()
    if stage == "data":
        from jaxmlm._frontend import build_design
        from jaxmlm._stats import sufficient_stats

        layout, st, _ = sufficient_stats(build_design(FORMULA, d))
        import jax

        jax.block_until_ready(st)
        out["layout"] = {"l1": layout.l1, "qr": layout.qr, "nnz": layout.nnz, "npairs": layout.npairs,
                         "bbt": layout.bbt}
    else:
        import jaxmlm

        m = jaxmlm.lmer(FORMULA, d)
        out["fit_s"] = time.perf_counter() - t0
        out["reml_crit"] = float(m.objective)
        out["optimizer_s"] = float(m.record.seconds)
        out["evaluations"] = int(m.record.evaluations)
        out["theta"] = [float(t) for t in m.theta]
        out["layout"] = {"l1": m.layout.l1, "qr": m.layout.qr, "nnz": m.layout.nnz, "npairs": m.layout.npairs,
                         "bbt": m.layout.bbt}
        if stage == "table":
            t1 = time.perf_counter()
            tab = m.coef_table()
            out["table_s"] = time.perf_counter() - t1
            out["df"] = [float(v) for v in tab.iloc[:, 2]]
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages(library(lme4))
if (args[2] == "lmerTest") suppressPackageStartupMessages(library(lmerTest))
d <- read.csv(args[1])
d$g1 <- factor(d$g1); d$g2 <- factor(d$g2)
gc()
t0 <- proc.time()[["elapsed"]]
m <- lmer(y ~ x + (1 | g1) + (1 | g2), d)
fit_s <- proc.time()[["elapsed"]] - t0
df <- NA
if (args[2] == "lmerTest") df <- summary(m)$coefficients[, "df"]
cat(sprintf("RRESULT %.17g %.10g %s\n", fit_s, REMLcrit(m), paste(format(df, digits = 10), collapse = ",")))
cat(sprintf("RTHETA %s\n", paste(format(getME(m, "theta"), digits = 10), collapse = ",")))
"""


def run_r(stage: str, csv: str, tmp: Path) -> dict:
    script = tmp / "mem.R"
    script.write_text(R_SCRIPT)
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", "Rscript", "--vanilla", str(script), csv, stage],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        return {"stage": stage, "error": p.stderr[-2000:]}
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    fit_s, crit, df = re.search(r"RRESULT (\S+) (\S+) (.*)", p.stdout).groups()
    theta = re.search(r"RTHETA (.*)", p.stdout).group(1)
    return {"stage": stage, "peak_rss_mib": peak, "wall_s": wall, "fit_s": float(fit_s), "reml_crit": float(crit),
            "df": df.strip(), "theta": theta.strip()}


def run_py(stage: str, csv: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAXMLM_CACHE_DIR", "off")
    p = subprocess.run([sys.executable, __file__, "--worker", stage, csv], capture_output=True, text=True, env=env)
    m = re.search(r"^RESULT (.*)$", p.stdout, re.M)
    if p.returncode or not m:
        return {"stage": stage, "error": (p.stderr or p.stdout)[-2000:], "rc": p.returncode}
    return json.loads(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--g1", type=int, default=5000)
    ap.add_argument("--g2", type=int, default=2000)
    ap.add_argument("--stages", default="data,fit,table,lme4,lmerTest")
    ap.add_argument("--out", default=str(HERE / "results" / "memory_run.md"))
    ap.add_argument("--worker", nargs=2, metavar=("STAGE", "CSV"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv = str(tmp / "crossed.csv")
        make_csv(Path(csv), args.rows, args.g1, args.g2)
        for stage in args.stages.split(","):
            r = run_r(stage, csv, tmp) if stage in ("lme4", "lmerTest") else run_py(stage, csv)
            print(json.dumps(r), flush=True)
            results.append(r)
    load = os.getloadavg()[0]
    lines = [f"# Peak memory: {args.rows:,} rows, {args.g1:,} × {args.g2:,} levels, `{FORMULA}`", "",
             f"load average (1 min) at the end: {load:.1f}", "",
             "| stage | peak RSS (MiB) | RSS after data (MiB) | wall (s) | fit (s) | notes |", "|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['stage']} | error | | | | {r['error'].splitlines()[-1][:120] if r['error'] else ''} |")
            continue
        note = r.get("layout", "")
        if r["stage"] == "table":
            note = f"table {r['table_s']:.1f} s; df {['%.1f' % v for v in r['df']]}"
        elif r["stage"] == "lmerTest":
            note = f"df {r['df']}"
        lines.append(f"| {r['stage']} | {r['peak_rss_mib']:.0f} | {r.get('rss_after_data_mib', float('nan')):.0f} | "
                     f"{r['wall_s']:.1f} | {r.get('fit_s', float('nan')):.1f} | {note} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

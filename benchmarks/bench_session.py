"""A course session, as a student runs it: one fresh process that does the analyses of the course
notes, timed against the same session as one Rscript with lme4 and lmerTest.

The session (the notes in shared/seeds, their data shipped with jaxmlm):

* High School and Beyond (``Hsb82``): the null model, a fixed ``ses`` slope, a random ``ses``
  slope, each with its summary, and ``anova`` of the last two (ML refits);
* ``nlschools``: random intercept, then random intercept and ``IQ`` slope, ``anova``;
* the classroom data: two- and three-level models of ``mathkind``; ``mathgain`` with schools,
  then classrooms in schools (``anova`` without refit, ``ranova``), then with ``ses`` and
  ``mathknow`` (109 pupils without teacher data drop out), Wald and profile intervals;
* a crossed design: ``Penicillin``, ``(1 | plate) + (1 | sample)``.

Every model is summarised with its Satterthwaite table (lmerTest's ``summary``). jaxmlm runs
twice in fresh processes: with an empty cache directory, then again with the cache that the
first run filled (what a student sees on the first and on every later day). Wall time of the
whole process (interpreter start, imports, reading the data) and of each step.

jaxmlm runs from this source tree, its modules byte-compiled first, as pip does when it
installs a package (R's installed packages are byte-compiled too): without that, a process
started with ``PYTHONDONTWRITEBYTECODE`` set compiles jaxmlm's sources every time (~0.1 s).

    PYTHONPATH=. python benchmarks/bench_session.py [--repeats 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "jaxmlm" / "data"

PY_SESSION = r'''
import json, sys, time
T = {}
t0 = time.perf_counter()
def step(name, fn):
    t = time.perf_counter(); out = fn(); T[name] = time.perf_counter() - t; return out
import pandas as pd
import jaxmlm
T["imports"] = time.perf_counter() - t0
hsb = jaxmlm.load_example("Hsb82"); nl = jaxmlm.load_example("nlschools")
cl = jaxmlm.load_example("classroom"); pen = jaxmlm.load_example("Penicillin")
lmer = jaxmlm.lmer
def hsb_models():
    m0 = lmer("mAch ~ 1 + (1 | school)", hsb); m0.summary()
    m1 = lmer("mAch ~ ses + (1 | school)", hsb); m1.summary()
    m2 = lmer("mAch ~ ses + (ses | school)", hsb); m2.summary()
    return jaxmlm.anova(m1, m2)
def nl_models():
    n1 = lmer("lang ~ IQ + (1 | class)", nl); n1.summary()
    n2 = lmer("lang ~ IQ + (IQ | class)", nl); n2.summary()
    return jaxmlm.anova(n1, n2)
def classroom():
    c1 = lmer("mathkind ~ ses + (1 | schoolid)", cl); c1.summary()
    c2 = lmer("mathkind ~ ses + (1 | schoolid/classid)", cl); c2.summary()
    g2 = lmer("mathgain ~ (1 | schoolid)", cl); g2.ranova()
    g3 = lmer("mathgain ~ (1 | schoolid/classid)", cl)
    jaxmlm.anova(g2, g3, refit=False); g3.ranova()
    g4 = lmer("mathgain ~ ses + mathknow + (1 | schoolid/classid)", cl); g4.summary()
    g4.confint(method="Wald")
    return g4.confint()
def crossed():
    p = lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", pen); return p.summary()
step("Hsb82", hsb_models); step("nlschools", nl_models); step("classroom", classroom); step("Penicillin", crossed)
T["total in process"] = time.perf_counter() - t0
print("TIMES " + json.dumps(T))
'''

R_SESSION = r'''
t0 <- proc.time()[["elapsed"]]
T <- list()
step <- function(name, expr) { t <- proc.time()[["elapsed"]]; force(expr); T[[name]] <<- proc.time()[["elapsed"]] - t }
suppressMessages({library(lme4); library(lmerTest)})
T[["imports"]] <- proc.time()[["elapsed"]] - t0
dir <- commandArgs(TRUE)[1]
rd <- function(f) read.csv(file.path(dir, f), stringsAsFactors = TRUE)
hsb <- rd("Hsb82.csv"); hsb$school <- factor(hsb$school)
nl <- rd("nlschools.csv"); nl$class <- factor(nl$class)
cl <- rd("classroom.csv"); pen <- rd("Penicillin.csv")
s <- function(m) invisible(capture.output(print(summary(m))))
step("Hsb82", {
  m0 <- lmer(mAch ~ 1 + (1 | school), hsb); s(m0)
  m1 <- lmer(mAch ~ ses + (1 | school), hsb); s(m1)
  m2 <- lmer(mAch ~ ses + (ses | school), hsb); s(m2)
  capture.output(print(anova(m1, m2)))
})
step("nlschools", {
  n1 <- lmer(lang ~ IQ + (1 | class), nl); s(n1)
  n2 <- lmer(lang ~ IQ + (IQ | class), nl); s(n2)
  capture.output(print(anova(n1, n2)))
})
step("classroom", {
  c1 <- lmer(mathkind ~ ses + (1 | schoolid), cl); s(c1)
  c2 <- lmer(mathkind ~ ses + (1 | schoolid/classid), cl); s(c2)
  g2 <- lmer(mathgain ~ (1 | schoolid), cl); capture.output(print(ranova(g2)))
  g3 <- lmer(mathgain ~ (1 | schoolid/classid), cl)
  capture.output(print(anova(g2, g3, refit = FALSE))); capture.output(print(ranova(g3)))
  g4 <- lmer(mathgain ~ ses + mathknow + (1 | schoolid/classid), cl); s(g4)
  confint(g4, method = "Wald")
  suppressMessages(confint(g4))
})
step("Penicillin", { p <- lmer(diameter ~ 1 + (1 | plate) + (1 | sample), pen); s(p) })
T[["total in process"]] <- proc.time()[["elapsed"]] - t0
cat("TIMES ", jsonlite::toJSON(T, auto_unbox = TRUE), "\n", sep = "")
'''


def _run(cmd, env=None, timeout=900.0) -> dict:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("TIMES "))
    return {"wall": wall, **json.loads(line[6:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="sessions per column (default 2; the median is shown)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    opts = ap.parse_args(argv)
    compile_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "jaxmlm")], check=True, env=compile_env)
    with tempfile.TemporaryDirectory(prefix="jaxmlm-session-") as tmp:
        tmp = Path(tmp)
        (tmp / "session.py").write_text(PY_SESSION)
        (tmp / "session.R").write_text(R_SESSION)
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        runs: dict[str, list[dict]] = {"lme4 + lmerTest (Rscript)": [], "jaxmlm, empty cache": [],
                                       "jaxmlm, warm cache": []}
        for i in range(opts.repeats):
            runs["lme4 + lmerTest (Rscript)"].append(_run(["Rscript", str(tmp / "session.R"), str(DATA)]))
            cache = tmp / f"cache{i}"
            if cache.exists():
                shutil.rmtree(cache)
            penv = dict(env, JAXMLM_CACHE_DIR=str(cache))
            runs["jaxmlm, empty cache"].append(_run([sys.executable, str(tmp / "session.py")], env=penv))
            runs["jaxmlm, warm cache"].append(_run([sys.executable, str(tmp / "session.py")], env=penv))
            print(f"[{time.strftime('%H:%M:%S')}] repeat {i + 1}: " + ", ".join(
                f"{k} {v[-1]['wall']:.1f} s" for k, v in runs.items()), flush=True)
    steps = ["wall", "imports", "Hsb82", "nlschools", "classroom", "Penicillin"]
    med = {k: {s: sorted(r[s] for r in v)[len(v) // 2] for s in steps} for k, v in runs.items()}
    r_wall = med["lme4 + lmerTest (Rscript)"]["wall"]
    lines = ["| session | whole process (s) | × Rscript | imports | Hsb82 | nlschools | classroom | Penicillin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, m in med.items():
        lines.append(f"| {k} | {m['wall']:.1f} | {m['wall'] / r_wall:.2f} | " +
                     " | ".join(f"{m[s]:.2f}" for s in steps[1:]) + " |")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else "?"
    text = (f"Course session (medians of {opts.repeats}; {os.cpu_count()} CPUs; load at end {load}; "
            f"{time.strftime('%Y-%m-%d %H:%M')}):\n\n" + "\n".join(lines) + "\n")
    print(text)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "session.md").write_text(text)
    (out / "session.json").write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

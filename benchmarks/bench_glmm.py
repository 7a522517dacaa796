#!/usr/bin/env python
"""GLMMs: jaxmlm's ``glmer`` against lme4's ``glmer`` and glmmTMB, side by side in one run.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_glmm.py                  # all cases
    PYTHONPATH=. python benchmarks/bench_glmm.py --cases cbpp crossed --runs 5

Cases (the data are written to a temporary folder as CSV and read by both sides):

* ``cbpp``: ``cbind(incidence, size - incidence) ~ period + (1 | herd)`` (56 rows, 15 herds);
* ``crossed``: a crossed Bernoulli model, 300 subjects × 24 items (7,200 rows, synthetic):
  ``y ~ x + (1 | subj) + (1 | item)``;
* ``poisson``: Poisson counts with two crossed factors (50,000 rows; 500 × 40 levels, synthetic):
  ``y ~ x + (1 | a) + (1 | b)``;
* ``big``: a Bernoulli model with many groups (``--big-rows`` rows, default 200,000, in
  rows/100 groups; the issue's 1M rows × 10k groups with ``--big-rows 1000000``):
  ``y ~ x + (1 | g)``;
* ``refits``: 1,000 refits of cbpp's model to responses simulated from its fit, in one
  vmapped call (``m.refit_many``) against lme4's ``refit`` loop over the same responses.

mixedlm (PyPI; lme4 ported to Rust), where installed, is timed as jaxmlm is, in the same
process (``--no-r`` skips R); so is statsmodels' ``BinomialBayesMixedGLM`` (variational Bayes,
the only GLMM statsmodels has: a different estimator, timed for scale only) on the crossed case,
the one whose dense variance-component design fits in memory. jaxmlm: the first fit in the process (cold: tracing and compiling included, caches off unless
``JAXMLM_CACHE_DIR`` says otherwise), then, as run.py, up to 11 untimed fits or 5 s of them
(small programs are compiled again, optimized, on their 12th call), then the median of ``--runs``
warm fits. R: the median
of ``--r-runs`` fits timed inside R with ``system.time`` (R's start-up and reading excluded),
lme4 with its default optimizers (bobyqa + Nelder-Mead), glmmTMB with its defaults. The
log-likelihoods are printed beside the times so that a fast wrong answer shows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jaxmlm  # noqa: E402

FORMULAS = {
    "cbpp": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial"),
    "crossed": ("y ~ x + (1 | subj) + (1 | item)", "binomial"),
    "poisson": ("y ~ x + (1 | a) + (1 | b)", "poisson"),
    "big": ("y ~ x + (1 | g)", "binomial"),
}


def make_data(case: str, big_rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(20261206)
    if case in ("cbpp", "refits"):
        d = pd.read_csv(ROOT / "tests" / "reference" / "glmer" / "data" / "cbpp.csv")
        return d.assign(herd=d.herd.astype(str), period=d.period.astype(str))
    if case == "crossed":
        s, i = np.meshgrid(np.arange(300), np.arange(24), indexing="ij")
        s, i = s.ravel(), i.ravel()
        x = rng.normal(size=s.size)
        eta = -0.3 + 0.6 * x + rng.normal(0, 0.9, 300)[s] + rng.normal(0, 0.5, 24)[i]
        return pd.DataFrame({"y": (rng.random(s.size) < 1 / (1 + np.exp(-eta))).astype(int), "x": x,
                             "subj": "s" + s.astype(str), "item": "i" + i.astype(str)})
    if case == "poisson":
        n = 50_000
        a, b = rng.integers(0, 500, n), rng.integers(0, 40, n)
        x = rng.normal(size=n)
        eta = 0.5 + 0.3 * x + rng.normal(0, 0.4, 500)[a] + rng.normal(0, 0.3, 40)[b]
        return pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, "a": "a" + a.astype(str),
                             "b": "b" + b.astype(str)})
    n, G = big_rows, max(2, big_rows // 100)
    g = rng.integers(0, G, n)
    x = rng.normal(size=n)
    eta = -0.5 + 0.4 * x + rng.normal(0, 0.7, G)[g]
    return pd.DataFrame({"y": (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int), "x": x, "g": "g" + g.astype(str)})


def cold_warm(fit, runs: int, warmup: bool = False):
    """(first fit's seconds, median of ``runs`` later fits' seconds, the last fit), warnings
    silenced. ``warmup`` (jaxmlm, as run.py): up to 11 untimed fits or 5 s of them in between,
    since small programs are compiled again, optimized, on their 12th call
    (jaxmlm._compiled.TIER_UP_CALLS)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        r = fit()
        cold = time.perf_counter() - t
        spent, n = 0.0, 0
        while warmup and n < 11 and spent < 5.0:
            t = time.perf_counter()
            fit()
            spent, n = spent + time.perf_counter() - t, n + 1
        warm = []
        for _ in range(runs):
            t = time.perf_counter()
            r = fit()
            warm.append(time.perf_counter() - t)
    return cold, statistics.median(warm), r


def time_jaxmlm(case: str, d: pd.DataFrame, runs: int):
    formula, fam = FORMULAS[case]
    cold, warm, m = cold_warm(lambda: jaxmlm.glmer(formula, d, fam), runs, warmup=True)
    return cold, warm, m.loglik


def time_mixedlm(case: str, d: pd.DataFrame, runs: int):
    """mixedlm (PyPI, a Rust port of lme4) ``glmer``: (cold, warm median, logLik) or None."""
    try:
        import mixedlm
    except ImportError:
        return None
    formula, fam = FORMULAS[case]
    family = {"binomial": mixedlm.families.Binomial, "poisson": mixedlm.families.Poisson}[fam]()
    try:
        cold, warm, r = cold_warm(lambda: mixedlm.glmer(formula, d, family=family), runs)
        ll = r.logLik()
        return cold, warm, float(getattr(ll, "value", ll))
    except Exception as exc:  # noqa: BLE001 - a peer's failure is reported, not fatal
        print(f"mixedlm failed on {case}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


#: statsmodels' BinomialBayesMixedGLM takes its random effects as dense variance-component
#: columns: the crossed case's 7,200 × 324 fits in memory, the 1M-row case's 1M × 10k (80 GB) not.
BAYES_VC = {"crossed": {"subj": "0 + C(subj)", "item": "0 + C(item)"}}


def time_bayes(case: str, d: pd.DataFrame, runs: int):
    """statsmodels' ``BinomialBayesMixedGLM.fit_vb`` (variational Bayes: a posterior
    approximation, not the maximum-likelihood fit, so it has no log-likelihood to compare):
    (cold, warm median, the posterior mean of x's coefficient) or None."""
    if case not in BAYES_VC:
        return None
    try:
        from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM
    except ImportError:
        return None
    cold, warm, r = cold_warm(lambda: BinomialBayesMixedGLM.from_formula("y ~ x", BAYES_VC[case], d).fit_vb(), runs)
    return cold, warm, float(r.fe_mean[1])


R_FIT = r"""
suppressMessages({library(lme4); library(glmmTMB); library(jsonlite)})
args <- commandArgs(TRUE); d <- read.csv(args[1]); runs <- as.integer(args[3])
for (v in c("herd","period","subj","item","a","b","g")) if (v %in% names(d)) d[[v]] <- factor(d[[v]])
f <- as.formula(args[2]); fam <- get(args[4])
tm <- function(fit) median(replicate(runs, system.time(fit())[["elapsed"]]))
m <- glmer(f, d, fam); t1 <- tm(function() glmer(f, d, fam))
out <- list(lme4 = t1, lme4_loglik = as.numeric(logLik(m)))
tmb <- tryCatch({ m2 <- glmmTMB(f, d, fam); list(t = tm(function() glmmTMB(f, d, fam)), ll = as.numeric(logLik(m2))) },
                error = function(e) NULL)
if (!is.null(tmb)) { out$glmmTMB <- tmb$t; out$glmmTMB_loglik <- tmb$ll }
cat(toJSON(out, auto_unbox = TRUE, digits = NA))
"""

R_REFIT = r"""
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(TRUE); d <- read.csv(args[1]); Y <- as.matrix(read.csv(args[2]))
d$herd <- factor(d$herd); d$period <- factor(d$period)
m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), d, binomial)
t <- system.time(for (r in seq_len(nrow(Y))) suppressWarnings(refit(m, cbind(Y[r, ], d$size - Y[r, ]))))[["elapsed"]]
cat(toJSON(list(lme4 = t), auto_unbox = TRUE))
"""


def run_r(script: str, args: list[str]) -> dict | None:
    if shutil.which("Rscript") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(script)
    out = subprocess.run(["Rscript", f.name, *args], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="*", default=["cbpp", "crossed", "poisson", "big", "refits"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--r-runs", type=int, default=3)
    ap.add_argument("--big-rows", type=int, default=200_000)
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--no-r", action="store_true", help="skip lme4 and glmmTMB")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for case in a.cases:
        d = make_data(case, a.big_rows)
        path = tmp / f"{case}.csv"
        d.to_csv(path, index=False)
        if case == "refits":
            formula, fam = FORMULAS["cbpp"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = jaxmlm.glmer(formula, d, fam)
                Y = m.simulate(a.nsim, seed=1)
                t = time.perf_counter()
                out = m.refit_many(Y)
                cold = time.perf_counter() - t
                warm = []
                for _ in range(a.runs):
                    t = time.perf_counter()
                    out = m.refit_many(Y)
                    warm.append(time.perf_counter() - t)
            counts = np.round(Y * d["size"].to_numpy()).astype(int)
            pd.DataFrame(counts).to_csv(tmp / "Y.csv", index=False)
            r = {} if a.no_r else run_r(R_REFIT, [str(path), str(tmp / "Y.csv")]) or {}
            rows.append({"case": f"{a.nsim} refits (cbpp)", "rows": len(d), "jaxmlm cold s": cold,
                         "jaxmlm warm s": statistics.median(warm), "lme4 s": r.get("lme4"), "glmmTMB s": None,
                         "jaxmlm logLik": float(out["loglik"].mean()), "lme4 logLik": None,
                         "ok": int(out["converged"].sum())})
            print(rows[-1], flush=True)
            continue
        cold, warm, ll = time_jaxmlm(case, d, a.runs)
        formula, fam = FORMULAS[case]
        r = {} if a.no_r else run_r(R_FIT, [str(path), formula, str(a.r_runs), fam]) or {}
        ml = time_mixedlm(case, d, a.runs) or (None, None, None)
        vb = time_bayes(case, d, a.runs) or (None, None, None)
        rows.append({"case": case, "rows": len(d), "jaxmlm cold s": cold, "jaxmlm warm s": warm,
                     "lme4 s": r.get("lme4"), "glmmTMB s": r.get("glmmTMB"), "mixedlm s": ml[1],
                     "mixedlm cold s": ml[0], "statsmodels VB s": vb[1], "jaxmlm logLik": ll,
                     "lme4 logLik": r.get("lme4_loglik"), "mixedlm logLik": ml[2], "statsmodels VB x": vb[2]})
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    df["lme4 / jaxmlm warm"] = df["lme4 s"] / df["jaxmlm warm s"]
    df["glmmTMB / jaxmlm warm"] = df["glmmTMB s"] / df["jaxmlm warm s"]
    if "mixedlm s" in df:
        df["mixedlm / jaxmlm warm"] = df["mixedlm s"] / df["jaxmlm warm s"]
    if "statsmodels VB s" in df:
        df["statsmodels VB / jaxmlm warm"] = df["statsmodels VB s"] / df["jaxmlm warm s"]
    cols = list(df.columns)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for _, r in df.iterrows():
        print("| " + " | ".join(fmt(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()

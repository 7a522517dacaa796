#!/usr/bin/env python
"""Residual structures: jaxmlm's ``lmer(correlation=, variance=)`` against nlme's ``lme``.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_residuals.py                       # both cases
    PYTHONPATH=. python benchmarks/bench_residuals.py --panel-subjects 1000 --runs 3
    PYTHONPATH=. python benchmarks/bench_residuals.py --no-r
    PYTHONPATH=. python benchmarks/bench_residuals.py --cases sleep --rounds 5   # 5 alternating rounds, median ratio

Cases (the data are written to a temporary folder as CSV and read by both sides):

* ``sleep``: sleepstudy (180 rows, 18 subjects), ``Reaction ~ Days + (Days | Subject)``
  with ``corAR1(form = ~ Days | Subject)``, REML. nlme:
  ``lme(Reaction ~ Days, random = ~ Days | Subject, correlation = corAR1(form = ~ Days |
  Subject), data = d, control = lmeControl(opt = "optim"))`` (its default nlminb stops at
  the iteration limit on this model);
* ``panel``: a synthetic panel, ``--panel-subjects`` subjects (default 10,000) × 10
  occasions, ``y = 1 + 0.5 x + 0.2 time + b_subj + e``, b_subj ~ N(0, 1), e AR(1) within a
  subject (φ = 0.5) with SD 1 for sex ``F`` and 1.5 for sex ``M`` (half the subjects each):
  ``y ~ x + time + (1 | subj)`` with ``corAR1(form = ~ time | subj)`` and
  ``varIdent(form = ~ 1 | sex)``, REML. nlme: ``lme(y ~ x + time, random = ~ 1 | subj,
  correlation = corAR1(form = ~ time | subj), weights = varIdent(form = ~ 1 | sex), data = d)``.

glmmTMB has no residual correlation structure: its ``ar1()`` is a random-effect term, so
``(Days | Subject) + ar1(factor(Days) + 0 | Subject)`` adds an AR(1) random effect on top of
an iid residual (one more parameter), and with ``dispformula = ~ 0`` (no iid residual) it does
not converge on sleepstudy. For ``sleep`` the script fits that nearest glmmTMB model and puts
it in the table only if its log-likelihood is within ``--tmb-tol`` of nlme's; otherwise it
says so and leaves it out. For ``panel`` there is no glmmTMB equivalent (a ``dispformula =
~ sex`` would scale only the iid part, not the AR(1) part), so it is not run.

jaxmlm, in a fresh Python process each round (R runs in a fresh process each round too, and
how fast a process runs varies from one to the next on a shared machine): the first fit (cold:
tracing and compiling included; the script turns jaxmlm's persistent cache off unless
``JAXMLM_CACHE_DIR`` is set), 11 untimed fits (small programs are compiled quickly at first and
again with full optimization on their 12th call), then the median of ``--runs`` timed warm fits
(default 40), as ``run.py`` times its cases. R: one untimed fit, then the median of
``--r-runs`` fits (default 3 for sleep, 1 for panel) timed inside R with ``system.time`` (R's
start-up and reading excluded), as ``run.py`` times lme4; the whole R process is given
``--r-timeout`` seconds (default 900) per case, and a case that runs past it is reported as
``>timeout``. ``--no-r`` skips R. The log-likelihoods and the residual-structure estimates of
each side are printed beside the times so that a fast wrong answer shows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
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
os.environ.setdefault("JAXMLM_CACHE_DIR", "off")  # cold = compile included, unless the caller says otherwise

import jaxmlm  # noqa: E402

CASES = {
    "sleep": dict(
        formula="Reaction ~ Days + (Days | Subject)",
        correlation=lambda: jaxmlm.corAR1(form="~ Days | Subject"),
        variance=lambda: None,
        label="sleepstudy `Reaction ~ Days + (Days \\| Subject)`, corAR1(~ Days \\| Subject)",
    ),
    "panel": dict(
        formula="y ~ x + time + (1 | subj)",
        correlation=lambda: jaxmlm.corAR1(form="~ time | subj"),
        variance=lambda: jaxmlm.varIdent(form="~ 1 | sex"),
        label="panel `y ~ x + time + (1 \\| subj)`, corAR1(~ time \\| subj), varIdent(~ 1 \\| sex)",
    ),
}


def make_data(case: str, subjects: int) -> pd.DataFrame:
    if case == "sleep":
        d = jaxmlm.load_example("sleepstudy")
        return d.assign(Subject=d.Subject.astype(str))
    rng = np.random.default_rng(20261207)
    T, phi = 10, 0.5
    s, t = np.meshgrid(np.arange(subjects), np.arange(T), indexing="ij")
    s, t = s.ravel(), t.ravel()
    male = np.zeros(subjects, bool)
    male[rng.permutation(subjects)[: subjects // 2]] = True
    male[0] = False  # the first row's stratum (F) is nlme's varIdent reference
    z = rng.normal(size=(subjects, T))
    e = np.empty_like(z)
    e[:, 0] = z[:, 0]
    for k in range(1, T):  # stationary AR(1), unit variance
        e[:, k] = phi * e[:, k - 1] + np.sqrt(1 - phi**2) * z[:, k]
    e = (e * np.where(male, 1.5, 1.0)[:, None]).ravel()
    x = rng.normal(size=s.size)
    y = 1 + 0.5 * x + 0.2 * t + rng.normal(0, 1, subjects)[s] + e
    width = len(str(subjects - 1))
    subj = np.char.add("s", np.char.zfill(s.astype(str), width))  # sorted ids = row order
    return pd.DataFrame({"y": y, "x": x, "time": t, "subj": subj, "sex": np.where(male[s], "M", "F")})


def _params(m) -> str:
    p = {**(m.correlation_params or {}), **(m.variance_params or {})}
    return ", ".join(f"{k}={v:.4g}" for k, v in p.items())


def time_jaxmlm(case: str, d: pd.DataFrame, runs: int):
    """(cold s, median warm s, logLik, estimates) of ``runs`` timed fits in this process: the
    cold fit, then ``TIER_UP_CALLS`` − 1 untimed fits (a small model's program is compiled again,
    fully optimized, on its 12th call: ``jaxmlm/_compiled.py``), then the timed ones, as
    ``run.py`` times its cases."""
    c = CASES[case]

    def fit():
        return jaxmlm.lmer(c["formula"], d, REML=True, correlation=c["correlation"](), variance=c["variance"]())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        m = fit()
        cold = time.perf_counter() - t
        for _ in range(getattr(jaxmlm._compiled, "TIER_UP_CALLS", 1) - 1):  # private constant, as run.py
            m = fit()
        warm = []
        for _ in range(runs):
            t = time.perf_counter()
            m = fit()
            warm.append(time.perf_counter() - t)
    return cold, statistics.median(warm), m.loglik, _params(m)


def time_jaxmlm_fresh(case: str, subjects: int, runs: int, timeout: float) -> tuple:
    """:func:`time_jaxmlm` in a fresh Python process (``--worker``), as R runs in a fresh process
    each round: how fast a process runs varies from process to process on a shared machine
    (2.0–3.4 ms for the same warm sleepstudy AR(1) fit in two processes, 2026-12-07), so each
    round samples that variation for both sides."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case, "--runs", str(runs),
           "--panel-subjects", str(subjects)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"jaxmlm worker failed: {out.stderr[-2000:]}")
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


R_FIT = r"""
suppressMessages({library(nlme); library(jsonlite)})
args <- commandArgs(TRUE); d <- read.csv(args[1]); case <- args[2]; runs <- as.integer(args[3])
for (v in c("Subject","subj","sex")) if (v %in% names(d)) d[[v]] <- factor(d[[v]], levels = unique(d[[v]]))
tm <- function(fit) { m <- fit(); ts <- numeric(runs); for (i in seq_len(runs)) { ts[i] <- system.time(m <- fit())[["elapsed"]] }
                      list(t = median(ts), m = m) }
pars <- function(m) { ms <- m$modelStruct; out <- list()
  if (!is.null(ms$corStruct)) out <- c(out, as.list(coef(ms$corStruct, unconstrained = FALSE)))
  if (!is.null(ms$varStruct)) out <- c(out, as.list(coef(ms$varStruct, unconstrained = FALSE)))
  paste(sprintf("%s=%.4g", names(out), unlist(out)), collapse = ", ") }
if (case == "sleep") {
  r <- tm(function() lme(Reaction ~ Days, random = ~ Days | Subject, correlation = corAR1(form = ~ Days | Subject),
                         data = d, control = lmeControl(opt = "optim")))
} else {
  r <- tm(function() lme(y ~ x + time, random = ~ 1 | subj, correlation = corAR1(form = ~ time | subj),
                         weights = varIdent(form = ~ 1 | sex), data = d))
}
out <- list(nlme = r$t, nlme_loglik = as.numeric(logLik(r$m)), nlme_params = pars(r$m))
if (case == "sleep") {
  suppressMessages(library(glmmTMB))
  tmb <- tryCatch({ r2 <- tm(function() suppressWarnings(glmmTMB(Reaction ~ Days + (Days | Subject) +
                                ar1(factor(Days) + 0 | Subject), data = d, REML = TRUE)))
                    list(t = r2$t, ll = as.numeric(logLik(r2$m))) }, error = function(e) NULL)
  if (!is.null(tmb)) { out$glmmTMB <- tmb$t; out$glmmTMB_loglik <- tmb$ll }
}
cat(toJSON(out, auto_unbox = TRUE, digits = NA))
"""


def run_r(script: str, args: list[str], timeout: float) -> dict | None:
    """R's JSON, ``{"timeout": True}`` past ``timeout`` s, or None (no R, or R failed)."""
    if shutil.which("Rscript") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(script)
    p = subprocess.Popen(["Rscript", f.name, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # R and anything it started, by this process group's id only
        p.communicate()
        return {"timeout": True}
    if p.returncode != 0:
        print(stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(stdout.strip().splitlines()[-1])


def describe_machine() -> list[str]:
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, shell=True, timeout=60).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""

    import jax
    r = sh("Rscript -e 'cat(R.version.string, \"| nlme\", as.character(packageVersion(\"nlme\")),"
           " \"| glmmTMB\", as.character(packageVersion(\"glmmTMB\")))'") if shutil.which("Rscript") else "no R"
    return [f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
            f"nproc: {sh('nproc')}; {platform.platform()}",
            *("lscpu: " + line for line in sh("lscpu | head").splitlines()),
            f"jaxmlm {getattr(jaxmlm, '__version__', '?')} (git {sh('git -C ' + str(ROOT) + ' rev-parse --short HEAD')}"
            f"{', working tree modified' if sh('git -C ' + str(ROOT) + ' status --porcelain -uno') else ''}); "
            f"jax {jax.__version__} ({jax.default_backend()}); numpy {np.__version__}; {r}",
            f"JAXMLM_CACHE_DIR={os.environ.get('JAXMLM_CACHE_DIR', '(unset)')}"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="*", default=["sleep", "panel"], choices=list(CASES))
    ap.add_argument("--runs", type=int, default=40,
                    help="warm jaxmlm fits (median; past the 12th call small programs are recompiled optimized)")
    ap.add_argument("--r-runs", type=int, default=None, help="R fits (median); default 3 for sleep, 1 for panel")
    ap.add_argument("--r-timeout", type=float, default=900, help="seconds for each case's R process")
    ap.add_argument("--panel-subjects", type=int, default=10_000)
    ap.add_argument("--tmb-tol", type=float, default=0.05,
                    help="glmmTMB is shown only when its logLik is this close to nlme's")
    ap.add_argument("--no-r", action="store_true", help="skip nlme and glmmTMB")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time each case this many times, jaxmlm and R alternately, and report every round and "
                         "the median ratio (the machine's state moves R's times more than jaxmlm's)")
    ap.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:  # one round's jaxmlm timing, in a process of its own
        print(json.dumps(time_jaxmlm(a.worker, make_data(a.worker, a.panel_subjects), a.runs)))
        return
    for line in describe_machine():
        print(line, flush=True)
    tmp = Path(tempfile.mkdtemp())
    rows, notes = [], []
    for case in a.cases:
        d = make_data(case, a.panel_subjects)
        path = tmp / f"{case}.csv"
        d.to_csv(path, index=False)
        for rnd in range(1, a.rounds + 1):
            rows.append(_time_round(case, d, path, a, notes if rnd == 1 else []))
            if a.rounds > 1:
                rows[-1] = {"round": rnd, **rows[-1]}  # each round's jaxmlm process has its own cold fit
            print(rows[-1], flush=True)
        ratios = [r["nlme / jaxmlm warm"] for r in rows[-a.rounds:] if isinstance(r["nlme / jaxmlm warm"], float)]
        if a.rounds > 1 and ratios:
            notes.append(f"{case}: nlme / jaxmlm over {len(ratios)} rounds: "
                         + ", ".join(f"{x:.1f}×" for x in ratios) + f"; median {statistics.median(ratios):.1f}×")
    _print_table(rows, notes)


def _time_round(case: str, d: pd.DataFrame, path: Path, a, notes: list) -> dict:
    """One round of a case: jaxmlm in this process (its first round's first fit is the cold one),
    then nlme (and glmmTMB for sleep) in a fresh R process on the same CSV."""
    cold, warm, ll, params = time_jaxmlm_fresh(case, a.panel_subjects, a.runs, a.r_timeout)
    r_runs = a.r_runs if a.r_runs is not None else (3 if case == "sleep" else 1)
    r = {} if a.no_r else run_r(R_FIT, [str(path), case, str(r_runs)], a.r_timeout) or {}
    nlme_s = ">timeout" if r.get("timeout") else r.get("nlme")
    tmb_s, tmb_ll = r.get("glmmTMB"), r.get("glmmTMB_loglik")
    if case == "sleep" and not a.no_r and r.get("nlme_loglik") is not None:
        if tmb_ll is None or abs(tmb_ll - r["nlme_loglik"]) > a.tmb_tol:
            notes.append(f"{case}: glmmTMB does not fit the same model (its ar1() is a random effect over an iid "
                         f"residual; logLik {tmb_ll if tmb_ll is None else f'{tmb_ll:.4f}'} vs nlme's "
                         f"{r['nlme_loglik']:.4f}), so it is left out.")
            tmb_s = tmb_ll = None
    if case == "panel" and not a.no_r:
        notes.append(f"{case}: no glmmTMB equivalent (AR(1) residual with a varIdent variance); not run.")
    return {"case": CASES[case]["label"], "rows": len(d), "jaxmlm cold s": cold, "jaxmlm warm s": warm,
            "nlme s": nlme_s, "glmmTMB s": tmb_s,
            "nlme / jaxmlm warm": nlme_s / warm if isinstance(nlme_s, float) else
            (f">{a.r_timeout / warm:.0f}" if nlme_s == ">timeout" else None),
            "glmmTMB / jaxmlm warm": tmb_s / warm if isinstance(tmb_s, float) else None,
            "jaxmlm logLik": ll, "nlme logLik": r.get("nlme_loglik"), "glmmTMB logLik": tmb_ll,
            "jaxmlm estimates": params, "nlme estimates": r.get("nlme_params")}


def _print_table(rows: list, notes: list) -> None:
    df = pd.DataFrame(rows)
    cols = list(df.columns)

    def fmt(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.3f}" if abs(v) >= 100 else f"{v:.4g}"
        return "" if v is None else str(v)

    print()
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for _, row in df.iterrows():
        print("| " + " | ".join(fmt(row[c]) for c in cols) + " |")
    for n in notes:
        print(f"\nNote: {n}")


if __name__ == "__main__":
    main()

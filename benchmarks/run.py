#!/usr/bin/env python
"""Time jaxmlm against its peers (lme4, statsmodels MixedLM, mixedlm) side by side.

Run from the repository root::

    PYTHONPATH=. python benchmarks/run.py                      # default cases
    PYTHONPATH=. python benchmarks/run.py --cases sleepstudy,100k --repeats 7
    PYTHONPATH=. python benchmarks/run.py --big                # adds the 10M-row case

Every (tool, case) pair runs in its own fresh worker process (this same file,
``--worker``), one after the other, never in parallel: the first fit in the
process is reported as *cold* (for jaxmlm it includes JAX tracing and XLA
compilation), the median of the following fits as *warm*. lme4 runs in
``Rscript`` and is timed inside R with ``system.time``. Data reach every tool
as the same CSV file. The Python tools fit the frame as ``pd.read_csv`` gives it
(integer or string group ids: what users have); jaxmlm is also timed with the
grouping columns made pandas ``Categorical``s first (a second column of the
breakdown). R turns grouping columns into factors with ``factor()`` before its
clock starts, as R users do. Results go to ``benchmarks/results/`` (Markdown, CSV, raw JSON)
and the Markdown is printed. See ``benchmarks/README.md``.

The GLMM cases (cbpp, a crossed Bernoulli, a 50k-row Poisson with crossed factors, 1,000 batched
refits; with ``--big`` also the 1M-row Bernoulli with 10k groups) run next, side by side with lme4's
``glmer``, glmmTMB, mixedlm and statsmodels' ``BinomialBayesMixedGLM``, through ``bench_glmm.py``
(whose peers differ from the linear models'); ``--no-glmm`` skips them. The residual-structure
cases (sleepstudy with AR(1), a 100k-row panel with AR(1) and varIdent) run last, side by side
with nlme, through ``bench_residuals.py`` (nlme is not a peer of the cases above); their table
ends the report. ``--no-residuals`` skips them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
MAX_REPEATS = 200  # warm fits at most per tool and case (see --min-time)

SEED = 20240601
# XLA flag that avoids a CPU deadlock seen with jaxmlm on small-core machines
# (see benchmarks/jax_cpu_deadlock_repro.py); only used on a retry after a hang.
XLA_WORKAROUND = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

CRIT_ABS_TOL = 1e-3  # REML criteria agree when |Δ| ≤ this (log-likelihood units × 2)
FIXEF_REL_TOL = 1e-3  # fixed effects agree when every |Δβ| / |β_peer| ≤ this

PEERS = ("lme4", "statsmodels", "mixedlm")


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    formula: str
    factors: tuple[str, ...] = ()
    kind: str = "synthetic"  # synthetic | nested | example | insteval | process
    data_file: str = "sleepstudy.csv"  # example cases: the file in jaxmlm/data
    groups: int = 0
    per_group: int = 0
    jaxmlm_only: bool = False
    big: bool = False
    # statsmodels equivalent (fixed formula, group column, re_formula) or None
    sm: tuple[str, str, str] | None = None
    sm_skip: str = ""


NESTED_SM_SKIP = "nested random effects: statsmodels needs a variance-component formula per inner factor; not timed"
SYN_FORMULA = "y ~ x1 + x2 + (1 + x1 | g)"
SYN_SM = ("y ~ x1 + x2", "g", "~x1")

CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case(
            "sleepstudy",
            "sleepstudy (180 rows, 18 subjects)",
            "Reaction ~ Days + (Days | Subject)",
            factors=("Subject",),
            kind="example",
            sm=("Reaction ~ Days", "Subject", "~Days"),
        ),
        Case("100k", "synthetic 100k rows, 1k groups", SYN_FORMULA, ("g",), groups=1_000, per_group=100, sm=SYN_SM),
        Case("1m", "synthetic 1M rows, 10k groups", SYN_FORMULA, ("g",), groups=10_000, per_group=100, sm=SYN_SM),
        Case(
            "10m",
            "synthetic 10M rows, 100k groups (jaxmlm only)",
            SYN_FORMULA,
            ("g",),
            groups=100_000,
            per_group=100,
            jaxmlm_only=True,
            big=True,
        ),
        Case(
            "classroom",
            "classroom three-level (1,190 pupils, 312 classes in 107 schools)",
            "mathgain ~ 1 + (1 | schoolid/classid)",
            factors=("schoolid", "classid"),
            kind="example",
            data_file="classroom.csv",
            sm_skip=NESTED_SM_SKIP,
        ),
        Case(
            "nested100k",
            "synthetic 100k rows, 20k classes in 2k schools",
            "y ~ x1 + x2 + (1 | school/class)",
            ("school", "class"),
            kind="nested",
            groups=2_000,
            per_group=50,
            sm_skip=NESTED_SM_SKIP,
        ),
        Case(
            "insteval",
            "InstEval crossed (73k rows; s, d, dept)",
            "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)",
            factors=("s", "d", "dept", "service"),
            kind="insteval",
            sm_skip="crossed random effects: statsmodels needs one all-covering group with dense "
            "variance-component designs (73k × 4k); not practical",
        ),
        Case(
            "cold",
            "cold process: CLI fit of sleepstudy, wall time of a fresh process",
            "Reaction ~ Days + (Days | Subject)",
            kind="process",
        ),
    )
}
DEFAULT_CASES = ("sleepstudy", "100k", "1m", "classroom", "nested100k", "insteval", "cold")
ALIASES = {"1M": "1m", "10M": "10m", "100K": "100k", "instEval": "insteval", "cold-process": "cold", "process": "cold"}


def synthetic_frame(n_groups: int, per_group: int, seed: int = SEED):
    """y = 10 + 2 x1 − x2 + b0 + b1 x1 + e; (b0, b1) ~ N(0, [[4, .6], [.6, 1]]), e ~ N(0, 3²)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    g = np.repeat(np.arange(n_groups, dtype=np.int64), per_group)
    x1 = rng.standard_normal(n)
    x2 = rng.standard_normal(n)
    cov = np.array([[4.0, 0.6], [0.6, 1.0]])
    b = rng.standard_normal((n_groups, 2)) @ np.linalg.cholesky(cov).T
    e = 3.0 * rng.standard_normal(n)
    y = 10.0 + 2.0 * x1 - x2 + b[g, 0] + b[g, 1] * x1 + e
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": g})


def nested_frame(n_schools: int, per_school: int, classes: int = 10, seed: int = SEED):
    """Pupils in classes in schools (``classes`` classes of per_school/classes pupils each;
    class labels 0…classes−1 restart in every school, as class numbers do):
    y = 10 + 2 x1 − x2 + u_school + v_class + e, u ~ N(0, 2²), v ~ N(0, 1), e ~ N(0, 3²)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_schools * per_school
    school = np.repeat(np.arange(n_schools, dtype=np.int64), per_school)
    cls = np.tile(np.repeat(np.arange(classes, dtype=np.int64), per_school // classes), n_schools)
    x1 = rng.standard_normal(n)
    x2 = rng.standard_normal(n)
    u = 2.0 * rng.standard_normal(n_schools)
    v = rng.standard_normal((n_schools, classes))
    y = 10.0 + 2.0 * x1 - x2 + u[school] + v[school, cls] + 3.0 * rng.standard_normal(n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "school": school, "class": cls})


def as_factors(df, columns):
    """Grouping/factor columns → pandas Categorical with string levels in R's factor() order."""
    import pandas as pd

    df = df.copy()
    for col in columns:
        s = df[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            continue
        uniq = pd.unique(s.dropna())
        if pd.api.types.is_numeric_dtype(s):
            levels = [str(v) for v in sorted(uniq)]  # R sorts numeric factors by value
            codes_src = s.astype("int64").astype(str) if pd.api.types.is_integer_dtype(s) else s.astype(str)
        else:
            levels = sorted(str(v) for v in uniq)
            codes_src = s.astype(str)
        df[col] = pd.Categorical(codes_src, categories=levels)
    return df


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_s(x) -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.01:
        return f"{x:.3f}"
    return f"{x:.4f}"


def fmt_ratio(a, b) -> str:
    if a is None or b is None or b <= 0:
        return "—"
    r = a / b
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def have_rscript() -> bool:
    return shutil.which("Rscript") is not None


def _json_line(prefix: str, text: str):
    for line in reversed(text.splitlines()):
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    return None


def short_error(text: str, limit: int = 400) -> str:
    lines = [l for l in (text or "").strip().splitlines() if l.strip()]
    tail = " | ".join(lines[-4:])
    return tail[-limit:]


# ---------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------


def _pkg_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    info: dict = {}
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu
    info["cores"] = os.cpu_count()
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["cores_usable"] = os.cpu_count()
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    info["ram_gib"] = ram
    osname = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = f"{line.split('=', 1)[1].strip(chr(34))} ({platform.system()} {platform.release()})"
    except OSError:
        pass
    info["os"] = osname
    info["python"] = platform.python_version()
    for pkg in ("jax", "jaxlib", "numpy", "pandas", "scipy", "formulaic", "statsmodels", "mixedlm"):
        info[pkg] = _pkg_version(pkg)
    try:
        sys.path.insert(0, str(REPO))
        import jaxmlm

        info["jaxmlm"] = jaxmlm.__version__
    except Exception as exc:  # noqa: BLE001
        info["jaxmlm"] = f"import failed: {exc}"
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "jaxmlm"], capture_output=True, text=True)
        info["git"] = head.stdout.strip() + (" + uncommitted changes in jaxmlm/" if dirty.stdout.strip() else "")
    except OSError:
        info["git"] = "?"
    if have_rscript():
        r = subprocess.run(
            ["Rscript", "-e", 'cat(paste(R.version$major, R.version$minor, sep = "."), "|", '
             'tryCatch(as.character(packageVersion("lme4")), error = function(e) "not installed"), "\\n", sep = "")'],
            capture_output=True, text=True,
        )
        parts = r.stdout.strip().split("|")
        info["R"] = parts[0] if len(parts) == 2 else "?"
        info["lme4"] = parts[1] if len(parts) == 2 else "?"
    else:
        info["R"] = "Rscript not on PATH"
        info["lme4"] = "—"
    try:
        info["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        info["loadavg_start"] = None
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return info


# ---------------------------------------------------------------------------
# workers (run as `run.py --worker TOOL ...` in a fresh process)
# ---------------------------------------------------------------------------


def _load_case_frame(case: Case, data: str | None, as_read: bool = True):
    """The case's data frame: as ``pd.read_csv`` gives it (``as_read``: integer or string group
    ids, what users have), or with the grouping columns made Categoricals first."""
    import pandas as pd

    if case.kind in ("synthetic", "nested") and data is None:
        df = (nested_frame if case.kind == "nested" else synthetic_frame)(case.groups, case.per_group)
    else:
        df = pd.read_csv(data if data is not None else REPO / "jaxmlm" / "data" / case.data_file)
    return df if as_read else as_factors(df, case.factors)


def _rss_now_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _timed_loop(fit, repeats: int, slow_s: float, budget_s: float, min_warm: int = 0, keep=None,
                min_time: float = 0.0, warmup: int = 0, warmup_s: float = 5.0):
    """Cold fit, then `repeats` warm fits — more, up to MAX_REPEATS, until the warm fits
    took `min_time` s together (fast fits: a median of many, as for every tool):
    (cold, warm times, kept, last result).

    Peers (min_warm = 0) get no warm fit when the cold one took more than
    slow_s; repeats stop once the next one would exceed budget_s. jaxmlm
    (min_warm = 1) always gets at least one warm fit: its cold fit is mostly
    compilation. Of every fit only ``keep(result)`` is kept (default: all of
    it) and the last result whole, and the previous result is released
    before the next fit starts, so that the peak RSS is one fit's, not the
    sum of the repeats'.

    ``warmup`` untimed fits (at most ``warmup_s`` s of them) come between the cold fit
    and the warm ones: jaxmlm compiles a small model's program quickly first and again,
    fully optimized, on its ``TIER_UP_CALLS``-th run (``jaxmlm/_compiled.py``), so its
    warm figures are those of the optimized program, as in a simulation or bootstrap.
    """
    keep = keep or (lambda r: r)
    t0 = time.perf_counter()
    last = fit()
    cold = time.perf_counter() - t0
    warm, kept = [], [keep(last)]
    t_end = time.perf_counter() + warmup_s
    for _ in range(warmup):
        if time.perf_counter() > t_end:
            break
        last = None
        last = fit()
    spent = 0.0
    if cold <= slow_s or min_warm > 0:
        while len(warm) < max(repeats, min_warm) or (spent < min_time and len(warm) < MAX_REPEATS):
            last = None
            t0 = time.perf_counter()
            last = fit()
            dt = time.perf_counter() - t0
            kept.append(keep(last))
            warm.append(dt)
            spent += dt
            if len(warm) >= min_warm and spent + dt > budget_s:
                break
    return cold, warm, kept, last


def worker(args) -> int:
    case = CASES[args.case]
    import warnings

    warnings.simplefilter("ignore")
    out: dict = {"tool": args.worker, "case": case.name}
    df = _load_case_frame(case, args.data)
    out["nobs"] = int(len(df))
    out["rss_after_data_mib"] = _rss_now_mib()
    notes: list[str] = []

    if args.worker == "jaxmlm":
        import jax

        sys.path.insert(0, str(REPO))
        import jaxmlm

        # jaxmlm loads its modules on first use: load them before the clock (an import is
        # not part of the first fit; the "process" case times a fresh process whole).
        lmer = jaxmlm.lmer

        def fit():
            return lmer(case.formula, df, REML=True)

        # untimed fits until a small model's program is the optimized one (private constant)
        warmup = getattr(jaxmlm._compiled, "TIER_UP_CALLS", 1) - 1
        cold, warm, records, m = _timed_loop(fit, args.repeats, args.slow, args.budget, min_warm=1,
                                             keep=lambda r: r.record, min_time=args.min_time, warmup=warmup)
        # The same fits with the grouping columns made Categoricals before timing (the table's
        # figures are for the frame as read from the CSV).
        df_as_read, df = df, _load_case_frame(case, args.data, as_read=False)
        m = None
        _, warm_cat, _, _ = _timed_loop(fit, args.repeats, args.slow, args.budget, min_warm=1,
                                        keep=lambda r: None, min_time=args.min_time)
        out["warm_categorical"] = median(warm_cat)
        df = df_as_read
        m = fit()
        out["crit"] = float(m.objective)
        out["fixef"] = [float(v) for v in m.fixef.values]
        out["fixef_names"] = [str(k) for k in m.fixef.index]
        out["theta"] = [float(v) for v in m.theta]
        out["sigma"] = float(m.sigma)
        out["opt_cold"] = float(records[0].seconds)
        out["opt_warm"] = median([float(r.seconds) for r in records[1:]]) if len(records) > 1 else None
        out["iterations"] = int(m.record.iterations)
        out["evaluations"] = int(m.record.evaluations)
        out["converged"] = bool(m.record.converged)
        out["fit_warnings"] = list(m.record.warnings)
        out["ngroups"] = {str(k): int(v) for k, v in m.ngroups.items()}
        # Where the non-optimizer time goes (private API; best effort, timed once, warm).
        out["peak_rss_fits_mib"] = _peak_rss_mib()  # before the stage split below adds designs of its own
        m = None
        try:
            from jaxmlm._frontend import build_design
            from jaxmlm._stats import one_chunk, sufficient_stats

            d_times, s_times = [], []
            for _ in range(max(1, min(3, args.repeats))):
                design = st = None
                t0 = time.perf_counter()
                design = build_design(case.formula, df)
                t1 = time.perf_counter()
                st = sufficient_stats(design)
                jax.block_until_ready(st)
                t2 = time.perf_counter()
                d_times.append(t1 - t0)
                s_times.append(t2 - t1)
            out["design_s"] = median(d_times)
            out["stats_s"] = median(s_times)
            # Small data: lmer runs the pass inside the optimizer's program (FitRecord.seconds).
            out["stats_in_optimizer"] = one_chunk(design) is not None
        except Exception as exc:  # noqa: BLE001
            notes.append(f"stage split unavailable: {type(exc).__name__}: {exc}")
    elif args.worker == "statsmodels":
        import statsmodels
        import statsmodels.formula.api as smf

        fixed, group, re_formula = case.sm
        converged = []

        def fit():
            model = smf.mixedlm(fixed, df, groups=df[group], re_formula=re_formula)
            r = model.fit(reml=True)
            converged.append(bool(getattr(r, "converged", True)))
            return r

        cold, warm, _, r = _timed_loop(fit, args.repeats, args.slow, args.budget, min_time=args.min_time)
        out["crit"] = None  # llf is on statsmodels' own scale; fixed effects are compared instead
        out["llf"] = float(r.llf)
        out["fixef"] = [float(v) for v in r.fe_params.values]
        out["fixef_names"] = [str(k) for k in r.fe_params.index]
        if not all(converged):
            notes.append("statsmodels reported non-convergence")
        out["version"] = statsmodels.__version__
    elif args.worker == "mixedlm":
        import mixedlm

        def fit():
            return mixedlm.lmer(case.formula, df, REML=True)

        cold, warm, _, r = _timed_loop(fit, args.repeats, args.slow, args.budget, min_time=args.min_time)
        out["crit"] = float(r.deviance)  # the REML criterion for a REML fit
        fe = r.fixef()
        out["fixef"] = [float(v) for v in fe.values()]
        out["fixef_names"] = [str(k) for k in fe.keys()]
        out["theta"] = [float(v) for v in r.theta]
        if hasattr(r, "converged") and not r.converged:
            notes.append("mixedlm reported non-convergence")
    else:
        raise SystemExit(f"unknown worker {args.worker}")

    out["cold"] = cold
    out["warm_all"] = warm
    out["warm"] = median(warm)
    out["peak_rss_mib"] = _peak_rss_mib()
    out["notes"] = notes
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ---------------------------------------------------------------------------
# R / lme4
# ---------------------------------------------------------------------------

R_FIT_SCRIPT = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
path <- args[1]; form <- as.formula(args[2])
facs <- if (nchar(args[3])) strsplit(args[3], ",")[[1]] else character(0)
repeats <- as.integer(args[4]); slow <- as.numeric(args[5]); budget <- as.numeric(args[6])
min_time <- as.numeric(args[7]); max_repeats <- as.integer(args[8])
d <- read.csv(path)
for (f in facs) d[[f]] <- factor(d[[f]])
warns <- character(0)
fit <- function() withCallingHandlers(
  lmer(form, data = d, REML = TRUE),
  warning = function(w) { warns <<- unique(c(warns, conditionMessage(w))); invokeRestart("muffleWarning") },
  message = function(m) { warns <<- unique(c(warns, trimws(conditionMessage(m)))); invokeRestart("muffleMessage") })
cold <- system.time(m <- fit())[["elapsed"]]
warm <- numeric(0)
if (cold <= slow) {
  spent <- 0
  while (length(warm) < repeats || (spent < min_time && length(warm) < max_repeats)) {
    dt <- system.time(m <- fit())[["elapsed"]]  # gc() before, untimed, as before
    warm <- c(warm, dt); spent <- spent + dt
    if (spent + dt > budget) break
  }
}
fe <- fixef(m)
num <- function(x) sprintf("%.17g", x)
str <- function(x) paste0('"', gsub('"', "'", gsub("\\\\", "/", x)), '"')
cat("RESULT {",
    '"cold": ', num(cold), ', "warm_all": [', paste(num(warm), collapse = ", "), '], ',
    '"crit": ', num(getME(m, "devcomp")$cmp[["REML"]]), ', ',
    '"fixef": [', paste(num(unname(fe)), collapse = ", "), '], ',
    '"fixef_names": [', paste(str(names(fe)), collapse = ", "), '], ',
    '"theta": [', paste(num(unname(getME(m, "theta"))), collapse = ", "), '], ',
    '"nobs": ', nrow(d), ', ',
    '"warnings": [', paste(str(gsub("\n", " ", warns)), collapse = ", "), ']}\n', sep = "")
"""

R_EXPORT_INSTEVAL = r"""
args <- commandArgs(trailingOnly = TRUE)
d <- lme4::InstEval
for (f in names(d)) if (is.factor(d[[f]])) d[[f]] <- as.character(d[[f]])
write.csv(d, args[1], row.names = FALSE)
"""


def run_lme4(case: Case, data: str, tmp: Path, opts) -> dict:
    script = tmp / "fit_lme4.R"
    script.write_text(R_FIT_SCRIPT)
    cmd = [
        "Rscript", "--vanilla", str(script), data, case.formula, ",".join(case.factors),
        str(opts.repeats), str(opts.slow), str(opts.budget), str(opts.min_time), str(MAX_REPEATS),
    ]
    return _run_worker(cmd, opts.timeout, tool="lme4")


def export_insteval() -> tuple[Path | None, str]:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "InstEval.csv"
    if path.exists() and path.stat().st_size > 0:
        return path, ""
    if not have_rscript():
        return None, "Rscript not on PATH: cannot export lme4::InstEval"
    script = CACHE / "export_insteval.R"
    script.write_text(R_EXPORT_INSTEVAL)
    tmp_path = path.with_suffix(".csv.tmp")
    r = subprocess.run(["Rscript", "--vanilla", str(script), str(tmp_path)], capture_output=True, text=True)
    if r.returncode != 0 or not tmp_path.exists():
        return None, f"exporting lme4::InstEval failed: {short_error(r.stderr)}"
    tmp_path.replace(path)
    return path, ""


# ---------------------------------------------------------------------------
# running workers
# ---------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _run_worker(cmd, timeout: float, tool: str, env=None, stall_s: float | None = None) -> dict:
    """Run a worker; parse its RESULT line.

    With ``stall_s``, the worker is also stopped when it used less than one CPU
    second over the last ``stall_s`` seconds of wall time: a deadlocked process
    sits at ~0 CPU, a slow one (even on a loaded machine) does not.
    """
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, cwd=REPO, env=env)
        history: list[tuple[float, float]] = []
        why = None
        while proc.poll() is None:
            time.sleep(1.0)
            now = time.perf_counter() - t0
            if now > timeout:
                why = f"timed out after {timeout:.0f} s (no result)"
            elif stall_s:
                cpu = _cpu_seconds(proc.pid)
                if cpu is not None:
                    history.append((now, cpu))
                    old = [c for (t, c) in history if t <= now - stall_s]
                    if old and cpu - old[-1] < 1.0:
                        why = (f"stalled: used {cpu - old[-1]:.2f} CPU s in the last {stall_s:.0f} s "
                               f"(deadlock?) after {now:.0f} s; killed")
            if why:
                proc.kill()
                proc.wait()
                return {"tool": tool, "error": why, "timeout": True, "wall": time.perf_counter() - t0}
        fo.seek(0)
        fe.seek(0)
        r = subprocess.CompletedProcess(cmd, proc.returncode, fo.read(), fe.read())
    wall = time.perf_counter() - t0
    res = _json_line("RESULT ", r.stdout)
    if r.returncode != 0 or res is None:
        return {"tool": tool, "error": f"exit {r.returncode}: {short_error(r.stderr or r.stdout)}", "wall": wall}
    res["tool"] = tool
    res["wall"] = wall
    if "warm" not in res:
        res["warm"] = median(res.get("warm_all") or [])
    if "warnings" in res:
        res["warnings"] = [w for w in res["warnings"] if w]
    return res


def _py_env(extra_xla: str | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Workers compile from scratch: no jaxmlm cache (the library keeps one by default) and no
    # JAX cache from the environment. The "cold" case sets its own JAXMLM_CACHE_DIR.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAXMLM_CACHE_DIR"] = "off"
    if extra_xla:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + extra_xla).strip()
    return env


def run_python_worker(tool: str, case: Case, data: str | None, opts, timeout: float, xla: str | None = None,
                      stall_s: float | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, "--case", case.name,
           "--repeats", str(opts.repeats), "--slow", str(opts.slow), "--budget", str(opts.budget),
           "--min-time", str(opts.min_time)]
    if data is not None:
        cmd += ["--data", data]
    return _run_worker(cmd, timeout, tool=tool, env=_py_env(xla), stall_s=stall_s)


def module_available(name: str) -> bool:
    r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, env=_py_env())
    return r.returncode == 0


# ---------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------


def compare(jx: dict, peer: dict) -> dict:
    """Agreement of criterion (where the peer reports lme4's) and of fixed effects."""
    out: dict = {"crit_diff": None, "fixef_rel": None, "agrees": "—"}
    if "error" in jx or "error" in peer:
        return out
    checks = []
    if peer.get("crit") is not None and jx.get("crit") is not None:
        d = jx["crit"] - peer["crit"]
        out["crit_diff"] = d
        checks.append(abs(d) <= CRIT_ABS_TOL)
    a, b = jx.get("fixef") or [], peer.get("fixef") or []
    if a and len(a) == len(b):
        rel = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))
        out["fixef_rel"] = rel
        checks.append(rel <= FIXEF_REL_TOL)
    elif a or b:
        checks.append(False)
    if checks:
        ok = all(checks)
        detail = []
        if out["crit_diff"] is not None:
            detail.append(f"Δcrit {out['crit_diff']:+.1e}")
        if out["fixef_rel"] is not None:
            detail.append(f"β rel {out['fixef_rel']:.0e}")
        out["agrees"] = ("yes" if ok else "**NO**") + (f" ({', '.join(detail)})" if detail else "")
    return out


# ---------------------------------------------------------------------------
# the cold-process case
# ---------------------------------------------------------------------------

REML_LINE = re.compile(r"REML criterion at convergence:\s*([-+0-9.eE]+)")


def _wall(cmd, env=None, timeout=300.0):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    return time.perf_counter() - t0, r


def run_cold_process(case: Case, opts, tmp: Path) -> list[dict]:
    rows = []
    cli = [sys.executable, "-m", "jaxmlm._cli", "fit", "--example", "sleepstudy", case.formula]
    n_cold = max(1, min(opts.repeats, 3))
    jx: dict = {"tool": "jaxmlm"}
    try:
        # warm JAX compilation cache: populate once, then time
        warm_dir = tmp / "jaxcache-warm"
        env = _py_env()
        env["JAXMLM_CACHE_DIR"] = str(warm_dir)
        first, r = _wall(cli, env)
        if r.returncode != 0:
            raise RuntimeError(f"CLI failed (exit {r.returncode}): {short_error(r.stderr)}")
        warm_times = []
        for _ in range(opts.repeats):
            dt, r = _wall(cli, env)
            if r.returncode != 0:
                raise RuntimeError(f"CLI failed (exit {r.returncode}): {short_error(r.stderr)}")
            warm_times.append(dt)
        m = REML_LINE.search(r.stdout)
        jx["crit_printed"] = float(m.group(1)) if m else None
        cold_times = []
        for i in range(n_cold):
            env_c = _py_env()
            env_c["JAXMLM_CACHE_DIR"] = str(tmp / f"jaxcache-cold-{i}")  # fresh, empty
            dt, r = _wall(cli, env_c)
            if r.returncode != 0:
                raise RuntimeError(f"CLI failed (exit {r.returncode}): {short_error(r.stderr)}")
            cold_times.append(dt)
        imp, _ = _wall([sys.executable, "-c", "import jaxmlm._results"], _py_env())
        jx.update(warm=median(warm_times), warm_all=warm_times, cold=median(cold_times), cold_all=cold_times,
                  first_populating=first, import_s=imp)
    except Exception as exc:  # noqa: BLE001
        jx["error"] = f"{type(exc).__name__}: {exc}"

    if not have_rscript():
        rows.append({"case": case, "peer": "lme4", "jx": jx, "peer_res": {"skipped": "Rscript not on PATH"}})
        return rows
    rcmd = ["Rscript", "-e",
            "library(lme4); print(summary(lmer(Reaction ~ Days + (Days|Subject), sleepstudy)))"]
    pr: dict = {"tool": "lme4"}
    try:
        times = []
        for _ in range(opts.repeats + 1):
            dt, r = _wall(rcmd)
            if r.returncode != 0:
                raise RuntimeError(f"Rscript failed (exit {r.returncode}): {short_error(r.stderr)}")
            times.append(dt)
        m = REML_LINE.search(r.stdout)
        pr.update(cold=times[0], warm=median(times[1:]), warm_all=times[1:],
                  crit_printed=float(m.group(1)) if m else None)
    except Exception as exc:  # noqa: BLE001
        pr["error"] = f"{type(exc).__name__}: {exc}"
    rows.append({"case": case, "peer": "lme4", "jx": jx, "peer_res": pr})
    return rows


# ---------------------------------------------------------------------------
# main driver
# ---------------------------------------------------------------------------


def parse_cases(text: str | None, big: bool) -> list[str]:
    if not text:
        names = list(DEFAULT_CASES)
    else:
        names = []
        for raw in text.split(","):
            raw = raw.strip()
            if not raw:
                continue
            key = ALIASES.get(raw, raw.lower())
            if key not in CASES:
                raise SystemExit(f"unknown case {raw!r}; choose from {', '.join(CASES)}")
            names.append(key)
    if big and "10m" not in names:
        names.append("10m")
    if not big and "10m" in names:
        print("note: the 10m case needs --big; dropping it", file=sys.stderr)
        names.remove("10m")
    return names


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_case(case: Case, opts, tmp: Path, available: dict) -> list[dict]:
    if case.kind == "process":
        log(f"{case.name}: fresh processes (CLI with warm/cold JAX cache, Rscript)")
        return run_cold_process(case, opts, tmp)

    # data
    data_path: str | None = None
    data_note = ""
    if case.kind == "example":
        data_path = str(REPO / "jaxmlm" / "data" / case.data_file)
    elif case.kind == "insteval":
        p, data_note = export_insteval()
        if p is None:
            return [{"case": case, "peer": "—", "jx": {"skipped": "whole case; " + data_note}, "peer_res": {}}]
        data_path = str(p)
    elif not case.jaxmlm_only:
        log(f"{case.name}: writing synthetic data")
        make = nested_frame if case.kind == "nested" else synthetic_frame
        df = make(case.groups, case.per_group)
        data_path = str(tmp / f"{case.name}.csv")
        df.to_csv(data_path, index=False)
        del df

    # jaxmlm (sleepstudy through load_example, as users would)
    log(f"{case.name}: jaxmlm")
    jx_data = data_path  # every tool reads the same CSV
    jx_timeout = opts.timeout * (3 if case.big else 2)
    jx = run_python_worker("jaxmlm", case, jx_data, opts, jx_timeout, stall_s=opts.stall)
    if jx.get("timeout"):
        log(f"{case.name}: jaxmlm: {jx['error']}; retrying with XLA_FLAGS={XLA_WORKAROUND}")
        first_error = jx["error"]
        jx = run_python_worker("jaxmlm", case, jx_data, opts, jx_timeout, xla=XLA_WORKAROUND, stall_s=opts.stall)
        jx.setdefault("notes", []).insert(
            0, f"**default run {first_error}**; numbers from a rerun with XLA_FLAGS={XLA_WORKAROUND}")
        jx["hung_default"] = first_error
    if case.jaxmlm_only:
        return [{"case": case, "peer": "—", "jx": jx, "peer_res": {"skipped": "jaxmlm-only case"}}]

    rows = []
    for peer in PEERS:
        if peer not in opts.peers:
            continue
        if peer == "lme4":
            if not available["lme4"]:
                pr = {"skipped": available["lme4_note"]}
            else:
                log(f"{case.name}: lme4")
                pr = run_lme4(case, data_path, tmp, opts)
        elif peer == "statsmodels":
            if not available["statsmodels"]:
                pr = {"skipped": "statsmodels not importable"}
            elif case.sm is None:
                pr = {"skipped": case.sm_skip or "model not expressible in statsmodels MixedLM"}
            else:
                log(f"{case.name}: statsmodels")
                pr = run_python_worker("statsmodels", case, data_path, opts, opts.timeout)
        else:
            if not available["mixedlm"]:
                pr = {"skipped": available["mixedlm_note"]}
            else:
                log(f"{case.name}: mixedlm")
                pr = run_python_worker("mixedlm", case, data_path, opts, opts.timeout)
        rows.append({"case": case, "peer": peer, "jx": jx, "peer_res": pr})
    return rows


def _notes_for(res: dict, who: str) -> list[str]:
    out = []
    if res.get("skipped"):
        out.append(f"{who} skipped: {res['skipped']}")
    if res.get("error"):
        out.append(f"{who} FAILED: {res['error']}")
    for n in res.get("notes", []) or []:
        out.append(f"{who}: {n}")
    if res.get("warnings"):
        out.append(f"{who} warned: " + "; ".join(res["warnings"])[:300])
    if res.get("fit_warnings"):
        out.append(f"{who} warned: " + "; ".join(res["fit_warnings"])[:300])
    if "cold" in res and res.get("warm") is None and not res.get("error") and not res.get("skipped"):
        out.append(f"{who}: one fit only (cold {fmt_s(res['cold'])} s > {SLOW_LIMIT[0]:.0f} s limit)")
    return out


SLOW_LIMIT = [60.0]


def build_rows(all_rows: list[dict]) -> list[dict]:
    table = []
    for row in all_rows:
        case, jx, pr = row["case"], row["jx"], row["peer_res"]
        notes = []
        if case.kind == "process":
            agrees = "—"
            a, b = jx.get("crit_printed"), pr.get("crit_printed")
            if a is not None and b is not None:
                agrees = ("yes" if abs(a - b) < 0.051 else "**NO**") + f" (printed REML {a:g} vs {b:g})"
            if jx.get("first_populating") is not None:
                notes.append(f"jaxmlm: first run populating the cache {fmt_s(jx['first_populating'])} s; "
                             f"`import jaxmlm._results` alone {fmt_s(jx.get('import_s'))} s; "
                             f"warm = JAX cache warm, cold = empty JAX cache; lme4 warm = median Rscript run, cold = first run")
            notes += _notes_for(jx, "jaxmlm") + _notes_for(pr, row["peer"])
            cmp = {"crit_diff": None, "fixef_rel": None}
        else:
            cmp = compare(jx, pr) if not pr.get("skipped") else {"crit_diff": None, "fixef_rel": None, "agrees": "—"}
            agrees = cmp["agrees"]
            notes += _notes_for(jx, "jaxmlm") + ([] if case.jaxmlm_only else _notes_for(pr, row["peer"]))
            if pr.get("warm_all") is not None and pr.get("warm") is not None:
                k = len(pr["warm_all"])
                if k < SLOW_LIMIT_REPEATS[0]:
                    notes.append(f"{row['peer']}: warm = median of {k}")
        table.append({
            "case": case.name,
            "title": case.title,
            "peer": row["peer"],
            "nobs": jx.get("nobs") or pr.get("nobs"),
            "jaxmlm_warm_s": jx.get("warm"),
            "peer_warm_s": pr.get("warm"),
            "ratio_warm": (jx["warm"] / pr["warm"]) if jx.get("warm") and pr.get("warm") else None,
            "jaxmlm_cold_s": jx.get("cold"),
            "peer_cold_s": pr.get("cold"),
            "ratio_cold": (jx["cold"] / pr["cold"]) if jx.get("cold") and pr.get("cold") else None,
            "agrees": agrees,
            "crit_jaxmlm": jx.get("crit", jx.get("crit_printed")),
            "crit_peer": pr.get("crit", pr.get("crit_printed")),
            "crit_diff": cmp.get("crit_diff"),
            "fixef_max_rel_diff": cmp.get("fixef_rel"),
            "notes": "; ".join(dict.fromkeys(notes)),
        })
    return table


SLOW_LIMIT_REPEATS = [5]


def jaxmlm_breakdown(all_rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for row in all_rows:
        case, jx = row["case"], row["jx"]
        if case.name in seen or case.kind == "process" or "cold" not in jx:
            continue
        seen.add(case.name)
        warm, opt = jx.get("warm"), jx.get("opt_warm")
        design, stats = jx.get("design_s"), jx.get("stats_s")
        other = None
        if warm is not None and opt is not None and design is not None and stats is not None:
            # Separately timed parts: clamp noise at 0. Where the pass runs in the optimizer's
            # program, FitRecord.seconds already holds it.
            other = max(0.0, warm - opt - design - (0.0 if jx.get("stats_in_optimizer") else stats))
        out.append({
            "case": case.name,
            "nobs": jx.get("nobs"),
            "groups": ", ".join(f"{k}:{v}" for k, v in (jx.get("ngroups") or {}).items()),
            "cold_total_s": jx.get("cold"),
            "cold_optimizer_s": jx.get("opt_cold"),
            "warm_total_s": warm,
            "warm_categorical_s": jx.get("warm_categorical"),
            "warm_optimizer_s": opt,
            "warm_design_s": design,
            "warm_stats_s": stats,
            "stats_in_optimizer": bool(jx.get("stats_in_optimizer")),
            "warm_other_s": other,
            "iterations": jx.get("iterations"),
            "evaluations": jx.get("evaluations"),
            "peak_rss_mib": jx.get("peak_rss_fits_mib", jx.get("peak_rss_mib")),
            "rss_after_data_mib": jx.get("rss_after_data_mib"),
            "objective": jx.get("crit"),
            "xla_workaround": bool(jx.get("hung_default")),
        })
    return out


def markdown(info: dict, table: list[dict], breakdown: list[dict], opts, elapsed: float) -> str:
    L = []
    L.append("# jaxmlm benchmarks")
    L.append("")
    L.append(f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} — total {elapsed / 60:.1f} min; "
             f"`--repeats {opts.repeats}`; cases: {', '.join(opts.case_names)}.")
    L.append("")
    ram = f"{info['ram_gib']:.0f} GiB RAM" if info.get("ram_gib") else "RAM ?"
    L.append(f"**Machine:** {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), {ram}, "
             f"{info['os']}; load average at start {' '.join(info.get('loadavg_start') or ['?'])}, "
             f"at end {' '.join(info.get('loadavg_end') or ['?'])}.")
    L.append("")
    L.append(f"**Versions:** Python {info['python']}, jaxmlm {info['jaxmlm']} (git {info['git']}), "
             f"jax {info['jax']}, jaxlib {info['jaxlib']}, numpy {info['numpy']}, pandas {info['pandas']}, "
             f"R {info['R']}, lme4 {info['lme4']}, statsmodels {info['statsmodels']}, mixedlm {info['mixedlm']}"
             + (f"; XLA_FLAGS={info['xla_flags']!r}" if info.get("xla_flags") else "") + ".")
    L.append("")
    L.append("Times in seconds. *warm* = median of repeated fits after one warm-up fit in the same process "
             f"(at least {opts.repeats}, more — up to {MAX_REPEATS} — until they took {opts.min_time:g} s: "
             "the same rule for every tool; jaxmlm's after up to 11 more untimed fits or 5 s of them, "
             "since its small programs are compiled again, optimized, on their 12th run); "
             "*cold* = that first fit in a fresh process (jaxmlm: includes JAX tracing + XLA compilation). "
             "ratio = jaxmlm / peer (< 1: jaxmlm faster). REML throughout. "
             f"*agrees*: REML criterion within {CRIT_ABS_TOL:g} (where the peer reports it) and every fixed "
             f"effect within {FIXEF_REL_TOL:g} relative.")
    L.append("")
    L.append("| case | peer | jaxmlm warm | peer warm | ratio warm | jaxmlm cold | peer cold | ratio cold | agrees | notes |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in table:
        L.append("| " + " | ".join([
            r["case"], r["peer"], fmt_s(r["jaxmlm_warm_s"]), fmt_s(r["peer_warm_s"]),
            fmt_ratio(r["jaxmlm_warm_s"], r["peer_warm_s"]), fmt_s(r["jaxmlm_cold_s"]), fmt_s(r["peer_cold_s"]),
            fmt_ratio(r["jaxmlm_cold_s"], r["peer_cold_s"]), r["agrees"], r["notes"].replace("|", "/"),
        ]) + " |")
    L.append("")
    if breakdown:
        L.append("## Where jaxmlm's time goes")
        L.append("")
        L.append("*optimizer* = `FitRecord.seconds` (the θ optimization and the final solve, one program; the cold "
                 "one includes compilation); "
                 "*design* = `build_design` (formula → model matrices), *stats* = `sufficient_stats`, both timed "
                 "separately after the warm fits (median of up to 3; *in optimizer*: small data, whose pass "
                 "`lmer` runs inside the optimizer's program); *other* = warm total − optimizer − design − stats "
                 "(conditional-variance blocks, result object; with the pass in the optimizer, also its host part: "
                 "least squares for β₀, packing the rows). Peak RSS = `ru_maxrss` of the worker process after the fits "
                 "(the data, one fit at a time, before the stage split).")
        L.append("")
        L.append("| case | rows | groups | cold total | cold optimizer | warm total | warm, Categorical ids | warm optimizer | "
                 "warm design | warm stats | warm other | iters / evals | peak RSS MiB | RSS after data MiB |")
        L.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for b in breakdown:
            rss = f"{b['peak_rss_mib']:.0f}" if b["peak_rss_mib"] else "—"
            rss0 = f"{b['rss_after_data_mib']:.0f}" if b["rss_after_data_mib"] else "—"
            it = f"{b['iterations']} / {b['evaluations']}" if b["iterations"] is not None else "—"
            L.append("| " + " | ".join([
                b["case"] + (" ⚠ XLA workaround" if b["xla_workaround"] else ""), f"{b['nobs']:,}" if b["nobs"] else "—",
                b["groups"] or "—", fmt_s(b["cold_total_s"]), fmt_s(b["cold_optimizer_s"]), fmt_s(b["warm_total_s"]),
                fmt_s(b["warm_categorical_s"]), fmt_s(b["warm_optimizer_s"]), fmt_s(b["warm_design_s"]),
                fmt_s(b["warm_stats_s"]) + (" (in optimizer)" if b.get("stats_in_optimizer") else ""),
                ("≈0" if b["warm_other_s"] == 0.0 else fmt_s(b["warm_other_s"])), it, rss, rss0,
            ]) + " |")
        L.append("")
    L.append("Case definitions: " + "; ".join(
        f"**{n}** = {CASES[n].title}" + (f", `{CASES[n].formula}`" if CASES[n].kind != "process" else "")
        for n in opts.case_names) + ".")
    L.append("")
    return "\n".join(L)


def write_csv(path: Path, rows: list[dict]):
    if not rows:
        return
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def run_glmm_cases(opts) -> list[str]:
    """The GLMM cases side by side with lme4's ``glmer``, glmmTMB, mixedlm and statsmodels' VB GLMM:
    ``bench_glmm.py`` in a process of its own, its table taken into the report (``--big``: the
    1M-row case too, ~15 minutes of lme4 and glmmTMB)."""
    cases = ["cbpp", "crossed", "poisson", "refits"] + (["big"] if opts.big else [])
    cmd = [sys.executable, str(HERE / "bench_glmm.py"), "--cases", *cases, "--runs", str(opts.repeats),
           "--r-runs", "2", "--big-rows", "1000000"]
    if not have_rscript():
        cmd.append("--no-r")
    title = "## GLMMs (`bench_glmm.py`, against lme4's glmer, glmmTMB, mixedlm, statsmodels' VB)"
    log("GLMMs: " + " ".join(cmd[1:]))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=8 * opts.timeout, env=_py_env(),
                              cwd=REPO)
    except subprocess.TimeoutExpired:
        return [title, "", "timed out", ""]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("|")]
    if done.returncode != 0 or not lines:
        return [title, "", f"failed: {short_error(done.stderr or done.stdout)}", ""]
    return [title, "", f"`{' '.join(['python'] + cmd[1:])}`: seconds; jaxmlm warm = median of the warm fits, "
                       "R's timed inside R; ratios = peer / jaxmlm (> 1: jaxmlm faster).", ""] + lines + [""]


def run_residual_cases(opts) -> list[str]:
    """The residual-structure cases (sleepstudy with AR(1); a 100k-row panel with AR(1) and
    varIdent) side by side with nlme: ``bench_residuals.py`` in a process of its own (its peers,
    nlme and glmmTMB, are not this file's), its table taken into the report."""
    # 40 timed warm fits at least (bench_residuals.py runs its untimed fits up to the optimized program first)
    cmd = [sys.executable, str(HERE / "bench_residuals.py"), "--runs", str(max(opts.repeats, 40))]
    if not have_rscript():
        cmd.append("--no-r")
    log("residual structures: " + " ".join(cmd[1:]))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=4 * opts.timeout, env=_py_env(),
                              cwd=REPO)
    except subprocess.TimeoutExpired:
        return ["## Residual structures (`bench_residuals.py`, against nlme)", "", "timed out", ""]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("|") or ln.startswith("Note:")]
    if done.returncode != 0 or not lines:
        return ["## Residual structures (`bench_residuals.py`, against nlme)", "",
                f"failed: {short_error(done.stderr or done.stdout)}", ""]
    return ["## Residual structures (`bench_residuals.py`, against nlme)", "",
            f"`{' '.join(['python'] + cmd[1:])}`: warm = median of the warm fits; nlme timed inside R.", ""] + \
        lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help=f"comma-separated, from {', '.join(CASES)} (default: {','.join(DEFAULT_CASES)})")
    ap.add_argument("--repeats", type=int, default=5, help="warm fits per tool and case (default 5)")
    ap.add_argument("--big", action="store_true", help="also run the 10M-row, 100k-group jaxmlm-only case (heavy)")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of lme4,statsmodels,mixedlm")
    ap.add_argument("--slow", type=float, default=60.0, help="a first fit slower than this (s): no warm repeats")
    ap.add_argument("--budget", type=float, default=60.0, help="stop warm repeats once they used this many s")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help=f"keep repeating warm fits (up to {MAX_REPEATS}) until they took this many s (default 1)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per worker process (s) (default 300)")
    ap.add_argument("--stall", type=float, default=60.0,
                    help="a jaxmlm worker using < 1 CPU s over this many s is taken as deadlocked, killed and "
                         f"retried once with XLA_FLAGS={XLA_WORKAROUND} (default 60)")
    ap.add_argument("--no-glmm", action="store_true",
                    help="skip the GLMM cases (bench_glmm.py against lme4, glmmTMB, mixedlm; ~5 min, --big ~20)")
    ap.add_argument("--no-residuals", action="store_true",
                    help="skip the residual-structure cases (bench_residuals.py against nlme, ~1 min)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (default benchmarks/results)")
    # worker mode (internal)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.worker:
        return worker(opts)

    SLOW_LIMIT[0] = opts.slow
    SLOW_LIMIT_REPEATS[0] = opts.repeats
    opts.case_names = parse_cases(opts.cases, opts.big)
    opts.peers = [p.strip() for p in opts.peers.split(",") if p.strip()]
    t_start = time.perf_counter()
    log("collecting machine info")
    info = machine_info()
    available = {"lme4": False, "lme4_note": "", "statsmodels": False, "mixedlm": False, "mixedlm_note": ""}
    if not have_rscript():
        available["lme4_note"] = "Rscript not on PATH"
    elif info.get("lme4") in (None, "?", "not installed"):
        available["lme4_note"] = "R package lme4 not installed"
    else:
        available["lme4"] = True
    available["statsmodels"] = module_available("statsmodels")
    available["mixedlm"] = module_available("mixedlm")
    if not available["mixedlm"]:
        available["mixedlm_note"] = "mixedlm not importable (pip install mixedlm)"

    all_rows = []
    with tempfile.TemporaryDirectory(prefix="jaxmlm-bench-") as tmpname:
        tmp = Path(tmpname)
        for name in opts.case_names:
            all_rows += run_case(CASES[name], opts, tmp, available)
    try:
        info["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        info["loadavg_end"] = None
    elapsed = time.perf_counter() - t_start

    table = build_rows(all_rows)
    breakdown = jaxmlm_breakdown(all_rows)
    md = markdown(info, table, breakdown, opts, elapsed)
    if not opts.no_glmm:
        md = md.rstrip("\n") + "\n\n" + "\n".join(run_glmm_cases(opts))
    if not opts.no_residuals:
        md = md.rstrip("\n") + "\n\n" + "\n".join(run_residual_cases(opts))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.md").write_text(md)
    write_csv(out / "benchmarks.csv", table)
    write_csv(out / "jaxmlm_breakdown.csv", breakdown)
    raw = {"machine": info, "rows": [{"case": r["case"].name, "peer": r["peer"], "jaxmlm": r["jx"],
                                      "peer_result": r["peer_res"]} for r in all_rows]}
    (out / "raw.json").write_text(json.dumps(raw, indent=1, default=str))
    print(md)
    log(f"wrote {out / 'benchmarks.md'}, benchmarks.csv, jaxmlm_breakdown.csv, raw.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

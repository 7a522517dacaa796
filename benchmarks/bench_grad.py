#!/usr/bin/env python
"""The Jacobian of β̂ with respect to every prior weight against 20 refits.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_grad.py              # 1,000 rows, 7 warm repeats
    PYTHONPATH=. python benchmarks/bench_grad.py --rows 4000 --repeats 11

Model: ``y ~ x + (x | g)`` by REML on simulated data (seeded): ``rows`` rows in groups of
20, x ~ N(0, 1), a random intercept and slope per group, prior weights uniform on [0.5, 1.5].
Timed, each warm (compiled first, in the same process), median of ``repeats``:

* ``jax.jacobian`` of β̂ with respect to all n weights, through ``jaxmlm.core.fit``'s implicit
  derivative (one fit, then one reverse pass per fixed effect), one compiled program;
* 20 refits by ``jaxmlm.lmer(..., weights=...)`` with new weights (what one would do to get
  20 finite-difference columns of the same Jacobian, 10 central ones);
* 20 refits by ``core.fit`` on ``core.statistics_of`` of new weights, one compiled program
  called 20 times (the fastest refit path: no formula, no host pass).

Also checks one column of the Jacobian against a central difference of refits. Prints a
small Markdown table. The machine may be shared: the median of repeats is what is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import jaxmlm
import jaxmlm.core as core

FORMULA = "y ~ x + (x | g)"


def simulate(rows: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = max(rows // 20, 2)
    g = np.arange(rows) % groups
    x = rng.normal(size=rows)
    b0, b1 = rng.normal(0, 1.0, groups), rng.normal(0, 0.5, groups)
    y = 2.0 + 0.5 * x + b0[g] + b1[g] * x + rng.normal(0, 1.0, rows)
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g), "w": rng.uniform(0.5, 1.5, rows)})


def median_time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--refits", type=int, default=20)
    args = ap.parse_args()

    data = simulate(args.rows)
    d = core.design(FORMULA, data, weights="w")
    s = core.schema(d)
    rows = core.row_data(d, s)
    w0 = rows.weights

    def beta(w):
        return core.fit(core.statistics_of(s, rows._replace(weights=w)), s.layout).solution.beta

    jac = jax.jit(jax.jacobian(beta))
    refit_core = jax.jit(beta)
    rng = np.random.default_rng(2)
    W = [w0 * (1.0 + 1e-3 * rng.standard_normal(args.rows)) for _ in range(args.refits)]

    t = time.perf_counter()
    J = jax.block_until_ready(jac(w0))
    first_jac = time.perf_counter() - t
    jax.block_until_ready(refit_core(w0))
    jaxmlm.lmer(FORMULA, data, weights="w")  # compiled (warm) before timing

    def lmer_refits():
        for w in W:
            jaxmlm.lmer(FORMULA, data.assign(w=np.asarray(w)), weights="w").fixef

    def core_refits():
        for w in W:
            jax.block_until_ready(refit_core(w))

    t_jac = median_time(lambda: jax.block_until_ready(jac(w0)), args.repeats)
    t_lmer = median_time(lmer_refits, args.repeats)
    t_core = median_time(core_refits, args.repeats)

    # One column against a central difference of lmer refits (h = 1e-4 relative).
    i = int(rng.integers(args.rows))
    h = 1e-4 * float(w0[i])

    def lmer_beta(dw):
        w = np.asarray(w0).copy()
        w[i] += dw
        return np.asarray(jaxmlm.lmer(FORMULA, data.assign(w=w), weights="w").fixef, float)

    fd = (lmer_beta(h) - lmer_beta(-h)) / (2 * h)
    rel = float(np.max(np.abs(np.asarray(J)[:, i] - fd)) / np.max(np.abs(fd)))

    n, p = args.rows, s.layout.p
    print(f"Model {FORMULA} by REML, {n} rows, {n // 20} groups, prior weights; "
          f"{platform.machine()}, {jax.devices()[0].platform}, JAX {jax.__version__}; "
          f"warm, median of {args.repeats} repeats (machine possibly shared)\n")
    print("| what | time (ms) | ratio to the Jacobian |")
    print("|---|---:|---:|")
    print(f"| `jax.jacobian` of β̂ ({p}) w.r.t. all {n} weights | {1e3 * t_jac:.2f} | 1.0 |")
    print(f"| {args.refits} refits by `jaxmlm.lmer` | {1e3 * t_lmer:.1f} | {t_lmer / t_jac:.1f} |")
    print(f"| {args.refits} refits by `core.fit` (one compiled program) | {1e3 * t_core:.2f} | {t_core / t_jac:.1f} |")
    print(f"\nFirst Jacobian call (trace + compile): {first_jac:.1f} s. Column {i} against a central "
          f"difference of lmer refits: relative error {rel:.1e}.")


if __name__ == "__main__":
    main()

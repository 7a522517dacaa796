"""Accuracy of jaxmlm's float32 mode against float64 on every Gaussian and GLMM reference case.

    PYTHONPATH=. python benchmarks/float32_accuracy.py [--out benchmarks/results]

For each lme4 reference fit in tests/reference/ (the data sets and formulas of
the parity tests, plus the benchmark's 100k synthetic case), fits the model
three ways — float64 (the default), ``dtype="float32"`` (float32 iterations,
then a float64 polish of θ̂) and ``dtype="float32", polish=False`` (float32
throughout) — and reports the largest differences from the float64 fit:

* criterion: |Δ| (REML criterion or deviance, −2 log-likelihood units);
* β̂: max |Δβ| / SE(β̂);
* θ̂: max |Δθ|; σ̂: relative difference.

The same for ``glmer`` on every GLMM reference case of tests/reference/glmer/ (the
deviance is the Laplace or quadrature −2 log-likelihood; no σ̂; SE(β̂): the largest
relative difference).

Writes ``float32_accuracy.md`` and ``.csv``. Not a test: the tests check the
float32 mode against tolerances in tests/test_results.py.
"""

from __future__ import annotations

import argparse
import json
import sys

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _cases():
    from conftest import CASES, case_data  # the parity tests' cases and data loader

    for cid, c in sorted(CASES.items()):
        yield cid, c["formula"], case_data(c), bool(c["REML"])
    from run import synthetic_frame, as_factors  # the benchmark's 100k case

    yield "synthetic_100k", "y ~ x1 + x2 + (1 + x1 | g)", as_factors(synthetic_frame(1000, 100), ["g"]), True


def _diffs(ref, m) -> dict:
    se = ref.se.to_numpy()
    return {
        "crit_abs": abs(m.objective - ref.objective),
        "beta_se": float(np.max(np.abs(m.fixef.to_numpy() - ref.fixef.to_numpy()) / se)) if len(se) else 0.0,
        "theta_abs": float(np.max(np.abs(m.theta - ref.theta))),
        "sigma_rel": abs(m.sigma - ref.sigma) / ref.sigma,
    }


def _glmm_cases():
    from test_glmer import CASES, _case, _data  # the GLMM parity tests' cases, data loader and fit

    for cid in CASES:
        yield cid, _case(cid), _data(_case(cid))


def _glmm_diffs(ref, m) -> dict:
    se, se_m = ref.se.to_numpy(), m.se.to_numpy()
    return {
        "crit_abs": abs(m.objective - ref.objective),
        "beta_se": float(np.max(np.abs(m.fixef.to_numpy() - ref.fixef.to_numpy()) / se)),
        "theta_abs": float(np.max(np.abs(m.theta - ref.theta))),
        "se_rel": float(np.max(np.abs(se_m / se - 1.0))),
    }


def glmm_rows() -> list[dict]:
    from test_glmer import _fit as _glmm_fit

    rows = []
    for cid, case, d in _glmm_cases():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = _glmm_fit(case, d)
            row = {"case": cid, "formula": case["formula"]}
            for mode, kw in (("f32+polish", dict(dtype="float32")), ("f32", dict(dtype="float32", polish=False))):
                m = _glmm_fit(case, d, **kw)
                for k, v in _glmm_diffs(ref, m).items():
                    row[f"{mode} {k}"] = v
                row[f"{mode} converged"] = m.record.converged
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import jaxmlm

    rows = []
    for cid, formula, df, reml in _cases():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = jaxmlm.lmer(formula, df, REML=reml)
            row = {"case": cid, "formula": formula}
            for mode, kw in (("f32+polish", dict(dtype="float32")), ("f32", dict(dtype="float32", polish=False))):
                m = jaxmlm.lmer(formula, df, REML=reml, **kw)
                for k, v in _diffs(ref, m).items():
                    row[f"{mode} {k}"] = v
                row[f"{mode} converged"] = m.record.converged
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "float32_accuracy.csv", index=False)
    num = table.drop(columns=["formula"]).set_index("case")
    lines = [
        "# float32 mode: differences from the float64 fit",
        "",
        "Largest over the cases (full table in float32_accuracy.csv):",
        "",
        "| mode | |Δ criterion| | max |Δβ|/SE | max |Δθ| | |Δσ|/σ | all converged |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for mode in ("f32+polish", "f32"):
        lines.append(
            f"| {mode} | {num[f'{mode} crit_abs'].max():.1e} | {num[f'{mode} beta_se'].max():.1e} | "
            f"{num[f'{mode} theta_abs'].max():.1e} | {num[f'{mode} sigma_rel'].max():.1e} | "
            f"{bool(num[f'{mode} converged'].all())} |"
        )
    glmm = pd.DataFrame(glmm_rows())
    glmm.to_csv(out / "float32_accuracy_glmm.csv", index=False)
    num = glmm.drop(columns=["formula"]).set_index("case")
    lines += [
        "",
        "## glmer",
        "",
        "Largest over the GLMM reference cases (full table in float32_accuracy_glmm.csv); the",
        "criterion is the deviance (Laplace or quadrature), SE(β̂) the largest relative difference:",
        "",
        "| mode | |Δ deviance| | max |Δβ|/SE | max |Δθ| | max |ΔSE|/SE | all converged |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for mode in ("f32+polish", "f32"):
        lines.append(
            f"| {mode} | {num[f'{mode} crit_abs'].max():.1e} | {num[f'{mode} beta_se'].max():.1e} | "
            f"{num[f'{mode} theta_abs'].max():.1e} | {num[f'{mode} se_rel'].max():.1e} | "
            f"{bool(num[f'{mode} converged'].all())} |"
        )
    (out / "float32_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

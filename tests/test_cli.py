"""The ``jaxmlm`` command line: ``main(argv)`` in-process, plus one real subprocess run.

The CLI's JSON is compared with the Python API on the same model (same
process, so the numbers agree to rounding) and with lme4's reference fits.
Every in-process call passes ``--no-cache``: the persistent compilation
cache is the CLI process's business, not the test session's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxmlm
from jaxmlm import _cli
from conftest import CASES

ROOT = Path(__file__).resolve().parents[1]

# Reference cases fitted through the CLI: (case id, the CLI's data argument(s)).
CLI_CASES = ["sleepstudy_rs", "sleepstudy_rs_ml", "dyestuff", "dyestuff2_singular"]


def run_cli(capsys, *argv):
    """main(argv) → (status, stdout, stderr)."""
    status = _cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def fit_args(case: dict, *extra: str) -> list[str]:
    args = ["fit", "--no-cache", "--example", case["dataset"], case["formula"], *extra]
    if not case["REML"]:
        args.append("--ml")
    return args


@pytest.fixture(scope="module")
def cli_json():
    """The --json output of each CLI case, fitted once per module."""
    cache: dict[str, dict] = {}

    def get(cid: str) -> dict:
        if cid not in cache:
            import contextlib
            import io

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = _cli.main(fit_args(CASES[cid], "--json"))
            assert status == 0, err.getvalue()
            assert "Traceback" not in err.getvalue()
            cache[cid] = json.loads(out.getvalue())
        return cache[cid]

    return get


def assert_error(status: int, out: str, err: str, *needles: str) -> None:
    assert status == 2
    assert out == ""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("jaxmlm: error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def _no_nan_tokens(text: str) -> None:
    def refuse(tok):
        raise AssertionError(f"invalid JSON constant {tok}")

    json.loads(text, parse_constant=refuse)


# ---- JSON against the Python API and against lme4 ------------------------------------


@pytest.mark.parametrize("cid", CLI_CASES)
def test_json_matches_python_api(cli_json, fits, cid):
    j, m = cli_json(cid), fits(cid)
    assert j["formula"] == m.formula
    assert j["REML"] is m.REML
    assert j["nobs"] == m.nobs and j["n_dropped"] == m.n_dropped and j["npar"] == m.npar
    for key in ("objective", "loglik", "aic", "bic", "sigma"):
        assert j[key] == pytest.approx(getattr(m, key), rel=1e-9, abs=1e-12), key
    np.testing.assert_allclose(j["theta"], m.theta, rtol=1e-9, atol=1e-12)
    assert list(j["fixef"]) == list(m.fixef.index)
    np.testing.assert_allclose(list(j["fixef"].values()), m.fixef.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(list(j["se"].values()), m.se.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(np.array(j["vcov"]), m.vcov.to_numpy(), rtol=1e-9, atol=1e-12)
    assert j["ngroups"] == m.ngroups
    assert j["is_singular"] is m.is_singular

    vc = m.varcorr
    assert len(j["varcorr"]) == len(vc)
    for rec, row in zip(j["varcorr"], vc.itertuples(index=False)):
        assert rec["grp"] == row.grp
        assert rec["var1"] == (None if pd.isna(row.var1) else row.var1)
        assert rec["var2"] == (None if pd.isna(row.var2) else row.var2)
        assert rec["vcov"] == pytest.approx(row.vcov, rel=1e-9, abs=1e-12)
        assert rec["sdcor"] == (None if pd.isna(row.sdcor) else pytest.approx(row.sdcor, rel=1e-9, abs=1e-12))

    assert list(j["ranef"]) == list(m.ranef)
    for g, df in m.ranef.items():
        assert list(j["ranef"][g]) == [str(lev) for lev in df.index]
        got = np.array([[j["ranef"][g][str(lev)][t] for t in df.columns] for lev in df.index])
        np.testing.assert_allclose(got, df.to_numpy(), rtol=1e-8, atol=1e-9)

    rec = j["record"]
    np.testing.assert_allclose(rec["theta_start"], m.record.theta_start)
    np.testing.assert_allclose(rec["theta_end"], m.record.theta_end, rtol=1e-9, atol=1e-12)
    for key in ("iterations", "evaluations", "status", "message", "converged"):
        assert rec[key] == getattr(m.record, key), key
    assert rec["warnings"] == list(m.record.warnings)
    assert rec["converged"] is True


@pytest.mark.parametrize("cid", CLI_CASES)
def test_json_matches_lme4(cli_json, cid):
    j, ref = cli_json(cid), CASES[cid]
    assert abs(j["objective"] - ref["deviance_or_reml"]) < 2e-4
    assert list(j["fixef"]) == list(ref["fixef"])
    for name, value in ref["fixef"].items():
        assert j["fixef"][name] == pytest.approx(value, rel=1e-3)
    assert j["nobs"] == ref["nobs"]
    assert j["ngroups"] == ref["ngroups"]
    assert j["is_singular"] is bool(ref["singular"])


def test_json_is_strict_json(capsys):
    status, out, err = run_cli(capsys, *fit_args(CASES["sleepstudy_rs"], "--json"))
    assert status == 0, err
    _no_nan_tokens(out)
    assert out.strip().startswith("{") and out.strip().endswith("}")


def test_json_non_finite_becomes_null():
    assert _cli._num(float("nan")) is None
    assert _cli._num(float("inf")) is None
    assert _cli._num(None) is None
    assert _cli._num(np.float64(1.5)) == 1.5
    assert _cli._text(float("nan")) is None and _cli._text(None) is None


def test_ml_flag_changes_reml(cli_json):
    reml, ml = cli_json("sleepstudy_rs"), cli_json("sleepstudy_rs_ml")
    assert reml["REML"] is True and ml["REML"] is False
    assert ml["objective"] == pytest.approx(CASES["sleepstudy_rs_ml"]["deviance_or_reml"], abs=2e-4)
    assert ml["objective"] != pytest.approx(reml["objective"], abs=1.0)


# ---- text output -------------------------------------------------------------------------


def test_summary_text(capsys, fits):
    status, out, err = run_cli(capsys, *fit_args(CASES["sleepstudy_rs"]))
    assert status == 0, err
    assert out.startswith("Linear mixed model fit by REML")
    assert "Formula: Reaction ~ Days + (Days | Subject)" in out
    assert "Data: sleepstudy" in out
    assert out.rstrip("\n") == fits("sleepstudy_rs").summary().replace(
        "Formula: Reaction ~ Days + (Days | Subject)\n",
        "Formula: Reaction ~ Days + (Days | Subject)\n   Data: sleepstudy\n",
    ).rstrip("\n")


def test_examples_command(capsys):
    status, out, err = run_cli(capsys, "examples")
    assert status == 0 and err == ""
    assert out.splitlines() == list(jaxmlm.EXAMPLES)


@pytest.mark.parametrize("name", ["SLEEPSTUDY", "SleepStudy"])
def test_example_name_is_case_insensitive(capsys, name):
    status, out, err = run_cli(
        capsys, "fit", "--no-cache", "--json", "--example", name, "Reaction ~ Days + (Days | Subject)"
    )
    assert status == 0, err
    assert json.loads(out)["data"] == "sleepstudy"


def test_help_exits_zero(capsys):
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0 and "fit" in out and "examples" in out
    status, out, _ = run_cli(capsys, "fit", "--help")
    assert status == 0 and "--example" in out and "--ml" in out and "--json" in out


# ---- file input ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sleepstudy_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    df = jaxmlm.load_example("sleepstudy")
    df.to_csv(d / "sleepstudy.csv", index=False)
    df.to_csv(d / "sleepstudy.csv.gz", index=False)
    return d


@pytest.mark.parametrize("fname", ["sleepstudy.csv", "sleepstudy.csv.gz"])
def test_csv_input_matches_example(capsys, cli_json, sleepstudy_file, fname):
    path = sleepstudy_file / fname
    status, out, err = run_cli(capsys, "fit", "--no-cache", "--json", str(path), "Reaction ~ Days + (Days | Subject)")
    assert status == 0, err
    j, ref = json.loads(out), cli_json("sleepstudy_rs")
    assert j["data"] == str(path)
    assert j["objective"] == pytest.approx(ref["objective"], rel=1e-10)
    assert j["fixef"] == pytest.approx(ref["fixef"], rel=1e-8)
    # Subject read back as integers: levels sort numerically, as R's factor() does.
    assert list(j["ranef"]["Subject"]) == list(ref["ranef"]["Subject"])


def test_options_after_positionals(capsys, sleepstudy_file):
    path = str(sleepstudy_file / "sleepstudy.csv")
    status, out, err = run_cli(capsys, "fit", path, "--json", "Reaction ~ Days + (Days | Subject)", "--ml", "--no-cache")
    assert status == 0, err
    assert json.loads(out)["REML"] is False


def test_weights_and_offset_columns(capsys, tmp_path):
    df = jaxmlm.load_example("sleepstudy").assign(w=np.linspace(0.5, 2.0, 180), o=np.linspace(-1.0, 1.0, 180),
                                                  s="a")
    path = tmp_path / "w.csv"
    df.to_csv(path, index=False)
    status, out, err = run_cli(capsys, "fit", "--no-cache", "--json", str(path), "Reaction ~ Days + (Days | Subject)",
                               "--weights", "w", "--offset", "o")
    assert status == 0, err
    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", df, weights="w", offset="o")
    assert abs(json.loads(out)["loglik"] - m.loglik) < 1e-8
    status, out, err = run_cli(capsys, "fit", "--no-cache", str(path), "Reaction ~ Days + (1 | Subject)", "--weights", "s")
    assert status == 2 and "weights must be numeric" in err and "Traceback" not in err


def test_missing_values_dropped_and_reported(capsys, tmp_path):
    df = jaxmlm.load_example("sleepstudy")
    df.loc[[3, 7], "Reaction"] = np.nan
    path = tmp_path / "na.csv"
    df.to_csv(path, index=False)
    status, out, err = run_cli(capsys, "fit", "--no-cache", "--json", str(path), "Reaction ~ Days + (Days | Subject)")
    assert status == 0, err
    j = json.loads(out)
    assert j["n_dropped"] == 2 and j["nobs"] == 178


def test_parquet_input(capsys, sleepstudy_file, cli_json):
    pytest.importorskip("pyarrow")
    path = sleepstudy_file / "sleepstudy.parquet"
    jaxmlm.load_example("sleepstudy").to_parquet(path)
    status, out, err = run_cli(capsys, "fit", "--no-cache", "--json", str(path), "Reaction ~ Days + (Days | Subject)")
    assert status == 0, err
    assert json.loads(out)["objective"] == pytest.approx(cli_json("sleepstudy_rs")["objective"], rel=1e-10)


@pytest.mark.parametrize("glob", [False, True])
def test_parquet_dataset_folder_or_glob(capsys, tmp_path, cli_json, glob):
    """A folder (or glob) of Parquet files is read partition by partition (Dask), with the same fit."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("dask")
    df = jaxmlm.load_example("sleepstudy")
    for i in range(3):
        df.iloc[i::3].to_parquet(tmp_path / f"part-{i}.parquet")
    data = str(tmp_path / "part-*.parquet") if glob else str(tmp_path)
    status, out, err = run_cli(capsys, "fit", "--no-cache", "--json", data, "Reaction ~ Days + (Days | Subject)")
    assert status == 0, err
    j = json.loads(out)
    assert j["nobs"] == 180 and j["objective"] == pytest.approx(cli_json("sleepstudy_rs")["objective"], rel=1e-10)
    status, out, err = run_cli(capsys, "fit", "--no-cache", data, "Reaction ~ Days + (Days | Subject)")
    assert status == 0 and "Scaled residuals: not computed" in out and f"Data: {data}" in out, err


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_without_pyarrow(capsys, monkeypatch, tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    status, out, err = run_cli(capsys, "fit", "--no-cache", str(path), "y ~ 1 + (1 | g)")
    assert_error(status, out, err, "pyarrow", "pip install pyarrow")


# ---- errors ------------------------------------------------------------------------------

ERROR_CASES = {
    "unknown column": (
        ["fit", "--example", "sleepstudy", "Reaction ~ Dayz + (Days | Subject)"],
        ["'Dayz'", "'Days'"],
    ),
    "unknown grouping column": (
        ["fit", "--example", "sleepstudy", "Reaction ~ Days + (Days | subject)"],
        ["'subject'", "'Subject'"],
    ),
    "unknown example": (
        ["fit", "--example", "sleepstudyy", "Reaction ~ Days + (Days | Subject)"],
        ["'sleepstudyy'", "sleepstudy", "Available"],
    ),
    "missing file": (["fit", "no/such/file.csv", "y ~ 1 + (1 | g)"], ["no such file", "no/such/file.csv"]),
    "unsupported file type": (["fit", "data.xlsx", "y ~ 1 + (1 | g)"], ["data.xlsx", ".csv"]),
    "no random effects": (["fit", "--example", "sleepstudy", "Reaction ~ Days"], ["random-effects"]),
    "formula syntax": (["fit", "--example", "sleepstudy", "Reaction ~ Days + (Days | Subject"], ["("]),
    "both data and example": (
        ["fit", "data.csv", "--example", "sleepstudy", "Reaction ~ Days + (Days | Subject)"],
        ["not both"],
    ),
    "neither data nor example": (["fit", "Reaction ~ Days + (Days | Subject)"], ["DATA", "--example"]),
    "no arguments": (["fit"], ["FORMULA"]),
    "missing formula": (["fit", "data.csv"], ["FORMULA"]),
    "unknown option": (["fit", "--example", "sleepstudy", "y ~ 1 + (1 | g)", "--bogus"], ["--bogus"]),
    "too many arguments": (["fit", "a.csv", "y ~ 1 + (1 | g)", "extra"], ["too many"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_exit_2_without_traceback(capsys, case):
    argv, needles = ERROR_CASES[case]
    status, out, err = run_cli(capsys, *argv[:1], "--no-cache", *argv[1:])
    assert_error(status, out, err, *needles)


def test_error_file_problems(capsys, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    status, out, err = run_cli(capsys, "fit", "--no-cache", str(empty), "y ~ 1 + (1 | g)")
    assert_error(status, out, err, "empty")

    bad_gz = tmp_path / "bad.csv.gz"
    bad_gz.write_bytes(b"not gzip at all\n")
    status, out, err = run_cli(capsys, "fit", "--no-cache", str(bad_gz), "y ~ 1 + (1 | g)")
    assert_error(status, out, err, "cannot read", "bad.csv.gz")

    folder = tmp_path / "folder.csv"
    folder.mkdir()
    status, out, err = run_cli(capsys, "fit", "--no-cache", str(folder), "y ~ 1 + (1 | g)")
    assert_error(status, out, err, "directory")


def test_error_unreadable_file(capsys, tmp_path, monkeypatch):
    # Root reads any file, so the permission error is raised where the reader opens the file.
    path = tmp_path / "secret.csv"
    path.write_text("y,g\n1,a\n")
    import pandas

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pandas, "read_csv", denied)
    status, out, err = run_cli(capsys, "fit", "--no-cache", str(path), "y ~ 1 + (1 | g)")
    assert_error(status, out, err, "permission denied")


def test_jaxmlm_warnings_go_to_stderr(capsys):
    # An aliased fixed effect: lme4 drops it with a message; the CLI shows it as a warning line.
    df = jaxmlm.load_example("sleepstudy")
    df["Days2"] = 2.0 * df["Days"]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "aliased.csv"
        df.to_csv(path, index=False)
        status, out, err = run_cli(
            capsys, "fit", "--no-cache", "--json", str(path), "Reaction ~ Days + Days2 + (Days | Subject)"
        )
    assert status == 0, err
    assert list(json.loads(out)["fixef"]) == ["(Intercept)", "Days"]
    warn = [ln for ln in err.splitlines() if ln.startswith("jaxmlm: warning: ")]
    assert len(warn) == 1 and "Days2" in warn[0] and "rank deficient" in warn[0]


# ---- compilation cache ------------------------------------------------------------------


def test_cache_configuration(monkeypatch, tmp_path):
    """The command line uses the library's caches (compiled and traced programs); --no-cache turns them off."""
    import jax

    from jaxmlm import _cache, _programs

    calls = {}
    monkeypatch.setattr(jax.config, "update", lambda k, v: calls.__setitem__(k, v))
    monkeypatch.setenv("JAXMLM_CACHE_DIR", str(tmp_path / "cache"))
    state = dict(_cache._state)
    try:
        path = _cli._configure_jax_cache(True)
        assert path == _cache._xla_dir(tmp_path / "cache") and path.is_dir()
        assert calls["jax_compilation_cache_dir"] == str(path)
        assert _programs.enabled() and _programs._state["dir"] == path / "programs"
        calls.clear()
        assert _cli._configure_jax_cache(False) is None
        assert calls == {"jax_enable_compilation_cache": False}
        assert not _programs.enabled()
    finally:
        _programs.disable()
        _cache._state.update(state)


def test_subprocess_fills_cache_and_errors_cleanly(tmp_path):
    """A real process: the cache directory gets entries; an error is one line, no traceback."""
    env = dict(os.environ, JAXMLM_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "jaxmlm._cli", "fit", "--example", "Dyestuff", "Yield ~ 1 + (1 | Batch)"]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "Data: Dyestuff" in ok.stdout
    assert any(p.is_file() for p in (tmp_path / "cache").rglob("*")), "no compilation cache entries were written"

    bad = subprocess.run(cmd[:-1] + ["Yield ~ 1 + (1 | batch)"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["jaxmlm: error: column 'batch' is not in the data. Did you mean 'Batch'?"]


def test_exported_program_cache_gives_the_same_numbers(tmp_path):
    """_programs (the CLI's cache of exported programs) returns what the jitted kernel returns."""
    pytest.importorskip("flatbuffers")
    from jaxmlm import _inference as inf
    from jaxmlm import _compiled, _programs

    m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", jaxmlm.load_example("sleepstudy"))
    args = (np.asarray(m.theta), m.stats, np.asarray(1.0))
    direct = inf.theta_derivatives(*args, layout=m.layout)
    assert _programs.enable(tmp_path)
    try:
        first = _programs.call(inf.theta_derivatives, args, {"layout": m.layout}, compiler_options=inf._ONE_SHOT_OPTIONS)  # exports and saves
        assert len(list(tmp_path.glob("*.jaxexport"))) == 1
        _compiled.clear()  # drop the loaded program: the next call reads the file
        again = _programs.call(inf.theta_derivatives, args, {"layout": m.layout}, compiler_options=inf._ONE_SHOT_OPTIONS)  # loads from disk
    finally:
        _programs.disable()
    for a, b, c in zip(direct, first, again):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-13, atol=0)
        np.testing.assert_array_equal(np.asarray(c), np.asarray(b))

"""The ``jaxmlm`` command line.

::

    jaxmlm fit DATA "FORMULA" [--ml] [--json] [--no-cache]
    jaxmlm fit --example NAME "FORMULA" [--ml] [--json] [--no-cache]
    jaxmlm examples

``DATA`` is a CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``;
needs pyarrow) file, or a folder or glob of Parquet files (a dataset read partition by
partition through Dask: ``pip install 'jaxmlm[dask]'``). The default output is the model's ``summary()``;
``--json`` prints one JSON object instead. Errors a user can cause (bad
formula, unknown column, missing or unreadable file) print one line
``jaxmlm: error: ...`` on stderr and exit with status 2; jaxmlm's warnings
print as ``jaxmlm: warning: ...``.

This module imports only the standard library at import time: JAX, pandas
and the fitting machinery are imported inside the commands, so argument
errors are reported without waiting for them. A fresh process spends most
of its time tracing and compiling: the caches the library keeps
(``_cache.py``: ``$JAXMLM_CACHE_DIR``, else ``~/.cache/jaxmlm``) save both;
``--no-cache`` turns them off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

__all__ = ["main"]

PROG = "jaxmlm"
EXIT_USAGE = 2

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")


class CLIError(Exception):
    """A user-facing error: printed as ``jaxmlm: error: <message>``, exit status 2."""


class _FitUsageError(CLIError):
    """Wrong DATA / --example / FORMULA combination: the fit usage line is printed first."""


class _ArgumentError(Exception):
    """Raised by the parser instead of exiting, so that ``main`` returns a status."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse with ``jaxmlm: error:`` messages and no ``sys.exit`` from inside ``main``."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.print_usage(sys.stderr)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise _ArgumentError(EXIT_USAGE)

    def exit(self, status: int = 0, message: str | None = None):  # noqa: D102 - argparse API
        if message:
            sys.stderr.write(message)
        raise _ArgumentError(status)


def _build_parser() -> tuple[_Parser, _Parser]:
    """The top-level parser and its ``fit`` subparser."""
    parser = _Parser(
        prog=PROG,
        description="Fit linear mixed models with lme4's formulas and lme4's numbers, on JAX.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = sub.add_parser(
        "fit",
        help="fit a linear mixed model and print its summary (or JSON)",
        description="Fit a linear mixed model, as lme4's lmer(FORMULA, data = DATA).",
        usage=f"{PROG} fit (DATA | --example NAME) FORMULA [--ml] [--json] [--no-cache]",
        epilog=(
            "examples:\n"
            f'  {PROG} fit --example sleepstudy "Reaction ~ Days + (Days | Subject)"\n'
            f'  {PROG} fit data.csv "y ~ x + (1 | g)" --ml --json'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument(
        "args",
        nargs="*",
        metavar="DATA FORMULA",
        help="a .csv, .csv.gz, .parquet or .pq file (omit with --example), then an lme4 formula",
    )
    fit.add_argument("--example", metavar="NAME", help=f"use a shipped example data set (see `{PROG} examples`)")
    fit.add_argument("--ml", action="store_true", help="fit by maximum likelihood instead of REML")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    fit.add_argument("--weights", metavar="COLUMN", help="prior weights: residual variance sigma^2 / w (lme4's weights)")
    fit.add_argument("--offset", metavar="COLUMN", help="an offset added to the linear predictor (lme4's offset)")
    fit.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache ($JAXMLM_CACHE_DIR or ~/.cache/jaxmlm/jax)",
    )
    sub.add_parser("examples", help="list the shipped example data sets, one per line")
    return parser, fit


# ---- compilation cache --------------------------------------------------------


def _configure_jax_cache(enabled: bool) -> Path | None:
    """The library's caches of traced and compiled programs (``_cache.py``), off with ``--no-cache``.

    Returns the cache directory, or None when the cache is off.
    """
    from . import _cache

    return _cache.set_cache_dir(_cache.base_dir() if enabled else None)


# ---- data -------------------------------------------------------------------


def _import_pyarrow():
    import pyarrow  # noqa: F401

    return pyarrow


def read_data(path_text: str):
    """Read a CSV or Parquet file into a DataFrame; CLIError for anything unusable. A folder or a
    glob is a Parquet dataset: returned as its path, which ``lmer`` reads partition by partition."""
    import pandas as pd

    path = Path(path_text)
    if path.is_dir() or (not path.exists() and any(ch in path_text for ch in "*?[")):
        return path_text
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        kind = "csv"
    elif name.endswith(_PARQUET_SUFFIXES):
        kind = "parquet"
    else:
        raise CLIError(
            f"cannot read {path_text!r}: unsupported file type; expected .csv, .csv.gz, .parquet or .pq"
        )
    if not path.exists():
        raise CLIError(f"no such file: {path_text!r}")
    if kind == "parquet":
        try:
            _import_pyarrow()
        except ImportError:
            raise CLIError(
                f"reading Parquet files ({path_text!r}) needs pyarrow: pip install pyarrow"
            ) from None
    try:
        if kind == "csv":
            return pd.read_csv(path)
        return pd.read_parquet(path, engine="pyarrow")
    except PermissionError:
        raise CLIError(f"cannot read {path_text!r}: permission denied") from None
    except pd.errors.EmptyDataError:
        raise CLIError(f"cannot read {path_text!r}: the file is empty") from None
    except Exception as exc:  # parser errors, bad gzip, corrupt Parquet, bad encoding, ...
        detail = " ".join(str(exc).split()) or type(exc).__name__
        label = "CSV" if kind == "csv" else "Parquet"
        raise CLIError(f"cannot read {path_text!r} as {label}: {detail}") from None


# ---- JSON -------------------------------------------------------------------


def _num(x):
    """A JSON number, or None for NaN/inf/missing."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _text(x):
    """A JSON string, or None for a missing value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return str(x)


def model_json(m, data_name: str | None = None) -> dict:
    """Everything ``--json`` prints, as plain Python (finite floats, str, list, dict, None)."""
    rec = m.record
    fixef = {str(k): _num(v) for k, v in m.fixef.items()}
    varcorr = [
        {"grp": _text(r.grp), "var1": _text(r.var1), "var2": _text(r.var2), "vcov": _num(r.vcov), "sdcor": _num(r.sdcor)}
        for r in m.varcorr.itertuples(index=False)
    ]

    def nested(frames):
        return {
            str(g): {str(lev): {str(t): _num(v) for t, v in row.items()} for lev, row in df.iterrows()}
            for g, df in frames.items()
        }

    return {
        "formula": m.formula,
        "data": data_name,
        "REML": bool(m.REML),
        "nobs": int(m.nobs),
        "n_dropped": int(m.n_dropped),
        "npar": int(m.npar),
        "objective": _num(m.objective),
        "loglik": _num(m.loglik),
        "aic": _num(m.aic),
        "bic": _num(m.bic),
        "sigma": _num(m.sigma),
        "theta": [_num(v) for v in m.theta],
        "fixef": fixef,
        "se": {str(k): _num(v) for k, v in m.se.items()},
        "vcov": [[_num(v) for v in row] for row in m.vcov.to_numpy()],
        "varcorr": varcorr,
        "ngroups": {str(k): int(v) for k, v in m.ngroups.items()},
        "is_singular": bool(m.is_singular),
        "ranef": nested(m.ranef),
        "condsd": nested(m.condsd),
        "record": {
            "theta_start": [_num(v) for v in rec.theta_start],
            "theta_end": [_num(v) for v in rec.theta_end],
            "objective": _num(rec.objective),
            "iterations": int(rec.iterations),
            "evaluations": int(rec.evaluations),
            "status": int(rec.status),
            "message": str(rec.message),
            "converged": bool(rec.converged),
            "max_abs_gradient": _num(rec.max_abs_gradient),
            "snapped": [int(i) for i in rec.snapped],
            "warnings": [str(w) for w in rec.warnings],
            "seconds": _num(rec.seconds),
        },
    }


# ---- commands ------------------------------------------------------------------


def _warn_line(message) -> str:
    return " ".join(str(message).split())


def _cmd_examples() -> int:
    from ._datasets import EXAMPLES

    for name in EXAMPLES:
        print(name)
    sys.stdout.flush()
    return 0


def _split_fit_args(ns) -> tuple[str | None, str]:
    """(DATA or None, FORMULA) from the positional arguments and --example."""
    args = list(ns.args)
    if ns.example is not None:
        if len(args) == 2:
            raise _FitUsageError("give either a DATA file or --example NAME, not both")
        if len(args) != 1:
            raise _FitUsageError("expected one FORMULA after --example NAME" if not args else "too many arguments")
        return None, args[0]
    if len(args) == 2:
        return args[0], args[1]
    if not args:
        raise _FitUsageError("give a DATA file or --example NAME, and a FORMULA")
    if len(args) == 1:
        if "~" in args[0]:
            raise _FitUsageError("give a DATA file or --example NAME before the FORMULA")
        raise _FitUsageError("missing FORMULA after DATA")
    raise _FitUsageError(f"too many arguments: expected DATA FORMULA, got {len(args)} arguments")


def _cmd_fit(ns) -> int:
    data_path, formula = _split_fit_args(ns)
    _configure_jax_cache(not ns.no_cache)

    import jaxmlm

    if data_path is None:
        data = jaxmlm.load_example(ns.example)
        from ._datasets import _canonical

        data_name = _canonical(ns.example)
    else:
        data = read_data(data_path)
        data_name = data_path

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", jaxmlm.JaxmlmWarning)
        m = jaxmlm.lmer(formula, data, REML=not ns.ml, data_name=data_name, weights=ns.weights, offset=ns.offset)
    for w in caught:
        if issubclass(w.category, jaxmlm.JaxmlmWarning):
            print(f"{PROG}: warning: {_warn_line(w.message)}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)

    if ns.json:
        print(json.dumps(model_json(m, data_name), allow_nan=False, indent=2))
    else:
        print(m.summary())
    sys.stdout.flush()  # surface a closed pipe here, where main() handles it
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 2 usage or input error)."""
    parser, fit_parser = _build_parser()
    try:
        # parse_known_args: a positional after an option (``fit DATA --ml FORMULA``)
        # comes back as an extra; put it back with the fit command's positionals.
        ns, extra = parser.parse_known_args(argv)
        if extra:
            unknown = [a for a in extra if a.startswith("-") and len(a) > 1]
            if ns.command != "fit" or unknown:
                sub = fit_parser if ns.command == "fit" else parser
                sub.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
            ns.args = list(ns.args) + extra
    except _ArgumentError as exc:
        return exc.status
    try:
        if ns.version:
            from . import __version__

            print(f"{PROG} {__version__}")
            return 0
        if ns.command == "fit":
            return _cmd_fit(ns)
        if ns.command == "examples":
            return _cmd_examples()
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    except CLIError as exc:
        if isinstance(exc, _FitUsageError):
            fit_parser.print_usage(sys.stderr)
        return _fail(str(exc))
    except BrokenPipeError:  # e.g. `jaxmlm fit ... | head`: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except Exception as exc:
        from ._errors import JaxmlmError

        if isinstance(exc, JaxmlmError):
            return _fail(str(exc))
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            where = f": {exc.filename!r}" if exc.filename else ""
            return _fail(f"{exc.strerror or type(exc).__name__}{where}")
        raise
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    lines = message.split("\n")
    print(f"{PROG}: error: {lines[0]}", file=sys.stderr)
    for extra in lines[1:]:  # e.g. the caret line under a formula syntax error
        print(extra, file=sys.stderr)
    return EXIT_USAGE


def run(argv: list[str] | None = None) -> None:
    """Run the command line as a program: :func:`main`, then end the process at once.

    A process that has loaded JAX, pandas and XLA's compiled programs spends
    0.4-0.8 s in the interpreter's shutdown (module teardown, garbage
    collection, XLA's destructors) after its work is done. Nothing there
    matters to a finished command: the persistent compilation cache is
    written when a program is compiled, not at exit. So flush the output
    streams and the logging handlers and leave with ``os._exit``. Only for the
    program itself (``python -m jaxmlm._cli``, the ``jaxmlm`` script):
    ``main`` returns normally for callers in the same process.
    """
    status = main(argv)
    try:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away: as main() does, stop quietly
        status = status or 1
    except Exception:  # anything else at exit: fall back to the ordinary shutdown
        raise SystemExit(status) from None
    os._exit(status)


if __name__ == "__main__":
    run()

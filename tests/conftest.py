"""Shared test fixtures: x64 on, and the lme4 reference cases.

Reference fits live in tests/reference/ (lme4/: copied from the project's
shared lme4 1.1-31 fits; extra/: made by tests/reference/make_extra_reference.R).
Tests never need R.
"""

import json
import os
from pathlib import Path

# Tests never read or write the user's compilation cache (tests/test_cache.py turns it on in
# fresh processes): set before jaxmlm's engine loads and configures it.
os.environ["JAXMLM_CACHE_DIR"] = "off"
# The suite fits hundreds of model shapes in one process and reuses module-scoped fits: under
# the library's default bound (48 programs, _compiled.py) later tests would compile again what
# earlier ones evicted. The autouse fixture below drops every compiled program after each
# module, which keeps the process's memory mappings bounded instead; tests of the bound set
# their own (tests/test_compiled.py).
os.environ.setdefault("JAXMLM_MAX_PROGRAMS", "2000")
# Programs prepared ahead compile on a background thread (jaxmlm/_compiled.py: ahead), so a
# test that counts compilations in a window could count one that an earlier fit started.
# The suite runs without it; the tests of it (test_compiled.py, test_compile.py) turn it on.
os.environ.setdefault("JAXMLM_COMPILE_AHEAD", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import jaxmlm  # noqa: E402

REF = Path(__file__).parent / "reference"


def _cases() -> dict[str, dict]:
    out = {}
    for sub in ("lme4", "extra"):
        for f in sorted((REF / sub).glob("*.json")):
            d = json.loads(f.read_text())
            if d.get("family", "gaussian") != "gaussian":
                continue
            out[d["id"]] = d
    return out


CASES = _cases()


def case_data(case: dict) -> pd.DataFrame:
    """The data frame a reference case was fitted to, with R's factor level orders."""
    src = case.get("data_csv") or case["dataset"]
    if src.endswith(".csv"):
        df = pd.read_csv(REF / "data" / src)
        for col, levels in case.get("factor_levels", {}).items():
            if col in df.columns:
                df[col] = pd.Categorical(df[col].map(lambda v: v if pd.isna(v) else str(v)), categories=levels)
        return df
    return jaxmlm.load_example(src)


@pytest.fixture(scope="session")
def fits():
    """Lazily fitted models, one per reference case (each fitted once per session)."""
    cache: dict[str, jaxmlm.LinearMixedModel] = {}

    def get(case_id: str) -> jaxmlm.LinearMixedModel:
        if case_id not in cache:
            c = CASES[case_id]
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", jaxmlm.RankDeficiencyWarning)
                cache[case_id] = jaxmlm.lmer(c["formula"], case_data(c), REML=c["REML"])
        return cache[case_id]

    return get


@pytest.fixture
def no_tier_up(monkeypatch):
    """Programs keep the tier they have: ``jaxmlm/_compiled.py`` compiles a small program again,
    optimized, on its ``TIER_UP_CALLS``-th call in the process. Tests that count compilations
    of new programs use this, so that what earlier tests ran does not decide their outcome
    (tiering itself is tested in test_compiled.py)."""
    from jaxmlm import _compiled

    monkeypatch.setattr(_compiled, "TIER_UP_CALLS", 10**9)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after every test module.

    Each XLA:CPU executable holds memory mappings of its code; a process that
    compiles thousands of programs (this suite, with many eager, un-jitted
    derivative checks) reaches the kernel's vm.max_map_count (65530) and the
    next compilation segfaults inside XLA. Clearing the caches between modules
    keeps the count bounded (the crash this caused was first seen as "XLA
    crashes late in the suite").
    """
    yield
    import gc

    jax.clear_caches()
    gc.collect()


def assert_compiled_once(run, name: str, monkeypatch, caplog):
    """``run()`` (a ``confint()``) twice; the second compiles no program of the function ``name``
    again, although every program that tiers up does so on its next call (``TIER_UP_CALLS`` set
    to 1 after the first run): ``name``'s programs are compiled once (``tiered="once"`` or
    ``False``). The first run, from nothing (``_compiled.clear()``), must log ``name``'s
    compile: the log is read."""
    import logging
    import re

    from jaxmlm import _compiled

    monkeypatch.setattr(_compiled, "TIER_UP_CALLS", 10**9)
    _compiled.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        first = run()
    assert name in re.findall(r"Finished XLA compilation of jit\((\w+)\)", caplog.text), "no compile of it logged"
    caplog.clear()
    monkeypatch.setattr(_compiled, "TIER_UP_CALLS", 1)
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        again = run()
    compiled = re.findall(r"Finished XLA compilation of jit\((\w+)\)", caplog.text)
    assert name not in compiled, compiled
    return first, again

"""Compiled programs with a bounded lifetime (jaxmlm/_compiled.py; issue 12)."""

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm
from jaxmlm import _compiled

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bound():
    """Let a test change the program bound; the process's bound comes back afterwards."""
    old = _compiled.max_programs()
    yield
    _compiled.set_max_programs(old)


def _maps() -> int:
    with open("/proc/self/maps") as fh:
        return sum(1 for _ in fh)


@_compiled.jit(static_argnames="k")
def _kernel(x, k):
    """A program of a few hundred instructions, one per (k, shape of x)."""
    for i in range(k):
        x = jnp.sin(x) @ x + i
    return jnp.linalg.cholesky(x @ x.T + x.shape[0])


def test_the_least_recently_used_program_is_dropped_first(bound):
    _compiled.clear()
    _compiled.set_max_programs(2)
    made = []

    def make(name):
        return lambda: made.append(name) or name

    _compiled.cached("a", make("a"))
    _compiled.cached("b", make("b"))
    assert _compiled.cached("a", make("a again")) == "a"  # kept, and now the most recent
    _compiled.cached("c", make("c"))  # past the bound: drops b, the least recent
    assert _compiled.cached("a", make("a again")) == "a"
    assert _compiled.cached("b", make("b again")) == "b again"
    assert made == ["a", "b", "c", "b again"]
    assert _compiled.program_count() == 2


def test_a_kernel_keeps_one_program_per_static_arguments_and_shapes(bound):
    _compiled.clear()
    _compiled.set_max_programs(3)
    x = np.eye(3) * 2.0
    first = np.asarray(_kernel(x, k=2))
    np.testing.assert_array_equal(np.asarray(_kernel(x, 2)), first)  # static by position: the same program
    assert _compiled.program_count() == 1  # (JAX's dispatch cache tells the two call forms apart)
    for n in (4, 5, 6, 7):
        _kernel(np.eye(n), k=2)
    assert _compiled.program_count() == 3 and _kernel._cache_size() == 3
    np.testing.assert_array_equal(np.asarray(_kernel(x, k=2)), first)  # dropped, compiled again, same numbers


def test_dropped_programs_give_back_their_memory_mappings(bound):
    """The point of the bound: an executable dropped from the LRU is really freed (its code's
    mappings unmapped), not just forgotten by jaxmlm while JAX's caches keep it."""
    _compiled.set_max_programs(64)
    _compiled.clear()
    gc.collect()
    start = _maps()
    for n in range(3, 13):
        _kernel(np.eye(n), k=3)
    grown = _maps() - start
    assert grown > 50, f"10 programs added only {grown} mappings: nothing to measure"
    _compiled.clear()
    gc.collect()
    left = _maps() - start
    assert left < grown / 4, f"10 programs dropped, {left} of their {grown} mappings left"


def test_lowering_the_bound_drops_programs_at_once(bound):
    _compiled.set_max_programs(8)
    for n in range(3, 7):
        _kernel(np.eye(n), k=1)
    assert _compiled.program_count() >= 4
    _compiled.set_max_programs(2)
    assert _compiled.program_count() == 2


@pytest.mark.parametrize("value", [0, -3, "many", 2.5])
def test_a_bad_bound_is_a_configuration_error(bound, value):
    with pytest.raises(jaxmlm.ConfigurationError, match="max_programs"):
        jaxmlm.set_max_programs(value)
    assert isinstance(jaxmlm.ConfigurationError("x"), (ValueError, jaxmlm.JaxmlmError))


def test_the_bound_comes_from_the_environment(monkeypatch):
    monkeypatch.setitem(_compiled._state, "max", None)  # not read yet
    monkeypatch.setenv("JAXMLM_MAX_PROGRAMS", "7")
    assert jaxmlm.max_programs() == 7
    monkeypatch.setitem(_compiled._state, "max", None)
    monkeypatch.setenv("JAXMLM_MAX_PROGRAMS", "lots")
    with pytest.raises(jaxmlm.ConfigurationError, match="JAXMLM_MAX_PROGRAMS"):
        jaxmlm.max_programs()
    monkeypatch.setitem(_compiled._state, "max", None)
    monkeypatch.delenv("JAXMLM_MAX_PROGRAMS")
    assert jaxmlm.max_programs() == _compiled.DEFAULT_MAX_PROGRAMS


def test_many_model_shapes_stay_within_fixed_mappings_and_memory(tmp_path):
    """Issue 12's crash, in a process of its own (it cannot take pytest down): model shape after
    model shape, each with summary(), coef_table() and predict(), under a bound of 4 programs.
    Without the bound every shape added ~800 mappings and ~30 MB for good (the process aborted
    at the kernel's mapping limit after a few dozen shapes); with it, mappings and memory stay
    flat once the bound is reached. (benchmarks/bench_shapes.py runs 500 shapes.)"""
    out = tmp_path / "shapes.json"
    env = dict(os.environ, JAXMLM_MAX_PROGRAMS="4", JAXMLM_CACHE_DIR="off", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_shapes.py"), "--shapes", "16",
                          "--every", "1", "--json", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 16 and rows[0]["compiles"] >= 1  # every shape compiled programs of its own:
    assert all(b["compiles"] > a["compiles"] for a, b in zip(rows, rows[1:]))  # the bound kept few alive
    assert max(r["programs"] for r in rows) <= 4
    settled = rows[5]  # the bound is reached after a shape or two
    later = rows[6:]
    extra_maps = max(r["maps"] for r in later) - settled["maps"]
    assert extra_maps < 1500, f"mappings grew by {extra_maps} over {len(later)} more shapes:\n{run.stdout}"
    # Memory, per family of shapes (same random-effects term): the first shapes with random
    # slopes make larger programs than the intercept-only ones before them (~+150 MB once,
    # measured), but within a family, once its programs have cycled through the bound, more
    # shapes add nothing. A leak of ~30 MB per shape would add 90-150 MB over the 3-5 later
    # shapes of each family.
    families = {}
    for r in rows:
        families.setdefault(r["formula"].rsplit(" + (", 1)[-1], []).append(r)
    assert len(families) == 2 and all(len(f) >= 7 for f in families.values())
    for term, fam in families.items():
        extra_mb = max(r["rss_mb"] for r in fam[4:]) - fam[3]["rss_mb"]
        assert extra_mb < 50, f"memory grew by {extra_mb:.0f} MB over {len(fam) - 4} more ({term} shapes:\n{run.stdout}"


# ---- compile options: cheaper code generation for small programs ---------------------------


def test_small_programs_get_the_cheap_code_generator_and_keep_their_own_options():
    cheap = {"xla_cpu_use_fusion_emitters": False}
    small, large = 1000, _compiled.SMALL_PROGRAM_BYTES + 1
    assert _compiled.compile_options(small) == cheap  # the suite runs on CPU
    assert _compiled.compile_options(large) is None
    level0 = {"xla_backend_optimization_level": 0}
    assert _compiled.compile_options(small, level0) == {**cheap, **level0}
    assert _compiled.compile_options(large, level0) == level0


def test_kernels_choose_options_by_their_arguments_size_outside_a_trace(monkeypatch):
    """A top-level call is asked for options with its arguments' bytes; a call inside
    another kernel's trace is not (JAX refuses compile options on a nested jit)."""
    seen = []
    real = _compiled.compile_options
    monkeypatch.setattr(_compiled, "compile_options", lambda n, o=None: seen.append(n) or real(n, o))

    @_compiled.jit
    def inner(x):
        return jnp.sum(x * 2.0)

    @_compiled.jit
    def outer(x):
        return inner(x) + 1.0

    assert float(outer(np.ones((4, 8)))) == 65.0
    assert seen == [4 * 8 * 8]  # outer's 256 bytes, inner (traced) not asked
    assert float(inner(np.ones(3))) == 6.0
    assert seen == [256, 24]


def test_the_cheap_code_generator_gives_the_same_fit(monkeypatch):
    """The sleepstudy fit with XLA:CPU's default fusion emitters and with the classic ones
    (small programs' default): the same estimates to rounding."""
    d = jaxmlm.load_example("sleepstudy")
    f = "Reaction ~ Days + (Days | Subject)"
    _compiled.clear()
    cheap = jaxmlm.lmer(f, d)
    monkeypatch.setattr(_compiled, "SMALL_PROGRAM_BYTES", -1)  # every program 'large'
    _compiled.clear()
    default = jaxmlm.lmer(f, d)
    _compiled.clear()
    np.testing.assert_allclose(cheap.theta, default.theta, rtol=1e-9)
    np.testing.assert_allclose(cheap.fixef, default.fixef, rtol=1e-11)
    assert abs(cheap.objective - default.objective) < 1e-9
    assert cheap.record.iterations == default.record.iterations


# ---- tiered compilation: quick first, optimized once busy -------------------------------------


def test_small_programs_start_at_level_0_and_tier_up_on_a_later_call():
    """tiered(): a small program is made with level 0 added to its options and made again,
    with its own options only, on call number TIER_UP_CALLS; large programs and programs
    that choose a level themselves are made once, as asked."""
    made = []

    def make(options):
        made.append(options)
        return lambda x: x + len(made)

    cheap = _compiled.compile_options(1000)
    prog = _compiled.tiered(make, 1000)
    quick = {"xla_backend_optimization_level": 0,
             "xla_disable_hlo_passes": "while-loop-invariant-code-motion,simplify-while-loops"}
    assert made == [{**cheap, **quick}]
    results = [prog(0) for _ in range(_compiled.TIER_UP_CALLS + 3)]
    # made again exactly once, without level 0 and with YNNPACK's fusions off
    assert made[1:] == [{**cheap, "xla_cpu_experimental_ynn_fusion_type": ""}]
    n = _compiled.TIER_UP_CALLS
    assert results == [1] * (n - 1) + [2] * 4 and prog.optimized

    made.clear()
    big = _compiled.tiered(make, _compiled.SMALL_PROGRAM_BYTES + 1)
    [big(0) for _ in range(n + 1)]
    assert made == [None]
    made.clear()
    own = {"xla_backend_optimization_level": 0}
    mine = _compiled.tiered(make, 1000, own)
    [mine(0) for _ in range(n + 1)]
    assert made == [{**cheap, **own}]
    made.clear()
    many = _compiled.tiered(make, 1000, tier=False)  # optimized from the start
    [many(0) for _ in range(n + 1)]
    assert made == [{**cheap, "xla_cpu_experimental_ynn_fusion_type": ""}]
    made.clear()
    mine = _compiled.tiered(make, 1000, {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"})
    [mine(0) for _ in range(n + 1)]
    assert made[1] == {**cheap, "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}  # its own wins


def test_a_kernel_compiles_twice_when_busy_and_gives_the_same_numbers():
    """End to end through jax: one compile on the first call, one more on call TIER_UP_CALLS,
    none after; one executable alive throughout; level 0 and full optimization agree."""
    import jax.monitoring

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: compiles.append(k.get("fun_name")) if name.endswith("backend_compile_duration") else None)
    _compiled.clear()
    x = np.eye(5) * 3.0
    out = []
    for i in range(_compiled.TIER_UP_CALLS + 2):
        out.append(np.asarray(_kernel(x, k=3)))
        assert _kernel._cache_size() == 1
        assert compiles.count("jit(_kernel)") == (1 if i + 1 < _compiled.TIER_UP_CALLS else 2)
    for o in out[1:]:
        np.testing.assert_allclose(o, out[0], rtol=1e-13)


@pytest.mark.parametrize("correlation", [None, "ar1"])
def test_a_fit_past_tier_up_gives_the_level_0_fits_numbers(correlation):
    """A real model's fit program at level 0 and fully optimized (YNNPACK's fusions off):
    the same estimates, criterion and steps to rounding, on the call that tiers up and after."""
    d = jaxmlm.load_example("sleepstudy")
    cor = jaxmlm.corAR1(form="~ Days | Subject") if correlation else None
    _compiled.clear()
    fits = [jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", d, correlation=cor)
            for _ in range(_compiled.TIER_UP_CALLS + 1)]
    _compiled.clear()
    first = fits[0]
    for later in fits[-2:]:
        np.testing.assert_allclose(later.theta, first.theta, rtol=1e-8)
        np.testing.assert_allclose(later.fixef, first.fixef, rtol=1e-10)
        np.testing.assert_allclose(later.vcov, first.vcov, rtol=1e-8)
        assert abs(later.objective - first.objective) < 1e-8
        assert later.record.evaluations == first.record.evaluations


def test_kernels_made_for_many_runs_are_optimized_from_the_start():
    """``tiered=False`` (the batched refit and simulation kernels): one program, fully
    optimized, however often it runs; a default kernel's small program is tiered."""

    @_compiled.jit(tiered=False)
    def many(x):
        return x * 2.0

    @_compiled.jit
    def few(x):
        return x * 2.0

    x = np.float64(2.0)
    for _ in range(_compiled.TIER_UP_CALLS + 1):
        assert float(many(x)) == 4.0 and float(few(x)) == 4.0
    assert many._cache_size() == 1 and few._cache_size() == 1
    assert not isinstance(_compiled.cached(many.key((x,), {}), lambda: None), _compiled.Tiered)
    assert _compiled.cached(few.key((x,), {}), lambda: None).optimized


# ---- programs prepared ahead -------------------------------------------------------------------


def test_a_program_asked_for_ahead_is_made_once_and_waited_for(monkeypatch):
    """ahead(): queued until start_ahead(), made and compiled on the worker; a call that needs
    it meanwhile waits for it (make runs once, the caller gets the worker's program)."""
    import threading

    monkeypatch.setenv("JAXMLM_COMPILE_AHEAD", "1")
    _compiled.clear()
    gate, made, compiled = threading.Event(), [], []

    def make():
        gate.wait(5)
        made.append(object())
        return made[-1]

    key = ("test-ahead", 1)
    assert _compiled.ahead(lambda: (key, make, compiled.append))
    assert _compiled.program_count() == 0 and not made  # queued, not started
    _compiled.start_ahead()
    for _ in range(1000):  # until the worker has taken it up (its make waits for the gate)
        if key in _compiled._pending:
            break
        threading.Event().wait(0.01)
    threading.Timer(0.2, gate.set).start()
    prog = _compiled.cached(key, lambda: pytest.fail("made twice"))  # waits for the worker
    _compiled.wait_ahead()
    assert made == [prog] and compiled == [prog]
    assert _compiled.ahead(lambda: (key, make, compiled.append))  # queued again, but it is in the LRU: not made
    _compiled.wait_ahead()
    assert made == [prog] and compiled == [prog]
    _compiled.clear()


def test_a_failed_program_ahead_is_made_by_its_call(monkeypatch):
    monkeypatch.setenv("JAXMLM_COMPILE_AHEAD", "1")
    _compiled.clear()

    def broken():
        raise RuntimeError("no")

    key = ("test-ahead", 2)
    assert _compiled.ahead(lambda: (key, broken, lambda prog: None))
    _compiled.wait_ahead()
    assert _compiled.program_count() == 0
    assert _compiled.cached(key, lambda: "made here") == "made here"
    _compiled.clear()


@pytest.mark.parametrize("value, expected", [("0", False), ("1", True)])
def test_programs_ahead_follow_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("JAXMLM_COMPILE_AHEAD", value)
    assert _compiled.ahead_enabled() is expected
    assert _compiled.ahead(lambda: (("test-ahead", value), lambda: 1, lambda prog: None)) is expected
    _compiled.wait_ahead()
    _compiled.clear()


def test_a_kernel_compiled_ahead_runs_without_compiling_again(monkeypatch):
    """_programs.ahead on a jit kernel with shapes only (ShapeDtypeStructs): the later call
    with arrays finds the executable (one compile in all, on the worker)."""
    import jax
    import jax.monitoring

    from jaxmlm import _programs

    monkeypatch.setenv("JAXMLM_COMPILE_AHEAD", "1")
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: compiles.append(k.get("fun_name")) if name.endswith("backend_compile_duration") else None)
    _compiled.clear()
    shape = jax.ShapeDtypeStruct((5, 5), np.float64)
    assert _programs.ahead(_kernel, lambda: ((shape,), {"k": 4}))
    _compiled.wait_ahead()
    assert compiles.count("jit(_kernel)") == 1
    out = np.asarray(_kernel(np.eye(5) * 3.0, k=4))
    assert compiles.count("jit(_kernel)") == 1
    np.testing.assert_allclose(out, np.asarray(_kernel.fn(np.eye(5) * 3.0, k=4)), rtol=1e-13)
    _compiled.clear()

"""The persistent compilation cache: on by default, keyed by jaxmlm's version and source, safe.

The test suite itself runs with the cache off (conftest sets JAXMLM_CACHE_DIR=off, so tests
never depend on what an earlier run left on disk); these tests turn it on in fresh processes,
where a user meets it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxmlm import _cache

ROOT = Path(__file__).resolve().parents[1]

FIT = r"""
import json, sys
import jax.monitoring
events = []
jax.monitoring.register_event_listener(lambda e, **k: events.append(e))
import jaxmlm
m = jaxmlm.lmer("Reaction ~ Days + (Days | Subject)", jaxmlm.load_example("sleepstudy"))
print(json.dumps(dict(
    fixef=m.fixef.tolist(), objective=m.objective, dir=str(jaxmlm.cache_dir()),
    hits=events.count("/jax/compilation_cache/cache_hits"),
    misses=events.count("/jax/compilation_cache/cache_misses"),
)))
"""


def _run(env_dir) -> tuple[dict, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAXMLM_CACHE_DIR=str(env_dir))
    out = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"JAXMLM_CACHE_DIR": "/x/c"}, Path("/x/c")),
        ({"XDG_CACHE_HOME": "/x"}, Path("/x") / "jaxmlm"),
        ({}, Path(os.path.expanduser("~")) / ".cache" / "jaxmlm"),
        ({"JAXMLM_CACHE_DIR": "off"}, None),
        ({"JAXMLM_CACHE_DIR": "0"}, None),
        ({"JAXMLM_CACHE_DIR": ""}, None),
    ],
)
def test_cache_dir_from_the_environment(env, expected):
    assert _cache.base_dir(env) == expected


def test_the_directory_names_the_version_and_the_source(monkeypatch, tmp_path):
    """A new jaxmlm version or an edited kernel gets a directory of its own: no program is reused."""
    from jaxmlm import _programs

    base = _cache._xla_dir(tmp_path)
    assert base.parent == tmp_path and base.name.startswith("xla-")
    monkeypatch.setattr(_cache, "_version", lambda: "99.0")
    newer = _cache._xla_dir(tmp_path)
    assert newer != base and "99.0" in newer.name
    monkeypatch.setattr(_programs, "_source_digest", lambda: "f" * 64)
    assert _cache._xla_dir(tmp_path) not in (base, newer)


def test_set_cache_dir_configures_jax(monkeypatch, tmp_path):
    import jax

    calls = {}
    monkeypatch.setattr(jax.config, "update", lambda k, v: calls.__setitem__(k, v))
    state = dict(_cache._state)
    try:
        path = _cache.set_cache_dir(tmp_path)
        assert path.is_dir() and path.parent == tmp_path
        assert calls == {
            "jax_enable_compilation_cache": True,
            "jax_compilation_cache_dir": str(path),
            "jax_persistent_cache_min_compile_time_secs": 0,
            "jax_persistent_cache_min_entry_size_bytes": 0,
        }
        calls.clear()
        assert _cache.set_cache_dir(None) is None
        assert calls == {"jax_enable_compilation_cache": False}
        assert _cache._state["dir"] is None
    finally:
        _cache._state.update(state)
    for name in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                 "jax_persistent_cache_min_entry_size_bytes", "jax_enable_compilation_cache"):
        assert name in jax.config.values


def test_a_second_process_reuses_compiled_programs(tmp_path):
    first, _ = _run(tmp_path)
    assert first["misses"] > 0 and Path(first["dir"]).parent == tmp_path
    assert any(p.is_file() for p in Path(first["dir"]).iterdir()), "no compiled program was written"
    assert any((Path(first["dir"]) / "programs").glob("*.jaxexport")), "no traced program was written"
    second, _ = _run(tmp_path)
    assert second["hits"] > 0 and second["misses"] == 0
    assert second["fixef"] == first["fixef"] and second["objective"] == first["objective"]


def test_a_corrupt_entry_is_ignored_with_a_warning(tmp_path):
    first, _ = _run(tmp_path)
    for f in Path(first["dir"]).rglob("*"):
        if f.is_file():
            f.write_bytes(b"not a compiled program")
    again, stderr = _run(tmp_path)
    assert "Error reading persistent compilation cache entry" in stderr
    assert again["fixef"] == first["fixef"] and again["objective"] == first["objective"]


def test_the_cache_can_be_turned_off(tmp_path):
    off, _ = _run("off")
    assert off["dir"] == "None" and off["hits"] == 0


NESTED = r"""
import json, logging, re
import jax
import numpy as np, pandas as pd
import jaxmlm
rng = np.random.default_rng(11)
schools = np.arange(300) % 100  # 100 schools of 3 classes, 4 pupils each
rows = pd.DataFrame({"classid": np.repeat(np.arange(300), 4), "schoolid": np.repeat(schools, 4)})
rows["x"], rows["z"] = rng.normal(size=1200), rng.normal(size=1200)
rows["y"] = 0.4 * rows.x + rng.normal(size=100)[rows.schoolid] + rng.normal(size=300)[rows.classid] + rng.normal(size=1200)
jaxmlm.lmer("y ~ x + (1 | schoolid/classid)", rows).summary()
names = []
class Log(logging.Handler):
    def emit(self, record):
        names.extend(re.findall(r"Finished XLA compilation of jit\((\w+)\)", record.getMessage()))
logging.getLogger("jax").addHandler(Log())
logging.getLogger("jax").setLevel(logging.WARNING)
with jax.log_compiles(True):
    m = jaxmlm.lmer("y ~ x + z + (1 | schoolid/classid)", rows)
    m.summary()
print(json.dumps(dict(compiled=names, coef=m.coef_table().to_numpy().tolist())))
"""


def test_with_the_cache_models_differing_in_fixed_effects_share_the_fit_and_summary_programs(tmp_path):
    """With the cache on (programs exported), a nested design of a course's size: the second
    model's fit (one program: pass, moment start, Newton, solve) and its Satterthwaite table run
    the first model's programs. Before: the Satterthwaite program compiled again (0.39 s),
    because an exported program's outputs are committed to their device and host arrays are
    not, and jax.jit compiles once for each pattern (fixed in _programs._jit_call)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAXMLM_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", NESTED], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    # what may compile: the host's small helpers (θ's templates, θ's scale), ~10-60 ms each
    assert set(res["compiled"]) <= {"templates", "theta_scale", "stage"}, res["compiled"]
    assert len(res["coef"]) == 3 and all(np.isfinite(v) for row in res["coef"] for v in row)


def test_exported_programs_are_told_apart_by_what_decides_them(tmp_path):
    """In one process with the program cache on: calls that differ in dtype, shape, weak type or
    a static argument run programs of their own (each the right answer); the same call again
    finds its program without making or reading anything."""
    import jax
    import jax.numpy as jnp

    from jaxmlm import _compiled, _programs

    @_compiled.jit(static_argnames="k")
    def kernel(x, s, k):
        return jnp.sum(x) * s + k

    made = []
    real = _programs._load
    was = _programs._state["dir"]
    try:
        assert _programs.enable(tmp_path)
        _programs._load = lambda *a, **kw: made.append(a[1]) or real(*a, **kw)
        calls = [((np.ones(3), np.float64(2.0)), {"k": 1}, 7.0),
                 ((np.ones(3, np.float32), np.float32(2.0)), {"k": 1}, 7.0),
                 ((np.ones(4), np.float64(2.0)), {"k": 1}, 9.0),
                 ((np.ones(3), np.float64(2.0)), {"k": 5}, 11.0),
                 ((np.ones(3), jnp.asarray(2.0)), {"k": 1}, 7.0),  # a weak-typed scalar
                 ((np.ones(3), np.float64(2.0)), {"k": 1}, 7.0)]  # the first call again
        for args, static, expected in calls:
            out = _programs.call(kernel, args, static)
            assert float(out) == expected
        assert len(made) == 5  # every call but the repeated one made its program
        assert [str(a[0].dtype) for a in made] == ["float64", "float32", "float64", "float64", "float64"]
        assert jax.typeof(made[4][1]).weak_type and not jax.typeof(made[0][1]).weak_type
        assert len(list(tmp_path.glob("*.jaxexport"))) == 5
    finally:
        _programs._load = real
        _programs._state["dir"] = was

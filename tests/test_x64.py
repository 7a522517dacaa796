"""Process-level settings made when jaxmlm first computes (jaxmlm/_x64.py)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import atexit, gc, sys
# registered before jaxmlm's handler, so it runs after it (exit handlers run last in, first out)
atexit.register(lambda: sys.stdout.write(f"frozen at exit: {gc.get_freeze_count()}\\n"))
import jax, jaxmlm
m = jaxmlm.lmer("Reaction ~ Days + (1 | Subject)", jaxmlm.load_example("sleepstudy"))
print("x64", jax.config.jax_enable_x64, m.theta.dtype)
"""


def test_a_process_that_computed_exits_with_its_objects_frozen():
    """After a fit, float64 is on, and at exit the collector's generations are frozen (the
    interpreter's last collection would otherwise walk every JAX object, ~0.5 s)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAXMLM_CACHE_DIR="off")
    run = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.startswith(("x64", "frozen")))
    assert lines["x64"] == "True float64"
    assert int(lines["frozen"].rsplit(":", 1)[1]) > 10_000

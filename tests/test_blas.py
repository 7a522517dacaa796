"""_blas.py: the OpenBLAS that JAX's CPU LAPACK kernels call gets the thread count asked for."""

import subprocess
import sys

import pytest

_PROBE = """
import ctypes, jaxmlm._x64, jaxmlm._blas as b
paths = b._libraries()
counts = []
for p in paths:
    lib = ctypes.CDLL(p)
    get = getattr(lib, "scipy_openblas_get_num_threads", None) or getattr(lib, "openblas_get_num_threads", None)
    if get is not None:
        counts.append(get())
print(b.threads(), counts)
"""


def _probe(value: str | None):
    import os

    env = dict(os.environ)
    env.pop("JAXMLM_BLAS_THREADS", None)
    if value is not None:
        env["JAXMLM_BLAS_THREADS"] = value
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_lapack_threads_follow_the_environment():
    from jaxmlm import _blas

    if not _blas._libraries():
        pytest.skip("this scipy has no OpenBLAS of its own: nothing to configure")
    assert _probe(None).startswith("1 [1")  # default: one thread
    assert _probe("3").startswith("3 [3")
    assert _probe("keep").startswith("None [")
    assert _probe("many").startswith("None [")  # not a number: left alone

"""One thread for the LAPACK library that JAX's CPU kernels call (scipy's OpenBLAS).

On a CPU, JAX runs Cholesky factorizations, triangular solves and eigendecompositions
by calling LAPACK through scipy (jaxlib takes scipy's ``cython_lapack`` functions, which
live in the OpenBLAS build scipy ships). OpenBLAS splits even small calls over threads of
its own, which then compete with XLA's thread pool; when the machine has anything else
to do, its threads' hand-offs stall in multiples of the scheduler's time slice (OpenBLAS
issues #536 and #4387). Measured on 2 cores with one other busy process: a triangular
solve of a 112 × 112 factor took 8 ms instead of 0.13, a 1166 × 1166 Cholesky 886 ms
instead of 37; a nested model's Newton step (criterion, gradient and Hessian through a
112 × 112 block) ~60 ms instead of ~1. With one OpenBLAS thread the same calls take
what their arithmetic costs, whatever else runs; XLA still runs independent work in
parallel. On an idle machine, large factorizations lose a little (the 1166 × 1166
Cholesky 15 → 21 ms on 2 cores).

``$JAXMLM_BLAS_THREADS`` chooses: unset, one thread; a number, that many; ``keep``,
leave OpenBLAS as it is. This also sets the threads of scipy's own ``scipy.linalg``
calls in the process (the same library); numpy's OpenBLAS is a separate library and
left alone. Without scipy's OpenBLAS (another BLAS, another platform) nothing changes.
"""

from __future__ import annotations

import ctypes
import glob
import os

__all__ = ["configure", "threads"]

_state: dict = {"threads": None}


def _libraries() -> list[str]:
    """Paths of the OpenBLAS builds scipy ships (wheels: ``scipy.libs``; macOS: ``scipy/.dylibs``)."""
    import scipy
    import scipy.linalg.cython_lapack  # noqa: F401  (the library is loaded by now)

    base = os.path.dirname(scipy.__file__)
    return sorted(glob.glob(base + ".libs/*openblas*") + glob.glob(os.path.join(base, ".dylibs", "*openblas*")))


def configure() -> int | None:
    """Set scipy's OpenBLAS to ``$JAXMLM_BLAS_THREADS`` threads (default 1); the number set, or None."""
    value = os.environ.get("JAXMLM_BLAS_THREADS", "1").strip().lower()
    if value == "keep":
        return None
    try:
        n = max(int(value), 1)
    except ValueError:
        return None
    try:
        paths = _libraries()
    except Exception:  # no scipy, or a build without its own OpenBLAS
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_", "openblas_set_num_threads"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                _state["threads"] = n
                break
    return _state["threads"]


def threads() -> int | None:
    """The thread count :func:`configure` set (None: not set)."""
    return _state["threads"]

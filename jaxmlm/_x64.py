"""Turn on JAX's float64 mode, the compilation cache and single-threaded LAPACK, and make the
interpreter's exit quick; imported first by every module that computes.

Mixed-model criteria are sums over many rows and need double precision (lme4
works in double precision too). Compiled programs are kept on disk between
processes (``_cache.py``). LAPACK calls run on one OpenBLAS thread (``_blas.py``:
multi-threaded OpenBLAS stalls small factorizations whenever the machine is busy).
Importing ``jaxmlm`` itself stays cheap: the package loads its JAX modules only
when a function that needs them is used.
"""

import atexit
import gc

import jax

from . import _blas, _cache

jax.config.update("jax_enable_x64", True)
_cache.configure()
_blas.configure()


def _freeze_at_exit() -> None:
    """At exit, put every live object in the garbage collector's permanent generation.

    Why: a process that has compiled programs holds hundreds of thousands of JAX's objects
    (traced jaxprs, lowered modules, their caches), and the interpreter's last collection at
    exit walked them all: 0.5–0.7 s of a course session's end, more than any one step of
    its analysis but the fits (issue 12). Frozen, they are freed by reference counting as
    the modules are torn down, or left to the operating system like the rest of the
    process; Python does not promise to finalize objects still alive at exit either way.
    Collections after this (by exit handlers that run later) still see new objects."""
    gc.freeze()


atexit.register(_freeze_at_exit)

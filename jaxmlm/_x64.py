"""Turn on JAX's float64 mode, the compilation cache and single-threaded LAPACK; imported first by
every module that computes.

Mixed-model criteria are sums over many rows and need double precision (lme4
works in double precision too). Compiled programs are kept on disk between
processes (``_cache.py``). LAPACK calls run on one OpenBLAS thread (``_blas.py``:
multi-threaded OpenBLAS stalls small factorizations whenever the machine is busy).
Importing ``jaxmlm`` itself stays cheap: the package loads its JAX modules only
when a function that needs them is used.
"""

import jax

from . import _blas, _cache

jax.config.update("jax_enable_x64", True)
_cache.configure()
_blas.configure()

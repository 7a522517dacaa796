"""Stand-alone reproducer (JAX only, no jaxmlm) for a CPU deadlock seen by the benchmarks.

On a 2-core machine (jax/jaxlib 0.10.2, x86-64 CPU backend) a jitted
``lax.while_loop`` whose body runs a batched Cholesky followed by two
*independent* batched triangular solves sometimes never returns: every XLA
thread sits in a futex wait. A native backtrace (gdb) shows both intra-op
pool threads inside ``lapack_dtrsm_ffi`` → ``jax::ParallelBatchMap`` waiting
on a ``BlockingCounter`` for sub-tasks queued to the same, now fully blocked,
pool. jaxmlm's criterion has this shape (``_objective.factorize``), and the
synthetic 1M-row / 10k-group benchmark hung there in every run tried (5 of 5 with default flags).

The hang is timing dependent (about 1 run in 3 here at G = 100000, more often
under load). Running with

    XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false

avoided it in every run tried (jaxmlm and this script); ``--xla_cpu_multi_thread_eigen=false``
did not.

    python benchmarks/jax_cpu_deadlock_repro.py 100000      # may hang
    timeout 120 python benchmarks/jax_cpu_deadlock_repro.py 100000; echo $?   # 124 = hung
"""

import sys

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

jax.config.update("jax_enable_x64", True)


@jax.jit
def loop(A, B, T):
    def body(carry):
        i, acc = carry
        L = jnp.linalg.cholesky(A + i * jnp.eye(2))
        C = solve_triangular(L, B, lower=True)  # independent of D:
        D = solve_triangular(L, jnp.broadcast_to(T, L.shape), lower=True)  # may run concurrently
        return i + 1, acc + C.sum() + D.sum()

    return jax.lax.while_loop(lambda c: c[0] < 50, body, (0, 0.0))


if __name__ == "__main__":
    G = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    A = jnp.broadcast_to(jnp.eye(2) * 3.0, (G, 2, 2))
    B = jnp.ones((G, 2, 4))
    T = jnp.eye(2)
    print(loop(A, B, T)[1].block_until_ready())

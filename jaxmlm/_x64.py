"""Turn on JAX's float64 mode; imported first by every module that computes.

Mixed-model criteria are sums over many rows and need double precision (lme4
works in double precision too). Importing ``jaxmlm`` itself stays cheap: the
package loads its JAX modules only when a function that needs them is used.
"""

import jax

jax.config.update("jax_enable_x64", True)

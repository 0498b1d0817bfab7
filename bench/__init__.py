"""Benchmarks: every table in BENCHMARKS.md comes from a command here.

alexnet_jax is imported first, as its own entry points do, so its XLA:CPU
flags and malloc settings (alexnet_jax/xla_cpu_flags.py, host_malloc.py)
are in place before JAX or any other library starts a thread. A worker that
must run without the malloc settings is started with a MALLOC_ variable set
(bench/train_step.py).
"""

import alexnet_jax  # noqa: F401

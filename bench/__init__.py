"""Benchmarks: every table in BENCHMARKS.md comes from a command here.

alexnet_jax is imported first, as its own entry points do, so its XLA:CPU
flags (alexnet_jax/xla_cpu_flags.py) and, where a worker's environment asks
for them, its opt-in malloc settings (host_malloc.py) are in place before
JAX or any other library starts a thread.
"""

import alexnet_jax  # noqa: F401

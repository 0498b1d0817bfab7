"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in JAX/Flax."""

from alexnet_jax import host_malloc, xla_cpu_flags

# Before JAX (or anything else) starts a thread: the opt-in malloc settings
# (ALEXNET_JAX_MALLOC=reuse), then the XLA:CPU options.
host_malloc.apply()
xla_cpu_flags.apply()

"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in JAX/Flax."""

from alexnet_jax import host_malloc, xla_cpu_flags

# Before JAX (or anything else) starts a thread: the malloc settings, then
# the XLA:CPU options, that make CPU steps faster.
host_malloc.apply()
xla_cpu_flags.apply()

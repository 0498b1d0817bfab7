"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in JAX/Flax."""

from alexnet_jax import host_malloc, xla_cpu_flags

# Before any JAX backend starts: the XLA:CPU options and the malloc settings
# that make CPU steps faster.
xla_cpu_flags.apply()
host_malloc.apply()

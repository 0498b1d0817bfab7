"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in JAX/Flax."""

from alexnet_jax import xla_cpu_flags

# Before any JAX backend starts: the XLA:CPU options that make the steps faster.
xla_cpu_flags.apply()

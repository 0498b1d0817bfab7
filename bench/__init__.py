"""Benchmarks: every table in BENCHMARKS.md comes from a command here.

The benches that time steps apply alexnet_jax's machine settings at their
start, as its own entry points do (alexnet_jax/platform/machine_settings.py): its
XLA:CPU flag and, where the environment asks for them, its malloc settings,
before JAX starts.
"""

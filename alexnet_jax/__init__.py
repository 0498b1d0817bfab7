"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in JAX/Flax.

Importing the package or any of its modules changes nothing in the process:
the entry points apply the machine settings (alexnet_jax.platform.machine_settings).
"""

__version__ = "0.1.0"  # pyproject.toml's version; config.json records it (runs/provenance.py)

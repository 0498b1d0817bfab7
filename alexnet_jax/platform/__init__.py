"""Machine settings: CPU facts, XLA:CPU flags, malloc, per-machine defaults.
Applied by entry points only.
"""

"""A run's config: the defaults' schema, validation, overrides, the saved
record, reading a workdir, a run's statistics.
"""

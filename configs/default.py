"""The default config: every field the code reads, with the paper's values
("as trained" defaults). Not a recipe on its own: `configs/paper.py`
(ImageNet) and `configs/digits.py` (the embedded dataset) import it and
override a few fields. Any field can be overridden from the command line,
e.g. `--config.model.use_lrn=False`.

The fields, each with a comment saying what it does, are defined once in
the package (alexnet_jax/runs/defaults.py), which also reads a saved run's
config against them; this file is the config file the command line names.
"""

from alexnet_jax.runs.defaults import get_config

__all__ = ["get_config"]

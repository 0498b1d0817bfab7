"""AlexNet on ImageNet (ILSVRC-2012) as run #145 of the 2012 code trained it.

Command:
    python -m alexnet_jax.main --config configs/paper.py --workdir runs/paper \
        --config.data_dir=$HOME/tensorflow_datasets

Data: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from
image-net.org) in <data_dir>/downloads/manual (or set --config.manual_dir);
the first run prepares them through tfds (several hours, about 150 GB).

Hardware and time: the paper trained 90 epochs in 5 to 6 days on two GTX 580
(3 GB). Batch 128, about 4.1 GFLOP per image per step; 90 epochs are 900k
steps. On one H100 the train step alone (synthetic data, BENCHMARKS.md) runs
about 15,700 images/s in float32 (measured before conv1's space-to-depth)
and 26,000 in bfloat16 (`--config.model.dtype=bfloat16`): about 2 and 1.3
hours of steps for 90 epochs.
Decoding JPEGs on the host does not keep up with that (BENCHMARKS.md).

Expected (PAPER.md, ILSVRC-2012 val, one CNN): 40.7% top-1 / 18.2% top-5
error with 10-view testing (`--config.eval_views=ten_view`), about 1.5 points
worse with the centre crop (the default during training).
Ablations: non-overlapping pooling 41.06 / 18.51, no LRN 42.03 / 19.36, no
cross-tower communication 41.83 / 19.33.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "imagenet2012"
    config.eval_split = "validation"
    config.data_stats = "published"  # PAPER.md's mean and PCA; "computed" derives them (hours)
    config.crop_chunk = 32  # as trained: one crop offset and flip per chunk of 32 images
    config.num_epochs = 90.0
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 5_000
    return config

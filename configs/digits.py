"""A scaled-down AlexNet on the embedded handwritten digits (no download).

Command:
    python -m alexnet_jax.main --config configs/digits.py --workdir runs/digits

Same module as the paper (two towers, LRN, overlapping pooling, dropout, the
paper's optimiser), at width 0.25 on 64x64 inputs (the 8x8 scans upscaled;
64 is the smallest side the paper's conv1 stride 4 and three 3x3/2 poolings
accept). 1,437 training and 360 test images.

Hardware and time: about 2 minutes on a 2-core CPU (install excluded).
Expected: at least 98% test top-1 accuracy (the last line of the run; five
seeds gave 98.6% to 99.4%).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "sklearn_digits"
    config.train_split = "train"
    config.eval_split = "test"
    config.shuffle_buffer_size = 2_048
    config.cache_format = "png"  # lossless: the digits' 8x8 grey levels stay exact
    config.resize_size = 72  # 8x8 scans upscaled to 72, random 64x64 crops
    config.random_flip = False  # a flipped 2 is not a 2

    config.batch_size = 64
    config.eval_batch_size = 128
    config.num_epochs = 30.0
    config.log_every_steps = 50
    config.eval_every_steps = 200
    config.inspect_every_steps = 200
    config.checkpoint_every_steps = 200

    config.model.num_classes = 10
    config.model.input_size = 64
    config.model.width = 0.25
    # The paper's stds at width 0.25 / 64x64 inputs shrink the signal so much
    # that training stalls at ln(10); scale them to the paper's per-layer gain.
    config.model.init_match_fan_in = True
    # Dropout: the default, the paper's form ("test"). Five seeds: 98.6% to
    # 99.4% test accuracy with it, 97.8% to 98.6% with flax's inverted form
    # (results/README.md), so the digits need no other.

    config.optimizer.learning_rate = 0.01
    config.optimizer.drop_epochs = (20, 26)
    return config

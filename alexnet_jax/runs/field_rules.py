"""What each config field means for a run's identity: the tables the restart
check (restart.py) and the readers of a workdir (reading.py) go by.

A field that defines the run (`DEFINING`) must stay equal on a restart; one
that may change (`MAY_CHANGE`) is taken and logged. Evaluation, prediction,
retrieval and ensembles accept only `READ_MAY_CHANGE` overrides of a saved
config. tests/test_run_config.py fails when a field is in neither table.
"""

from __future__ import annotations

from typing import Any

# Fields whose value makes a different run: a restart must keep them, and
# reading a workdir (evaluate, predict, retrieval) must not change them.
DEFINING: dict[str, str] = {
    "dataset": "which images",
    "image_folder": "which images (the prepared copy is keyed by the folder)",
    "train_split": "which images; the computed statistics come from it",
    "eval_split": "what the run's own evaluations measure (evaluate may choose another)",
    "shuffle_buffer_size": "the data order",
    "cache_format": "the pixels (jpeg is lossy)",
    "resize_size": "the pixels the crops come from",
    "data_stats": "the mean subtracted and the colour noise",
    "mean_image": "the mean subtracted",
    "mean_rgb": "the mean subtracted (published statistics)",
    "random_flip": "the augmentation",
    "crop_chunk": "the augmentation",
    "pca_noise_std": "the augmentation",
    "pca_noise_end_epoch": "the augmentation",
    "batch_size": "the update and the data position",
    "seed": "initialisation, data order, crops, dropout",
    "init_from": "the initial weights (used at the first start only)",
    "init_reset": "the initial weights",
    "frozen": "which layers train (and the optimiser state's structure)",
    "model.num_classes": "the network",
    "model.input_size": "the network",
    "model.width": "the network",
    "model.towers": "the network",
    "model.filters": "the network",
    "model.cross_tower": "the network",
    "model.extra_conv6": "the network",
    "model.activation": "the network",
    "model.use_lrn": "the network",
    "model.lrn_k": "the network",
    "model.lrn_n": "the network",
    "model.lrn_alpha": "the network",
    "model.lrn_beta": "the network",
    "model.lrn_alpha_over_n": "the network",
    "model.lrn1_before_relu": "the network",
    "model.within_channel_norm": "the network",
    "model.pool_window": "the network",
    "model.pool_stride": "the network",
    "model.dropout_rate": "the network (training)",
    "model.dropout_scaling": "the network's training (and the weights' scale at test)",
    "model.init_scheme": "the initial weights",
    "model.init_match_fan_in": "the initial weights",
    "model.dtype": "the numbers computed",
    "optimizer.learning_rate": "the update rule (a saved plateau rate would silently win)",
    "optimizer.momentum": "the update rule",
    "optimizer.weight_decay": "the update rule",
    "optimizer.bias_lr_multiplier": "the update rule",
    "optimizer.bias_weight_decay": "the update rule",
    "optimizer.schedule": "the optimiser state's structure",
    "optimizer.drop_factor": "the rate after each drop",
    "optimizer.layer_lr_changes": "the update rule per layer (and the optimiser state's structure)",
    "optimizer.plateau_patience": "the plateau schedule",
    "optimizer.plateau_max_drops": "the plateau schedule",
}

# Fields a restart may change: taken, and each change logged once.
MAY_CHANGE: dict[str, str] = {
    "num_epochs": "extends the run (or ends it earlier, not before the newest checkpoint: refused)",
    "num_train_steps": "extends the run (or ends it earlier, not before the newest checkpoint: refused)",
    "log_every_steps": "reporting only",
    "eval_every_steps": "reporting (defining under the plateau schedule: PLATEAU_DEFINING)",
    "inspect_every_steps": "reporting only",
    "checkpoint_every_steps": "how often the run is saved",
    "keep_checkpoints": "how many are kept",
    "data_dir": "where the same data lives",
    "manual_dir": "where the same data lives",
    "compilation_cache_dir": "compiled programs only",
    "prefetch_batches": "host-device overlap only",
    # Even under the plateau schedule: it compares top-1 errors, counts of
    # 0/1 per example summed exactly (float32 to 2^24 examples) whatever the
    # batches and padding; only an argmax tied to rounding could flip.
    "eval_batch_size": "evaluation is exact whatever the batch",
    "eval_views": "how evaluation reads the same network (defining under the plateau schedule)",
    "mesh": "where the same numbers are computed",
    "model_parallel": "where the same numbers are computed",
    "micro_batch_size": "the same mean gradient, in parts",
    "model.tower_impl": "an implementation switch, same numbers",
    "model.conv1_impl": "an implementation switch, same numbers",
    "model.conv_wgrad": "an implementation switch, same numbers",
    "model.pool_impl": "an implementation switch, same numbers",
    "optimizer.drop_epochs": "future drops only: drops already taken must stay (checked)",
}

# MAY_CHANGE fields that steer the learning rate of a plateau run
# (optimizer.schedule="plateau"): a restart of such a run must keep them.
PLATEAU_DEFINING: dict[str, str] = {
    "eval_every_steps": "when the plateau schedule looks (its patience counts evaluations)",
    "eval_views": "the validation error the plateau schedule compares",
}

# Fields whose default is not what runs did before the field existed: a
# record without the field was trained with this value, not the default.
BEFORE_FIELD: dict[str, Any] = {
    "model.dropout_scaling": "train",  # flax's inverted dropout until the paper's became the default
}

# Reading a trained workdir may also choose what to measure it on.
READ_MAY_CHANGE: frozenset[str] = frozenset(MAY_CHANGE) | {"eval_split"}

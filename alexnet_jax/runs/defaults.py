"""Every field the code reads, with the paper's values ("as trained" defaults):
the config's schema, each field defined once with a comment.

configs/default.py is this config as a config file; `configs/paper.py`
(ImageNet) and `configs/digits.py` (the embedded dataset) build on it and
override a few fields. Any field can be overridden from the command line,
e.g. `--config.model.use_lrn=False`. A saved run's config is read against
these fields (runs.config_json, runs.field_rules), and runs.validation checks each.
"""

import ml_collections

# The learning-rate schedules train.optim implements (config.optimizer.schedule).
SCHEDULES = ("piecewise", "plateau")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # --- data ---
    # A tfds image-classification dataset name (e.g. "imagenet2012", "cifar10";
    # "sklearn_digits" is embedded), "image_folder" for config.image_folder, or
    # "synthetic" (random images of the paper's shape: benchmarks only).
    config.dataset = "imagenet2012"
    # With dataset="image_folder": the root of the user's images, laid out as
    # root/<split>/<class>/<image> (any type TF or PIL decodes). Prepared once
    # into data_dir; unreadable files are excluded and listed in a warning.
    config.image_folder = ""
    config.data_dir = ""  # tfds data_dir ("" = tfds's default, ~/tensorflow_datasets)
    config.manual_dir = ""  # where ILSVRC2012_img_{train,val}.tar are ("" = <data_dir>/downloads/manual)
    config.train_split = "train"
    config.eval_split = "validation"
    config.shuffle_buffer_size = 16_384  # examples, shuffled before decoding (encoded bytes)
    # Preprocessed cache next to the data (alexnet_jax/data/data_cache.py), made
    # once per dataset and process part: "jpeg" (quality 95, ~5x smaller
    # than pixels), "png" (lossless), "raw" (the pixels: nothing to decode,
    # for hosts that cannot decode as fast as the accelerator trains) or
    # "none" (decode the source every epoch).
    config.cache_format = "jpeg"
    config.prefetch_batches = 2  # global batches placed on the devices ahead of the step
    # Host side: shorter side to resize_size, centre crop resize_size^2 (uint8);
    # the device then takes model.input_size crops (random when training).
    config.resize_size = 256
    # Training-set statistics: "computed" from the train split once (mean
    # image + RGB PCA, cached next to the data) or "published" (docs/paper.md's
    # ImageNet values: mean_rgb below and cuda-convnet2's PCA).
    config.data_stats = "computed"
    config.mean_image = True  # computed stats: per-pixel mean image (paper); False: per-channel
    # Per-channel mean on 0..255 used with data_stats="published" (docs/paper.md:
    # the ImageNet mean image averages to about these values).
    config.mean_rgb = (127.3, 119.7, 104.9)
    config.random_flip = True  # horizontal flips when training
    config.crop_chunk = 1  # images sharing one crop offset and flip; 32 = the 2012 code
    config.pca_noise_std = 0.1  # std of PCA colour-noise alphas; 0 turns it off
    config.pca_noise_end_epoch = -1.0  # colour noise off from this epoch (run #145: 67); < 0 = never
    # "center" crop or "ten_view" (4 corners + centre, x2 flips; without
    # random_flip the 5 unmirrored views, named "five_view" in results).
    config.eval_views = "center"

    # --- schedule ---
    config.batch_size = 128  # global, over all devices and processes
    # > 0: the step computes the batch's mean gradient in micro-batches of this
    # many images (global), summed in a loop. Same update, less activation
    # memory. 0 = the whole batch at once. -1 = chosen for the machine: on
    # accelerators the whole batch; on a CPU, where the batch leaves a choice
    # (paper-sized images), the fastest of the whole batch and its halves down
    # to 32 images per device, timed at the first run of the model on the
    # machine and kept beside compilation_cache_dir
    # (alexnet_jax/train/micro_batch.py); else alexnet_jax/platform/machine_defaults.py.
    config.micro_batch_size = -1
    config.eval_batch_size = 128
    config.num_epochs = 90.0
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.log_every_steps = 100
    config.eval_every_steps = 10_000  # also the plateau schedule's check period
    # TensorBoard's inputs, kernel grids, weight and gradient norms and
    # histograms (alexnet_jax/train/summaries.py) every this many steps and
    # at the first and last steps: one extra forward/backward pass each.
    # 0 = never.
    config.inspect_every_steps = 10_000
    config.checkpoint_every_steps = 5_000
    config.keep_checkpoints = 3  # the latest is always kept
    config.seed = 0

    # --- starting from another run (alexnet_jax/train/init_from.py) ---
    # A workdir (its newest checkpoint) or one checkpoint step directory
    # (<workdir>/checkpoints/<step>) whose parameters this run starts from, at
    # step 0 with its own schedule (not the optimiser state, step or data
    # position). "" = a fresh initialisation. Used at the first start only.
    config.init_from = ""
    # Layers (model.network.LAYERS: conv1..conv5, conv6, fc6..fc8) initialised afresh instead
    # of taken from init_from, e.g. ("fc8",) for another class count. A layer
    # whose shapes differ between the two networks must be named here.
    config.init_reset = ()
    # Layers the optimiser leaves unchanged (no update, no weight decay), e.g.
    # ("conv1", "conv2", "conv3", "conv4", "conv5") to train the classifier only.
    config.frozen = ()

    # --- model: fields map one to one onto alexnet_jax.model.network.AlexNet ---
    config.model = ml_collections.ConfigDict()
    config.model.num_classes = 1000
    config.model.input_size = 224  # square input side; 224 as in the paper
    config.model.width = 1.0  # multiplier on every conv/fc width (1.0 = paper)
    # The five convolutions' filter counts (both towers together, scaled by
    # width). Section 3.2's one-GPU net: towers=1, filters=(48, 128, 192, 192, 256).
    config.model.filters = (96, 256, 384, 384, 256)
    config.model.towers = 2  # 2 = the two GPU towers as grouped convs; 1 = ungrouped
    # False: conv3 reads only its own tower (grouped like conv4), so the towers
    # exchange nothing until fc6: our reading of the paper's "no cross-tower
    # communication" ablation (41.83 / 19.33).
    config.model.cross_tower = True
    # A sixth convolution after pool5 (the Fall 2011 net of "1 CNN*"): 3x3,
    # SAME, 256 filters, grouped like conv5 (our choices; the paper gives no size).
    config.model.extra_conv6 = False
    config.model.tower_impl = "split"  # "split" (per-tower convs) or "grouped" (feature_group_count)
    config.model.activation = "relu"  # "relu" or "tanh"
    config.model.use_lrn = True
    config.model.lrn_k = 2.0
    config.model.lrn_n = 5
    config.model.lrn_alpha = 1e-4
    config.model.lrn_beta = 0.75
    config.model.lrn_alpha_over_n = True  # True: 2012 code (alpha/n); False: printed (alpha)
    config.model.lrn1_before_relu = True  # True: 2012 code; False: printed (after ReLU)
    config.model.within_channel_norm = True  # 2012 code's 5x5 norm after LRN2
    config.model.pool_window = 3  # 3 = overlapping (paper), 2 = non-overlapping
    config.model.pool_stride = 2
    config.model.dropout_rate = 0.5  # after fc6 and fc7
    # "test": the paper's dropout (kept units unscaled at training, x(1 - rate)
    # at test); "train": inverted, flax's nn.Dropout (x1/(1 - rate) at
    # training). Same test-time function, but under SGD with weight decay the
    # inverted form trains fc7 and fc8 as if initialised 2x larger at 4x the
    # learning rate (docs/paper.md, Dropout). Runs from before this field used "train".
    config.model.dropout_scaling = "test"
    config.model.init_scheme = "as_trained"  # or "printed" (N(0, 0.01) everywhere)
    # Scale init stds by sqrt(paper fan-in / fan-in): a no-op at the paper's
    # size; keeps a narrow or small-input net from stalling at ln(classes).
    config.model.init_match_fan_in = False
    # "space_to_depth": conv1 as a 3x3 conv of 4x4-pixel blocks, same numbers
    # (summed in another order), 1.3x faster steps on an H100, slower on CPU;
    # "direct": the strided 11x11 conv; "auto": space_to_depth on GPUs only.
    config.model.conv1_impl = "auto"
    # Convolutions' kernel gradients: "gemm" = one matrix product of input
    # patches, "xla" = XLA's own (faster with XLA's CPU convolution kernels,
    # see alexnet_jax/platform/xla_cpu_flags.py); "auto": xla. Same numbers.
    config.model.conv_wgrad = "auto"
    # Max-pooling's gradient: "xla" = nn.max_pool's select-and-scatter;
    # "taps" = pooling.max_pool_taps, found from the window's strided views
    # with no scatter (same numbers, a faster CPU step); "auto": taps on CPU.
    config.model.pool_impl = "auto"
    config.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16"

    # --- optimiser: docs/paper.md's update rule ---
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.bias_lr_multiplier = 2.0  # 2012 code: biases at 2x the rate
    config.optimizer.bias_weight_decay = False  # 2012 code: no decay on biases
    config.optimizer.schedule = "piecewise"  # "piecewise" (by epoch) or "plateau"
    config.optimizer.drop_factor = 0.1
    config.optimizer.drop_epochs = (25, 51, 79)  # run #145's drops
    # Per-layer learning-rate multipliers on top of the schedule, each
    # (layer, epoch, multiplier): from that epoch on the layer's rate is the
    # schedule's times multiplier (0 stops its gradient steps). Run #145:
    # (("conv1", 67, 0.1), ("conv1", 72, 0.0)), i.e. conv1 at 1e-5, then frozen.
    config.optimizer.layer_lr_changes = ()
    config.optimizer.plateau_patience = 3  # evaluations without improvement
    config.optimizer.plateau_max_drops = 3

    # --- devices ---
    # ('data', 'model') mesh shape; -1 = all remaining devices. (-1, 1) is pure
    # data parallelism; (-1, 2) puts each model pair's two towers one per device.
    config.mesh = (-1, 1)
    # How a model axis > 1 splits the net (alexnet_jax/parallel/sharding.py): "towers"
    # (the paper: tower-local convs, conv3 and fc6-8 exchange) or "dense"
    # (Krizhevsky 2014: data-parallel convs, model-parallel dense layers).
    # "towers" needs a model axis of 1 or model.towers (one tower per device).
    config.model_parallel = "towers"
    # JAX's persistent compilation cache (python -m alexnet_jax.main only): a
    # restarted or resumed run, or a sweep's next variant of the same program,
    # loads its compiled step instead of compiling it again (minutes for big
    # GPU batches). "" = off; JAX_COMPILATION_CACHE_DIR, where set, wins.
    config.compilation_cache_dir = "~/.cache/alexnet_jax/xla"
    return config

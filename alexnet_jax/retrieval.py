"""Nearest neighbours in the last hidden layer, as the paper's Figure 4.

    python -m alexnet_jax.retrieval --workdir runs/digits \\
        --out runs/digits/retrieval.png [--queries 0,1,2,3,4] [--neighbours 6]

Embeds every image of the database split (default: the training split) with
the fc7 activations of the newest checkpoint (4096-d on the paper's model),
and for each query image of the query split (default: the evaluation split)
finds the database images at the smallest Euclidean distance. Saves a PNG
grid, one row per query: the query, then its neighbours nearest first; and
prints each row's labels and distances. Centre crops, as evaluation. The run
is read with its own config.json and statistics, as evaluate does.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath

from alexnet_jax import errors
from alexnet_jax.data import augment, pipeline
from alexnet_jax.inference import predictions
from alexnet_jax.model import network
from alexnet_jax.parallel import sharding
from alexnet_jax.runs import config_json, overrides, reading, run_stats
from alexnet_jax.train import summaries

FLAGS = flags.FLAGS


def _batches(config: ml_collections.ConfigDict, builder, split: str) -> Iterator[dict]:
    """Every example of `split` once, in order, with the evaluation pipeline."""
    split_config = config.copy_and_resolve_references()
    split_config.eval_split = split
    return pipeline.eval_batches(split_config, builder)


def embed(
    model: network.AlexNet,
    params: Any,
    stats: augment.DataStats,
    config: ml_collections.ConfigDict,
    builder,
    split: str,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """fc7 features (float32, one row per example) and labels of the first
    `limit` (default: all) examples of `split`, `stats` (the run's) subtracted."""
    mesh = sharding.make_mesh(config.mesh)

    @jax.jit
    def features_fn(params, batch):  # params as an argument, not baked in as constants
        images = augment.eval_inputs(batch["image"], stats, crop=config.model.input_size, views="center")[0]
        _, state = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
        return state["intermediates"]["features"][0].astype(jnp.float32)

    features, labels, count = [], [], 0
    for local_batch in _batches(config, builder, split):
        keep = local_batch["mask"].astype(bool)
        features.append(np.asarray(features_fn(params, sharding.global_batch(local_batch, mesh)))[keep])
        labels.append(local_batch["label"][keep])
        count += int(keep.sum())
        if limit is not None and count >= limit:
            break
    return np.concatenate(features)[:limit], np.concatenate(labels)[:limit]


def images_at(config: ml_collections.ConfigDict, builder, split: str, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The uint8 `resize_size` images of `split` at `indices` (one ordered pass)."""
    wanted, found, offset = set(indices), {}, 0
    for batch in _batches(config, builder, split):
        for i in range(int(batch["mask"].sum())):
            if offset + i in wanted:
                found[offset + i] = augment.center_crop(batch["image"][i : i + 1], config.model.input_size)[0]
        offset += int(batch["mask"].sum())
        if len(found) == len(wanted):
            break
    return {i: np.asarray(image) for i, image in found.items()}


def nearest(
    queries: np.ndarray, database: np.ndarray, k: int, exclude: np.ndarray | None = None, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of the `k` nearest database rows of each query
    (Euclidean); `exclude[q]` (a database index) is skipped, e.g. the query itself.

    Differences, not |q|^2 - 2 q.d + |d|^2: that expansion cancels in float32
    and can swap near neighbours. Chunked to bound the (queries, chunk, dim) temporary.
    """
    squared = np.empty((len(queries), len(database)), np.float64)
    for start in range(0, len(database), chunk):
        block = database[start : start + chunk]
        squared[:, start : start + chunk] = np.square(block[None] - queries[:, None]).sum(-1, dtype=np.float64)
    if exclude is not None:
        squared[np.arange(len(queries)), exclude] = np.inf
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return order, np.sqrt(np.take_along_axis(squared, order, axis=1))


def retrieval_grid(
    query_images: list[np.ndarray], neighbour_images: list[list[np.ndarray]], gap: int = 8
) -> np.ndarray:
    """One row per query: the query, a white gap, then its neighbours nearest first (uint8 RGB)."""
    queries = summaries.tile(np.stack(query_images), cols=1, pad=2, pad_value=255)
    rows = [image for row in neighbour_images for image in row]
    neighbours = summaries.tile(np.stack(rows), cols=len(neighbour_images[0]), pad=2, pad_value=255)
    return np.concatenate([queries, np.full((len(queries), gap, 3), 255, np.uint8), neighbours], axis=1)


@errors.one_line_errors
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"unexpected arguments {argv[1:]}: give every value as a flag (--name=value)")
    import tensorflow as tf
    from PIL import Image

    tf.config.set_visible_devices([], "GPU")
    logging.set_verbosity(logging.WARNING)  # orbax's restore chatter would bury the results
    if jax.process_count() > 1:
        sys.exit("error: retrieval runs in one process; start it without the multi-process launcher")
    out = epath.Path(FLAGS.out)  # local, or a URI such as the run's gs:// workdir
    config_json.check_writable(out.parent, "--out")  # before the work, not after it
    config = reading.config_for(FLAGS.workdir)
    query_split = FLAGS.query_split or config.eval_split
    database_split = FLAGS.database_split or config.train_split
    model, params, step = predictions.restore_params(config, FLAGS.workdir)
    builder = pipeline.get_builder(config)
    for split in (query_split, database_split):
        if split not in builder.info.splits:
            raise errors.ConfigError(f"split {split!r} is not one of {sorted(builder.info.splits.keys())}")
    size = pipeline.num_examples(builder, query_split)
    query_ids = [int(i) for i in FLAGS.queries if i.strip().isdigit()]
    if not query_ids or len(query_ids) < len(FLAGS.queries) or not all(0 <= i < size for i in query_ids):
        raise errors.ConfigError(
            f"--queries={','.join(FLAGS.queries)} must be indices into {query_split} (0..{size - 1})"
        )
    run = run_stats.for_reading(config, FLAGS.workdir, builder)  # the run's own statistics

    print(f"checkpoint of step {step}; embedding {database_split} ...", flush=True)
    db_features, db_labels = embed(model, params, run.stats, config, builder, database_split)
    q_features, q_labels = embed(model, params, run.stats, config, builder, query_split, limit=max(query_ids) + 1)
    q_features, q_labels = q_features[query_ids], q_labels[query_ids]
    exclude = np.array(query_ids) if query_split == database_split else None
    order, distances = nearest(q_features, db_features, FLAGS.neighbours, exclude)

    names = run.class_names or run_stats.class_names(config, builder)
    same = 0
    for q, row, dists, label in zip(query_ids, order, distances, q_labels):
        same += int(np.sum(db_labels[row] == label))
        found = ", ".join(f"#{i} {names[db_labels[i]]} ({d:.1f})" for i, d in zip(row, dists))
        print(f"query {query_split}#{q} ({names[label]}): {found}", flush=True)
    print(f"{same} of {order.size} neighbours share their query's label ({db_features.shape[1]}-d features)")

    queries = images_at(config, builder, query_split, query_ids)
    neighbours = images_at(config, builder, database_split, sorted(set(order.ravel().tolist())))
    grid = retrieval_grid([queries[q] for q in query_ids], [[neighbours[i] for i in row] for row in order])
    encoded = io.BytesIO()
    Image.fromarray(grid).save(encoded, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))
    out.write_bytes(encoded.getvalue())
    print(f"wrote {FLAGS.out}", flush=True)


if __name__ == "__main__":
    from alexnet_jax.platform import machine_settings

    machine_settings.apply_machine_settings()  # before JAX starts its backends
    reading.define_flags()
    flags.DEFINE_string("out", None, "Where the PNG grid goes.")
    flags.DEFINE_list("queries", ["0", "1", "2", "3", "4"], "Indices of the query images in --query_split.")
    flags.DEFINE_integer("neighbours", 6, "Neighbours per query (the paper shows 6).")
    flags.DEFINE_string("query_split", "", "Split of the queries (default: config.eval_split).")
    flags.DEFINE_string("database_split", "", "Split searched (default: config.train_split).")
    flags.mark_flags_as_required(["out"])
    app.run(main, flags_parser=overrides.parse_flags)

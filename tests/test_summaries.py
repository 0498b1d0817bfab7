"""TensorBoard inspection: every kind of summary is in the event files."""

import numpy as np
import pytest

from alexnet_jax.train import inspection, loop, steps, summaries


def test_kernel_grids_split_towers_and_keep_colour():
    kernel = np.zeros((11, 11, 3, 12), np.float32)
    kernel[..., 0, 0] = 1.0  # a pure-red filter in tower 0
    kernel[..., 6] = -1.0  # a grey (colour-agnostic) dark filter in tower 1
    grids = summaries.kernel_grids(kernel, towers=2, cols=8)
    zoom = 11 * 4
    assert [g.shape for g in grids] == [(2 + zoom, 6 * (zoom + 1) + 1, 3)] * 2
    assert grids[0].dtype == np.uint8
    np.testing.assert_array_equal(grids[0][1, 1], [255, 128, 128])  # red up, others mid-grey
    np.testing.assert_array_equal(grids[1][1, 1], [0, 0, 0])
    np.testing.assert_array_equal(grids[1][1, zoom + 2], [128, 128, 128])  # an all-zero filter


def test_tile_places_images_row_by_row():
    images = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 2, 2, 1), np.float32)
    grid = summaries.tile(images, cols=2, pad=1, pad_value=-1.0)
    assert grid.shape == (7, 7, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 4, 0] == 1 and grid[4, 1, 0] == 2 and grid[4, 4, 0] == -1


def _plugin_tags(workdir):
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    events.Reload()
    by_plugin = {}
    for tag in events.Tags()["tensors"]:
        plugin = events.SummaryMetadata(tag).plugin_data.plugin_name
        by_plugin.setdefault(plugin, {})[tag] = [e.step for e in events.Tensors(tag)]
    return by_plugin, events


def test_run_writes_config_kernels_inputs_norms_and_histograms(tiny_config, tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    workdir = str(tmp_path / "inspect")
    config = tiny_config.copy_and_resolve_references()
    config.inspect_every_steps = 4  # not the evaluation's 3
    loop.train_and_evaluate(config, workdir)
    by_plugin, events = _plugin_tags(workdir)

    assert "model.use_lrn = True" in tensor_util.make_ndarray(events.Tensors("config")[0].tensor_proto).item().decode()
    assert by_plugin["text"]["config"] == [0]
    num_params = float(tensor_util.make_ndarray(events.Tensors("num_params")[0].tensor_proto))
    assert num_params == sum(x.size for x in _param_leaves(tiny_config))
    # Inspection at the first and last steps and every inspect_every_steps=4.
    assert by_plugin["images"] == {
        "conv1_kernels/tower_0": [1, 4, 6],
        "conv1_kernels/tower_1": [1, 4, 6],
        "train_inputs": [1, 4, 6],
    }
    images = tensor_util.make_ndarray(events.Tensors("train_inputs")[0].tensor_proto)
    assert len(images) == 2 + inspection.NUM_INPUT_IMAGES  # width, height, then one PNG per image
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        for kind in ("weight_norm", "grad_norm"):
            assert f"{kind}/{layer}/kernel" in by_plugin["scalars"]
        for kind in ("weights", "grads"):
            assert by_plugin["histograms"][f"{kind}/{layer}/kernel"] == [1, 4, 6]
    grad_norm = float(tensor_util.make_ndarray(events.Tensors("grad_norm/fc8/kernel")[0].tensor_proto))
    assert np.isfinite(grad_norm) and grad_norm > 0

    # The config as hparams, typed, so the HParams dashboard can sort and filter.
    content = events.PluginTagToContent("hparams")
    hparams = plugin_data_pb2.HParamsPluginData.FromString(next(iter(content.values()))).session_start_info.hparams
    assert hparams["model.use_lrn"].bool_value is True
    assert hparams["model.pool_window"].number_value == 3
    assert hparams["model.activation"].string_value == "relu"


def _param_leaves(config):
    import jax
    import jax.numpy as jnp

    model = steps.create_model(config)
    size = config.model.input_size
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    return jax.tree.leaves(shapes["params"])


@pytest.mark.parametrize("towers", [1, 2])
def test_kernel_grid_count_follows_towers(towers):
    kernel = np.random.default_rng(0).normal(size=(11, 11, 3, 24)).astype(np.float32)
    assert len(summaries.kernel_grids(kernel, towers)) == towers


def test_hparams_are_named_by_the_run(tmp_path):
    """TensorBoard's HParams rows show the trial id (else a hash of the values): the run's folder and name."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    from configs import digits

    workdir = tmp_path / "ablations" / "use_lrn=False,seed=0"
    writer = summaries.create_writer(workdir, just_logging=False)
    summaries.write_run_info(writer, digits.get_config(), num_params=10)
    writer.close()
    _, events = _plugin_tags(str(workdir))
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(next(iter(content.values()))).session_start_info
    assert start.group_name == "ablations/use_lrn=False,seed=0"
    assert start.hparams["model.use_lrn"].bool_value is True


def _histogram_tensors(workdir):
    from tensorboard.util import tensor_util

    by_plugin, events = _plugin_tags(workdir)
    tags = by_plugin.get("histograms", {})
    return {tag: tensor_util.make_ndarray(events.Tensors(tag)[0].tensor_proto) for tag in tags}


def test_histograms_read_back_as_tensorboards_own_buckets(tmp_path):
    """The event file holds, per array, the [buckets, 3] tensor TensorBoard's
    histogram plugin reads, with the buckets its own numpy reference gives."""
    from tensorboard.plugins.histogram import summary_v2
    from tensorboard.util import tensor_util

    rng = np.random.default_rng(0)
    arrays = {
        "weights/w": rng.normal(size=(300, 70)).astype(np.float32),
        "grads/ones": np.ones((5, 5), np.float32),
        "grads/half_nan": np.array([1.0, np.nan, 3.0, np.inf, 2.0], np.float32),
    }
    writer = summaries.create_writer(tmp_path, just_logging=False)
    writer.write_histograms(7, arrays, num_buckets={"grads/ones": 4})
    writer.close()
    read = _histogram_tensors(str(tmp_path))
    assert set(read) == set(arrays)
    for tag, values in {**arrays, "grads/half_nan": np.array([1.0, 3.0, 2.0])}.items():
        buckets = 4 if tag == "grads/ones" else summaries.HISTOGRAM_BUCKETS
        expected = summary_v2.histogram_pb(tag, values, buckets=buckets).value[0].tensor
        np.testing.assert_allclose(read[tag], tensor_util.make_ndarray(expected), rtol=1e-12)
    assert read["weights/w"][:, 2].sum() == 300 * 70
    np.testing.assert_array_equal(read["grads/ones"], [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 25]])


def test_histograms_do_not_build_the_one_hot_matrix(tmp_path, monkeypatch):
    """tf.summary.histogram's op holds values x buckets float64s (11 GB for
    fc6's kernel): the writer must bucket without it. Its memory while
    writing 4M values (480 MB one-hot) stays under 100 MB more than the array's."""
    import threading

    import psutil
    import tensorflow as tf

    def refuse(*args, **kwargs):
        raise AssertionError("tf.summary.histogram builds a values x buckets one-hot matrix")

    monkeypatch.setattr(tf.summary, "histogram", refuse)
    values = np.random.default_rng(0).normal(size=(2048, 2048)).astype(np.float32)
    writer = summaries.create_writer(tmp_path, just_logging=False)
    process, peak, done = psutil.Process(), [0], threading.Event()
    start = process.memory_info().rss

    def sample():
        while not done.wait(0.001):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        writer.write_histograms(1, {"weights/big": values})
        writer.flush()
    finally:
        done.set()
        sampler.join()
        writer.close()
    assert (peak[0] - start) / 2**20 < 100
    assert _histogram_tensors(str(tmp_path))["weights/big"][:, 2].sum() == values.size

"""Placement of the towers on devices: sharded steps equal the single-device
step, and the compiled program communicates only where the towers meet."""

import functools

import jax
import numpy as np
import pytest

from alexnet_jax.data import augment
from alexnet_jax.parallel import collectives, sharding
from alexnet_jax.platform import machine_defaults
from alexnet_jax.runs.validation import validate_config
from alexnet_jax.train import steps

TOWER_LOCAL = {"conv1", "conv2", "conv4", "conv5"}
EXCHANGE = {"conv3", "fc6", "fc7", "fc8"}


def _config(mesh, towers=2, model_parallel="towers", micro_batch_size=0, dropout_rate=0.5, conv1_s2d=False, variant=()):
    """The digits config shrunk; `variant`: model fields as (name, value) pairs."""
    from configs import digits

    config = digits.get_config()
    config.model.width = 0.125
    config.model.towers = towers
    config.batch_size = 16
    config.mesh = mesh
    config.model_parallel = model_parallel
    config.micro_batch_size = micro_batch_size
    config.model.dropout_rate = dropout_rate
    config.model.conv1_impl = "space_to_depth" if conv1_s2d else "direct"
    for field, value in variant:
        config.model[field] = value
    return config


def _batch():
    rng = np.random.RandomState(0)
    return {
        "image": rng.randint(0, 256, (16, 72, 72, 3)).astype(np.uint8),
        "label": rng.randint(0, 10, (16,)).astype(np.int32),
    }


@functools.cache
def _initial_state(towers, variant=()):
    """The single-device initial state (compiling init once per model)."""
    config = _config((1, 1), towers, variant=variant)
    return steps.create_train_state(config, steps.create_model(config), 89, sharding.make_mesh((1, 1)))


@functools.cache
def _one_step(
    mesh, towers=2, model_parallel="towers", micro_batch_size=0, dropout_rate=0.5, conv1_s2d=False, variant=()
):
    """Loss, parameters and compiled HLO text of one train step from
    `_initial_state` laid out on `mesh`."""
    config = _config(mesh, towers, model_parallel, micro_batch_size, dropout_rate, conv1_s2d, variant)
    validate_config(config)
    device_mesh = sharding.make_mesh(mesh)
    model = steps.create_model(config)
    initial = _initial_state(towers, variant)
    # Host copies: the step donates its input state, which must not be the cache.
    host = jax.tree.map(np.asarray, initial)
    state = jax.device_put(host, sharding.state_shardings(initial, device_mesh, model_parallel))
    state = state.replace(apply_fn=model.apply)  # this config's model (e.g. its dropout rate)
    train_fn, _ = steps.make_step_fns(config, model, device_mesh, state, augment.published_stats(config.mean_rgb))
    batch = sharding.global_batch(_batch(), device_mesh)
    compiled = train_fn.lower(state, batch, jax.random.key(1)).compile()
    new_state, metrics = compiled(state, batch, jax.random.key(1))
    return float(metrics.loss.compute()), new_state.params, compiled.as_text()


@pytest.mark.parametrize(
    "mesh, towers, model_parallel",
    [
        ((8, 1), 2, "towers"),  # pure data parallel
        ((4, 2), 2, "towers"),  # the paper's towers, data parallel over 4 pairs
        ((1, 2), 2, "towers"),  # the paper's two GPUs
        ((4, 2), 2, "dense"),  # data-parallel convs, model-parallel dense layers
    ],
)
def test_sharded_step_matches_single_device(mesh, towers, model_parallel):
    loss_ref, params_ref, _ = _one_step((1, 1), towers)
    loss, params, _ = _one_step(mesh, towers, model_parallel)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for path, ref in jax.tree_util.tree_leaves_with_path(params_ref):
        got = functools.reduce(lambda tree, key: tree[key.key], path, params)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6, err_msg=str(path))


@pytest.mark.parametrize("mesh", [(1, 1), (4, 2)])
def test_micro_batches_give_the_whole_batch_step(mesh):
    """Without dropout (the only randomness that differs), two micro-batches
    of 8 give the loss and update of one batch of 16, on one device and with
    the towers split and data parallel."""
    loss_ref, params_ref, _ = _one_step((1, 1), dropout_rate=0.0)
    loss, params, _ = _one_step(mesh, micro_batch_size=8, dropout_rate=0.0)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for path, ref in jax.tree_util.tree_leaves_with_path(params_ref):
        got = functools.reduce(lambda tree, key: tree[key.key], path, params)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_machine_chosen_micro_batches_give_the_whole_batch_step(monkeypatch):
    """micro_batch_size=-1 (the default) with a budget that splits the test's
    batch of 16 into micro-batches of 8: without dropout, the whole batch's
    loss and update, as an explicitly set size gives."""
    monkeypatch.setattr(machine_defaults, "CPU_MICRO_BATCH_PIXELS", 8 * 64 * 64)  # 8 digits crops of 64x64
    assert machine_defaults.micro_batch_size(_config((1, 1), micro_batch_size=-1), "cpu") == 8
    loss_ref, params_ref, hlo_ref = _one_step((1, 1), dropout_rate=0.0)
    loss, params, hlo = _one_step.__wrapped__((1, 1), micro_batch_size=-1, dropout_rate=0.0)
    assert hlo != hlo_ref  # the micro-batched program, not the whole batch's
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for path, ref in jax.tree_util.tree_leaves_with_path(params_ref):
        got = functools.reduce(lambda tree, key: tree[key.key], path, params)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_conv1_space_to_depth_keeps_the_towers_step():
    """Mesh (4, 2) with conv1 by space-to-depth: the single-device step, and
    conv1 stays tower-local (XLA splits it by output channel, no exchange)."""
    loss_ref, params_ref, _ = _one_step((1, 1))
    loss, params, hlo = _one_step((4, 2), conv1_s2d=True)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for path, ref in jax.tree_util.tree_leaves_with_path(params_ref):
        got = functools.reduce(lambda tree, key: tree[key.key], path, params)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6, err_msg=str(path))
    found = collectives.collectives(hlo)
    assert _layers(c for c in found if not c.backward and c.layer is not None) == EXCHANGE


@pytest.mark.parametrize("micro", [5, 2])
def test_micro_batch_size_must_divide_the_batch_and_the_devices(micro):
    with pytest.raises(ValueError, match=f"config.micro_batch_size={micro} must divide batch_size=16"):
        validate_config(_config((4, 2), micro_batch_size=micro))


def test_state_is_created_in_place_one_tower_per_device():
    """create_train_state on mesh (4, 2) gives the single-device parameters,
    each device of a pair holding its own tower's half of conv2's kernel."""
    config = _config((4, 2))
    state = steps.create_train_state(config, steps.create_model(config), 89, sharding.make_mesh((4, 2)))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_initial_state(2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = state.params["conv2"]["kernel"]  # (5, 5, 2, 32): 16 output channels per tower
    shards = {shard.device.id: np.asarray(shard.data) for shard in kernel.addressable_shards}
    np.testing.assert_array_equal(shards[0], np.asarray(kernel)[..., :16])  # tower a
    np.testing.assert_array_equal(shards[1], np.asarray(kernel)[..., 16:])  # tower b
    np.testing.assert_array_equal(shards[2], shards[0])  # the next pair: data parallel
    momentum = state.opt_state.inner_state[3].trace
    assert momentum["fc7"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "model")


def _layers(items):
    return {c.layer for c in items}


NO_CROSS_TOWER = (("cross_tower", False),)
EXTRA_CONV6 = (("extra_conv6", True),)


@pytest.mark.parametrize("variant", [NO_CROSS_TOWER, EXTRA_CONV6])
def test_network_variants_sharded_as_towers_match_single_device(variant):
    loss_ref, params_ref, _ = _one_step((1, 1), variant=variant)
    loss, params, _ = _one_step((4, 2), variant=variant)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for path, ref in jax.tree_util.tree_leaves_with_path(params_ref):
        got = functools.reduce(lambda tree, key: tree[key.key], path, params)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_without_cross_tower_communication_the_towers_meet_only_in_the_dense_layers():
    """The paper's "no cross-tower communication" ablation, our reading: conv3
    reads its own tower; the forward pass communicates in fc6-fc8 alone."""
    found = collectives.collectives(_one_step((4, 2), variant=NO_CROSS_TOWER)[2])
    assert _layers(c for c in found if not c.backward and c.layer is not None) == EXCHANGE - {"conv3"}


def test_two_devices_talk_only_at_conv3_and_the_dense_layers():
    """Mesh (1, 2), the paper's setup: the whole train step, forward and
    backward, has collectives only in conv3 and fc6-fc8."""
    found = collectives.collectives(_one_step((1, 2))[2])
    assert _layers(c for c in found if not c.backward) == EXCHANGE
    assert _layers(found) == EXCHANGE, [c.op_name for c in found if c.layer not in EXCHANGE]


def test_tower_local_layers_have_no_collectives_in_the_forward_pass():
    """Mesh (4, 2): the model's forward pass communicates only in conv3 and
    fc6-fc8 (outside the model, the metrics reduce over the batch; the
    backward pass adds the data-parallel gradient sums)."""
    found = collectives.collectives(_one_step((4, 2))[2])
    assert _layers(c for c in found if not c.backward and c.layer is not None) == EXCHANGE


def test_pure_data_parallel_sums_exactly_the_gradients():
    """Mesh (8, 1): no communication in the model's forward pass; the
    backward pass all-reduces every gradient once (4 bytes a parameter; XLA
    combines them with the few scalar sums of the loss and metrics)."""
    _, params, hlo = _one_step((8, 1))
    found = collectives.collectives(hlo)
    assert not [c for c in found if not c.backward and c.layer is not None]
    summed = sum(c.operand_bytes for c in found if c.kind == "all-reduce")
    gradient_bytes = 4 * sum(x.size for x in jax.tree.leaves(params))
    assert gradient_bytes <= summed <= gradient_bytes + 64


def test_collective_bytes_are_read_from_operand_shapes():
    hlo = """
ENTRY %main (p: f32[2,8]) -> f32[4,8] {
  %p = f32[2,8]{1,0} parameter(0)
  %b = bf16[3]{0} parameter(1)
  %ag = f32[4,8]{1,0} all-gather(%p), dimensions={0}, metadata={op_name="jit(f)/jvp(AlexNet)/fc6/fc6/dot_general"}
  %ar = (f32[2,8]{1,0}, bf16[3]{0}) all-reduce(%p, %b), metadata={op_name="jit(f)/transpose(jvp(AlexNet))/conv3/x"}
  ROOT %cp = f32[2,8]{1,0} collective-permute-start(%p), source_target_pairs={{0,1}}
}
"""
    found = collectives.collectives(hlo)
    assert [(c.kind, c.operand_bytes, c.layer, c.backward) for c in found] == [
        ("all-gather", 64, "fc6", False),
        ("all-reduce", 70, "conv3", True),
        ("collective-permute", 64, None, False),
    ]
    assert collectives.bytes_by(found, "kind") == {"all-gather": 64, "all-reduce": 70, "collective-permute": 64}


def test_mesh_without_one_tower_per_device_is_rejected():
    config = _config((-1, 4))
    with pytest.raises(ValueError, match=r"config.mesh=\(-1, 4\) puts 4 devices on model.towers=2"):
        validate_config(config)
    config.model.towers = 1
    config.mesh = (-1, 2)
    with pytest.raises(ValueError, match=r"config.mesh=\(-1, 2\) puts 2 devices on model.towers=1"):
        validate_config(config)
    config.model_parallel = "pipeline"
    config.mesh = (-1, 2)
    with pytest.raises(ValueError, match="config.model_parallel='pipeline' must be one of"):
        validate_config(config)

"""`micro_batch_size=-1` on a CPU with a choice of sizes: measured once per
machine and model, recorded next to the compilation cache, read back after."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.platform import machine_defaults
from alexnet_jax.runs import config_json
from alexnet_jax.train import loop, micro_batch
from configs import digits, paper


def _paper(batch=128, mesh=(1, 1), micro=-1, cache_dir=""):
    config = paper.get_config()
    config.batch_size, config.mesh, config.micro_batch_size = batch, mesh, micro
    config.compilation_cache_dir = cache_dir
    return config


@pytest.mark.parametrize(
    "batch,mesh,expected",
    [
        (128, (1, 1), (0, 64, 32)),  # whole, halves down to 32 paper crops
        (256, (1, 1), (128, 64, 32)),  # beyond the memory budget: never whole
        (96, (1, 1), (0, 48)),  # 24 would be below 32 crops
        (1024, (-1, 1), (0, 512, 256)),  # 128 per device on the 8 test devices
        (31, (1, 1), ()),  # below 32 paper crops: nothing to choose
    ],
)
def test_candidates(batch, mesh, expected):
    assert micro_batch.candidates(_paper(batch, mesh)) == expected


def test_small_inputs_and_set_sizes_are_not_measured():
    config = digits.get_config()
    config.batch_size = 128
    assert micro_batch.candidates(config) == ()  # 128 digits crops are 1/12 of 32 paper crops
    assert not micro_batch.should_measure(config)
    assert micro_batch.should_measure(_paper())
    assert not micro_batch.should_measure(_paper(micro=0))
    assert not micro_batch.should_measure(_paper(micro=32))


def _fake_timings(monkeypatch, seconds: dict[int, float]) -> list:
    """time_candidates replaced by fixed timings; returns the list of calls."""
    calls = []

    def fake(build_step, sizes, state, batch, key):
        calls.append(sizes)
        return {m: seconds[m] for m in sizes}, {m: build_step(m) for m in sizes}

    monkeypatch.setattr(micro_batch, "time_candidates", fake)
    return calls


def _resolve(config):
    return micro_batch.resolve(config, lambda m: ("step", m), None, lambda: None, None)


def test_the_fastest_size_is_recorded_and_read_back(monkeypatch, tmp_path):
    calls = _fake_timings(monkeypatch, {0: 3.4, 128: 3.5, 64: 3.1, 32: 3.9})
    config = _paper(cache_dir=str(tmp_path / "xla"))
    assert _resolve(config) == (64, ("step", 64))
    assert calls == [(0, 64, 32)]
    recorded = json.loads((tmp_path / micro_batch.CHOICES_FILE).read_text())
    (entry,) = recorded.values()
    assert entry["micro_batch_size"] == 64
    assert entry["step_seconds"] == {"0": 3.4, "64": 3.1, "32": 3.9}
    assert entry["key"]["batch_size"] == 128 and entry["key"]["cpus"] >= 1

    assert _resolve(config) == (64, ("step", 64))  # read back: not timed again
    assert len(calls) == 1

    other = _paper(batch=256, cache_dir=str(tmp_path / "xla"))  # another shape: its own measurement
    assert _resolve(other)[0] == 64
    assert calls[-1] == (128, 64, 32)
    assert len(json.loads((tmp_path / micro_batch.CHOICES_FILE).read_text())) == 2


def test_ties_go_to_the_larger_size():
    assert micro_batch.choose({0: 3.48, 64: 3.44, 32: 3.95}) == 0  # 64 only 1.2% faster
    assert micro_batch.choose({0: 3.60, 64: 3.44, 32: 3.45}) == 64
    assert micro_batch.choose({0: 4.40, 64: 4.00, 32: 3.50}) == 32


def test_without_a_compilation_cache_every_run_measures(monkeypatch, tmp_path):
    calls = _fake_timings(monkeypatch, {0: 3.0, 64: 3.1, 32: 3.9})
    monkeypatch.chdir(tmp_path)
    assert _resolve(_paper(cache_dir="")) == (0, ("step", 0))
    assert _resolve(_paper(cache_dir="")) == (0, ("step", 0))
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_record_is_measured_over(monkeypatch, tmp_path, caplog):
    calls = _fake_timings(monkeypatch, {0: 3.0, 64: 2.0, 32: 3.9})
    (tmp_path / micro_batch.CHOICES_FILE).write_text("{not json")
    config = _paper(cache_dir=str(tmp_path / "xla"))
    assert _resolve(config)[0] == 64
    assert len(calls) == 1
    assert "is unreadable" in caplog.text and micro_batch.CHOICES_FILE in caplog.text
    assert _resolve(config)[0] == 64  # rewritten whole
    assert len(calls) == 1

    record = json.loads((tmp_path / micro_batch.CHOICES_FILE).read_text())
    (entry,) = record.values()
    entry["micro_batch_size"] = 48  # not a size this batch can take
    (tmp_path / micro_batch.CHOICES_FILE).write_text(json.dumps(record))
    assert _resolve(config)[0] == 64
    assert len(calls) == 2 and "holds micro_batch_size=48, not one of (0, 64, 32)" in caplog.text


def test_time_candidates_leaves_the_state_alone():
    """Each size's step runs on copies (the steps donate their input); every
    size is timed, and the steps built are returned for reuse."""
    state = {"w": jnp.arange(4.0), "step": jnp.array(0)}
    built = []

    def build_step(micro):
        built.append(micro)

        @jax.jit
        def step(s, batch, key):
            return {"w": s["w"] * batch + micro, "step": s["step"] + 1}, {"loss": s["w"].sum()}

        return step

    seconds, fns = micro_batch.time_candidates(build_step, (0, 8), state, jnp.float32(2.0), None)
    assert built == [0, 8] and set(fns) == {0, 8}
    assert set(seconds) == {0, 8} and all(s > 0 for s in seconds.values())
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    assert int(state["step"]) == 0


def test_a_run_measures_once_then_reads_the_choice(tiny_config, tmp_path, monkeypatch, caplog):
    """A real run whose batch leaves a choice (budgets shrunk to the digits
    crops): the first run times the candidates and records the fastest; a
    second run with the same model reads it and times nothing."""
    crop = tiny_config.model.input_size**2
    monkeypatch.setattr(micro_batch, "MIN_MICRO_PIXELS", 8 * crop)
    monkeypatch.setattr(micro_batch, "STEPS_PER_ROUND", 1)
    monkeypatch.setattr(machine_defaults, "CPU_MICRO_BATCH_PIXELS", 16 * crop)
    tiny_config.num_train_steps = 2
    tiny_config.compilation_cache_dir = str(tmp_path / "cache" / "xla")
    caplog.set_level("INFO")
    assert micro_batch.candidates(tiny_config) == (0, 8)

    first = loop.train_and_evaluate(tiny_config, tmp_path / "first")
    (entry,) = json.loads((tmp_path / "cache" / micro_batch.CHOICES_FILE).read_text()).values()
    assert entry["micro_batch_size"] in (0, 8) and set(entry["step_seconds"]) == {"0", "8"}
    assert "timing the train step at micro-batch sizes (0, 8)" in caplog.text
    recorded = config_json.load(tmp_path / "first")["micro_batch_sizes"]
    assert recorded == [{"from_step": 0, "micro_batch_size": entry["micro_batch_size"]}]

    def no_timing(*args):
        raise AssertionError("the recorded choice should have been read")

    monkeypatch.setattr(micro_batch, "time_candidates", no_timing)
    caplog.clear()
    second = loop.train_and_evaluate(tiny_config, tmp_path / "second")
    assert "as measured before on this machine" in caplog.text
    assert np.isfinite(first["eval_loss"]) and second["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)


def test_the_malloc_settings_make_another_measurement(monkeypatch):
    """The same model under alexnet_jax.platform.host_malloc's other settings is
    measured on its own (its step runs at another speed)."""
    config = _paper()
    for name in ("ALEXNET_JAX_MALLOC", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    plain = micro_batch._key_id(micro_batch.measurement_key(config))
    monkeypatch.setenv("ALEXNET_JAX_MALLOC", "reuse")
    reuse = micro_batch._key_id(micro_batch.measurement_key(config))
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    huge = micro_batch._key_id(micro_batch.measurement_key(config))
    assert len({plain, reuse, huge}) == 3
    config.model.use_lrn = False
    assert micro_batch._key_id(micro_batch.measurement_key(config)) != huge

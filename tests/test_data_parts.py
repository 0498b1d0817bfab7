"""Which data part each process reads under each layout, and preparation by
one process while the others wait (in-process: fake devices and a fake
key-value store stand in for other processes)."""

from typing import NamedTuple

import jax
import numpy as np
import pytest

from alexnet_jax.parallel import processes, sharding
from alexnet_jax.parallel.sharding import DataPart


class FakeDevice(NamedTuple):
    id: int
    process_index: int


class FakeMesh(NamedTuple):
    """What data_part reads of a Mesh: devices (data, model) and the axis sizes."""

    devices: tuple
    shape: tuple


def _mesh(processes: list[list[int]]) -> FakeMesh:
    """A (data, model) mesh whose device [i][j] belongs to process processes[i][j]."""
    ids = iter(range(100))
    devices = tuple(tuple(FakeDevice(next(ids), p) for p in row) for row in processes)
    return FakeMesh(devices, (("data", len(processes)), ("model", len(processes[0]))))


def _parts(processes: list[list[int]]) -> list[DataPart]:
    mesh = _mesh(processes)
    return [sharding.data_part(mesh, p) for p in sorted({p for row in processes for p in row})]


@pytest.mark.parametrize(
    "layout, processes, expected",
    [
        # One process, any mesh: it reads everything.
        ("1 process, (4, 2)", [[0, 0]] * 4, [DataPart(0, 1, True)]),
        # The paper's towers on two processes of one device: both read everything, in the same order.
        ("2 x 1 device, (1, 2)", [[0, 1]], [DataPart(0, 1, True), DataPart(0, 1, False)]),
        ("2 x 2 devices, (4, 1)", [[0], [0], [1], [1]], [DataPart(0, 2), DataPart(1, 2)]),
        ("2 x 2 devices, (2, 2)", [[0, 0], [1, 1]], [DataPart(0, 2), DataPart(1, 2)]),
        (
            "4 x 1 device, (2, 2)",
            [[0, 1], [2, 3]],
            [DataPart(0, 2, True), DataPart(0, 2, False), DataPart(1, 2, True), DataPart(1, 2, False)],
        ),
        ("2 x 2 devices, (1, 4)", [[0, 0, 1, 1]], [DataPart(0, 1, True), DataPart(0, 1, False)]),
        # Parts in row order, whatever the process numbers.
        ("2 x 1 device, (2, 1), reversed", [[1], [0]], [DataPart(1, 2), DataPart(0, 2)]),
    ],
)
def test_data_part_of_each_layout(layout, processes, expected):
    assert _parts(processes) == expected, layout


def test_overlapping_rows_are_refused():
    # 3 devices per process on pairs: process 0 holds rows 0 and 1, process 1 rows 1 and 2.
    with pytest.raises(ValueError, match=r"overlapping or unequal rows .* \{0: \[0, 1\], 1: \[1, 2\]\}"):
        sharding.data_part(_mesh([[0, 0], [0, 1], [1, 1]]), 0)
    with pytest.raises(ValueError, match="process 2 holds no device"):
        sharding.data_part(_mesh([[0, 1]]), 2)


def test_a_real_single_process_mesh_is_one_part():
    mesh = sharding.make_mesh((-1, 2))
    assert mesh.size == 8 and sharding.data_part(mesh) == DataPart(0, 1, True)


def test_global_batch_of_one_part_is_the_local_batch():
    mesh = sharding.make_mesh((4, 2))
    local = {"image": np.arange(8 * 3).reshape(8, 3)}
    batch = sharding.global_batch(local, mesh)["image"]
    assert batch.shape == (8, 3) and batch.sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(batch), local["image"])


class FakeStore:
    """The coordination service's key-value store, as two processes see it."""

    def __init__(self):
        self.values: dict[str, str] = {}

    def key_value_set(self, key: str, value: str) -> None:
        assert key not in self.values, f"{key} set twice"
        self.values[key] = value

    def blocking_key_value_get(self, key: str, timeout_ms: int) -> str:
        if key not in self.values:
            raise RuntimeError(f"DEADLINE_EXCEEDED: Barrier timed out. Key: {key}\nmore detail")
        return self.values[key]


@pytest.fixture
def store(monkeypatch):
    store = FakeStore()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(processes, "_client", lambda: store)
    monkeypatch.setattr(processes, "_calls", processes.collections.Counter())
    return store


def test_one_process_prepares_and_the_other_opens_after_its_word(store):
    prepared = []

    def prepare():
        prepared.append(1)
        return "written"

    assert processes.prepare_once("x", prepare, lambda: "opened", is_preparer=True) == "written"
    # The second call of the same name is a new key (a second preparation, e.g. the eval split's).
    processes.prepare_once("x", prepare, lambda: "opened", is_preparer=True)
    processes._calls.clear()  # the other process's view: it starts counting from zero
    assert processes.prepare_once("x", prepare, lambda: "opened", is_preparer=False) == "opened"
    assert prepared == [1, 1] and sorted(store.values) == ["alexnet_jax/prepared/x/1", "alexnet_jax/prepared/x/2"]


def test_a_failure_reaches_the_waiting_process_in_one_line(store):
    def fail():
        raise OSError("disk full\nsecond line")

    with pytest.raises(OSError, match="disk full"):
        processes.prepare_once("cifar10", fail, lambda: None, is_preparer=True)
    processes._calls.clear()
    with pytest.raises(ValueError, match=r"^another process failed to prepare cifar10: OSError: disk full$"):
        processes.prepare_once("cifar10", fail, lambda: None, is_preparer=False, error_type=ValueError)


def test_a_wait_in_vain_ends_with_one_line(store):
    with pytest.raises(ValueError) as error:
        processes.prepare_once("cifar10", list, list, is_preparer=False, error_type=ValueError, timeout_s=2)
    message = str(error.value)
    assert "\n" not in message and "prepare cifar10, in vain after at most 2 s (DEADLINE_EXCEEDED" in message


def test_process_0_returns_once_every_process_has_prepared_its_share(store, monkeypatch):
    prepared = []
    for process in (1, 2, 0):  # process 0 last: the others' words are there when it waits
        monkeypatch.setattr(jax, "process_index", lambda process=process: process)
        monkeypatch.setattr(jax, "process_count", lambda: 3)
        processes._calls.clear()
        assert processes.prepare_everywhere("parts", lambda p=process: prepared.append(p) or p) == process
    assert prepared == [1, 2, 0] and set(store.values.values()) == {"ok"}

    # A failure in process 2 reaches process 0 in one line; a missing word ends its wait.
    def fail():
        raise OSError("disk full\nsecond line")

    monkeypatch.setattr(jax, "process_index", lambda: 2)
    with pytest.raises(OSError):
        processes.prepare_everywhere("caches", fail)
    store.values["alexnet_jax/prepared_everywhere/caches/1/1"] = "ok"  # process 1's word
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    processes._calls.clear()
    with pytest.raises(ValueError, match=r"^process 2 failed to prepare caches: OSError: disk full$"):
        processes.prepare_everywhere("caches", list, error_type=ValueError)
    with pytest.raises(ValueError, match=r"^waited for process 1 to prepare sums, in vain after at most 2 s .*log$"):
        processes.prepare_everywhere("sums", list, error_type=ValueError, timeout_s=2)

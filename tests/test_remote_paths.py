"""Workdirs and data directories through the path abstraction (etils.epath).

No bucket is reachable here, so a remote file system is stood in for by
TensorFlow's in-memory one (`ram://`, through tf.io.gfile, the backend epath
uses for gs:// when TensorFlow is installed), registered with epath below.
Orbax (tensorstore) cannot write checkpoints there: a real training run is
tested with a path-like workdir instead, and gs:// checkpoint directories
only for what orbax is given.
"""

import os
import uuid

import pytest
from etils import epath
from etils.epath import backend, gpath

from alexnet_jax import evaluate
from alexnet_jax.data import datasets
from alexnet_jax.files import paths
from alexnet_jax.runs import config_fields, config_json, reading, restart, run_notes, sweep_status
from alexnet_jax.runs.validation import validate_config
from alexnet_jax.train import checkpointing, init_from, loop
from launch import report, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@epath.register_path_cls("ram://")
class RamPath(gpath.PosixGPath):
    """`ram://...` as epath treats `gs://...`: a URI read and written through
    tf.io.gfile (epath itself knows only gs, s3, az and hf)."""

    def __new__(cls, *parts):
        joined = "/".join(os.fspath(part) for part in parts)
        if joined.startswith("ram://"):  # stored as /ram/..., as gpath stores gs:// as /gs/...
            return super().__new__(cls, "/ram/" + joined.removeprefix("ram://"))
        return super().__new__(cls, *parts)

    @property
    def _uri_scheme(self):
        return "ram" if self.parts[:2] == ("/", "ram") else None

    @property
    def _backend(self):
        return backend.tf_backend


@pytest.fixture
def ram_dir():
    """A fresh in-memory directory URI, removed afterwards."""
    root = f"ram://alexnet-{uuid.uuid4().hex[:8]}"
    yield root
    epath.Path(root).rmtree(missing_ok=True)
    assert not os.path.exists("ram:"), "a URI was treated as a local path"


def test_the_in_memory_file_system_stands_in_for_a_bucket(ram_dir):
    path = epath.Path(ram_dir) / "a" / "b.txt"
    assert isinstance(path, RamPath) and str(path) == f"{ram_dir}/a/b.txt"
    assert paths.is_remote(path) and paths.as_path(path) == path  # a URI stays as it is
    path.parent.mkdir(parents=True)
    path.write_text("x")
    import tensorflow as tf

    assert tf.io.gfile.listdir(f"{ram_dir}/a") == ["b.txt"]  # really there, not on the local disk


def test_config_json_on_a_remote_workdir(tiny_config, ram_dir):
    workdir = f"{ram_dir}/runs/digits"
    config_json.check_writable(workdir)  # creates the workdir, leaves no probe
    assert list(epath.Path(workdir).iterdir()) == []
    restart.check_restart(tiny_config, workdir, 0.0)  # the first start writes config.json
    assert [p.name for p in epath.Path(workdir).iterdir()] == ["config.json"]  # no temporary file left
    record = config_json.load(workdir)
    assert config_fields.flat_fields(record["config"]) == config_fields.flat_fields(tiny_config)

    longer = tiny_config.copy_and_resolve_references()
    longer.num_train_steps = 9  # a restart may change it: taken and recorded
    restart.check_restart(longer, workdir, 0.1)
    assert config_json.load(workdir)["restarts"][0]["changed"] == {"num_train_steps": {"from": 6, "to": 9}}
    other = longer.copy_and_resolve_references()
    other.seed = 1
    with pytest.raises(ValueError) as refused:
        restart.check_restart(other, workdir, 0.1)
    assert f"({workdir}/config.json); use a new --workdir" in str(refused.value) and "\n" not in str(refused.value)

    run_notes.record_exit(workdir, "finished", 9)
    assert config_json.load(workdir)["last_exit"]["status"] == "finished"
    read = reading.config_for_reading(workdir, tiny_config, {"eval_views": "ten_view"}, config_file_given=False)
    assert read.num_train_steps == 9 and read.eval_views == "ten_view"
    assert checkpointing.latest_step(workdir) == 0  # no checkpoints yet, nothing created
    assert not (epath.Path(workdir) / "checkpoints").exists()


def test_a_damaged_remote_config_json_is_named_in_one_line(ram_dir):
    (epath.Path(ram_dir) / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (epath.Path(ram_dir) / "config.json").write_text("{half")
    with pytest.raises(ValueError, match=rf"^{ram_dir}/config.json cannot be read \(.*\): restore it"):
        config_json.load(ram_dir)


def test_checkpoint_steps_and_init_from_on_a_remote_workdir(ram_dir):
    checkpoints = epath.Path(ram_dir) / "checkpoints"
    for name in ("3", "6", "9.orbax-checkpoint-tmp-1"):  # an unfinished save carries a suffix
        (checkpoints / name / checkpointing.STATE).mkdir(parents=True)
    assert checkpointing.latest_step(ram_dir) == 6
    assert init_from.resolve(ram_dir) == f"{ram_dir}/checkpoints/6"
    assert init_from.resolve(f"{ram_dir}/checkpoints/3") == f"{ram_dir}/checkpoints/3"
    with pytest.raises(ValueError, match=rf"config.init_from='{ram_dir}/nothing' is neither"):
        init_from.resolve(f"{ram_dir}/nothing")


def test_orbax_is_given_a_gs_directory_unchanged(monkeypatch, tmp_path):
    given = []

    class Recorder:  # instead of orbax's manager: no network, no files
        def __init__(self, directory, options=None):
            given.append(directory)

    monkeypatch.setattr(checkpointing.ocp, "CheckpointManager", Recorder)
    checkpointing.make_manager("gs://bucket/runs", max_to_keep=2)
    checkpointing.make_manager(epath.Path("gs://bucket/runs"), max_to_keep=2)
    assert [os.fspath(d) for d in given] == ["gs://bucket/runs/checkpoints"] * 2  # not .../gs:/bucket/...
    monkeypatch.chdir(tmp_path)
    checkpointing.make_manager("run", max_to_keep=2)  # a local one is made absolute, as orbax needs
    assert os.fspath(given[-1]) == str(tmp_path / "run" / "checkpoints")


def test_a_remote_data_dir_keeps_its_uri(tiny_config, ram_dir):
    config = tiny_config.copy_and_resolve_references()
    config.data_dir = "gs://bucket/tensorflow_datasets"
    assert datasets.manual_dir(config) == "gs://bucket/tensorflow_datasets/downloads/manual"
    config.dataset, config.data_dir, config.model.num_classes = "imagenet2012", f"{ram_dir}/tfds", 1000
    manual = epath.Path(datasets.manual_dir(config))
    manual.mkdir(parents=True)
    (manual / "ILSVRC2012_img_train.tar").write_text("")  # found through epath; the other is named
    with pytest.raises(datasets.DatasetUnavailableError, match=rf"ILSVRC2012_img_val.tar not found in {manual}: "):
        datasets.get_builder(config)


def test_the_preprocessed_cache_and_its_sums_on_a_remote_data_dir(ram_dir):
    """data_cache writes its shards, info and image sums under a URI (the
    temporary folder renamed into place), reads them back through tf.data,
    and the training-set statistics file round-trips there too."""
    import numpy as np
    import tensorflow as tf

    from alexnet_jax.data import data_cache, data_stats

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), np.uint8)
    labels = np.arange(20) % 10
    path = data_cache.cache_dir(ram_dir, "train", 8, "png", 0, 1)
    assert path.startswith(f"{ram_dir}/alexnet_cache/")
    decoded = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    data_cache.write(path, decoded, len(images), "png", {"split": "train"})
    assert [p.name for p in epath.Path(ram_dir, "alexnet_cache").iterdir()] == [path.rsplit("/", 1)[1]]  # no tmp left
    info = data_cache.read_info(path)
    assert info["num_examples"] == 20
    read = list(data_cache.records(data_cache.shard_files(path, info), None).map(data_cache.decode("png", 8)))
    np.testing.assert_array_equal(np.stack([r["image"] for r in read]), images)
    stats = data_stats.finish(data_cache.read_sums(path))
    np.testing.assert_allclose(stats["mean_image"], images.mean(0), rtol=1e-6)
    # The statistics file as data_stats writes it: a temporary file replaced into place.
    tmp, final = epath.Path(ram_dir, "stats.npz.tmp-host-1.npz"), epath.Path(ram_dir, "stats.npz")
    paths.write_npz(tmp, **stats)
    tmp.replace(final)
    assert not tmp.exists()
    np.testing.assert_array_equal(paths.read_npz(final)["mean_image"], stats["mean_image"])


def test_a_remote_image_folder_is_refused_in_one_line(tiny_config):
    config = tiny_config.copy_and_resolve_references()
    config.dataset, config.image_folder = "image_folder", "gs://bucket/pets"
    with pytest.raises(ValueError, match=r"^config.image_folder='gs://bucket/pets' must be a local folder"):
        validate_config(config)


def test_sweeps_and_reports_refuse_a_uri_before_writing(tmp_path, capsys):
    argv = ["--config", os.path.join(REPO, "configs", "digits.py"), "--sweep", "configs/sweeps/seeds.py"]
    with pytest.raises(SystemExit, match=r"^error: --workdir gs://bucket/seeds is a URI.*: use a local directory$"):
        sweep.main([*argv, "--workdir", "gs://bucket/seeds"])
    with pytest.raises(SystemExit, match=r"^error: --out gs://bucket/report is a URI"):
        report.main(["--workdir", str(tmp_path), "--out", "gs://bucket/report"])
    with pytest.raises(ValueError, match=r"^--sweep gs://bucket/seeds is a URI"):
        sweep_status.finished_workdirs("gs://bucket/seeds")
    assert not os.path.exists("gs:") and list(tmp_path.iterdir()) == []


def test_a_run_on_a_path_like_workdir_checkpoints_resumes_and_is_evaluated(tiny_config, tmp_path, monkeypatch):
    """A workdir given as an epath.Path (not a str), relative: every file goes
    through the same abstraction, and orbax gets it absolute. The config's
    data_dir field is a string (ml_collections checks types): it is given the
    fixture's directory as a path-like's string."""
    monkeypatch.chdir(tmp_path)
    workdir = epath.Path("run")
    config = tiny_config.copy_and_resolve_references()
    config.data_dir = os.fspath(epath.Path(tiny_config.data_dir))
    config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 2, 2, 2
    loop.train_and_evaluate(config, workdir)
    assert checkpointing.latest_step(workdir) == 2
    config.num_train_steps = 3  # a restart may extend the run: resumes at 2
    summary = loop.train_and_evaluate(config, workdir)
    assert checkpointing.latest_step(tmp_path / "run") == 3 and summary["eval_num_examples"] == 360
    assert config_json.load(workdir)["restarts"][0]["changed"]["num_train_steps"] == {"from": 2, "to": 3}
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "run"))

    read = reading.config_for_reading(workdir, tiny_config, {}, config_file_given=False)
    evaluated, step = evaluate.evaluate_checkpoint(read, workdir)
    assert step == 3 and evaluated["eval_num_examples"] == 360
    assert evaluated["eval_top1_error"] == pytest.approx(summary["eval_top1_error"], abs=1e-6)


def test_a_lock_file_on_a_remote_workdir(ram_dir, monkeypatch):
    """No create-if-absent through epath: written when absent, read back (best effort)."""
    from alexnet_jax.files import folder_lock, lock_file

    monkeypatch.setattr(lock_file, "_REMOTE_SETTLE_S", 0.01)
    path = epath.Path(ram_dir) / "run" / folder_lock.RUN_LOCK
    with folder_lock.FolderLock(path, "--workdir run", heartbeat_s=0.02):
        with pytest.raises(folder_lock.FolderInUseError, match=f"lock file {path}"):
            folder_lock.FolderLock(path, "--workdir run").acquire()
    assert not path.exists()


@pytest.mark.parametrize("where", ["config", "environment"])
def test_a_raw_cache_on_a_remote_data_dir_is_refused_in_one_line(tiny_config, monkeypatch, where):
    """cache_format='raw' reads with os.pread: a gs:// data_dir, given or tfds's
    default, is refused by validate_config, before any entry point writes."""
    config = tiny_config.copy_and_resolve_references()
    config.cache_format = "raw"
    if where == "config":
        config.data_dir = "gs://bucket/tensorflow_datasets"
    else:
        config.data_dir = ""
        monkeypatch.setenv("TFDS_DATA_DIR", "gs://bucket/tensorflow_datasets")
    with pytest.raises(
        ValueError, match=r"^cache_format='raw' reads its records with os.pread.*gs://bucket/tensorflow_datasets"
    ):
        validate_config(config)
    config.dataset = "synthetic"  # nothing is cached
    validate_config(config)

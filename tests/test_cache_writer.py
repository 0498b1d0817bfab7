"""The cache writer (alexnet_jax.data.data_cache.write): records serialized by
TensorFlow ops equal Python protobuf's, batches written in the source's order
across shard boundaries, raw records written a batch at a time."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import errors
from alexnet_jax.data import data_cache, raw_records


def _reference(stored: bytes, label: int) -> tf.train.Example:
    """The example as Python's protobuf builds it: the independent reference."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[stored])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


# Lengths around the varint steps (1, 2 and 3 bytes) of the nested messages' sizes.
@pytest.mark.parametrize("length", [0, 1, 116, 117, 127, 128, 16_370, 16_384, 300_000])
@pytest.mark.parametrize("label", [0, 999, 2**31 + 5])
def test_example_bytes_are_the_protobuf_example(length, label):
    stored = np.random.default_rng(length).integers(0, 256, length, np.uint8).tobytes()
    made = data_cache.example_bytes(tf.constant(stored), tf.constant(label, tf.int64)).numpy()
    assert tf.train.Example.FromString(made) == _reference(stored, label)
    parsed = tf.io.parse_single_example(made, data_cache._FEATURES)
    assert parsed["image"].numpy() == stored and parsed["label"].numpy() == label


def _images(count: int, size: int = 8) -> np.ndarray:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (count, size, size, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(count) % 256  # tells the examples apart
    return images


def test_jpeg_cache_holds_the_source_in_order_across_shards(tmp_path):
    """More than one shard and a last batch that is not full: every example once,
    in the source's order, its image the encoder's output, its label its own."""
    count = data_cache.SHARD_SIZE + 100
    images, labels = _images(count), np.arange(count) * 3 % 1000
    decoded = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    path = str(tmp_path / "c")
    data_cache.write(path, decoded, count, "jpeg", {"split": "train"})
    info = data_cache.read_info(path)
    assert info["num_examples"] == count and info["num_shards"] == 2
    files = data_cache.shard_files(path, info)
    assert [sum(1 for _ in tf.data.TFRecordDataset(f)) for f in files] == [data_cache.SHARD_SIZE, 100]
    read = list(data_cache.records(files, None).map(data_cache.decode("jpeg", 8)).as_numpy_iterator())
    np.testing.assert_array_equal([ex["label"] for ex in read], labels)
    encode = data_cache._encode("jpeg")
    expected = [tf.io.decode_jpeg(encode(tf.constant(image))).numpy() for image in images[:: count // 7]]
    np.testing.assert_array_equal([ex["image"] for ex in read[:: count // 7]], expected)
    stored = [tf.io.parse_single_example(r, data_cache._FEATURES)["image"] for r in tf.data.TFRecordDataset(files)]
    assert info["image_bytes"] == sum(len(s.numpy()) for s in stored)  # the JPEGs, not the records' framing
    assert data_cache.read_sums(path).count == count


def test_raw_cache_written_by_batches_is_the_images(tmp_path):
    images, labels = _images(150), np.arange(150) % 10
    decoded = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    path = str(tmp_path / "r")
    data_cache.write(path, decoded, 150, "raw", {})
    records = raw_records.RawRecords(path)
    np.testing.assert_array_equal(records.memmap(), images)
    np.testing.assert_array_equal(records.labels, labels)
    assert data_cache.read_info(path)["image_bytes"] == images.nbytes


def test_record_writer_extend_checks_the_batch(tmp_path):
    with raw_records.RecordWriter(tmp_path / "w") as writer:
        with pytest.raises(errors.UsageError, match="as many labels"):
            writer.extend(_images(3), [1, 2])
        with pytest.raises(errors.UsageError, match="uint8 HxWx3"):
            writer.extend(_images(3).astype(np.int16), [1, 2, 3])
        writer.extend(_images(3), [1, 2, 3])
        writer.append(_images(1)[0], 4)
        assert writer.commit() == 4
    records = raw_records.RawRecords(tmp_path / "w")
    np.testing.assert_array_equal(records.memmap(), np.concatenate([_images(3), _images(1)]))
    np.testing.assert_array_equal(records.labels, [1, 2, 3, 4])

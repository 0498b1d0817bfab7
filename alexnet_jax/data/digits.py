"""The embedded real dataset: scikit-learn's handwritten digits as a tfds builder.

1,797 real 8x8 greyscale scans (UCI "Optical Recognition of Handwritten
Digits", test part), 10 classes, shipped inside scikit-learn: nothing to
download. Exposed as the tfds dataset `sklearn_digits` so it flows through
exactly the same `tfds.builder(...).as_dataset(...)` path as imagenet2012.

Images are stored as 8x8x3 uint8 (grey replicated to RGB, 0..16 scaled to
0..255) so the input pipeline treats them like any RGB dataset. The split is
fixed and stratified: 360 test images (36 per class), 1,437 train.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST = 360
_SPLIT_SEED = 0


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified train/test indices: the first 36 of each class after a
    seeded shuffle go to test."""
    order = np.random.RandomState(_SPLIT_SEED).permutation(len(labels))
    per_class = NUM_TEST // 10
    test = np.concatenate([order[labels[order] == c][:per_class] for c in range(10)])
    train = np.setdiff1d(np.arange(len(labels)), test)
    return np.sort(train), np.sort(test)


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits, as RGB uint8 images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Fixed stratified split: 1,437 train / 360 test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Everything ships inside scikit-learn.
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        images = np.repeat(images[..., None], 3, axis=-1)
        labels = digits.target.astype(np.int64)
        train, test = split_indices(labels)
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        for index in indices:
            yield int(index), {"image": images[index], "label": int(labels[index])}

"""ImageNet-sized JPEG photos as a tfds builder, for bench/input_pipeline.py
(a module of its own: tfds needs the builder's module importable by name)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

PHOTO_SHAPE = (375, 500, 3)  # a typical ImageNet photo (height, width)


class BenchPhotos(tfds.core.GeneratorBasedBuilder):
    """ImageNet-sized JPEG photos for the benchmark (random crops, flips and
    colour scalings of scikit-learn's china.jpg and flower.jpg)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = []
    num_images = 256

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=1000),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        from sklearn.datasets import load_sample_images

        photos = load_sample_images().images
        rng = np.random.default_rng(0)
        height, width, _ = PHOTO_SHAPE
        for index in range(self.num_images):
            photo = photos[index % len(photos)]
            top = rng.integers(0, photo.shape[0] - height + 1)
            left = rng.integers(0, photo.shape[1] - width + 1)
            image = photo[top : top + height, left : left + width].astype(np.float32)
            image = image * rng.uniform(0.7, 1.3, 3)
            if rng.random() < 0.5:
                image = image[:, ::-1]
            yield index, {"image": np.clip(image, 0, 255).astype(np.uint8), "label": int(rng.integers(1000))}

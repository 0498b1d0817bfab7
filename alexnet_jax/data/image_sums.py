"""Exact float64 sums over uint8 images, from which alexnet_jax.data.data_stats
finishes the training-set mean image and RGB covariance: accumulated while the
preprocessed cache (alexnet_jax.data.data_cache) is written, saved with it."""

from __future__ import annotations

import dataclasses

import numpy as np

from alexnet_jax.files import paths


@dataclasses.dataclass
class ImageSums:
    """Float64 sums over uint8 (H, W, 3) images: the per-pixel sum image, the
    3x3 sum of pixel outer products and the image count, from which the mean
    image, per-channel mean and RGB covariance follow (data_stats.finish).

    Every term is an integer and every partial sum stays below 2**53 (up to
    about 2 million 256x256 images), so the float64 sums are exact: the same
    whatever the batching, order or split into parts (`merge`).
    """

    image_sum: np.ndarray | None = None  # (H, W, 3); None before the first image
    outer_sum: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((3, 3)))
    count: int = 0

    def add(self, images_uint8) -> None:
        """Adds a (batch, H, W, 3) array of images (one at a time: small temporaries)."""
        for image in np.asarray(images_uint8):
            image = image.astype(np.float64)
            if self.image_sum is None:
                self.image_sum = np.zeros_like(image)
            self.image_sum += image
            pixels = image.reshape(-1, 3)
            self.outer_sum += pixels.T @ pixels
            self.count += 1

    def merge(self, other: ImageSums) -> None:
        if other.image_sum is None:
            return
        self.image_sum = other.image_sum.copy() if self.image_sum is None else self.image_sum + other.image_sum
        self.outer_sum = self.outer_sum + other.outer_sum
        self.count += other.count

    @property
    def pixel_sum(self) -> np.ndarray:
        """(3,): the sum of every pixel of every image."""
        return self.image_sum.reshape(-1, 3).sum(0)

    def save(self, path: str) -> None:
        paths.write_npz(path, image_sum=self.image_sum, outer_sum=self.outer_sum, count=np.int64(self.count))

    @classmethod
    def load(cls, path: str) -> ImageSums:
        saved = paths.read_npz(path)
        return cls(saved["image_sum"], saved["outer_sum"], int(saved["count"]))


def sums_of(images_uint8) -> ImageSums:
    sums = ImageSums()
    sums.add(images_uint8)
    return sums

"""ImageNet-sized JPEG photos as a tfds builder, for bench/input_pipeline.py
(a module of its own: tfds needs the builder's module importable by name),
and as ImageNet-shaped ILSVRC2012 tars, for bench/imagenet_rehearsal.py."""

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


# ImageNet-shaped tars for bench/imagenet_rehearsal.py: what tfds's imagenet2012
# builder reads from its manual_dir, with photo-like JPEGs of ImageNet's usual sizes.
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
# (height, width) of ImageNet's most common photo shapes, and how often each is drawn.
TAR_SHAPES = ((375, 500), (500, 375), (333, 500), (500, 500))
TAR_SHAPE_WEIGHTS = (0.6, 0.15, 0.15, 0.1)
# Quality 94 with full-resolution chroma puts these crops at about 100 kB,
# ImageNet's mean JPEG size (scikit-learn's photos are smoother than camera
# photos: at ImageNet's usual 4:2:0 they come out about half that).
TAR_JPEG_QUALITY = 94
# Training names n<synset>_<number>.JPEG from this number on: above every name
# in the builder's CMYK_IMAGES and PNG_IMAGES, which it would convert.
FIRST_TRAIN_NUMBER = 100_000


def imagenet_synsets() -> list[str]:
    """The 1,000 synsets in tfds's label order (its labels.txt)."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    return imagenet_common.label_names_file().read_text().split()


class PhotoJpegs:
    """Distinct photo-like JPEGs: random crops of scikit-learn's two sample
    photographs (427x640, also turned and enlarged so every shape fits),
    flipped and colour-scaled at random."""

    def __init__(self, seed: int) -> None:
        from PIL import Image
        from sklearn.datasets import load_sample_images

        self._rng = np.random.default_rng(seed)
        self._sources = []
        for photo in load_sample_images().images:
            enlarged = Image.fromarray(photo).resize((768, 512), Image.BICUBIC)
            self._sources += [photo, np.ascontiguousarray(photo.transpose(1, 0, 2)), np.asarray(enlarged)]

    def next(self) -> bytes:
        import io

        from PIL import Image

        rng = self._rng
        height, width = TAR_SHAPES[rng.choice(len(TAR_SHAPES), p=TAR_SHAPE_WEIGHTS)]
        fitting = [s for s in self._sources if s.shape[0] >= height and s.shape[1] >= width]
        source = fitting[rng.integers(len(fitting))]
        top = rng.integers(0, source.shape[0] - height + 1)
        left = rng.integers(0, source.shape[1] - width + 1)
        image = source[top : top + height, left : left + width].astype(np.float32) * rng.uniform(0.7, 1.3, 3)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            buffer, format="JPEG", quality=TAR_JPEG_QUALITY, subsampling=0
        )
        return buffer.getvalue()


def _add_to_tar(tar, name: str, data: bytes) -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_imagenet_tars(
    folder: str, per_class: int, num_val: int, seed: int = 0, synsets: list[str] | None = None
) -> int:
    """Writes TRAIN_TAR (one <synset>.tar of <synset>_<n>.JPEG per synset,
    `per_class` each) and VAL_TAR (ILSVRC2012_val_%08d.JPEG, 1..num_val) into
    `folder`, as image-net.org's; returns the bytes of JPEG written. tfds
    labels the validation images by their sorted names from its own
    50,000-line label file, so num_val <= 50,000 and no label file is written."""
    import io
    import os
    import tarfile

    if not 0 < num_val <= 50_000:
        raise ValueError(f"num_val={num_val}: ILSVRC2012 has validation labels for 1..50000")
    photos, jpeg_bytes = PhotoJpegs(seed), 0
    with tarfile.open(os.path.join(folder, TRAIN_TAR), "w") as train_tar:
        for synset in synsets or imagenet_synsets():
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as synset_tar:
                for k in range(per_class):
                    data = photos.next()
                    jpeg_bytes += len(data)
                    _add_to_tar(synset_tar, f"{synset}_{FIRST_TRAIN_NUMBER + k}.JPEG", data)
            _add_to_tar(train_tar, f"{synset}.tar", inner.getvalue())
    with tarfile.open(os.path.join(folder, VAL_TAR), "w") as val_tar:
        for i in range(1, num_val + 1):
            data = photos.next()
            jpeg_bytes += len(data)
            _add_to_tar(val_tar, f"ILSVRC2012_val_{i:08d}.JPEG", data)
    return jpeg_bytes

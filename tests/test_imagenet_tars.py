"""bench/photos_dataset.py's ImageNet-shaped tars: the layout tfds's
imagenet2012 builder reads (one tar per synset inside the train tar, val
images named for tfds's label file), photo-sized JPEGs."""

import io
import tarfile

from PIL import Image

from bench import photos_dataset


def test_tars_are_laid_out_as_image_net_org_ones(tmp_path):
    synsets = ["n01440764", "n01443537"]
    jpeg_bytes = photos_dataset.write_imagenet_tars(str(tmp_path), per_class=2, num_val=3, synsets=synsets)
    with tarfile.open(tmp_path / photos_dataset.TRAIN_TAR) as train_tar:
        assert train_tar.getnames() == [f"{s}.tar" for s in synsets]
        inner = tarfile.open(fileobj=io.BytesIO(train_tar.extractfile("n01443537.tar").read()))
        assert inner.getnames() == ["n01443537_100000.JPEG", "n01443537_100001.JPEG"]
        photo = Image.open(io.BytesIO(inner.extractfile("n01443537_100000.JPEG").read()))
        assert photo.format == "JPEG" and photo.mode == "RGB"
        assert (photo.height, photo.width) in photos_dataset.TAR_SHAPES
    with tarfile.open(tmp_path / photos_dataset.VAL_TAR) as val_tar:
        assert val_tar.getnames() == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    assert 40e3 * 7 < jpeg_bytes < 200e3 * 7  # about 100 kB a photo, as ImageNet's

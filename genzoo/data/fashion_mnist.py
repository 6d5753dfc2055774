"""TFDS builder for Fashion-MNIST from the standard idx files (uint8 images, class ids)."""

from __future__ import annotations

import gzip
import hashlib
import zlib

import numpy as np
import tensorflow_datasets as tfds

from genzoo.data import sources
from genzoo.errors import UserError

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {  # file name: sha256 (from ../shared/data/README.md)
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",  # noqa: E501
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",  # noqa: E501
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def source_paths() -> dict:
    return {
        name: sources.resolve("fashion-mnist", name, URL + name, sha, system_dirs=(DEBIAN_DIR,))
        for name, sha in FILES.items()
    }


def sources_digest(paths: dict) -> str:
    return hashlib.sha256(
        "".join(sources.sha256_of(p) for p in paths.values()).encode()
    ).hexdigest()


def read_idx(path) -> np.ndarray:
    """An idx file (the MNIST format): big-endian dims after a magic number, then uint8 data.
    A truncated or foreign file is bad input naming it, not a gzip or numpy traceback."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        if raw[:3] != b"\x00\x00\x08":  # two zero bytes, then 8: unsigned bytes
            raise ValueError("no idx header of unsigned bytes")
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (EOFError, gzip.BadGzipFile, zlib.error, ValueError) as e:
        raise UserError(f"{path} is not a whole gzipped idx file ({e}); replace it with the "
                        "published one") from None  # fmt: skip


class FashionMnist(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST: 60,000 train and 10,000 test 28x28 grey images in 10 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return sources.tensor_dataset_info(
            self,
            __doc__,
            "https://github.com/zalandoresearch/fashion-mnist",
            {"image": ((28, 28, 1), np.uint8), "label": ((), np.int32)},
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # sources.resolve owns downloading and the offline rules
        paths = source_paths()
        self.info.metadata["class_names"] = list(CLASS_NAMES)
        self.info.metadata["source_sha256"] = sources_digest(paths)
        splits = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"])
            labels = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"])
            if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
                raise UserError(f"{prefix}-*.gz: {images.shape} images do not match {labels.shape} "
                                "labels; replace them with the published files")  # fmt: skip
            splits[split] = self._generate_examples(images, labels)
        return splits

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image[:, :, None], "label": np.int32(label)}

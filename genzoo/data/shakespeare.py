"""TFDS builder for tiny Shakespeare at the character level (nanoGPT's `shakespeare_char`).

The text is split 90/10 into train/validation at the character level, as nanoGPT
does; the vocabulary is every character of the whole file, sorted. Records are
chunks of character ids (`uint8`), stored as array_record and read without TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from genzoo.data import sources

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CHUNK = 4096  # characters per record; readers concatenate chunks in `index` order


def source_path():
    return sources.resolve(
        "tinyshakespeare", "input.txt", URL, SHA256, packaged="tinyshakespeare_input.txt.xz"
    )


class TinyShakespeareChar(tfds.core.GeneratorBasedBuilder):
    """Character ids of tiny Shakespeare; vocabulary and source checksum in metadata."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return sources.tensor_dataset_info(
            self,
            __doc__,
            "https://github.com/karpathy/char-rnn",
            {"ids": ((None,), np.uint8), "index": ((), np.int32)},
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # sources.resolve owns downloading, so offline rules are in one place
        path = source_path()
        text = sources.read_utf8(path)
        vocab = "".join(sorted(set(text)))
        self.info.metadata["vocab"] = vocab
        self.info.metadata["source_sha256"] = sources.sha256_of(path)
        lookup = {ch: i for i, ch in enumerate(vocab)}
        ids = np.array([lookup[ch] for ch in text], dtype=np.uint8)
        cut = int(0.9 * len(ids))
        return {
            "train": self._generate_examples(ids[:cut]),
            "validation": self._generate_examples(ids[cut:]),
        }

    def _generate_examples(self, ids):
        for index, start in enumerate(range(0, len(ids), CHUNK)):
            yield index, {"ids": ids[start : start + CHUNK], "index": np.int32(index)}

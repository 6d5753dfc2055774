"""TFDS builder for the verse-aligned Spanish-English Bible corpus (Reina-Valera 1909 / WEB).

Each record is one verse: `es` and `en` as UTF-8 bytes, in corpus order (`index`). The
corpus is built from Debian packages (see ../shared/data/README.md), so there is no
canonical URL: it is read from `$GENZOO_DATA_DIR/bible-es-en/`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from genzoo.data import sources
from genzoo.errors import UserError

FILES = {
    "train.tsv": "ef8524b6d516f8a9b2d8b32625cccc50c163efcb0454f4e269940681a57031cb",
    "validation.tsv": "6ffb0a862896ece9b2013f478f975ab8d60a4173e1e911d563382642ad40326d",
}


def source_paths() -> dict:
    """train.tsv and validation.tsv, and test.tsv where the user provides one beside them."""
    paths = {name: sources.resolve("bible-es-en", name, "", sha) for name, sha in FILES.items()}
    test = paths["validation.tsv"].parent / "test.tsv"
    if test.is_file():
        paths["test.tsv"] = test
    return paths


def sources_digest(paths: dict) -> str:
    return "".join(sources.sha256_of(paths[name]) for name in sorted(paths))


class BibleEsEn(tfds.core.GeneratorBasedBuilder):
    """Spanish-English verse pairs: 28,465 train and 1,234 validation."""

    VERSION = tfds.core.Version("1.1.0")  # 1.1: the verse reference; an optional test split

    def _info(self) -> tfds.core.DatasetInfo:
        return sources.tensor_dataset_info(
            self,
            __doc__,
            "https://ebible.org/",
            {
                "es": ((None,), np.uint8),
                "en": ((None,), np.uint8),
                "ref": ((None,), np.uint8),
                "index": ((), np.int32),
            },  # fmt: skip
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        paths = source_paths()
        self.info.metadata["source_sha256"] = sources_digest(paths)
        splits = [name.removesuffix(".tsv") for name in sorted(paths)]
        return {s: self._generate_examples(paths[f"{s}.tsv"]) for s in splits}

    def _generate_examples(self, path):
        # A test.tsv is the user's own file (no checksum): a bad line is a one-line error.
        text = sources.read_utf8(path)
        # Lines end at "\n" only (str.splitlines would also split at U+2028 or U+0085 inside
        # a verse).
        for index, line in enumerate(text.removesuffix("\n").split("\n")):
            fields = line.split("\t")
            if len(fields) != 3:
                raise UserError(f"{path}, line {index + 1}: expected reference, Spanish and "
                                f"English separated by tabs, got {len(fields)} fields")  # fmt: skip
            ref, es, en = fields
            as_bytes = lambda s: np.frombuffer(s.encode("utf-8"), np.uint8)
            yield index, {"es": as_bytes(es), "en": as_bytes(en), "ref": as_bytes(ref),
                          "index": np.int32(index)}  # fmt: skip

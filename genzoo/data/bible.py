"""TFDS builder for the verse-aligned Spanish-English Bible corpus (Reina-Valera 1909 / WEB).

Each record is one verse: `es` and `en` as UTF-8 bytes, in corpus order (`index`). The
corpus is built from Debian packages (see ../shared/data/README.md), so there is no
canonical URL: it is read from `$GENZOO_DATA_DIR/bible-es-en/`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from genzoo.data import sources

FILES = {
    "train.tsv": "ef8524b6d516f8a9b2d8b32625cccc50c163efcb0454f4e269940681a57031cb",
    "validation.tsv": "6ffb0a862896ece9b2013f478f975ab8d60a4173e1e911d563382642ad40326d",
}


def source_paths() -> dict:
    return {name: sources.resolve("bible-es-en", name, "", sha) for name, sha in FILES.items()}


def sources_digest(paths: dict) -> str:
    return sources.sha256_of(paths["train.tsv"]) + sources.sha256_of(paths["validation.tsv"])


class BibleEsEn(tfds.core.GeneratorBasedBuilder):
    """Spanish-English verse pairs: 28,465 train and 1,234 validation."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return sources.tensor_dataset_info(
            self,
            __doc__,
            "https://ebible.org/",
            {"es": ((None,), np.uint8), "en": ((None,), np.uint8), "index": ((), np.int32)},
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        paths = source_paths()
        self.info.metadata["source_sha256"] = sources_digest(paths)
        return {s: self._generate_examples(paths[f"{s}.tsv"]) for s in ("train", "validation")}

    def _generate_examples(self, path):
        with open(path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                _, es, en = line.rstrip("\n").split("\t")
                as_bytes = lambda s: np.frombuffer(s.encode("utf-8"), np.uint8)
                yield index, {"es": as_bytes(es), "en": as_bytes(en), "index": np.int32(index)}

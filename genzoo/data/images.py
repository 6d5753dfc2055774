"""Image data sets held in memory: seeded resumable training batches and padded eval batches.

Batches are `{"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B], "mask": float32 [B],
"index": int32 [B]}`; `index` is the example's position in its split, so families can
spend expensive figures (an importance-weighted bound) on a fixed subset.
"""

from __future__ import annotations

import grain
import numpy as np

from genzoo.data.batches import id_batches
from genzoo.data.tokenizers import CLASSES, names_file
from genzoo.errors import UserError


class _Gather:
    """Maps a batch of example ids to a batch dict (a grain map)."""

    def __init__(self, images_NxHxWxC: np.ndarray, labels_N: np.ndarray):
        self.images, self.labels = images_NxHxWxC, labels_N

    def __call__(self, ids_B: np.ndarray) -> dict:
        return {
            "image": self.images[ids_B].astype(np.float32) / 255.0,
            "label": self.labels[ids_B].astype(np.int32),
            "mask": np.ones(len(ids_B), np.float32),
            "index": ids_B.astype(np.int32),
        }


def padded_batches(num_examples: int, batch_size: int, max_batches: int, to_batch):
    """A split once, in order: `to_batch(ids)` per batch, the last padded with repeats of the
    final example whose row `mask` is 0 (so shapes, and compiles, never change)."""
    num_batches = -(-num_examples // batch_size)
    if max_batches > 0:
        num_batches = min(num_batches, max_batches)
    for b in range(num_batches):
        ids = np.arange(b * batch_size, (b + 1) * batch_size)
        batch = to_batch(np.minimum(ids, num_examples - 1))
        batch["mask"] = (ids < num_examples).astype(np.float32)
        yield batch


class ImageData:
    def __init__(self, splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names):
        self.splits, self.class_names = splits, list(class_names)
        self.image_shape = tuple(next(iter(splits.values()))[0].shape[1:])

    @property
    def model_fields(self) -> dict:
        return {"image_shape": self.image_shape, "num_classes": len(self.class_names)}

    @property
    def artifacts(self) -> dict:
        """classes.json, so the run names its classes without its data set."""
        return names_file(CLASSES, self.class_names)

    @property
    def example_shapes(self) -> dict:
        return {"image": self.image_shape, "label": (), "mask": (), "index": ()}

    def meta(self, split: str) -> dict:
        return {"class_names": self.class_names}

    def train_iterator(self, batch_size: int, seed: int, rows: slice | None = None):
        images, labels = self.splits["train"]
        ids = grain.MapDataset.range(len(images)).shuffle(seed=seed).repeat(None)
        ds = id_batches(ids, batch_size, rows).map(_Gather(images, labels))
        return iter(ds.to_iter_dataset())

    def eval_batches(self, split: str, batch_size: int, max_batches: int = -1):
        if split not in self.splits:
            raise UserError(f"unknown split {split!r} (have: {', '.join(self.splits)})")
        images, labels = self.splits[split]
        yield from padded_batches(len(images), batch_size, max_batches, _Gather(images, labels))

    def real_images(self, split: str, num: int) -> np.ndarray:
        """The first `num` images of a split, float32 in [0, 1]."""
        images = self.splits[split][0][:num]
        return images.astype(np.float32) / 255.0

"""Image tokenizers (dVAE, VQ-VAE): images to grids of discrete codes and back.

`genzoo sample --workdir DIR` writes evaluation images beside their reconstructions;
`genzoo.load(DIR)` gives `.encode(images)`, `.decode(codes)` and `.reconstruct(images)`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from genzoo import models
from genzoo.errors import UserError
from genzoo.kinds import Kind, Option, images_for, in_batches, register
from genzoo.kinds.image_generator import OUT, reconstruction_grid


@runtime_checkable
class ImageTokenizerFamily(Protocol):
    def encode(self, params, images_BxHxWxC, cfg):
        """Codes [B, h, w] (int) of images [B, H, W, C] in [0, 1]."""

    def decode(self, params, codes_Bxhxw, cfg):
        """Images [B, H, W, C] in [0, 1] of code grids."""

    def grid_shape(self, cfg) -> tuple[int, int]: ...

    def codebook_size(self, cfg) -> int: ...


class ImageTokenizer:
    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)
        self.grid_shape = self.family.grid_shape(run.cfg.model)
        self.codebook_size = self.family.codebook_size(run.cfg.model)

    def encode(self, images_BxHxWxC, batch_size: int = 256) -> np.ndarray:
        encode = lambda x: self.family.encode(self.run.params, x, self.run.cfg.model)
        return in_batches(encode, images_for(self.run, images_BxHxWxC), batch_size)

    def decode(self, codes_Bxhxw, batch_size: int = 256) -> np.ndarray:
        codes = np.asarray(codes_Bxhxw)
        if codes.ndim != 3 or tuple(codes.shape[1:]) != tuple(self.grid_shape):
            raise UserError(f"codes must be [N, {', '.join(map(str, self.grid_shape))}], "
                            f"got {list(codes.shape)}")  # fmt: skip
        if codes.size and not (codes.min() >= 0 and codes.max() < self.codebook_size):
            # out of range, a gather would clamp them and decode some other code's image
            raise UserError(f"codes must be in [0, {self.codebook_size}), got "
                            f"{codes.min()}..{codes.max()}")  # fmt: skip
        if not np.issubdtype(codes.dtype, np.integer) and not np.array_equal(codes, codes // 1):
            raise UserError("codes must be whole numbers (code ids)")  # 2.5 was read as 2
        decode = lambda c: self.family.decode(self.run.params, c, self.run.cfg.model)  # noqa: E731
        return in_batches(decode, codes.astype(np.int32), batch_size)  # bounded device memory

    def reconstruct(self, images_BxHxWxC) -> np.ndarray:
        return self.decode(self.encode(images_BxHxWxC))


def _sample(tok: ImageTokenizer, args) -> None:
    reconstruction_grid(tok.run, tok.reconstruct, args)


register(
    Kind(
        "image_tokenizer",
        ImageTokenizerFamily,
        ImageTokenizer,
        options=(
            OUT,
            Option("--reconstruct", True, dict(action="store_true", help="inputs beside outputs")),
        ),
        sample=_sample,
    )
)

"""Contrastive image-text models (CLIP): embeddings of both, and how well they match.

`genzoo.load(DIR)` gives `.encode_images(images)`, `.encode_texts(texts)` and
`.score(images, texts)` (the scaled cosine similarity of every image with every text,
what DALL·E's reranking sorts by).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from genzoo import kinds, models
from genzoo.errors import UserError
from genzoo.kinds import Kind, images_for, in_batches, register


@runtime_checkable
class ContrastiveFamily(Protocol):
    def encode_images(self, params, images_BxHxWxC, cfg):
        """Unit-norm embeddings [B, E] of images in [0, 1]."""

    def encode_texts(self, params, captions_BxT, cfg):
        """Unit-norm embeddings [B, E] of padded caption ids (0 = padding)."""


class Contrastive:
    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)
        self.tokenizer = run.tokenizers["tokens"]  # words.json: no data set needed

    def encode_images(self, images_BxHxWxC, batch_size: int = 256) -> np.ndarray:
        encode = lambda x: self.family.encode_images(self.run.params, x, self.run.cfg.model)
        return in_batches(encode, images_for(self.run, images_BxHxWxC), batch_size)

    def encode_texts(self, texts, batch_size: int = 256) -> np.ndarray:
        from genzoo.data.captions import caption_ids

        ids = caption_ids(
            self.tokenizer, kinds.texts(texts), int(self.run.cfg.model.max_caption_len)
        )
        encode = lambda x: self.family.encode_texts(self.run.params, x, self.run.cfg.model)
        return in_batches(encode, ids, batch_size)

    def score(self, images_BxHxWxC, texts) -> np.ndarray:
        """Cosine similarity x 100 (the CLIP score), [images, texts]."""
        return 100.0 * self.encode_images(images_BxHxWxC) @ self.encode_texts(texts).T

    def pair_scores(self, images_NxHxWxC, texts) -> np.ndarray:
        """The CLIP score of image n with text n, [N] (the diagonal of `score`, without the
        rest of the matrix)."""
        image_NxE, text_NxE = self.encode_images(images_NxHxWxC), self.encode_texts(texts)
        if len(image_NxE) != len(text_NxE):  # one text would broadcast over every image
            raise UserError(f"pair_scores needs one text per image, got {len(text_NxE)} texts "
                            f"for {len(image_NxE)} images")  # fmt: skip
        return 100.0 * np.sum(image_NxE * text_NxE, axis=1)


register(Kind("contrastive", ContrastiveFamily, Contrastive))

"""Text-to-image models (DALL·E): captions in, images out, reranked by CLIP.

    genzoo sample --workdir runs/dalle_shapes --candidates 16 --keep 4 --guidance 3 \\
        --prompt "a small red circle above a large green square" --out grid.png

`genzoo.load(DIR).generate(captions, candidates=N, keep=K, guidance=S)` draws N images per
caption (codes from the transformer, pixels from the image tokenizer it requires), scores
them against their caption with the CLIP run it requires, and returns the K best:
(images [C, K, H, W, 3] in [0, 1], CLIP scores [C, K]), best first.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from genzoo import kinds, models, sampling
from genzoo.errors import UserError
from genzoo.kinds import Kind, Option, register
from genzoo.kinds.image_generator import OUT, out_path
from genzoo.kinds.language_model import PROMPT, SAMPLING_OPTIONS

# Shown when no --prompt is given: two seen combinations, then two with held-out pairs
# (green circle, blue square, red diamond, yellow triangle: genzoo.data.shapes.HELD_OUT).
DEFAULT_PROMPTS = (
    "a small red circle above a large green square",
    "a large yellow star",
    "a large green circle",
    "a large red diamond above a small yellow triangle",
)


@runtime_checkable
class TextToImageFamily(Protocol):
    def generate_codes(self, params, captions_BxT, rng, cfg, *, guidance, temperature, top_k,
                       top_p):  # fmt: skip
        """Image codes [B, h, w] drawn for padded caption ids [B, T], row b with `rng[b]`."""


def rerank(scores_CxN: np.ndarray, keep: int) -> np.ndarray:
    """Indices [C, keep] of each row's `keep` highest scores, highest first (stable)."""
    return np.argsort(-scores_CxN, axis=1, kind="stable")[:, :keep]


class TextToImage:
    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)
        self.tokenizer = run.tokenizers["tokens"]  # words.json: no data set needed
        self.image_tokenizer = kinds.api_of(run.deps["image_tokenizer"])
        self.clip = kinds.api_of(run.deps["clip"])

    def encode_captions(self, captions) -> np.ndarray:
        from genzoo.data.captions import caption_ids

        return caption_ids(self.tokenizer, captions, int(self.run.cfg.model.max_caption_len))

    def generate(self, captions, *, candidates: int = 1, keep: int = 1, guidance: float = 1.0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 ranked: bool = True, batch_size: int = 512):  # fmt: skip
        """(images [C, keep, H, W, 3], CLIP scores [C, keep]); see the module docstring.
        `ranked=False` keeps the first `keep` draws in the order they were drawn."""
        kinds.check_sampling(dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                  candidates=candidates, keep=keep, seed=seed,
                                  guidance=guidance, batch_size=batch_size))  # fmt: skip
        if not 1 <= keep <= candidates:
            raise UserError(f"need 1 <= keep <= candidates, got {keep} and {candidates}")
        captions = kinds.texts(captions, "captions")
        if not captions:
            shape = tuple(self.image_tokenizer.run.cfg.model.image_shape)
            return np.zeros((0, keep, *shape), np.float32), np.zeros((0, keep), np.float32)
        ids_CxT = self.encode_captions(captions)
        rows = np.repeat(ids_CxT, candidates, axis=0)  # caption c's candidates are adjacent
        rng, codes = jax.random.PRNGKey(seed), []
        for index in kinds.even_batches(len(rows), batch_size):  # draw j keyed by the seed and j
            keys = sampling.row_keys(rng, len(index), int(index[0]))
            codes.append(np.asarray(self.family.generate_codes(
                self.run.params, rows[index], keys, self.run.cfg.model, guidance=guidance,
                temperature=temperature, top_k=top_k, top_p=top_p)))  # fmt: skip
        images = self.image_tokenizer.decode(np.concatenate(codes)[: len(rows)])
        texts = [t for t in captions for _ in range(candidates)]
        scores_CxN = self.clip.pair_scores(images, texts).reshape(len(captions), candidates)
        C = len(captions)
        best_CxK = rerank(scores_CxN, keep) if ranked else np.tile(np.arange(keep), (C, 1))
        images = images.reshape(C, candidates, *images.shape[1:])
        pick = lambda x: np.take_along_axis(x, best_CxK.reshape(C, keep, *[1] * (x.ndim - 2)), 1)
        return pick(images), pick(scores_CxN)


def save_captioned_grid(images_CxKxHxWx3, captions, path: Path, scale: int = 3) -> Path:
    """One row per caption (its images, upscaled), the caption written above each row."""
    from PIL import Image, ImageDraw

    from genzoo.data import sources

    C, K, H, W, _ = images_CxKxHxWx3.shape
    h, w, gap, title = H * scale, W * scale, 4, 14
    width = max(K * (w + gap) + gap, 8 + 6 * max(len(t) for t in captions))
    canvas = Image.new("RGB", (width, C * (title + h + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for c, caption in enumerate(captions):
        top = gap + c * (title + h + gap)
        draw.text((gap, top), caption, fill="black")
        for k in range(K):
            pixels = (np.clip(images_CxKxHxWx3[c, k], 0, 1) * 255).round().astype(np.uint8)
            tile = Image.fromarray(pixels).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (gap + k * (w + gap), top + title))
    sources.write_atomic(Path(path), lambda f: canvas.save(f, format="PNG"))
    return Path(path)


def _sample(model: TextToImage, args) -> None:
    prompts = [p.strip() for p in args.prompt.split("|") if p.strip()] or list(DEFAULT_PROMPTS)
    keep = args.keep or args.num or 4
    candidates = args.candidates or keep
    out = out_path(args, "samples.png")
    images, scores = model.generate(prompts, candidates=candidates, keep=keep,
                                    guidance=args.guidance, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p, seed=args.seed)  # fmt: skip
    save_captioned_grid(images, prompts, out)
    for prompt, row in zip(prompts, scores, strict=True):
        print(f"{prompt}: CLIP scores {' '.join(f'{s:.1f}' for s in row)}")
    print(out)


register(
    Kind(
        "text_to_image",
        TextToImageFamily,
        TextToImage,
        options=(
            dataclasses.replace(PROMPT, default=""),
            OUT,
            dataclasses.replace(SAMPLING_OPTIONS[0], default=1.0),  # --temperature
            *SAMPLING_OPTIONS[1:3],  # --top-k, --top-p
            Option(
                "--guidance",
                1.0,
                dict(type=float, help="text-to-image: classifier-free guidance scale (1: off)"),
            ),  # fmt: skip
            Option(
                "--candidates",
                0,
                dict(type=int, help="text-to-image: images drawn per prompt, CLIP keeps --keep"),
            ),  # fmt: skip
            Option(
                "--keep",
                0,
                dict(type=int, help="text-to-image: images kept per prompt (default --num or 4)"),
            ),  # fmt: skip
        ),
        sample=_sample,
    )
)

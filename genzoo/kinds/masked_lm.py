"""Masked language models (BERT): fill [MASK]s, encode texts, classify where fine-tuned."""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np

from genzoo import kinds, models
from genzoo.errors import UserError
from genzoo.kinds import Kind, register
from genzoo.kinds.language_model import PROMPT, SAMPLING_OPTIONS

MASK, CLS, SEP = "[MASK]", "[CLS]", "[SEP]"


@runtime_checkable
class MaskedLMFamily(Protocol):
    def encode(self, params, cfg, tokens_BxL, segments_BxL, valid_BxL):
        """(final hidden states [B, L, D], MLM logits [B, L, V])."""

    def max_length(self, cfg) -> int:
        """The most tokens, [CLS] and [SEP] included, one text may have."""


class MaskedLM:
    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)
        self.tokenizer = run.data.tokenizers["tokens"]
        self.max_len = self.family.max_length(run.cfg.model)

    def _batch(self, texts):
        if not texts:  # nothing to encode: no batch (and no compile)
            return [], None, None
        cls, sep = self.tokenizer.piece_id(CLS), self.tokenizer.piece_id(SEP)
        ids = [[cls, *self.tokenizer.encode(t), sep] for t in texts]
        if max(map(len, ids)) > self.max_len:
            raise UserError(f"a text is longer than the model's {self.max_len} tokens")
        tokens_BxL = np.zeros((len(ids), self.max_len), np.int32)  # one shape: one compile
        for row, seq in enumerate(ids):
            tokens_BxL[row, : len(seq)] = seq
        valid_BxL = np.arange(self.max_len)[None] < np.array([len(s) for s in ids])[:, None]
        hidden, logits = self.family.encode(
            self.run.params, self.run.cfg.model, tokens_BxL, np.zeros_like(tokens_BxL),
            valid_BxL,
        )  # fmt: skip
        return ids, np.asarray(hidden), np.asarray(logits)

    def encode(self, texts) -> list[np.ndarray]:
        """Final hidden states per token ([CLS] and [SEP] included), [L_i, D] per text."""
        texts = kinds.texts(texts)
        ids, hidden, _ = self._batch(texts)
        return [hidden[i, : len(seq)] for i, seq in enumerate(ids)]

    def fill_mask(self, texts, top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
        """Per text, per [MASK] in it, the `top_k` (filler, probability) pairs, best first."""
        texts = kinds.texts(texts)
        if any(MASK not in t for t in texts):
            raise UserError(f"every text needs at least one {MASK}")
        kinds.check_sampling(dict(top_k=top_k))
        if top_k < 1:
            raise UserError(f"top_k must be at least 1 (fillers to list), got {top_k}")
        ids, _, logits = self._batch(texts)
        mask_id, out = self.tokenizer.piece_id(MASK), []
        for i, seq in enumerate(ids):
            fills = []
            for pos in [p for p, t in enumerate(seq) if t == mask_id]:
                z = logits[i, pos] - logits[i, pos].max()
                probs = np.exp(z) / np.exp(z).sum()
                best = np.argsort(-probs)[:top_k]
                fills.append([(self.tokenizer.decode([int(j)]), float(probs[j])) for j in best])
            out.append(fills)
        return out


def _sample(mlm: MaskedLM, args) -> None:
    if MASK not in (args.prompt or ""):
        raise UserError(f'give a --prompt with {MASK}, e.g. "in the beginning god {MASK} the"')
    for i, fills in enumerate(mlm.fill_mask([args.prompt], top_k=args.top_k or 5)[0]):
        print(f"{MASK} {i + 1}: " + "  ".join(f"{w!r} {p:.3f}" for w, p in fills))


register(
    Kind(
        "masked_lm",
        MaskedLMFamily,
        MaskedLM,
        options=(PROMPT, dataclasses.replace(SAMPLING_OPTIONS[1], default=5)),
        sample=_sample,
    )
)

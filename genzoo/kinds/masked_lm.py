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
        """The most tokens, [CLS] and [SEP] included, one text may have.

        A fine-tuned classifier (`model.num_classes > 0`) also offers `classify(params, cfg,
        tokens_BxL, segments_BxL, valid_BxL)`: class probabilities [B, num_classes]."""


class MaskedLM:
    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)
        self.tokenizer = run.tokenizers["tokens"]
        self.max_len = self.family.max_length(run.cfg.model)

    def _tokens(self, texts):
        """([CLS] ids [SEP] per text, tokens [N, max_len], valid [N, max_len]): one shape."""
        cls, sep = self.tokenizer.piece_id(CLS), self.tokenizer.piece_id(SEP)
        ids = [[cls, *self.tokenizer.encode(t), sep] for t in texts]
        if ids and max(map(len, ids)) > self.max_len:
            raise UserError(f"a text is longer than the model's {self.max_len} tokens")
        tokens_BxL = np.zeros((len(ids), self.max_len), np.int32)  # one shape: one compile
        for row, seq in enumerate(ids):
            tokens_BxL[row, : len(seq)] = seq
        valid_BxL = np.arange(self.max_len)[None] < np.array([len(s) for s in ids])[:, None]
        return ids, tokens_BxL, valid_BxL

    def _batches(self, texts, batch_size: int):
        """(ids, hidden [B, L, D], MLM logits [B, L, V]) per `batch_size` texts: the logits
        of 10,000 texts at once would take 30 GB. No texts: no batch (and no compile)."""
        kinds.check_sampling(dict(batch_size=batch_size))
        ids, tokens_NxL, valid_NxL = self._tokens(texts)  # every text checked before any runs
        for start in range(0, len(texts), batch_size):
            tokens_BxL = tokens_NxL[start : start + batch_size]
            hidden, logits = self.family.encode(
                self.run.params, self.run.cfg.model, tokens_BxL, np.zeros_like(tokens_BxL),
                valid_NxL[start : start + batch_size],
            )  # fmt: skip
            yield ids[start : start + batch_size], np.asarray(hidden), np.asarray(logits)

    @property
    def class_names(self) -> list[str]:
        """A fine-tuned classifier's classes (its data's names, else their numbers)."""
        return class_names(self.run)

    def classify(self, texts, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, classes] of a fine-tuned classifier (`class_names` names
        the columns), `batch_size` texts at a time."""
        texts = kinds.texts(texts)
        if not self.class_names or not hasattr(self.family, "classify"):
            raise UserError("this run is no fine-tuned classifier (model.num_classes is 0): "
                            "fill_mask and encode apply")  # fmt: skip
        _, tokens_NxL, valid_NxL = self._tokens(texts)
        # Segments all 0: `0 * t` also traces (in_batches shapes an empty input by tracing).
        classify = lambda t, v: self.family.classify(self.run.params, self.run.cfg.model, t,  # noqa: E731
                                                     0 * t, v)  # fmt: skip
        return kinds.in_batches(classify, (tokens_NxL, valid_NxL), batch_size)

    def encode(self, texts, batch_size: int = 64) -> list[np.ndarray]:
        """Final hidden states per token ([CLS] and [SEP] included), [L_i, D] per text."""
        texts = kinds.texts(texts)
        return [hidden[i, : len(seq)] for ids, hidden, _ in self._batches(texts, batch_size)
                for i, seq in enumerate(ids)]  # fmt: skip

    def fill_mask(self, texts, top_k: int = 5,
                  batch_size: int = 64) -> list[list[list[tuple[str, float]]]]:  # fmt: skip
        """Per text, per [MASK] in it, the `top_k` (filler, probability) pairs, best first."""
        texts = kinds.texts(texts)
        if any(MASK not in t for t in texts):
            raise UserError(f"every text needs at least one {MASK}")
        kinds.check_sampling(dict(top_k=top_k))
        if top_k < 1:
            raise UserError(f"top_k must be at least 1 (fillers to list), got {top_k}")
        mask_id, out = self.tokenizer.piece_id(MASK), []
        for ids, _, logits in self._batches(texts, batch_size):
            for i, seq in enumerate(ids):
                fills = []
                for pos in [p for p, t in enumerate(seq) if t == mask_id]:
                    z = logits[i, pos] - logits[i, pos].max()
                    probs = np.exp(z) / np.exp(z).sum()
                    best = np.argsort(-probs)[:top_k]
                    fills.append([(self._filler(int(j)), float(probs[j])) for j in best])
                out.append(fills)
        return out

    def _filler(self, i: int) -> str:
        """A piece as a filler: a word's continuation marked "##" as WordPiece marks it, so a
        sentencepiece "▁the" (a word) and "the" (inside one) are not both shown as 'the'."""
        piece = getattr(self.tokenizer, "id_piece", lambda _: "")(i)
        text = self.tokenizer.decode([i])
        special = piece.startswith("[") and piece.endswith("]")  # [CLS], [SEP], ...
        if not piece or piece.startswith("▁") or special or piece != text:
            return text  # a word start, a WordPiece token, a special piece or a byte
        return "##" + text


def _sample(mlm: MaskedLM, args) -> None:
    if mlm.class_names and args.prompt and MASK not in args.prompt:  # a fine-tuned classifier
        (probs,) = mlm.classify([args.prompt])
        best = np.argsort(-probs)[: args.top_k or 5]
        print("  ".join(f"{mlm.class_names[k]} {probs[k]:.3f}" for k in best))
        return
    if MASK not in (args.prompt or ""):
        hint = " (or a text to classify)" if mlm.class_names else ""
        raise UserError(f'give a --prompt with {MASK}{hint}, e.g. "in the beginning god '
                        f'{MASK} the"')  # fmt: skip
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


def class_names(run) -> list[str]:
    """A fine-tuned BERT classifier's classes: its data's names, else their numbers (none for
    a masked LM)."""
    k = int(run.cfg.model.get("num_classes", 0) or 0)
    if not k:
        return []
    names = run.class_names
    return names if len(names) == k else [str(i) for i in range(k)]

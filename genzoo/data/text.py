"""Token streams for language models: a tokenizer, seeded resumable training windows, eval batches.

Training draws windows of `seq_len + 1` tokens starting at every position of the
split, shuffled by grain with a seed (nanoGPT samples start positions the same way,
with replacement); the iterator's state is a small dict that checkpoints hold.
Evaluation walks the whole split once in non-overlapping windows, padded with a
zero mask so every batch has the same shape.
"""

from __future__ import annotations

import json

import grain
import numpy as np

from genzoo.data.batches import id_batches
from genzoo.data.tokenizers import CHARS
from genzoo.errors import UserError


class CharTokenizer:
    """Characters to ids by position in a fixed vocabulary string."""

    def __init__(self, vocab: str):
        self.vocab = vocab
        self._lookup = {ch: i for i, ch in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        missing = sorted({ch for ch in text if ch not in self._lookup})
        if missing:
            raise UserError(f"characters not in the vocabulary: {''.join(missing)!r}")
        return [self._lookup[ch] for ch in text]

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids if 0 <= int(i) < len(self.vocab))

    @property
    def artifacts(self) -> dict:
        """chars.json: the alphabet, so the run samples without its data set."""
        return {CHARS: json.dumps(self.vocab).encode("utf-8")}


class IdTokenizer:
    """A corpus that comes as token ids only: text is the ids, separated by spaces."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        try:
            ids = [int(t) for t in text.split()]
        except ValueError:
            raise UserError("this corpus has no tokenizer: give prompts as token ids") from None
        if not ids:
            raise UserError("this corpus has no tokenizer: give at least one token id")
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise UserError(f"token ids must be in [0, {self.vocab_size})")
        return ids

    def decode(self, ids) -> str:
        # Each id with its own leading space, so a continuation appends to a prompt cleanly.
        return "".join(f" {int(i)}" for i in ids)


class _Windows:
    """Maps a batch of start offsets to {inputs, targets} of shape [B, L] (a grain map)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len

    def __call__(self, starts_B: np.ndarray) -> dict:
        idx_BxL1 = starts_B[:, None] + np.arange(self.seq_len + 1)[None, :]
        window_BxL1 = self.tokens[idx_BxL1].astype(np.int32)
        # Contiguous copies here, in grain's worker threads: the training loop's transfer to
        # the devices would otherwise copy the strided slices on the main thread.
        return {
            "inputs": np.ascontiguousarray(window_BxL1[:, :-1]),
            "targets": np.ascontiguousarray(window_BxL1[:, 1:]),
            "mask": np.ones((len(starts_B), self.seq_len), np.float32),
        }


class TokenStreamData:
    """A language-model data set: one token array per split and a tokenizer."""

    def __init__(self, splits, tokenizer, seq_len: int, chars_per_token=None, artifacts=None):
        self.splits, self.tokenizer, self.seq_len = splits, tokenizer, seq_len
        # Characters per token of each split (1 for characters): turns bits/token into bits/char.
        self.chars_per_token = chars_per_token or {s: 1.0 for s in splits}
        self.artifacts = artifacts or dict(getattr(tokenizer, "artifacts", {}))
        for name, tokens in splits.items():
            if len(tokens) <= seq_len + 1:
                raise UserError(f"split {name!r} has {len(tokens)} tokens, fewer than seq_len+2")

    @property
    def model_fields(self) -> dict:
        """Config fields the model takes from the data (filled in where the experiment says -1)."""
        return {"vocab_size": self.tokenizer.vocab_size}

    @property
    def example_shapes(self) -> dict:
        return {"inputs": (self.seq_len,), "targets": (self.seq_len,), "mask": (self.seq_len,)}

    @property
    def tokens_per_example(self) -> int:
        return self.seq_len

    def meta(self, split: str) -> dict:
        return {"chars_per_token": self.chars_per_token[split]}

    def train_iterator(self, batch_size: int, seed: int, rows: slice | None = None):
        tokens = self.splits["train"]
        starts = grain.MapDataset.range(len(tokens) - self.seq_len - 1)
        ds = id_batches(starts.shuffle(seed=seed).repeat(None), batch_size, rows)
        return iter(ds.map(_Windows(tokens, self.seq_len)).to_iter_dataset())

    def eval_batches(self, split: str, batch_size: int, max_batches: int = -1):
        if split not in self.splits:
            raise UserError(f"unknown split {split!r} (have: {', '.join(self.splits)})")
        tokens = self.splits[split]  # may be on disk (RecordTokens): read row by row
        L = self.seq_len
        num_windows = -(-(len(tokens) - 1) // L)
        num_batches = -(-num_windows // batch_size)
        if max_batches > 0:
            num_batches = min(num_batches, max_batches)
        for b in range(num_batches):
            inputs_BxL = np.zeros((batch_size, L), np.int32)
            targets_BxL = np.zeros((batch_size, L), np.int32)
            mask_BxL = np.zeros((batch_size, L), np.float32)
            for row in range(batch_size):
                start = (b * batch_size + row) * L
                n = min(L, len(tokens) - 1 - start)
                if n <= 0:
                    break
                window = np.asarray(tokens[start : start + n + 1], np.int32)
                inputs_BxL[row, :n], targets_BxL[row, :n] = window[:-1], window[1:]
                mask_BxL[row, :n] = 1.0
            yield {"inputs": inputs_BxL, "targets": targets_BxL, "mask": mask_BxL}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

"""Examples with named token fields (`src`, `tgt`, ...): padded batches, seeded and resumable.

Unlike a token stream, each example is a record of variable-length id sequences, one per
field. Batches pad every field to its fixed length (so shapes, and compiles, never change)
and carry a mask per field plus a row mask:

    {"src": int32 [B, S], "src_mask": float32 [B, S], "tgt": int32 [B, T],
     "tgt_mask": float32 [B, T], "mask": float32 [B], "index": int32 [B]}

Sequences longer than their field's length are cut, keeping their last id (an EOS).
Training batches come from a grain pipeline (shuffle with the seed, repeat, batch) whose
iterator state the checkpoints hold; evaluation walks a split once in order, the last
batch padded with rows whose masks are zero.
"""

from __future__ import annotations

import grain
import numpy as np

from genzoo.data.batches import id_batches
from genzoo.errors import UserError


def _fit(ids: np.ndarray, length: int) -> np.ndarray:
    return ids if len(ids) <= length else np.concatenate([ids[: length - 1], ids[-1:]])


class _Pad:
    """Maps a batch of example ids to the padded batch dict (a grain map)."""

    def __init__(self, fields: dict[str, list[np.ndarray]], lengths: dict[str, int], labels=None):
        self.fields, self.lengths, self.labels = fields, lengths, labels or {}

    def __call__(self, ids_B: np.ndarray, valid_B: np.ndarray | None = None) -> dict:
        valid_B = np.ones(len(ids_B), bool) if valid_B is None else valid_B
        batch = {"mask": valid_B.astype(np.float32), "index": ids_B.astype(np.int32)}
        for name, values_N in self.labels.items():
            batch[name] = values_N[ids_B].astype(np.int32)
        for name, sequences in self.fields.items():
            L = self.lengths[name]
            ids_BxL = np.zeros((len(ids_B), L), np.int32)
            mask_BxL = np.zeros((len(ids_B), L), np.float32)
            for row, (i, valid) in enumerate(zip(ids_B, valid_B, strict=True)):
                if valid:
                    seq = _fit(sequences[int(i)], L)
                    ids_BxL[row, : len(seq)] = seq
                    mask_BxL[row, : len(seq)] = 1.0
            batch[name], batch[f"{name}_mask"] = ids_BxL, mask_BxL
        return batch


def pack_rows(fields: dict[str, list[np.ndarray]], lengths: dict[str, int], order) -> list:
    """Greedy packing: consecutive examples (in `order`) share a row while every field fits."""
    rows, row, used = [], [], dict.fromkeys(lengths, 0)
    for i in order:
        need = {f: min(len(fields[f][i]), lengths[f]) for f in lengths}
        if row and any(used[f] + need[f] > lengths[f] for f in lengths):
            rows.append(row)
            row, used = [], dict.fromkeys(lengths, 0)
        row.append(int(i))
        used = {f: used[f] + need[f] for f in lengths}
    return rows + ([row] if row else [])


class _PackRows:
    """Maps a batch of packed-row ids to arrays with `<field>_segments` (1, 2, ... per example,
    0 for padding) and `<field>_positions` (restarting at 0 for each example)."""

    def __init__(self, rows: list, fields: dict[str, list[np.ndarray]], lengths: dict[str, int]):
        self.rows, self.fields, self.lengths = rows, fields, lengths

    def __call__(self, row_ids_B: np.ndarray) -> dict:
        B = len(row_ids_B)
        batch = {"mask": np.ones(B, np.float32), "index": row_ids_B.astype(np.int32)}
        for name, sequences in self.fields.items():
            L = self.lengths[name]
            ids, seg, pos = (np.zeros((B, L), np.int32) for _ in range(3))
            for b, r in enumerate(row_ids_B):
                at = 0
                for k, i in enumerate(self.rows[int(r)]):
                    seq = _fit(sequences[i], L)
                    ids[b, at : at + len(seq)] = seq
                    seg[b, at : at + len(seq)] = k + 1
                    pos[b, at : at + len(seq)] = np.arange(len(seq))
                    at += len(seq)
            batch[name], batch[f"{name}_mask"] = ids, (seg > 0).astype(np.float32)
            batch[f"{name}_segments"], batch[f"{name}_positions"] = seg, pos
        return batch


class ExampleData:
    """A data set of token-field examples.

    `splits`: {split: {field: [int array per example]}}; `lengths`: {field: padded length};
    `texts`: {split: {field: [str per example]}} (what host-side evaluators score against);
    `tokenizers`: {field: tokenizer}; `model_fields`: config the model takes from the data;
    `labels`: {split: {name: int array [N]}}, per-example integers batched as [B].
    `pack`: training rows hold as many consecutive (shuffled once, seed 0) examples as fit,
    with segment ids and positions (evaluation stays one example per row).
    `token_fields`: the fields that are tokens the model reads, for tokens/s (default: all;
    BERT's `segments` are ids of another kind).
    """

    def __init__(self, splits, lengths, texts, tokenizers, model_fields, artifacts=None,
                 labels=None, pack: bool = False, token_fields=None):  # fmt: skip
        self.splits, self.lengths, self.texts = splits, dict(lengths), texts
        self.token_fields = tuple(token_fields or self.lengths)
        self.labels = labels or {s: {} for s in splits}
        self.packed_rows = None
        if pack:
            if self.labels["train"]:
                raise UserError("packing is for token fields only (these examples have labels)")
            order = np.random.default_rng(0).permutation(len(next(iter(splits["train"].values()))))
            self.packed_rows = pack_rows(splits["train"], self.lengths, order)
        self.tokenizers, self.model_fields = tokenizers, dict(model_fields)
        self.artifacts = artifacts or {}
        for split, fields in splits.items():
            sizes = {len(v) for v in fields.values()}
            if len(sizes) != 1 or not sizes.pop():
                raise UserError(f"split {split!r} is empty or its fields differ in length")

    def num_examples(self, split: str) -> int:
        return len(next(iter(self.splits[split].values())))

    @property
    def example_shapes(self) -> dict:
        shapes = {"mask": (), "index": (), **{name: () for name in self.labels["train"]}}
        for name, length in self.lengths.items():
            shapes[name] = shapes[f"{name}_mask"] = (length,)
            if self.packed_rows is not None:
                shapes[f"{name}_segments"] = shapes[f"{name}_positions"] = (length,)
        return shapes

    @property
    def tokens_per_example(self) -> float:
        """Mean real (unpadded) tokens of a training row (an example, or a packed row)."""
        train = self.splits["train"]
        total = sum(min(len(s), self.lengths[f]) for f in self.token_fields for s in train[f])
        rows = len(self.packed_rows) if self.packed_rows is not None else self.num_examples("train")
        return float(total / rows)

    def meta(self, split: str) -> dict:
        return {"num_examples": self.num_examples(split)}

    def train_iterator(self, batch_size: int, seed: int, rows: slice | None = None):
        if self.packed_rows is not None:
            ids = grain.MapDataset.range(len(self.packed_rows)).shuffle(seed=seed).repeat(None)
            pack = _PackRows(self.packed_rows, self.splits["train"], self.lengths)
            return iter(id_batches(ids, batch_size, rows).map(pack).to_iter_dataset())
        ids = grain.MapDataset.range(self.num_examples("train")).shuffle(seed=seed).repeat(None)
        ds = id_batches(ids, batch_size, rows)
        return iter(
            ds.map(_Pad(self.splits["train"], self.lengths, self.labels["train"])).to_iter_dataset()
        )

    def eval_batches(self, split: str, batch_size: int, max_batches: int = -1):
        if split not in self.splits:
            raise UserError(f"unknown split {split!r} (have: {', '.join(self.splits)})")
        pad = _Pad(self.splits[split], self.lengths, self.labels[split])
        n = self.num_examples(split)
        num_batches = -(-n // batch_size)
        if max_batches > 0:
            num_batches = min(num_batches, max_batches)
        for b in range(num_batches):
            ids_B = np.arange(b * batch_size, (b + 1) * batch_size)
            yield pad(np.minimum(ids_B, n - 1), ids_B < n)

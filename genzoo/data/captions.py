"""Captioned images: the procedural shapes and Fashion-MNIST with captions from class names.

Batches are

    {"image": float32 [B, H, W, C] in [0, 1], "caption": int32 [B, T], "caption_mask":
     float32 [B, T], "label": int32 [B] or the scene attributes ("shape", "colour", "size"
     int32 [B, 2], "relation" int32 [B]), "mask": float32 [B], "index": int32 [B]}

Captions are word ids over a closed vocabulary (a prompt with another word is a one-line
error), ended by EOS and padded with 0. Training draws one of each image's phrasings per
step (seeded by grain, so the iterator's position resumes exactly); evaluation uses the
first, canonical one.
"""

from __future__ import annotations

import grain
import numpy as np

from genzoo.data import fashion_mnist, shapes
from genzoo.data.batches import id_batches
from genzoo.data.images import padded_batches
from genzoo.data.tokenizers import CLASSES, WORDS, names_file
from genzoo.errors import UserError

PAD, EOS = 0, 1


class WordTokenizer:
    """Words of a fixed vocabulary to ids (0 PAD, 1 EOS, then the words)."""

    def __init__(self, words):
        self.words = ("<pad>", "<eos>", *sorted(set(words)))
        self._ids = {w: i for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        words = text.lower().split()
        unknown = sorted({w for w in words if w not in self._ids or self._ids[w] < 2})
        if unknown:
            raise UserError(f"words outside the caption vocabulary: {', '.join(unknown)} "
                            f"(known: {' '.join(self.words[2:])})")  # fmt: skip
        return [self._ids[w] for w in words] + [EOS]

    def decode(self, ids) -> str:
        words = []
        for i in ids:
            if int(i) == EOS:
                break
            if int(i) > EOS:
                words.append(self.words[int(i)])
        return " ".join(words)

    @property
    def artifacts(self) -> dict:
        """words.json: the vocabulary, so the run reads captions without its data set."""
        return names_file(WORDS, self.words[2:])


def pad_captions(ids_list, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N, length], mask [N, length]); longer captions are cut, keeping their EOS."""
    ids = np.zeros((len(ids_list), length), np.int32)
    for row, seq in enumerate(ids_list):
        seq = seq if len(seq) <= length else [*seq[: length - 1], seq[-1]]
        ids[row, : len(seq)] = seq
    return ids, (ids > 0).astype(np.float32)


def caption_ids(tokenizer, captions, length: int) -> np.ndarray:
    """Padded ids [N, length] of captions a user gave: unknown words and captions too long
    for the model are refused (cutting one would score or draw another caption)."""
    from genzoo.errors import UserError

    ids = [tokenizer.encode(t) for t in captions]  # UserError for unknown words
    too_long = [t for t, i in zip(captions, ids, strict=True) if len(i) > length]
    if too_long:
        raise UserError(f"caption longer than {length - 1} words: {too_long[0]!r}")
    return pad_captions(ids, length)[0]


class _Batch:
    """Ids of examples (and which phrasing of each) -> a batch dict (a grain map)."""

    def __init__(self, images, labels, captions_NxKxT):
        self.images, self.labels, self.captions = images, labels, captions_NxKxT

    def __call__(self, ids_B: np.ndarray, phrasing_B: np.ndarray | None = None) -> dict:
        phrasing_B = np.zeros(len(ids_B), np.int64) if phrasing_B is None else phrasing_B
        caption_BxT = self.captions[ids_B, phrasing_B]
        batch = {
            "image": self.images[ids_B].astype(np.float32) / 255.0,
            "caption": caption_BxT,
            "caption_mask": (caption_BxT > 0).astype(np.float32),
            "mask": np.ones(len(ids_B), np.float32),
            "index": ids_B.astype(np.int32),
        }
        batch.update({name: values[ids_B].astype(np.int32) for name, values in self.labels.items()})
        return batch


class _DrawPhrasing:
    """One example id -> (id, a phrasing drawn with grain's per-position seeded rng)."""

    def __init__(self, counts_N: np.ndarray):
        self.counts = counts_N

    def __call__(self, i, rng: np.random.Generator):
        return int(i), int(rng.integers(0, self.counts[int(i)]))


class _Unpack:
    def __init__(self, to_batch: _Batch):
        self.to_batch = to_batch

    def __call__(self, pairs) -> dict:
        ids_B, phrasing_B = (np.asarray(x) for x in pairs)
        return self.to_batch(ids_B, phrasing_B)


class CaptionedImages:
    """`splits`: {split: (images uint8 [N, H, W, C], {label: int array [N, ...]},
    [[phrasing, ...] per image])}; the first phrasing is the canonical caption."""

    def __init__(self, splits, tokenizer: WordTokenizer, max_len: int, class_names=None,
                 class_prompts=None, train_split: str = "train"):  # fmt: skip
        """`class_prompts`: per class, its caption templates (zero-shot classification)."""
        self.tokenizer, self.max_len, self.class_names = tokenizer, max_len, class_names
        self.train_split = train_split
        self.class_prompts = class_prompts
        self.splits, self.texts = {}, {}
        for split, (images, labels, phrasings) in splits.items():
            K = max(len(p) for p in phrasings)
            ids = [[tokenizer.encode(t) for t in p] + [tokenizer.encode(p[0])] * (K - len(p))
                   for p in phrasings]  # fmt: skip
            flat, _ = pad_captions([s for row in ids for s in row], max_len)
            counts = np.array([len(p) for p in phrasings])
            self.splits[split] = (images, labels, flat.reshape(len(images), K, max_len), counts)
            self.texts[split] = [p[0] for p in phrasings]
        self.image_shape = tuple(next(iter(self.splits.values()))[0].shape[1:])

    extra_fields: dict = {}

    @property
    def artifacts(self) -> dict:
        """The files the run keeps: its caption vocabulary and class names."""
        classes = names_file(CLASSES, self.class_names)
        return {**self.tokenizer.artifacts, **classes}

    def add_labels(self, name: str, per_split: dict, fields=None) -> None:
        """Adds a per-example array to every split's batches (such as DALL·E's image codes,
        computed from a dependency), and model fields that come with it."""
        for split, (images, labels, captions, counts) in self.splits.items():
            if len(per_split[split]) != len(images):
                raise ValueError(f"{name}: {len(per_split[split])} rows for {len(images)} images")
            self.splits[split] = (images, {**labels, name: per_split[split]}, captions, counts)
        self.extra_fields = {**self.extra_fields, **(fields or {})}

    @property
    def model_fields(self) -> dict:
        fields = {"image_shape": self.image_shape, "vocab_size": self.tokenizer.vocab_size,
                  "max_caption_len": self.max_len, **self.extra_fields}  # fmt: skip
        if self.class_names:
            fields["num_classes"] = len(self.class_names)
        return fields

    @property
    def example_shapes(self) -> dict:
        _, labels, _, _ = self._split(self.train_split)
        return {"image": self.image_shape, "caption": (self.max_len,),
                "caption_mask": (self.max_len,), "mask": (), "index": (),
                **{k: v.shape[1:] for k, v in labels.items()}}  # fmt: skip

    @property
    def tokens_per_example(self) -> float:
        return float(np.mean(self._split(self.train_split)[2][:, 0] > 0) * self.max_len)

    def meta(self, split: str) -> dict:
        return {"class_names": self.class_names, "num_examples": len(self.splits[split][0])}

    def labels(self, split: str) -> np.ndarray:
        """Class ids [N] of a split (data with classes)."""
        return self._split(split)[1]["label"]

    def real_images(self, split: str, num: int) -> np.ndarray:
        """The first `num` images of a split, float32 in [0, 1]."""
        return self._split(split)[0][:num].astype(np.float32) / 255.0

    def _split(self, split: str):
        if split not in self.splits:
            raise UserError(f"unknown split {split!r} (have: {', '.join(self.splits)})")
        return self.splits[split]

    def train_iterator(self, batch_size: int, seed: int, rows: slice | None = None):
        images, labels, captions, counts = self._split(self.train_split)
        to_batch = _Batch(images, labels, captions)
        ids = (grain.MapDataset.range(len(images)).shuffle(seed=seed).repeat(None)
               .random_map(_DrawPhrasing(counts), seed=seed + 1))  # fmt: skip
        ds = id_batches(ids, batch_size, rows).map(_Unpack(to_batch))
        return iter(ds.to_iter_dataset())

    def eval_batches(self, split: str, batch_size: int, max_batches: int = -1):
        images, labels, captions, _ = self._split(split)
        to_batch = _Batch(images, labels, captions)
        yield from padded_batches(len(images), batch_size, max_batches, to_batch)


def shapes_splits(builder, splits) -> dict:
    """{split: (images, attribute labels, phrasings)} of the prepared shapes builder."""
    out = {}
    for split in splits:
        source = builder.as_data_source(split=split)
        records = sorted(source.__getitems__(range(len(source))), key=lambda r: int(r["index"]))
        labels = {k: np.stack([r[k] for r in records]) for k in ("shape", "colour", "size",
                                                                  "relation")}  # fmt: skip
        attrs = [{k: r[k] for k in labels} for r in records]
        phrasings = [[shapes.caption(a)] + ([shapes.caption(a, swap=True)] if a["shape"][1] >= 0
                                            else []) for a in attrs]  # fmt: skip
        out[split] = (np.stack([r["image"] for r in records]), labels, phrasings)
    return out


FASHION_TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a {}")
FASHION_WORDS = (
    "t-shirt",
    "trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)  # fmt: skip (fashion_mnist.CLASS_NAMES, as one says them)


def fashion_phrasings(label: int) -> list[str]:
    return [t.format(FASHION_WORDS[label]) for t in FASHION_TEMPLATES]


def fashion_vocabulary() -> list[str]:
    return sorted({w for t in FASHION_TEMPLATES for w in t.format("").split()}
                  | {w for name in FASHION_WORDS for w in name.split()})  # fmt: skip


assert len(FASHION_WORDS) == len(fashion_mnist.CLASS_NAMES)

"""English sentence data for BERT: masked-LM pretraining pairs and Bible genre labels.

Pretraining text is the English side of the Bible corpus (one verse a sentence) and tiny
Shakespeare (one speech a sentence), in order, so consecutive sentences continue each
other. An example is `[CLS] A [SEP] B [SEP]` with segment ids 0/1; B is A's successor or,
with probability 1/2, a random sentence (`next` = 1 or 0), fixed by a seed at load time.
The sentencepiece tokenizer reserves [MASK], [CLS], [SEP] as single pieces (ids 4-6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genzoo.data import tokenizers
from genzoo.data.examples import ExampleData
from genzoo.errors import UserError

SYMBOLS = ("[MASK]", "[CLS]", "[SEP]")
MASK_ID, CLS_ID, SEP_ID = 4, 5, 6  # after PAD, UNK, BOS, EOS: see tokenizers.train_sentence_pieces

# The book of each verse reference, by genre (a common Protestant grouping of the canon).
GENRES = {
    "law": "Genesis|Exodus|Leviticus|Numbers|Deuteronomy",
    "history": "Joshua|Judges|Ruth|I Samuel|II Samuel|I Kings|II Kings|I Chronicles|"
    "II Chronicles|Ezra|Nehemiah|Esther",
    "wisdom/poetry": "Job|Psalms|Proverbs|Ecclesiastes|Song of Solomon",
    "prophets": "Isaiah|Jeremiah|Lamentations|Ezekiel|Daniel|Hosea|Joel|Amos|Obadiah|Jonah|"
    "Micah|Nahum|Habakkuk|Zephaniah|Haggai|Zechariah|Malachi",
    "gospels/acts": "Matthew|Mark|Luke|John|Acts",
    "epistles": "Romans|I Corinthians|II Corinthians|Galatians|Ephesians|Philippians|Colossians|"
    "I Thessalonians|II Thessalonians|I Timothy|II Timothy|Titus|Philemon|Hebrews|James|"
    "I Peter|II Peter|I John|II John|III John|Jude",
    "apocalyptic": "Revelation of John",
}
BOOK_GENRE = {book: i for i, books in enumerate(GENRES.values()) for book in books.split("|")}


def genre_of(reference: str) -> int:
    """Genre index of a reference such as "I Samuel 3:4" (the book is all but the last word)."""
    book = reference.rsplit(" ", 1)[0]
    if book not in BOOK_GENRE:
        raise UserError(f"unknown Bible book {book!r} in reference {reference!r}")
    return BOOK_GENRE[book]


def english_sentences() -> dict[str, list[str]]:
    from genzoo import data as data_lib

    verses = data_lib.bible_verses()
    char_splits, chars = data_lib.shakespeare_splits()
    out = {}
    for split in ("train", "validation"):
        speeches = [s.strip() for s in chars.decode(char_splits[split]).split("\n\n")]
        bible = [en for _, _, en in verses[split]]
        out[split] = bible + [" ".join(s.split()) for s in speeches if s]
    return out


def _tokenizer(cfg, workdir, sentences):
    """From the workdir, else from `cfg.tokenizer_dir` (the pretrained or imported run: a
    sentencepiece `tokenizer.model` or a WordPiece `vocab.txt`), else trained."""
    for folder in [Path(d) for d in (workdir, cfg.get("tokenizer_dir", "")) if d]:
        if (kept := tokenizers.subword(folder, cfg.get("lowercase", True))) is not None:
            return kept
    if cfg.get("tokenizer_dir", ""):
        raise UserError(f"no {tokenizers.FILENAME} in data.tokenizer_dir={cfg.tokenizer_dir}")
    return tokenizers.train_sentence_pieces(sentences, cfg.vocab_size, symbols=SYMBOLS)


def _pair(a: list[int], b: list[int], max_len: int, cls: int = CLS_ID, sep: int = SEP_ID):
    room = max_len - 3
    a, b = a[: max(room - min(len(b), room // 2), room // 2)], b[: room // 2]
    a = a[: room - len(b)]
    tokens = [cls, *a, sep, *b, sep]
    return np.asarray(tokens, np.int32), np.asarray([0] * (len(a) + 2) + [1] * (len(b) + 1))


def _data(splits_ids, texts, labels, tokenizer, cfg) -> ExampleData:
    splits = {s: {"tokens": [t for t, _ in v], "segments": [g for _, g in v]}
              for s, v in splits_ids.items()}  # fmt: skip
    lengths = {"tokens": cfg.max_len, "segments": cfg.max_len}
    fields = {"vocab_size": tokenizer.vocab_size}
    artifacts = tokenizer.artifacts
    return ExampleData(splits, lengths, texts, {"tokens": tokenizer}, fields, artifacts, labels,
                       token_fields=("tokens",))  # fmt: skip


def english_mlm(cfg, workdir=None) -> ExampleData:
    sentences = english_sentences()
    tokenizer = _tokenizer(cfg, workdir, sentences["train"])
    rng = np.random.default_rng(cfg.seed)
    splits, texts, labels = {}, {}, {}
    for split, sents in sentences.items():
        ids = [tokenizer.encode(s) for s in sents]
        n = len(ids) - 1
        is_next = rng.random(n) < 0.5
        partner = np.where(is_next, np.arange(1, n + 1), rng.integers(0, len(ids), n))
        specials = tokenizer.piece_id("[CLS]"), tokenizer.piece_id("[SEP]")
        splits[split] = [_pair(ids[i], ids[j], cfg.max_len, *specials)
                         for i, j in enumerate(partner)]  # fmt: skip
        texts[split] = {"tokens": sents[:n]}
        labels[split] = {"next": is_next.astype(np.int32)}
    return _data(splits, texts, labels, tokenizer, cfg)


def bible_genre(cfg, workdir=None) -> ExampleData:
    """English verses labelled with their book's genre (`label`, 0..6 in GENRES order)."""
    from genzoo import data as data_lib

    verses = {s: v for s, v in data_lib.bible_verses().items()}
    tokenizer = _tokenizer(cfg, workdir, [en for _, _, en in verses["train"]])
    splits, texts, labels = {}, {}, {}
    for split, rows in verses.items():
        specials = tokenizer.piece_id("[CLS]"), tokenizer.piece_id("[SEP]")
        splits[split] = [_pair(tokenizer.encode(en), [], cfg.max_len, *specials)
                         for _, _, en in rows]  # fmt: skip
        splits[split] = [(t[:-1], g[:-1]) for t, g in splits[split]]  # [CLS] verse [SEP]
        texts[split] = {"tokens": [en for _, _, en in rows]}
        labels[split] = {"label": np.array([genre_of(ref) for ref, _, _ in rows], np.int32)}
    data = _data(splits, texts, labels, tokenizer, cfg)
    data.model_fields["num_classes"] = len(GENRES)
    data.class_names = list(GENRES)
    data.artifacts.update(tokenizers.names_file(tokenizers.CLASSES, GENRES))  # classify, no data
    return data

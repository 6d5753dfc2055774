"""Data sets by name. Each loader takes the `data` config section and returns a data object.

A data object offers `train_iterator(batch_size, seed, rows)` (a grain iterator with
`get_state`/`set_state` over global batches, reading only `rows` of each: this process's
share, see batches.py), `eval_batches(split, batch_size, max_batches)` (padded
batches with a `mask`), `model_fields` (config the model takes from the data, such
as the vocabulary size), `meta(split)` (what evaluation needs, such as chars per token)
and `artifacts` ({file name: bytes} kept in the workdir, such as a trained tokenizer).
Loaders take the `data` config section and the workdir (None before one exists).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from genzoo.data import (
    bible,
    captions,
    corpus,
    fashion_mnist,
    sentences,
    shakespeare,
    shapes,
    sources,
    text_file,
    tokenizers,
)
from genzoo.data.captions import CaptionedImages
from genzoo.data.examples import ExampleData
from genzoo.data.images import ImageData
from genzoo.data.text import CharTokenizer, IdTokenizer, TokenStreamData
from genzoo.errors import UserError

log = logging.getLogger(__name__)


def prepared_builder(builder_cls, source_sha256: str) -> tfds.core.DatasetBuilder:
    """Builds (once) the array_record files of a TFDS builder in the genzoo cache.

    A cached build made from a different source file (another `$GENZOO_DATA_DIR`) is
    rebuilt, so switching the data folder never reads stale records.
    """
    tfds.disable_progress_bar()
    data_dir = str(sources.cache_dir() / "tfds")
    with sources.exclusive(Path(data_dir) / f".{builder_cls.name}.lock"):
        return _prepared(builder_cls, data_dir, source_sha256)


def _prepared(builder_cls, data_dir: str, source_sha256: str) -> tfds.core.DatasetBuilder:
    builder = builder_cls(data_dir=data_dir, file_format="array_record")
    if builder.is_prepared() and builder.info.metadata.get("source_sha256") != source_sha256:
        log.info("source changed; rebuilding %s", builder.data_dir)
        shutil.rmtree(builder.data_dir)
        builder = builder_cls(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        # TFDS announces the build with two prints: on stdout they broke `eval --json`, on
        # stderr they preceded a bad-input error; `genzoo -v` logs the build instead.
        log.info("building %s's records in %s (once)", builder.name, data_dir)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            builder.download_and_prepare()
        builder = builder_cls(data_dir=data_dir, file_format="array_record")
    return builder


def _concatenated(builder, split: str) -> np.ndarray:
    source = builder.as_data_source(split=split)
    records = sorted((source[i] for i in range(len(source))), key=lambda r: int(r["index"]))
    return np.concatenate([r["ids"] for r in records])


def shakespeare_splits():
    builder = prepared_builder(
        shakespeare.TinyShakespeareChar, sources.sha256_of(shakespeare.source_path())
    )
    splits = {s: _concatenated(builder, s) for s in ("train", "validation")}
    return splits, CharTokenizer(builder.info.metadata["vocab"])


def tinyshakespeare_char(cfg, workdir=None) -> TokenStreamData:
    splits, tokenizer = shakespeare_splits()
    return TokenStreamData(splits, tokenizer, seq_len=cfg.seq_len)


def _in_pieces(tokenizer, seq_len: int, artifacts: dict) -> TokenStreamData:
    char_splits, chars = shakespeare_splits()
    texts = {s: chars.decode(ids) for s, ids in char_splits.items()}
    splits = {s: np.asarray(tokenizer.encode(t), np.int32) for s, t in texts.items()}
    if not all(len(ids) for ids in splits.values()):  # an empty vocab.json, say
        raise UserError("the tokenizer turns tiny Shakespeare into no tokens: its vocabulary "
                        "files are empty or not its own")  # fmt: skip
    chars_per_token = {s: len(texts[s]) / len(splits[s]) for s in splits}
    return TokenStreamData(splits, tokenizer, seq_len, chars_per_token, artifacts)


def tinyshakespeare_bpe(cfg, workdir=None) -> TokenStreamData:
    """Tiny Shakespeare in sentencepiece pieces; the tokenizer is fit on the train split once
    and then always read back from the workdir."""

    def fit():
        splits, chars = shakespeare_splits()
        train_text = chars.decode(splits["train"])
        return tokenizers.train_sentencepiece(train_text, cfg.vocab_size, cfg.model_type)

    tokenizer = tokenizers.saved_or_trained(workdir, tokenizers.FILENAME, fit)
    return _in_pieces(tokenizer, cfg.seq_len, {tokenizers.FILENAME: tokenizer.model_proto})


def tinyshakespeare_gpt2(cfg, workdir=None) -> TokenStreamData:
    """Tiny Shakespeare in GPT-2 byte-level BPE pieces, for imported GPT-2 weights.

    The tokenizer files come from the workdir, else from `cfg.tokenizer_dir` (the run it was
    imported into or fine-tuned from), and are copied into every workdir that uses them.
    """
    files = _gpt2_files(workdir, cfg.tokenizer_dir)
    if files is None:
        folders = ", ".join(str(d) for d in (workdir, cfg.tokenizer_dir) if d)
        raise UserError(f"no GPT-2 tokenizer (vocab.json, merges.txt) in {folders}")
    return _in_pieces(tokenizers.GPT2Tokenizer(files), cfg.seq_len, files)


def _gpt2_files(*folders) -> dict[str, bytes] | None:
    """GPT-2's tokenizer files from the first of `folders` (None or "" skipped) holding them."""
    for folder in (Path(d) for d in folders if d):
        if all((folder / name).is_file() for name in tokenizers.GPT2_FILES):
            return {name: (folder / name).read_bytes() for name in tokenizers.GPT2_FILES}
    return None


def token_corpus(cfg, workdir=None) -> TokenStreamData:
    """A corpus of uint16 token ids at `cfg.path` (train.bin, val.bin: nanoGPT's layout), read
    from disk by index, never loaded whole. Text through GPT-2's tokenizer when the workdir or
    `cfg.tokenizer_dir` has its files, else as ids. Without a path, `cfg.synthetic_tokens` > 0
    generates a corpus (tests, smoke runs)."""
    path = cfg.path or (corpus.synthetic(cfg.synthetic_tokens) if cfg.synthetic_tokens else "")
    if not path:
        raise UserError("data.path: set it to a folder with train.bin and val.bin (uint16 ids)")
    if not Path(path).is_dir():
        raise UserError(f"data.path={path!r} is not a folder")
    splits, vocab_size = corpus.open_corpus(path)
    per_token = {s: 0.0 for s in splits}  # characters per token unknown: bits/token only
    files = _gpt2_files(workdir, cfg.tokenizer_dir)
    if files is None:
        return TokenStreamData(splits, IdTokenizer(vocab_size), cfg.seq_len, per_token)
    tokenizer = tokenizers.GPT2Tokenizer(files)
    if tokenizer.vocab_size < vocab_size:
        raise UserError(f"{path} has ids up to {vocab_size - 1}, beyond GPT-2's")
    return TokenStreamData(splits, tokenizer, cfg.seq_len, per_token, files)


# Characters of the Bible's English that tiny Shakespeare lacks, mapped to ones it has, so a
# Shakespeare character model can be fine-tuned on it; anything else becomes a space.
_TO_SHAKESPEARE = str.maketrans(
    {"‘": "'", "’": "'", "“": "'", "”": "'", "—": "-", "(": ",", ")": ","}
)


def bible_verses() -> dict[str, list[tuple[str, str, str]]]:
    """(reference, Spanish, English) per verse in corpus order, for every split present."""
    builder = prepared_builder(bible.BibleEsEn, bible.sources_digest(bible.source_paths()))
    verses = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split=split)
        records = sorted(source.__getitems__(range(len(source))), key=lambda r: int(r["index"]))
        text = lambda r, key: bytes(r[key]).decode("utf-8")
        verses[split] = [(text(r, "ref"), text(r, "es"), text(r, "en")) for r in records]
    return verses


def bible_en_char(cfg, workdir=None) -> TokenStreamData:
    """The Bible's English side, one verse per line, in tiny Shakespeare's characters."""
    vocab = tinyshakespeare_char(cfg).tokenizer.vocab
    tokenizer = CharTokenizer(vocab)
    splits = {}
    for split, verses in bible_verses().items():
        if split == "test":
            continue  # the char model's splits are a token stream's train and validation
        text = "\n".join(en for _, _, en in verses) + "\n"
        text = "".join(ch if ch in vocab else " " for ch in text.translate(_TO_SHAKESPEARE))
        splits[split] = np.asarray(tokenizer.encode(text), np.uint8)
    return TokenStreamData(splits, tokenizer, seq_len=cfg.seq_len)


def bible_es_en(cfg, workdir=None) -> ExampleData:
    """Spanish -> English verse pairs: `src` = Spanish + EOS, `tgt` = BOS + English + EOS.

    `cfg.tokenizer`: "joint" (one sentencepiece model for both languages, so embeddings can
    be shared) or "separate" (one per language); fit on the train split, kept in the workdir.
    """
    verses = bible_verses()
    train = verses["train"]
    if cfg.tokenizer not in ("joint", "separate"):
        raise UserError(f"data.tokenizer must be joint or separate, got {cfg.tokenizer!r}")
    fit = lambda texts: lambda: tokenizers.train_sentence_pieces(texts, cfg.vocab_size)
    kept = functools.partial(tokenizers.saved_or_trained, workdir)
    if cfg.tokenizer == "joint":
        both = [s for _, es, en in train for s in (es, en)]
        src_tok = tgt_tok = kept(tokenizers.FILENAME, fit(both))
        artifacts = {tokenizers.FILENAME: src_tok.model_proto}
    else:
        src_tok = kept(tokenizers.SEPARATE["src"], fit([v[1] for v in train]))
        tgt_tok = kept(tokenizers.SEPARATE["tgt"], fit([v[2] for v in train]))
        artifacts = tokenizers.files_of({"src": src_tok, "tgt": tgt_tok})
    bos, eos = [tokenizers.BOS], [tokenizers.EOS]
    splits, texts = {}, {}
    for split, rows in verses.items():
        src = [np.asarray(src_tok.encode(es) + eos, np.int32) for _, es, _ in rows]
        tgt = [np.asarray(bos + tgt_tok.encode(en) + eos, np.int32) for _, _, en in rows]
        splits[split] = {"src": src, "tgt": tgt}
        texts[split] = {"src": [r[1] for r in rows], "tgt": [r[2] for r in rows],
                        "ref": [r[0] for r in rows]}  # fmt: skip
    lengths = {"src": cfg.max_src_len, "tgt": cfg.max_tgt_len}
    fields = {"src_vocab_size": src_tok.vocab_size, "tgt_vocab_size": tgt_tok.vocab_size}
    tokens = {"src": src_tok, "tgt": tgt_tok}
    pack = bool(cfg.get("pack", False))
    return ExampleData(splits, lengths, texts, tokens, fields, artifacts, pack=pack)


def _built_tfds(name: str) -> Path:
    """The newest built version of TFDS data set `name` under $TFDS_DATA_DIR (default
    ~/tensorflow_datasets), read from its folder: looking it up by name makes TFDS import
    its whole catalogue, whose `fashion_mnist` collides with genzoo's builder (a logged
    traceback), and a missing set lists hundreds of names."""
    root = Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")
    versions = [p for p in (root / name).glob("*.*.*") if (p / "dataset_info.json").is_file()]
    if not versions:
        build = f"tfds build {name} --file_format=array_record"
        raise UserError(f"TFDS {name} is not built in {root} (set TFDS_DATA_DIR to its folder, "
                        f"or build it once: {build})")  # fmt: skip
    return max(versions, key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))


def wmt14_en_de(cfg, workdir=None) -> ExampleData:
    """WMT 2014 English -> German from TFDS (`wmt14_translate/de-en`, built once by the user),
    or `cfg.synthetic_examples` random id pairs (tests: the model builds and steps)."""
    if cfg.synthetic_examples:
        rng = np.random.default_rng(0)
        ids = lambda n: [rng.integers(7, cfg.vocab_size, rng.integers(3, n)).astype(np.int32)
                         for _ in range(cfg.synthetic_examples)]  # fmt: skip
        splits = {s: {"src": ids(cfg.max_src_len), "tgt": ids(cfg.max_tgt_len)}
                  for s in ("train", "validation")}  # fmt: skip
        texts = {s: {"src": [""] * cfg.synthetic_examples, "tgt": [""] * cfg.synthetic_examples}
                 for s in splits}  # fmt: skip
        fields = {"src_vocab_size": cfg.vocab_size, "tgt_vocab_size": cfg.vocab_size}
        lengths = {"src": cfg.max_src_len, "tgt": cfg.max_tgt_len}
        return ExampleData(splits, lengths, texts, {}, fields)
    folder = _built_tfds("wmt14_translate/de-en")
    try:
        builder = tfds.builder_from_directory(str(folder))
        sources_ = {s: builder.as_data_source(split=s) for s in ("train", "validation", "test")}
    except Exception as e:  # a damaged folder, or one built as tfrecord (no random access)
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"TFDS wmt14_translate/de-en cannot be read: {first}") from None
    pairs = {s: [(bytes(r["en"]).decode(), bytes(r["de"]).decode()) for r in src]
             for s, src in sources_.items()}  # fmt: skip
    sample = [t for pair in pairs["train"][: cfg.tokenizer_sentences // 2] for t in pair]
    fit = lambda: tokenizers.train_sentence_pieces(sample, cfg.vocab_size)
    tok = tokenizers.saved_or_trained(workdir, tokenizers.FILENAME, fit)
    bos, eos = [tokenizers.BOS], [tokenizers.EOS]
    splits = {s: {"src": [np.asarray(tok.encode(en) + eos, np.int32) for en, _ in rows],
                  "tgt": [np.asarray(bos + tok.encode(de) + eos, np.int32) for _, de in rows]}
              for s, rows in pairs.items()}  # fmt: skip
    texts = {s: {"src": [en for en, _ in rows], "tgt": [de for _, de in rows]}
             for s, rows in pairs.items()}  # fmt: skip
    fields = {"src_vocab_size": tok.vocab_size, "tgt_vocab_size": tok.vocab_size}
    lengths = {"src": cfg.max_src_len, "tgt": cfg.max_tgt_len}
    return ExampleData(splits, lengths, texts, {"src": tok, "tgt": tok}, fields,
                       {tokenizers.FILENAME: tok.model_proto})  # fmt: skip


def _all_examples(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    source = builder.as_data_source(split=split)
    records = source.__getitems__(range(len(source)))
    return np.stack([r["image"] for r in records]), np.array([r["label"] for r in records])


def fashion_mnist_images(cfg, workdir=None) -> ImageData:
    digest = fashion_mnist.sources_digest(fashion_mnist.source_paths())
    builder = prepared_builder(fashion_mnist.FashionMnist, digest)
    splits = {s: _all_examples(builder, s) for s in ("train", "test")}
    return ImageData(splits, builder.info.metadata["class_names"])


def shapes_captioned(cfg, workdir=None) -> CaptionedImages:
    """The procedural scenes with their captions: `cfg.splits` (default train, validation,
    heldout), trained on `cfg.train_split` (the judge trains on `any`)."""
    splits = tuple(cfg.get("splits", ("train", "validation", "heldout")))
    unknown = sorted(set(splits) - set(shapes.SPLITS))
    if unknown:
        raise UserError(f"data.splits: no shapes split {unknown} (have {', '.join(shapes.SPLITS)})")
    train_split = cfg.get("train_split", "train")
    if train_split not in splits:
        raise UserError(f"data.train_split={train_split!r} is not among data.splits {splits}")
    builder = prepared_builder(shapes.Shapes, shapes.source_digest())
    tokenizer = captions.WordTokenizer(shapes.VOCABULARY)
    return CaptionedImages(captions.shapes_splits(builder, splits), tokenizer,
                           cfg.get("max_caption_len", 12), train_split=train_split)  # fmt: skip


def fashion_mnist_captioned(cfg, workdir=None) -> CaptionedImages:
    """Fashion-MNIST with captions from its class names ("a photo of a sneaker", ...)."""
    digest = fashion_mnist.sources_digest(fashion_mnist.source_paths())
    builder = prepared_builder(fashion_mnist.FashionMnist, digest)
    splits = {}
    for split in ("train", "test"):
        images, labels = _all_examples(builder, split)
        phrasings = [captions.fashion_phrasings(int(y)) for y in labels]
        splits[split] = (images, {"label": labels}, phrasings)
    tokenizer = captions.WordTokenizer(captions.fashion_vocabulary())
    prompts = [captions.fashion_phrasings(k) for k in range(len(fashion_mnist.CLASS_NAMES))]
    return CaptionedImages(splits, tokenizer, cfg.get("max_caption_len", 8),
                           list(fashion_mnist.CLASS_NAMES), prompts)  # fmt: skip


LOADERS = {
    "tinyshakespeare_char": tinyshakespeare_char,
    "fashion_mnist": fashion_mnist_images,
    "bible_en_char": bible_en_char,
    "tinyshakespeare_bpe": tinyshakespeare_bpe,
    "tinyshakespeare_gpt2": tinyshakespeare_gpt2,
    "token_corpus": token_corpus,
    "bible_es_en": bible_es_en,
    "wmt14_en_de": wmt14_en_de,
    "english_mlm": sentences.english_mlm,
    "bible_genre": sentences.bible_genre,
    "shapes": shapes_captioned,
    "fashion_mnist_captions": fashion_mnist_captioned,
    "text_file": text_file.text_file,
}


def load(cfg, workdir=None):
    """The data object for a `data` config section (and the run's workdir, if it has one)."""
    if cfg.name not in LOADERS:
        raise UserError(f"unknown data set {cfg.name!r} (known: {', '.join(LOADERS)})")
    return LOADERS[cfg.name](cfg, workdir)

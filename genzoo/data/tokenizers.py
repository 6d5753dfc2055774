"""Subword tokenizers: sentencepiece (BPE or unigram) trained in-tree, byte fallback on.

Settings keep text exactly: no normalisation, no dummy prefix, whitespace and newlines
kept as pieces, and bytes for anything unseen, so `decode(encode(s)) == s` for any `s`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece as spm

from genzoo.errors import UserError

FILENAME = "tokenizer.model"
SEPARATE = {"src": "tokenizer_src.model", "tgt": "tokenizer_tgt.model"}  # a translation's two
GPT2_FILES = ("vocab.json", "merges.txt")
CHARS = "chars.json"  # a character model's alphabet, as one JSON string
WORDS = "words.json"  # a caption model's closed vocabulary, as a JSON list of words
CLASSES = "classes.json"  # a classifier's class names, as a JSON list


class SentencePieceTokenizer:
    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, OSError) as e:
            raise UserError(f"{FILENAME} is corrupt: {e}") from None

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    def piece_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)

    @property
    def artifacts(self) -> dict:
        return {FILENAME: self.model_proto}

    def id_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))


def saved_or_trained(workdir, name: str, train) -> SentencePieceTokenizer:
    """The tokenizer saved in the workdir as `name`, else `train()` (the trainer saves it
    there as an artifact), so a run keeps its pieces when its text changes."""
    saved = Path(workdir) / name if workdir else None
    if saved is not None and saved.is_file():
        return SentencePieceTokenizer(saved.read_bytes())
    return train()


# Ids of the special pieces in sentence tokenizers (`train_sentence_pieces`).
PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_sentencepiece(text: str, vocab_size: int, model_type: str) -> SentencePieceTokenizer:
    """A tokenizer that keeps `text` exactly, fit on it in 2,000-character chunks (a stream
    of text has no sentences)."""
    chunks = (text[i : i + 2000] for i in range(0, len(text), 2000))
    return _train(
        chunks, vocab_size, model_type,
        user_defined_symbols=["\n"], add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True,
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
    )  # fmt: skip


def train_sentence_pieces(sentences, vocab_size: int, model_type="bpe", symbols=()):
    """A tokenizer for sentences (translation, BERT): NFKC-normalised, whitespace folded, a
    word-start prefix, the special ids PAD, UNK, BOS, EOS = 0, 1, 2, 3, then `symbols`
    (such as "[MASK]") as single pieces with the next ids."""
    return _train(
        iter(sentences), vocab_size, model_type, normalization_rule_name="nmt_nfkc",
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, user_defined_symbols=list(symbols),
        hard_vocab_limit=False,  # a small corpus (a test's) may not fill the vocabulary
    )  # fmt: skip


def _train(sentences, vocab_size: int, model_type: str, **options) -> SentencePieceTokenizer:
    if model_type not in ("bpe", "unigram"):
        raise UserError(f"tokenizer model_type must be bpe or unigram, got {model_type!r}")
    buffer = io.BytesIO()
    try:
        _train_into(buffer, sentences, vocab_size, model_type, **options)
    except RuntimeError as e:  # sentencepiece reports bad settings (a vocabulary too small)
        raise UserError(f"cannot train the tokenizer: {str(e).split('] ')[-1]} "
                        "(data.vocab_size sets it)") from None  # fmt: skip
    return SentencePieceTokenizer(buffer.getvalue())


def _train_into(buffer, sentences, vocab_size: int, model_type: str, **options) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences,
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        max_sentence_length=1 << 16,
        num_threads=2,
        minloglevel=2,
        **options,
    )


class GPT2Tokenizer:
    """GPT-2's byte-level BPE from `vocab.json` + `merges.txt` (Hugging Face `tokenizers`)."""

    def __init__(self, files: dict[str, bytes]):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        self.files = files
        try:
            vocab = json.loads(files["vocab.json"])
            lines = files["merges.txt"].decode("utf-8").splitlines()
            merges = [tuple(m.split(" ")) for m in lines if m and not m.startswith("#version")]
            self._tok = Tokenizer(models.BPE(vocab, merges))
        except (ValueError, KeyError, TypeError, Exception) as e:  # the Rust side raises Exception
            raise UserError(f"GPT-2 tokenizer files are corrupt: {e}") from None
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tok.decoder = decoders.ByteLevel()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    @property
    def artifacts(self) -> dict:
        return dict(self.files)


WORDPIECE_FILE = "vocab.txt"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class WordPieceTokenizer:
    """BERT's WordPiece from a Hugging Face `vocab.txt` (the `tokenizers` library), lower-cased
    or not as the checkpoint was trained; [MASK] and the other specials stay single tokens."""

    def __init__(self, vocab_txt: bytes, lowercase: bool = True):
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

        self.vocab_txt, self.lowercase = vocab_txt, lowercase
        try:
            lines = vocab_txt.decode("utf-8").splitlines()
            vocab = {token: i for i, token in enumerate(lines)}
            self._tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        except Exception as e:  # the Rust side raises Exception
            raise UserError(f"{WORDPIECE_FILE} is corrupt: {e}") from None
        self._tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        self._tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tok.decoder = decoders.WordPiece()
        self._tok.add_special_tokens([t for t in BERT_SPECIALS if t in vocab])
        self.first_word_id = 1 + max(vocab.get(t, 0) for t in BERT_SPECIALS)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def artifacts(self) -> dict:
        return {WORDPIECE_FILE: self.vocab_txt}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def piece_id(self, piece: str) -> int:
        return self._tok.token_to_id(piece)


def _read_json(path: Path, valid, expected: str):
    """The JSON value in `path` (a file a run keeps), refused in one line unless `valid(value)`."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        value = None
    if value is None or not valid(value):
        raise UserError(f"{path} is corrupt: expected {expected}")
    return value


def read_chars(path: Path) -> str:
    """The alphabet in a run's `chars.json`."""
    return _read_json(path, lambda v: isinstance(v, str) and v, "a JSON string of characters")


def read_names(path: Path, what: str) -> list[str]:
    """The names in a run's `words.json` or `classes.json` (`what` names them in errors)."""
    valid = lambda v: isinstance(v, list) and v and all(isinstance(n, str) for n in v)  # noqa: E731
    return _read_json(path, valid, f"a JSON list of {what}")


def names_file(name: str, names) -> dict[str, bytes]:
    """{name: the JSON list of `names`}: an artifact `read_names` reads back; no names (a data
    set without classes), no file."""
    names = [] if names is None else list(names)
    return {name: json.dumps(names).encode("utf-8")} if names else {}


def subword(folder, lowercase: bool = True):
    """The WordPiece or sentencepiece tokenizer a folder keeps, else None: a BERT's `vocab.txt`
    before a `tokenizer.model` (the sentence loaders' precedence, which `saved` keeps too)."""
    folder = Path(folder)
    if (folder / WORDPIECE_FILE).is_file():
        return WordPieceTokenizer((folder / WORDPIECE_FILE).read_bytes(), lowercase)
    if (folder / FILENAME).is_file():
        return SentencePieceTokenizer((folder / FILENAME).read_bytes())
    return None


def saved(folder, lowercase: bool = True) -> dict | None:
    """A run's tokenizers by field, read from the files its workdir keeps, so a run samples
    (or reads captions) on a machine without its data set: {"src", "tgt"} for a translation's
    separate pair, else one tokenizer serving "tokens", "src" and "tgt". None where the folder
    keeps none (a run that predates chars.json or words.json, a corpus of bare ids): its data
    then says.
    `lowercase`: a WordPiece vocabulary's casing (`data.lowercase`)."""
    from genzoo.data.captions import WordTokenizer  # beside the data that reads them
    from genzoo.data.text import CharTokenizer

    folder = Path(folder)
    has = lambda *names: all((folder / n).is_file() for n in names)  # noqa: E731
    read = lambda name: (folder / name).read_bytes()  # noqa: E731
    if has(*SEPARATE.values()):
        return {f: SentencePieceTokenizer(read(name)) for f, name in SEPARATE.items()}
    one = subword(folder, lowercase)
    if one is None:
        if has(*GPT2_FILES):
            one = GPT2Tokenizer({name: read(name) for name in GPT2_FILES})
        elif has(CHARS):
            one = CharTokenizer(read_chars(folder / CHARS))
        elif has(WORDS):
            one = WordTokenizer(read_names(folder / WORDS, "caption words"))
        else:
            return None
    return every_field(one)


def every_field(tokenizer) -> dict:
    """One tokenizer serving every field a kind reads: "tokens", and a translation's "src" and
    "tgt" (a joint vocabulary)."""
    return dict.fromkeys(("tokens", "src", "tgt"), tokenizer)


def files_of(tokenizers: dict) -> dict[str, bytes]:
    """The files that rebuild `tokenizers` ({field: tokenizer}) with `saved`."""
    if set(tokenizers) >= set(SEPARATE) and tokenizers["src"] is not tokenizers["tgt"]:
        return {SEPARATE[f]: tokenizers[f].model_proto for f in SEPARATE}
    files = {}
    for tokenizer in {id(t): t for t in tokenizers.values()}.values():
        files.update(getattr(tokenizer, "artifacts", {}))
    return files

"""Sentencepiece tokenizer: exact round trips, byte fallback, trained once per workdir."""

import json

import pytest

from genzoo import cli
from genzoo.data import tokenizers
from genzoo.data.captions import EOS, WordTokenizer
from genzoo.errors import UserError


@pytest.fixture(scope="module")
def bpe(text):
    return tokenizers.train_sentencepiece(text, 400, "bpe")


@pytest.mark.parametrize(
    "sample", ["KING:\nThe lord  is good.\n\n", "caf\u00e9 \u2713 \U0001f600", " \t x"]
)
def test_round_trip_is_exact_with_byte_fallback(bpe, sample):
    ids = bpe.encode(sample)
    assert bpe.decode(ids) == sample
    assert all(0 <= i < bpe.vocab_size for i in ids)


def test_bpe_compresses_and_unigram_is_selectable(bpe, text):
    assert len(bpe.encode(text)) < len(text) / 1.5
    unigram = tokenizers.train_sentencepiece(text, 350, "unigram")  # > 65 symbols + 256 bytes
    assert unigram.decode(unigram.encode(text[:500])) == text[:500]
    with pytest.raises(UserError):
        tokenizers.train_sentencepiece(text, 400, "wordpiece")


def test_corrupt_tokenizer_file_is_a_user_error():
    with pytest.raises(UserError, match="corrupt"):
        tokenizers.SentencePieceTokenizer(b"not a model")


def test_workdir_keeps_its_tokenizer_across_resume(tmp_path, capsys):
    wd = tmp_path / "bpe"
    argv = ["train", "gpt_shakespeare_bpe", "--variant", "smoke", "--workdir", str(wd)]
    assert cli.main(argv) == 0
    saved = (wd / "tokenizer.model").read_bytes()
    assert cli.main([*argv, "--set", "train.steps=22"]) == 0
    assert (wd / "tokenizer.model").read_bytes() == saved
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(wd), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    # Pieces are longer than characters: bits per char are fewer than bits per token.
    assert figures["bits_per_char"] < figures["bits_per_token"] / 1.5


def test_saved_tokenizers_are_read_from_the_workdirs_files_alone(bpe, tmp_path):
    """What `Run.tokenizers` reads where the data set is absent: a translation's separate pair
    stays two, one file serves every field, a BERT's vocab.txt wins as its loader's does."""
    assert tokenizers.saved(tmp_path) is None  # a run that keeps none: its data then says
    other = tokenizers.train_sentencepiece("hola mundo, adios mundo. " * 40, 300, "bpe")
    pair = tmp_path / "pair"
    pair.mkdir()
    for name, payload in tokenizers.files_of({"src": other, "tgt": bpe}).items():
        (pair / name).write_bytes(payload)
    kept = tokenizers.saved(pair)
    assert set(kept) == {"src", "tgt"}
    assert kept["src"].model_proto == other.model_proto != kept["tgt"].model_proto
    assert kept["tgt"].model_proto == bpe.model_proto
    one = tmp_path / "one"
    one.mkdir()
    (one / tokenizers.FILENAME).write_bytes(bpe.model_proto)
    kept = tokenizers.saved(one)
    assert kept["tokens"] is kept["src"] is kept["tgt"]
    (one / tokenizers.WORDPIECE_FILE).write_bytes(b"[PAD]\n[UNK]\nthe\n")
    assert isinstance(tokenizers.saved(one)["tokens"], tokenizers.WordPieceTokenizer)
    chars = tmp_path / "chars"
    chars.mkdir()
    (chars / tokenizers.CHARS).write_text(json.dumps("\n ab"))
    assert tokenizers.saved(chars)["tokens"].encode("ba a\n") == [3, 2, 1, 2, 0]
    (chars / tokenizers.CHARS).write_text("[1, 2]")
    with pytest.raises(UserError, match="chars.json is corrupt"):
        tokenizers.saved(chars)
    words = tmp_path / "words"
    words.mkdir()
    caption = WordTokenizer(["red", "circle", "a"])
    for name, payload in caption.artifacts.items():
        (words / name).write_bytes(payload)
    kept = tokenizers.saved(words)["tokens"]
    assert kept.words == caption.words and kept.encode("a red circle") == [2, 4, 3, EOS]
    for corrupt in ("[]", '"red"', "[1, 2]", "{"):
        (words / tokenizers.WORDS).write_text(corrupt)
        with pytest.raises(UserError, match="words.json is corrupt: expected a JSON list"):
            tokenizers.saved(words)

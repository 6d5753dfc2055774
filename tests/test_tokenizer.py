"""Sentencepiece tokenizer: exact round trips, byte fallback, trained once per workdir."""

import json

import pytest

from genzoo import cli
from genzoo.data import tokenizers
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

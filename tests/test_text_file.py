"""A text file of the user's as a data set (`data.name=text_file`, experiment gpt_text_file)."""

import json

import ml_collections
import numpy as np
import pytest

from genzoo import cli, data
from genzoo.data import shakespeare, tokenizers


def _cfg(path, tokenizer="char"):
    return ml_collections.ConfigDict(
        dict(name="text_file", path=str(path), tokenizer=tokenizer, vocab_size=400, seq_len=32)
    )


def test_tiny_shakespeare_as_a_text_file_is_the_char_data_set(char_data):
    """nanoGPT's prepare.py split and alphabet: the same ids as `tinyshakespeare_char` (and in
    BPE pieces as `tinyshakespeare_bpe`), so gpt_text_file on input.txt is the demo run."""
    mine = data.load(_cfg(shakespeare.source_path()))
    assert mine.tokenizer.vocab == char_data.tokenizer.vocab
    for split in ("train", "validation"):
        np.testing.assert_array_equal(mine.splits[split], char_data.splits[split])
    assert mine.chars_per_token == {"train": 1.0, "validation": 1.0}
    pieces = data.load(_cfg(shakespeare.source_path(), "bpe"))  # and gpt_shakespeare_bpe's
    bpe = dict(name="tinyshakespeare_bpe", seq_len=32, vocab_size=400, model_type="bpe")
    theirs = data.load(ml_collections.ConfigDict(bpe))
    for split in ("train", "validation"):
        np.testing.assert_array_equal(pieces.splits[split], theirs.splits[split])
    assert pieces.chars_per_token == theirs.chars_per_token


def test_bpe_pieces_are_fit_once_and_read_back_from_the_workdir(text, tmp_path):
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    first = data.load(_cfg(tmp_path / "t.txt", "bpe"))
    assert first.tokenizer.vocab_size == 400 and first.chars_per_token["train"] > 1.5
    run = tmp_path / "run"
    run.mkdir()
    (run / tokenizers.FILENAME).write_bytes(first.artifacts[tokenizers.FILENAME])
    # A changed file is still read in the run's pieces, not refit.
    (tmp_path / "t.txt").write_text(text[::-1], encoding="utf-8")
    again = data.load(_cfg(tmp_path / "t.txt", "bpe"), run)
    assert again.tokenizer.model_proto == first.tokenizer.model_proto


def test_a_text_file_trains_samples_and_keeps_its_alphabet(text, tmp_path, capsys):
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    run = tmp_path / "run"
    argv = ["train", "gpt_text_file", "--variant", "smoke", "--workdir", str(run),
            "--set", f"data.path={tmp_path / 't.txt'}", "--set", "log.progress=false"]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads((run / "chars.json").read_text()) == "".join(sorted(set(text)))
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", str(run), "--prompt", "KING:", "--seed", "0",
                     "--max-new-tokens", "8"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("KING:")
    # Fewer characters in the file now: read in the saved alphabet (65 ids, as trained).
    (tmp_path / "t.txt").write_text(text.replace("z", "s"), encoding="utf-8")
    assert cli.main(["eval", "--workdir", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 20
    # A character the run never saw: one line naming the file.
    (tmp_path / "t.txt").write_text(text + "\u20ac", encoding="utf-8")
    assert cli.main(["eval", "--workdir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "t.txt does not fit this run's alphabet: characters not in the vocabulary" in err


def test_char_ids_are_the_char_tokenizers_in_chunks():
    from genzoo.data.text import CharTokenizer
    from genzoo.data.text_file import char_ids
    from genzoo.errors import UserError

    text = "héllo wörld \U0001f600\n" * 50  # a code point beyond 16 bits among the others
    alphabet = "".join(sorted(set(text)))
    ids = char_ids(text, alphabet, chunk=7)  # chunks that split the text anywhere
    assert ids.dtype == np.uint16
    np.testing.assert_array_equal(ids, CharTokenizer(alphabet).encode(text))
    with pytest.raises(UserError, match="characters not in the vocabulary: 'zé'"):
        char_ids("zé" + text, alphabet.replace("é", ""), chunk=7)


def test_characters_outside_the_alphabet_are_dropped_or_replaced_when_asked(caplog):
    from genzoo.data.text_file import _unknown_chars, char_ids
    from genzoo.errors import UserError

    alphabet = " abc"
    text = "a€b c€€\U0001f600a" * 3  # € three times a line, 😀 once
    with caplog.at_level("WARNING", logger="genzoo.data.text_file"):
        dropped = char_ids(text, alphabet, chunk=5, unknown=_unknown_chars("drop", alphabet))
    np.testing.assert_array_equal(dropped, char_ids("ab ca" * 3, alphabet))
    assert "12 characters outside the alphabet dropped: €\U0001f600" in caplog.text
    spaced = char_ids(text, alphabet, chunk=5, unknown=_unknown_chars(" ", alphabet))
    np.testing.assert_array_equal(spaced, char_ids("a b c   a" * 3, alphabet))
    for bad in ("z", "ab", ""):
        with pytest.raises(UserError, match="data.unknown_chars must be refuse, drop or one"):
            _unknown_chars(bad, alphabet)


def test_a_fine_tune_from_the_demo_reads_the_text_in_the_demos_alphabet(
    text, char_run, tmp_path, capsys
):
    demo = char_run
    (tmp_path / "t.txt").write_text("the king and the queen\n" * 200, encoding="utf-8")
    tune = ["train", "gpt_text_file", "--variant", "smoke", "--init-from", str(demo),
            "--set", f"data.path={tmp_path / 't.txt'}", "--set", "log.progress=false"]  # fmt: skip
    capsys.readouterr()
    # In its own 11 characters each id would mean another character than in the demo; both
    # embeddings have 128 rows (padded), so no shape told.
    assert cli.main([*tune, "--workdir", str(tmp_path / "own")]) == 2
    assert "reads text in other tokens than this run" in capsys.readouterr().err
    assert not (tmp_path / "own").exists()
    mine = [*tune, "--set", f"data.alphabet_from={demo}"]
    assert cli.main([*mine, "--workdir", str(tmp_path / "tuned")]) == 0
    alphabet = json.loads((tmp_path / "tuned" / "chars.json").read_text())
    assert alphabet == "".join(sorted(set(text))) and len(alphabet) == 65
    (tmp_path / "t.txt").write_text("the king \u20ac\n" * 200, encoding="utf-8")
    capsys.readouterr()
    assert cli.main([*mine, "--workdir", str(tmp_path / "euro")]) == 2
    err = capsys.readouterr().err
    assert f"does not fit {demo}'s alphabet: characters not in the vocabulary: '\u20ac'" in err
    assert "data.unknown_chars=drop" in err and not (tmp_path / "euro").exists()
    assert cli.main([*mine, "--workdir", str(tmp_path / "euro"), "--set",
                     "data.unknown_chars= "]) == 0  # fmt: skip
    assert json.loads((tmp_path / "euro" / "chars.json").read_text()) == alphabet

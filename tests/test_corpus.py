"""Token corpora read from array_record by index: the bytes, the windows, a run on one."""

import json

import ml_collections
import numpy as np
import pytest

from genzoo import cli, data
from genzoo.data import corpus

PERIOD = 500  # token i is i % PERIOD: every window's content follows from its first id


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    n = 3 * corpus.CHUNK + 123  # a partial last chunk
    (np.arange(n) % PERIOD).astype(np.uint16).tofile(folder / "train.bin")
    (np.arange(999) % PERIOD).astype(np.uint16).tofile(folder / "val.bin")
    return folder


def test_record_tokens_read_what_the_files_hold(corpus_dir):
    splits, vocab_size = corpus.open_corpus(corpus_dir)
    ref = np.fromfile(corpus_dir / "train.bin", np.uint16)
    train = splits["train"]
    assert vocab_size == PERIOD and len(train) == len(ref) and len(splits["validation"]) == 999
    rng = np.random.default_rng(0)
    idx_BxL = rng.integers(0, len(ref) - 40, 64)[:, None] + np.arange(40)
    idx_BxL[0] = corpus.CHUNK - 20 + np.arange(40)  # across a chunk boundary
    idx_BxL[1] = len(ref) - 40 + np.arange(40)  # into the partial last chunk
    np.testing.assert_array_equal(train[idx_BxL], ref[idx_BxL])
    np.testing.assert_array_equal(train[corpus.CHUNK - 5 : 2 * corpus.CHUNK + 9],
                                  ref[corpus.CHUNK - 5 : 2 * corpus.CHUNK + 9])  # fmt: skip
    with pytest.raises(IndexError):
        train[np.array([len(ref)])]


def test_each_process_reads_its_rows_of_the_same_global_batch(corpus_dir):
    cfg = ml_collections.ConfigDict(dict(name="token_corpus", path=str(corpus_dir),
                                         tokenizer_dir="", seq_len=16))  # fmt: skip
    stream = data.load(cfg)
    it = stream.train_iterator(8, seed=3)
    full = [next(it) for _ in range(3)]
    halves = [stream.train_iterator(8, seed=3, rows=slice(4 * p, 4 * p + 4)) for p in (0, 1)]
    for batch in full:
        parts = [next(h) for h in halves]
        for key in ("inputs", "targets"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
        start_B = batch["inputs"][:, :1]
        np.testing.assert_array_equal(batch["inputs"], (start_B + np.arange(16)) % PERIOD)
        np.testing.assert_array_equal(batch["targets"], (start_B + 1 + np.arange(16)) % PERIOD)
    assert stream.decode([3, 14]) == " 3 14" and stream.encode(" 3 14") == [3, 14]


def test_a_run_on_a_corpus_learns_its_period(corpus_dir, tmp_path, capsys):
    run = str(tmp_path / "run")
    argv = ["train", "gpt_token_corpus", "--variant", "smoke", "--workdir", run,
            "--set", f"data.path={corpus_dir}", "--set", "train.steps=60",
            "--set", "optim.lr=1e-2", "--set", "log.progress=false"]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", run, "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    # ln(500) = 6.21 nats for a uniform guess; the next id is always the last + 1.
    assert figures["loss"] < 4.5 and "bits_per_char" not in figures
    assert cli.main(["sample", "--workdir", run, "--prompt", " 7 8 9 10", "--num", "1",
                     "--max-new-tokens", "3", "--temperature", "0"]) == 0  # fmt: skip
    assert capsys.readouterr().out.split()[:7] == ["7", "8", "9", "10", "11", "12", "13"]

"""Data: the TFDS builder's split and vocabulary, resumable iterators, whole-split eval, sources."""

import gzip
import hashlib
import lzma
import time

import numpy as np
import pytest
from conftest import write_idx

from genzoo.data import fashion_mnist, shakespeare, sources
from genzoo.errors import UserError


def test_split_is_ninety_ten_with_sorted_vocabulary(char_data, text):
    vocab = "".join(sorted(set(text)))
    assert char_data.tokenizer.vocab == vocab
    cut = int(0.9 * len(text))
    assert char_data.decode(char_data.splits["train"]) == text[:cut]
    assert char_data.decode(char_data.splits["validation"]) == text[cut:]


def test_windows_are_shifted_by_one(char_data):
    batch = next(char_data.train_iterator(4, seed=3))
    assert batch["inputs"].shape == batch["targets"].shape == (4, 32)
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_iterator_state_resumes_exactly(char_data):
    it = char_data.train_iterator(4, seed=5)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it)["inputs"] for _ in range(2)]
    resumed = char_data.train_iterator(4, seed=5)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["inputs"], want)
    other = next(char_data.train_iterator(4, seed=6))["inputs"]
    assert not np.array_equal(other, next(char_data.train_iterator(4, seed=5))["inputs"])


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_eval_batches_cover_the_split_once(char_data, batch_size):
    tokens = char_data.splits["validation"]
    batches = list(char_data.eval_batches("validation", batch_size))
    assert {b["inputs"].shape for b in batches} == {(batch_size, 32)}
    mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
    targets = np.concatenate([b["targets"].reshape(-1) for b in batches])
    assert mask.sum() == len(tokens) - 1
    np.testing.assert_array_equal(targets[mask == 1], tokens[1:])


def test_unknown_split_and_out_of_vocabulary_are_user_errors(char_data):
    with pytest.raises(UserError, match="unknown split"):
        list(char_data.eval_batches("test", 8))
    with pytest.raises(UserError, match="not in the vocabulary"):
        char_data.encode("caf\u00e9")


def test_missing_file_in_data_dir_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("GENZOO_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"GENZOO_DATA_DIR/tinyshakespeare/"):
        shakespeare.source_path()


def test_packaged_copy_is_the_canonical_file():
    with lzma.open(sources.ASSETS / "tinyshakespeare_input.txt.xz") as f:
        data = f.read()
    assert len(data) == 1_115_394
    assert hashlib.sha256(data).hexdigest() == shakespeare.SHA256


def test_offline_without_data_dir_unpacks_the_packaged_copy(monkeypatch, tmp_path):
    monkeypatch.delenv("GENZOO_DATA_DIR")
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path))
    path = shakespeare.source_path()
    assert path.is_relative_to(tmp_path) and sources.sha256_of(path) == shakespeare.SHA256


@pytest.fixture
def online(monkeypatch, tmp_path):
    """`sources.resolve` online with no data dir, a fresh cache, and a fake server: set
    `served["bytes"]` (or an OSError) and the canonical URL answers with it."""
    import io

    served = {"bytes": b"", "calls": 0}

    def urlopen(url, timeout):
        served["calls"] += 1
        if isinstance(served["bytes"], OSError):
            raise served["bytes"]
        return io.BytesIO(served["bytes"])

    monkeypatch.delenv("GENZOO_DATA_DIR")
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GENZOO_OFFLINE", "0")
    monkeypatch.setattr(sources.urllib.request, "urlopen", urlopen)
    return served


def _resolve_toy(payload: bytes = b"the canonical bytes\n"):
    sha = hashlib.sha256(payload).hexdigest()
    return sources.resolve("toy", "toy.txt", "https://example.org/toy.txt", sha)


def test_a_download_is_checked_cached_and_reused(online, tmp_path):
    online["bytes"] = b"the canonical bytes\n"
    path = _resolve_toy()
    assert path == tmp_path / "downloads" / "toy" / "toy.txt"
    assert path.read_bytes() == online["bytes"] and online["calls"] == 1
    online["bytes"] = OSError("offline now")
    assert _resolve_toy() == path and online["calls"] == 1  # the cached copy, not fetched


def test_a_corrupt_download_is_refused_and_leaves_nothing(online, tmp_path):
    online["bytes"] = b"the canonical bytes, changed\n"
    with pytest.raises(UserError, match="checksum mismatch for https://example.org/toy.txt"):
        _resolve_toy()
    assert list((tmp_path / "downloads" / "toy").iterdir()) == []  # no file, no .partial


def test_a_damaged_cached_file_is_fetched_again(online, tmp_path):
    online["bytes"] = b"the canonical bytes\n"
    path = _resolve_toy()
    path.write_bytes(b"the canonical bytes, damaged on disk\n")
    assert _resolve_toy().read_bytes() == online["bytes"] and online["calls"] == 2


def test_a_failed_download_falls_back_to_the_packaged_copy(online):
    online["bytes"] = OSError("no route to host")
    path = shakespeare.source_path()
    assert online["calls"] == 1 and sources.sha256_of(path) == shakespeare.SHA256


def test_fashion_mnist_builder_reads_idx_files(image_data):
    from conftest import make_images

    images, labels = image_data.splits["test"]
    want_images, want_labels = make_images(64, 1)
    assert images.shape == (64, 28, 28, 1) and image_data.class_names[0] == "T-shirt/top"
    order = np.lexsort((labels, images.reshape(64, -1).sum(1)))  # TFDS stores in hash order
    want = np.lexsort((want_labels, want_images.reshape(64, -1).sum(1)))
    np.testing.assert_array_equal(images[order, :, :, 0], want_images[want])
    np.testing.assert_array_equal(labels[order], want_labels[want])


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda good: good[: len(good) // 2], "Compressed file ended"),
        (lambda good: b"not gzip at all", "Not a gzipped file"),
        (lambda good: gzip.compress(b"\x00\x00\x0d\x01" + bytes(8)), "no idx header"),
        (lambda good: gzip.compress(gzip.decompress(good)[:-5]), "cannot reshape"),
    ],
    ids=["truncated", "not gzip", "floats", "short data"],
)
def test_a_damaged_idx_file_is_one_line_naming_it(tmp_path, damage, reason):
    write_idx(tmp_path / "good.gz", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    assert fashion_mnist.read_idx(tmp_path / "good.gz").shape == (2, 3, 4)
    (tmp_path / "bad.gz").write_bytes(damage((tmp_path / "good.gz").read_bytes()))
    with pytest.raises(UserError, match=reason) as info:
        fashion_mnist.read_idx(tmp_path / "bad.gz")
    assert str(tmp_path / "bad.gz") in str(info.value) and "\n" not in str(info.value)


def test_idx_files_that_disagree_are_one_line(monkeypatch, tmp_path):
    from genzoo import data

    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for prefix, num in (("train", 8), ("t10k", 4)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.zeros((num, 28, 28), np.uint8))
        write_idx(
            folder / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(num - (prefix == "t10k"), np.uint8)
        )
    monkeypatch.setenv("GENZOO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"t10k-\*.gz: \(4, 28, 28\) images do not match \(3,\)"):
        data.prepared_builder(fashion_mnist.FashionMnist, "x")


def test_image_eval_batches_pad_with_mask_and_index(image_data):
    batches = list(image_data.eval_batches("test", 48))
    assert len(batches) == 2 and batches[1]["image"].shape == (48, 28, 28, 1)
    assert sum(b["mask"].sum() for b in batches) == 64
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches])[:64], np.arange(64))


def test_missing_fashion_mnist_offline_says_where_to_put_files(monkeypatch, tmp_path):
    monkeypatch.delenv("GENZOO_DATA_DIR")
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"GENZOO_DATA_DIR/fashion-mnist/"):
        fashion_mnist.source_paths()


def test_bible_english_uses_the_shakespeare_vocabulary(char_data):
    import ml_collections

    from genzoo import data

    bible = data.load(ml_collections.ConfigDict({"name": "bible_en_char", "seq_len": 16}))
    assert bible.tokenizer.vocab == char_data.tokenizer.vocab
    text = bible.decode(bible.splits["validation"])
    assert text.count("\n") == 40  # one line per verse
    assert text.startswith("  ") is False and "Rest." not in text and " rest.\n" in text


@pytest.mark.parametrize(
    "content, message",
    [(b"Gen 1:1\tEn el principio\n", r"test.tsv, line 1: expected reference, Spanish and "
      r"English separated by tabs, got 2 fields"),
     (b"Gen 1:1\tEn el \xff principio\tIn the beginning\n", r"test.tsv is not UTF-8 text")],
)  # fmt: skip
def test_a_users_malformed_test_split_is_a_one_line_error(tmp_path, content, message):
    from genzoo.data import bible

    path = tmp_path / "test.tsv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        list(bible.BibleEsEn._generate_examples(None, path))


def test_building_a_data_set_prints_nothing(monkeypatch, tmp_path, capsys):
    """`genzoo eval --json` prints one JSON object on stdout, and a bad-input error is one
    line on stderr, also on the call that builds the data set's records (TFDS announces a
    build with prints)."""
    from genzoo import data

    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path))
    sha = sources.sha256_of(shakespeare.source_path())
    builder = data.prepared_builder(shakespeare.TinyShakespeareChar, sha)
    assert builder.is_prepared() and str(tmp_path) in str(builder.data_dir)
    assert capsys.readouterr() == ("", "")


def test_a_tiny_shakespeare_that_is_not_utf8_is_one_line(monkeypatch, tmp_path):
    from genzoo import data

    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(b"First \xff Citizen:\n" * 50)
    monkeypatch.setenv("GENZOO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(
        UserError, match=r"input.txt is not UTF-8 text: invalid start byte at byte 6"
    ):
        data.shakespeare_splits()


def test_a_folder_written_whole_appears_only_when_its_block_succeeds(tmp_path):
    from genzoo.data.sources import folder_atomic

    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), folder_atomic(dest) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []  # neither `out` nor the partial folder
    with folder_atomic(dest) as tmp:
        (tmp / "whole").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (dest / "whole").is_file()
    with pytest.raises(OSError), folder_atomic(dest) as tmp:  # a finished folder is kept
        (tmp / "again").write_text("y")
    with folder_atomic(dest, shared=True) as tmp:  # another process got there first: fine
        (tmp / "again").write_text("y")
    assert sorted(p.name for p in dest.iterdir()) == ["whole"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_builds_in_one_cache_take_turns(tmp_path):
    """Two processes of a run on one host built tiny Shakespeare's records at once and one
    failed renaming its build into place; the build now holds a lock on a file in the cache."""
    import threading

    inside, order = threading.Event(), []

    def first():
        with sources.exclusive(tmp_path / "cache" / ".lock"):
            inside.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(10)
    with sources.exclusive(tmp_path / "cache" / ".lock"):  # its own open file: it waits
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]

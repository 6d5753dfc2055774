"""Token corpora larger than host memory, read by index from array_record.

A corpus is a folder of nanoGPT-style files: `train.bin` and `val.bin` (or
`validation.bin`), raw little-endian uint16 token ids (what nanoGPT's `prepare.py`
writes for OpenWebText). It is turned once into array_record chunks of `CHUNK`
tokens in corpus order (record i holds tokens [i*CHUNK, (i+1)*CHUNK)), read block
by block so building needs no RAM either, and read with
`tfds.builder_from_directory(...).as_data_source`. Training then reads only the
chunks its windows touch: host memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from genzoo.data import sources
from genzoo.errors import UserError

log = logging.getLogger(__name__)

CHUNK = 4096
SPLIT_FILES = {"train": ("train.bin",), "validation": ("val.bin", "validation.bin")}


def split_files(folder: Path) -> dict[str, Path]:
    """{split: .bin file} of a corpus folder; both splits must be there."""
    found = {}
    for split, names in SPLIT_FILES.items():
        paths = [folder / n for n in names if (folder / n).is_file()]
        if not paths:
            raise UserError(f"{folder}: no {' or '.join(names)} (uint16 token ids, nanoGPT layout)")
        if paths[0].stat().st_size % 2 or paths[0].stat().st_size < 4:
            raise UserError(f"{paths[0]}: not uint16 token ids (odd or tiny size)")
        found[split] = paths[0]
    return found


def fingerprint(files: dict[str, Path]) -> str:
    """Name, size and mtime of each file: cheap for a 20 GB corpus, and any rewrite changes it."""
    parts = [
        f"{s}:{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for s, p in files.items()
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


FEATURES = {"ids": tfds.features.Tensor(shape=(None,), dtype=np.uint16, encoding="bytes")}
SHARD_RECORDS = 1 << 17  # 1 GiB of tokens per array_record file


def _write_split(folder: Path, split: str, path: Path) -> tfds.core.SplitInfo:
    """`path`'s tokens as records of CHUNK ids, in order, across shards of SHARD_RECORDS."""
    from array_record.python.array_record_module import ArrayRecordWriter

    features = tfds.features.FeaturesDict(FEATURES)
    num_records = -(-path.stat().st_size // (2 * CHUNK))
    num_shards = -(-num_records // SHARD_RECORDS)
    lengths = []
    # Plain reads, not a memory map: mapped pages count as the process's resident memory.
    with open(path, "rb") as source:
        for shard in range(num_shards):
            name = f"token_corpus-{split}.array_record-{shard:05d}-of-{num_shards:05d}"
            writer = ArrayRecordWriter(str(folder / name), "group_size:1")  # random access
            first = shard * SHARD_RECORDS
            last = min(num_records, first + SHARD_RECORDS)
            for _ in range(first, last):
                ids = np.fromfile(source, np.uint16, count=CHUNK)
                writer.write(features.serialize_example({"ids": ids}))
            writer.close()
            lengths.append(last - first)
    return tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=path.stat().st_size)


def build(files: dict[str, Path], folder: Path) -> None:
    """Writes the array_record files and TFDS metadata of a corpus into `folder` (made here;
    built beside it and renamed into place, so a killed build leaves nothing half-read).

    Not a GeneratorBasedBuilder: TFDS's writer sorts examples through a shuffle buffer that
    spills to disk with TensorFlow beyond 1 GiB; records written in order need neither."""
    # Other processes of a multi-process run may finish the same build first: theirs stays.
    with sources.folder_atomic(folder, shared=True) as tmp:
        vocab, infos = 0, []
        for split, path in files.items():
            with open(path, "rb") as source:  # the largest id, block by block
                while (block := np.fromfile(source, np.uint16, count=1 << 24)).size:
                    vocab = max(vocab, int(block.max()) + 1)
            infos.append(_write_split(tmp, split, path))
        num_tokens = {s: int(p.stat().st_size // 2) for s, p in files.items()}
        meta = {"vocab_size": vocab, "source": fingerprint(files), "num_tokens": num_tokens}
        tfds.folder_dataset.write_metadata(
            data_dir=tmp, features=FEATURES, split_infos=infos, check_data=False,
            description=__doc__, metadata=tfds.core.MetadataDict(meta), disable_shuffling=True,
        )  # fmt: skip


class RecordTokens:
    """One split's tokens as a read-only array over array_record chunks.

    Supports what token-stream readers do: `len`, slices, and integer-array gathers
    (a batch of windows), each reading only the chunks it touches. A few recent chunks
    are cached: evaluation walks the split in order.
    """

    def __init__(self, source, num_tokens: int, chunk: int = CHUNK, cache_chunks: int = 64):
        self._source, self._num, self._chunk = source, num_tokens, chunk
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_chunks = cache_chunks
        self._lock = threading.Lock()  # grain may map batches on several threads
        self.dtype = np.dtype(np.uint16)

    def __len__(self) -> int:
        return self._num

    @property
    def shape(self) -> tuple[int]:
        return (self._num,)

    def _chunks(self, ids: np.ndarray) -> np.ndarray:
        """[len(ids), chunk] array of the chunks `ids` (sorted, unique), the last zero-padded."""
        with self._lock:
            return self._chunks_locked(ids)

    def _chunks_locked(self, ids: np.ndarray) -> np.ndarray:
        missing = [int(i) for i in ids if int(i) not in self._cache]
        if missing:
            for i, record in zip(missing, self._source.__getitems__(missing), strict=True):
                self._cache[i] = np.asarray(record["ids"])
        out = np.zeros((len(ids), self._chunk), np.uint16)
        for row, i in enumerate(ids):
            data = self._cache[int(i)]
            self._cache.move_to_end(int(i))
            out[row, : len(data)] = data
        while len(self._cache) > max(self._cache_chunks, len(ids)):
            self._cache.popitem(last=False)
        return out

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self._num)
            if step != 1:
                raise IndexError("RecordTokens slices take step 1")
            index = np.arange(start, stop)
        index = np.asarray(index)
        if index.size and (index.min() < 0 or index.max() >= self._num):
            raise IndexError(f"token index out of range [0, {self._num})")
        chunk_ids, where = np.unique(index // self._chunk, return_inverse=True)
        table = self._chunks(chunk_ids)
        return table[where.reshape(index.shape), index % self._chunk]


def synthetic(num_tokens: int) -> Path:
    """A generated corpus folder in the cache (made once): token i is i % 500 plus 0 or 1, so a
    model has something to learn; 1/10 of the size again as validation."""
    folder = sources.cache_dir() / "synthetic_corpus" / str(num_tokens)
    rng = np.random.default_rng(0)
    for name, n in (("train.bin", num_tokens), ("val.bin", max(num_tokens // 10, 1024))):
        if not (folder / name).is_file():
            ids = (np.arange(n) % 500 + rng.integers(0, 2, n)).astype(np.uint16)
            sources.write_atomic(folder / name, lambda f, ids=ids: f.write(ids.tobytes()))
    return folder


def open_corpus(folder) -> tuple[dict[str, RecordTokens], int]:
    """({split: RecordTokens}, vocabulary size) of a corpus folder, building it once into the
    genzoo cache (keyed by the files' fingerprint: a rewritten corpus is rebuilt)."""
    files = split_files(Path(folder))
    built = sources.cache_dir() / "token_corpus" / fingerprint(files) / "1.0.0"
    if not (built / "dataset_info.json").is_file():
        log.info("converting %s to array_record in %s", folder, built)
        built.parent.mkdir(parents=True, exist_ok=True)
        build(files, built)
    builder = tfds.builder_from_directory(str(built))
    meta = builder.info.metadata
    splits = {
        split: RecordTokens(builder.as_data_source(split=split), meta["num_tokens"][split])
        for split in files
    }
    return splits, int(meta["vocab_size"])

"""Finding a data set's raw files: `$GENZOO_DATA_DIR`, the canonical URL, or a local copy.

Order: an explicit `$GENZOO_DATA_DIR/<data set>/<file>` wins; otherwise the canonical
file is downloaded once (sha256-checked) into the cache unless `GENZOO_OFFLINE=1`; if
that fails, the copy shipped inside the package, then system folders (e.g. Debian's
`dataset-fashion-mnist`), are used when they have the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import lzma
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from genzoo.errors import UserError, env_choice

log = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parent / "assets"


def cache_dir() -> Path:
    """Where built data sets, tokenizers and codes go (created on first use); one that cannot
    be created or written is bad input naming GENZOO_CACHE_DIR, not a traceback from the
    first file written there."""
    path = Path(os.environ.get("GENZOO_CACHE_DIR", Path.home() / ".cache" / "genzoo"))
    try:
        path.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(path, os.W_OK | os.X_OK) else "not writable"
    except OSError as e:
        problem = e.strerror
    if problem:
        raise UserError(f"cannot use {path} as genzoo's cache ({problem}); "
                        "set GENZOO_CACHE_DIR to a writable folder")  # fmt: skip
    return path


def read_utf8(path: Path, encoding: str = "utf-8") -> str:
    """A text file's contents; one that is not UTF-8 is bad input naming the byte."""
    try:
        return Path(path).read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text: {e.reason} at byte {e.start}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def write_atomic(dest: Path, write) -> None:
    """Creates `dest` via `write(binary_file)` in a temp file renamed into place: a failure
    (or a crash) never leaves a half-written `dest` behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".partial-")
    try:
        # mkstemp makes the file 0600: a run's config, a translation or a PNG would be
        # unreadable to the rest of a team. Keep the file's own mode, else the umask's.
        os.fchmod(fd, dest.stat().st_mode & 0o777 if dest.exists() else 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def folder_atomic(dest: Path, shared: bool = False):
    """Yields a new folder beside `dest`, renamed to `dest` when the block ends without an
    error and removed otherwise: a failure or a kill never leaves a half-written `dest`.
    `shared`: other processes may build the same folder (a multi-process run); the first
    rename wins and the others' copies are dropped."""
    dest = Path(dest)
    tmp = dest.with_name(f".partial-{dest.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (shared and dest.is_dir()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def exclusive(lock: Path):
    """Holds an advisory lock on the file `lock` (created) for the block: processes that share
    the cache (a multi-process run on one host) build a data set one at a time, the later
    ones finding it built (two renaming TFDS's build into place at once was a
    FileExistsError)."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _download(url: str, dest: Path, sha256: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            write_atomic(dest, lambda out: shutil.copyfileobj(response, out))
    except OSError as e:
        log.info("download of %s failed (%s); falling back to local copies", url, e)
        return False
    if sha256_of(dest) != sha256:
        dest.unlink()
        raise UserError(f"checksum mismatch for {url}: the download is corrupt or changed")
    return True


def tensor_dataset_info(builder, description: str, homepage: str, features: dict):
    """DatasetInfo with plain tensor features ({name: (shape, numpy dtype)}): no TensorFlow."""
    import tensorflow_datasets as tfds

    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=tfds.features.FeaturesDict(
            {
                k: tfds.features.Tensor(shape=shape, dtype=dtype)
                for k, (shape, dtype) in features.items()
            }
        ),
        metadata=tfds.core.MetadataDict(),
        homepage=homepage,
    )


def resolve(
    dataset: str, filename: str, url: str, sha256: str, packaged: str = "", system_dirs=()
) -> Path:
    """Local path of `filename` of `dataset`, fetching or unpacking it if needed."""
    data_dir = os.environ.get("GENZOO_DATA_DIR")
    if data_dir:
        path = Path(data_dir) / dataset / filename
        if not path.is_file():
            raise UserError(f"{path} not found: put {filename} in $GENZOO_DATA_DIR/{dataset}/")
        return path
    cached = cache_dir() / "downloads" / dataset / filename
    if cached.is_file() and sha256_of(cached) == sha256:
        return cached
    if url and env_choice("GENZOO_OFFLINE") == "0" and _download(url, cached, sha256):
        return cached
    if packaged and (ASSETS / packaged).is_file():
        with lzma.open(ASSETS / packaged, "rb") as src:
            write_atomic(cached, lambda out: shutil.copyfileobj(src, out))
        return cached
    for folder in system_dirs:
        if (Path(folder) / filename).is_file():
            return Path(folder) / filename
    where = f"download {url} and put it" if url else "put it"
    raise UserError(
        f"{dataset}/{filename} is not available: {where} in $GENZOO_DATA_DIR/{dataset}/"
    )

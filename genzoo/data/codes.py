"""Image codes from a trained image tokenizer, computed once per data set and cached.

DALL·E trains on grids of codes, not pixels: encoding every image at every step would
repeat the tokenizer's work thousands of times. `attach_codes` encodes each split once
and keeps the result in the genzoo cache, keyed by the tokenizer run (workdir, step and
the step folder's modification time, so a retrained run at the same path is re-encoded)
and by a digest of the images.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from genzoo.data import sources

log = logging.getLogger(__name__)


def _key(tokenizer_run, data) -> str:
    digest = hashlib.sha256()
    step_dir = Path(tokenizer_run.path) / "checkpoints" / str(tokenizer_run.step)
    mtime = step_dir.stat().st_mtime_ns if step_dir.exists() else 0
    digest.update(f"{Path(tokenizer_run.path).resolve()}@{tokenizer_run.step}:{mtime}".encode())
    for split in sorted(data.splits):
        digest.update(split.encode())
        digest.update(np.ascontiguousarray(data.splits[split][0]).tobytes())
    return digest.hexdigest()[:24]


def _read(path, splits) -> dict | None:
    """The cached codes, or None when absent or unreadable (a torn file is encoded again)."""
    import zipfile

    try:
        with np.load(path) as saved:
            return {split: saved[split] for split in splits}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def attach_codes(data, tokenizer_run, name: str = "codes"):
    """Adds `name` (int32 [N, h, w]) to every split of captioned-image data and the model
    fields `image_vocab_size` and `image_grid`; returns the data."""
    from genzoo import kinds

    api = kinds.api_of(tokenizer_run)
    path = sources.cache_dir() / "codes" / f"{_key(tokenizer_run, data)}.npz"
    codes = _read(path, data.splits)
    if codes is None:
        log.warning("encoding the images with %s (once; cached in %s)", tokenizer_run.path, path)
        codes = {split: api.encode(data.splits[split][0].astype(np.float32) / 255.0)
                 for split in data.splits}  # fmt: skip
        sources.write_atomic(path, lambda f: np.savez(f, **codes))
    fields = {"image_vocab_size": int(api.codebook_size), "image_grid": tuple(api.grid_shape)}
    data.add_labels(name, {s: c.astype(np.int32) for s, c in codes.items()}, fields)
    return data

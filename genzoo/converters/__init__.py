"""Converters between other libraries' checkpoints and genzoo parameters, one module per format.

Each module offers `from_hf(path) -> (model config fields, params)` (safetensors only, never
pickle), which `genzoo.imports` writes as a workdir, and `to_hf(fields, params)`, the inverse,
which `genzoo.exports` writes as a Hugging Face folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genzoo.errors import UserError


def read_hf(path: Path, name: str, prefix: str, parse_config) -> tuple[dict, dict]:
    """(fields from config.json, {name without `prefix`: float32 array}) of a Hugging Face
    directory; a missing, truncated or foreign file is a UserError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise UserError(f"{path} needs config.json and model.safetensors (no pickle files)")
    try:
        fields = parse_config(json.loads((path / "config.json").read_text()))
        tensors = load_file(path / "model.safetensors")
    except (ValueError, KeyError, TypeError, OSError, SafetensorError) as e:
        message = " ".join(str(e).split())[:150]
        raise UserError(f"cannot read the {name} checkpoint in {path}: {message}") from None
    return fields, {k.removeprefix(prefix): v.astype(np.float32) for k, v in tensors.items()}


def convert(path: Path, name: str, build):
    """`build()`'s result; a tensor missing or mis-shaped in the checkpoint is a UserError."""
    try:
        return build()
    except KeyError as e:
        raise UserError(f"the {name} checkpoint in {path} lacks tensor {e}") from None
    except ValueError as e:  # a reshape to the config's sizes failed
        message = " ".join(str(e).split())[:150]
        raise UserError(
            f"the {name} checkpoint in {path} does not match its config: {message}"
        ) from None


def contiguous(tensors: dict) -> dict:
    """Row-major copies where needed: safetensors writes an array's memory as it lies, so a
    transposed view (torch's [out, in] from genzoo's [in, out]) would be saved untransposed."""
    return {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}

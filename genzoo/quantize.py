"""`genzoo quantize`: an int8 weight-only copy of a run, for evaluation and sampling.

Every floating weight of two or more dimensions is stored as int8 with one float32
scale per output channel (symmetric, absmax / 127): per row for embedding tables
(a row is a token's vector, and a tied head's output channel), over the input axis
for kernels (both input axes of attention's output kernel [H, K, D]), so each scale
factors out of its matmul. Norm scales and biases stay float32. The copy is a workdir: the
run's config and tokenizer files, `params_int8.safetensors` and `quantized.json`; `eval`,
`sample`, `genzoo.load` and `--init-from` read it like a trained run. Evaluation uses the
weights dequantised once into float32; sampling from families with `INT8_MATMULS` keeps
them int8 and multiplies int8 activations by them (`genzoo.layers.quant`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from genzoo.data.sources import folder_atomic
from genzoo.errors import UserError

WEIGHTS = "params_int8.safetensors"
MARKER = "quantized.json"
MIN_SIZE = 1024  # smaller arrays are not worth a scale per channel
SKIP_FILES = {"metrics.jsonl", ".lock", "best.json"}


def is_quantized(workdir: Path) -> bool:
    return (Path(workdir) / MARKER).is_file()


def scale_axes(name: str, ndim: int) -> tuple[int, ...]:
    """The axes one scale spans: an embedding's row; a kernel's input axes as genzoo's layers
    contract them (attention's [H, K, D] output kernel: both H and K), so scales factor out."""
    if name.endswith("embedding"):
        return (ndim - 1,)
    return (0, 1) if name.endswith("out_kernel") else (0,)


def quantize_array(name: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scales broadcastable against them)."""
    axis = scale_axes(name, w.ndim)
    absmax = np.max(np.abs(w), axis=axis, keepdims=True).astype(np.float32)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


def quantize_params(params) -> tuple[dict, dict]:
    """({safetensors key: array}, counts) for a param tree."""
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    tensors, counts = {}, {"quantized": 0, "kept": 0, "bytes_before": 0, "bytes_after": 0}
    for name, w in flat.items():
        w = np.asarray(w)
        counts["bytes_before"] += w.nbytes
        if np.issubdtype(w.dtype, np.floating) and w.ndim >= 2 and w.size >= MIN_SIZE:
            tensors[name], tensors[name + "::scale"] = quantize_array(name, w)
            counts["quantized"] += 1
        else:
            tensors[name] = w
            counts["kept"] += 1
    counts["bytes_after"] = sum(t.nbytes for t in tensors.values())
    return tensors, counts


def dequantize(tensors: dict, abstract_params):
    """The float param tree shaped like `abstract_params` from `quantize_params`' tensors."""
    flat = traverse_util.flatten_dict(abstract_params, sep="/")
    out = {}
    for name, spec in flat.items():
        if name not in tensors:
            raise UserError(f"{WEIGHTS} lacks {name}: written for another model")
        w = tensors[name]
        if name + "::scale" in tensors:
            w = w.astype(np.float32) * tensors[name + "::scale"]
        if tuple(w.shape) != tuple(spec.shape):
            raise UserError(f"{WEIGHTS}: {name} has shape {w.shape}, the model {spec.shape}")
        out[name] = w.astype(spec.dtype)
    return traverse_util.unflatten_dict(out, sep="/")


def int8_params(tensors: dict, float_params):
    """`float_params` (the `dequantize`d tree) with `quant.Int8` leaves where the weights
    were quantized with scales that factor out of their matmul (per output channel, or per
    row of an embedding table) and are big enough to gain (`quant.MIN_INT8_SIZE`). For
    `quant`-aware layers only."""
    from genzoo.layers.quant import MIN_INT8_SIZE, Int8

    flat = traverse_util.flatten_dict(float_params, sep="/")
    for name in list(flat):
        values, scale = tensors[name], tensors.get(name + "::scale")
        axes = scale_axes(name, values.ndim)
        # Copies written before the output kernel's scales spanned H and K stay float there.
        fits = scale is not None and scale.shape == tuple(
            1 if i in axes else n for i, n in enumerate(values.shape)
        )
        kind = name.endswith("embedding") or name.endswith("kernel")  # not a 3-D attention bias
        if fits and kind and values.size >= MIN_INT8_SIZE:
            flat[name] = Int8(values, scale)
    return traverse_util.unflatten_dict(flat, sep="/")


def write(run, out: Path) -> dict:
    """Writes the quantized copy of `run` (a workdir.Run) into the new workdir `out`."""
    from safetensors.numpy import save

    tensors, counts = quantize_params(run.params)
    with folder_atomic(out) as tmp:
        for f in Path(run.path).iterdir():  # config and tokenizer files
            if f.is_file() and f.name not in SKIP_FILES:
                shutil.copy2(f, tmp / f.name)
        (tmp / WEIGHTS).write_bytes(save(tensors))
        marker = {"format": "int8 weight-only, per-channel absmax", "step": run.step,
                  "source": str(Path(run.path).absolute()), **counts}  # fmt: skip
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
    return counts


def load(workdir: Path, abstract_params, int8: bool = False) -> tuple[dict, int, dict | None]:
    """(float params on the host, step, and with `int8` the `int8_params` tree) of a
    quantized workdir."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(Path(workdir) / WEIGHTS))
        step = int(json.loads((Path(workdir) / MARKER).read_text())["step"])
    except (OSError, SafetensorError, ValueError, KeyError) as e:
        raise UserError(f"{workdir}: the quantized weights cannot be read ({e})") from None
    params = dequantize(tensors, abstract_params)  # checks every name and shape
    return params, step, int8_params(tensors, params) if int8 else None

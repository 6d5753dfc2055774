"""Hugging Face GPT-2 checkpoints (config.json + model.safetensors) as genzoo GPT parameters."""

from __future__ import annotations

import numpy as np

from genzoo.converters import convert, read_hf
from genzoo.errors import UserError
from genzoo.models import gpt


def hf_config(hf: dict) -> dict:
    """genzoo GPT config fields for a Hugging Face GPT-2 `config.json`."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"not a GPT-2 checkpoint (model_type {hf.get('model_type')!r})")
    return dict(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        width=hf["n_embd"],
        dropout=0.0,
        use_bias=True,
        ln_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        gelu_approximate=hf.get("activation_function", "gelu_new")
        in ("gelu_new", "gelu_pytorch_tanh"),
        dtype="float32",
    )


def from_hf(path) -> tuple[dict, dict]:
    """(model config fields, params) from a GPT-2 directory: config.json + model.safetensors.

    GPT-2's Conv1D weights are stored [in, out], which is genzoo's kernel layout; the fused
    q|k|v projection splits into [D, 3, heads, head_dim] and the vocabulary is zero-padded.
    """
    fields, w = read_hf(path, "GPT-2", "transformer.", hf_config)
    return fields, convert(path, "GPT-2", lambda: _params(fields, w))


def _params(fields: dict, w: dict) -> dict:
    c = gpt.GPTConfig.from_cfg(fields)
    H, K = c.num_heads, c.width // c.num_heads
    ln = lambda name: {"LayerNorm_0": {"scale": w[f"{name}.weight"], "bias": w[f"{name}.bias"]}}
    wte = np.zeros((c.padded_vocab, c.width), np.float32)
    wte[: c.vocab_size] = w["wte.weight"]
    params = {"wte": {"embedding": wte}, "wpe": {"embedding": w["wpe.weight"]}, "ln_f": ln("ln_f")}
    for i in range(c.num_layers):
        h = f"h.{i}."
        params[f"block_{i}"] = {
            "ln_1": ln(h + "ln_1"),
            "ln_2": ln(h + "ln_2"),
            "attn": {
                "qkv_kernel": w[h + "attn.c_attn.weight"].reshape(c.width, 3, H, K),
                "qkv_bias": w[h + "attn.c_attn.bias"].reshape(3, H, K),
                "out_kernel": w[h + "attn.c_proj.weight"].reshape(H, K, c.width),
                "out_bias": w[h + "attn.c_proj.bias"],
            },
            "mlp": {
                "fc": {"kernel": w[h + "mlp.c_fc.weight"], "bias": w[h + "mlp.c_fc.bias"]},
                "proj": {"kernel": w[h + "mlp.c_proj.weight"], "bias": w[h + "mlp.c_proj.bias"]},
            },
        }
    return params

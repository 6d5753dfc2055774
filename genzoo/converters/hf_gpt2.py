"""Hugging Face GPT-2 checkpoints (config.json + model.safetensors) as genzoo GPT parameters,
and back (`to_hf`: what `genzoo export` writes for a GPT)."""

from __future__ import annotations

import numpy as np

from genzoo.converters import contiguous, convert, read_hf
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


def to_hf(fields, params) -> tuple[dict, dict]:
    """(config.json, {tensor name: float32 array}) of a `GPT2LMHeadModel` computing what the
    genzoo GPT with config `fields` and `params` computes: `_params` inverted. A GPT without
    biases gets zero ones (GPT-2 always has them); the padded vocabulary rows are dropped."""
    c = gpt.GPTConfig.from_cfg(fields)
    D, V = c.width, c.vocab_size
    w = lambda x: np.asarray(x, np.float32)  # noqa: E731
    bias = lambda tree, name, size: w(tree[name]) if name in tree else np.zeros(size, np.float32)  # noqa: E731

    def ln(tree, name):
        norm = tree["LayerNorm_0"]
        return {f"{name}.weight": w(norm["scale"]), f"{name}.bias": bias(norm, "bias", D)}

    tensors = {"wte.weight": w(params["wte"]["embedding"])[:V],
               "wpe.weight": w(params["wpe"]["embedding"]),
               **ln(params["ln_f"], "ln_f")}  # fmt: skip
    for i in range(c.num_layers):
        block, h = params[f"block_{i}"], f"h.{i}."
        attn, mlp = block["attn"], block["mlp"]
        tensors.update({
            **ln(block["ln_1"], h + "ln_1"), **ln(block["ln_2"], h + "ln_2"),
            h + "attn.c_attn.weight": w(attn["qkv_kernel"]).reshape(D, 3 * D),
            h + "attn.c_attn.bias": bias(attn, "qkv_bias", (3, D)).reshape(3 * D),
            h + "attn.c_proj.weight": w(attn["out_kernel"]).reshape(D, D),
            h + "attn.c_proj.bias": bias(attn, "out_bias", D),
            h + "mlp.c_fc.weight": w(mlp["fc"]["kernel"]),
            h + "mlp.c_fc.bias": bias(mlp["fc"], "bias", 4 * D),
            h + "mlp.c_proj.weight": w(mlp["proj"]["kernel"]),
            h + "mlp.c_proj.bias": bias(mlp["proj"], "bias", D),
        })  # fmt: skip
    special = V - 1 if V == 50257 else None  # GPT-2's <|endoftext|>; other vocabularies: none
    config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V,
        "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": D,
        "n_layer": c.num_layers, "n_head": c.num_heads, "n_inner": None,
        "activation_function": "gelu_new" if c.gelu_approximate else "gelu",
        "layer_norm_epsilon": c.ln_epsilon, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout, "initializer_range": 0.02, "tie_word_embeddings": True,
        "scale_attn_weights": True, "bos_token_id": special, "eos_token_id": special,
    }  # fmt: skip
    return config, contiguous({"transformer." + k: v for k, v in tensors.items()})

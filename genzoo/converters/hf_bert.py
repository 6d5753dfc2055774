"""Hugging Face `BertForMaskedLM` checkpoints (config.json + model.safetensors) as genzoo BERT.

torch's Linear weights are [out, in]; genzoo's kernels are [in, out], with q/k/v stacked as
[D, 3, heads, head_dim] (heads major, as Hugging Face splits them). The vocabulary is
zero-padded to a multiple of 128. BertForMaskedLM has no pooler or next-sentence head:
those keep genzoo's random init (a fine-tune's `cls_head` starts fresh anyway).
"""

from __future__ import annotations

import jax
import numpy as np

from genzoo.converters import convert, read_hf
from genzoo.errors import UserError
from genzoo.models import bert


def hf_config(hf: dict, tokenizer) -> dict:
    """genzoo BERT config fields for a Hugging Face BERT `config.json` and its tokenizer."""
    if hf.get("model_type", "bert") != "bert":
        raise UserError(f"not a BERT checkpoint (model_type {hf.get('model_type')!r})")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"BERT activation {hf.get('hidden_act')!r} is not supported (gelu only)")
    return dict(
        vocab_size=hf["vocab_size"],
        max_len=hf["max_position_embeddings"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        width=hf["hidden_size"],
        mlp_hidden=hf["intermediate_size"],
        dropout=0.0,
        type_vocab_size=hf.get("type_vocab_size", 2),
        ln_epsilon=hf.get("layer_norm_eps", 1e-12),
        mask_id=tokenizer.piece_id("[MASK]"),
        first_word_id=tokenizer.first_word_id,
    )


def from_hf(path, tokenizer) -> tuple[dict, dict]:
    """(model config fields, params) from a BertForMaskedLM directory."""
    fields, w = read_hf(path, "BERT", "bert.", lambda hf: hf_config(hf, tokenizer))
    return fields, convert(path, "BERT", lambda: _params(fields, w))


def _params(fields: dict, w: dict) -> dict:
    c = bert.BertConfig.from_cfg(fields)
    H, D = c.num_heads, c.width
    K = D // H
    # Start from genzoo's init so the pooler and NSP head exist, then overwrite the rest.
    params = jax.tree.map(np.asarray, bert.unboxed_init(jax.random.PRNGKey(0), fields))
    dense = lambda name: {"kernel": w[f"{name}.weight"].T, "bias": w[f"{name}.bias"]}
    ln = lambda name: {"LayerNorm_0": {"scale": w[f"{name}.weight"], "bias": w[f"{name}.bias"]}}
    padded = lambda x: np.pad(x, [(0, c.padded_vocab - c.vocab_size)] + [(0, 0)] * (x.ndim - 1))
    params["word"] = {"embedding": padded(w["embeddings.word_embeddings.weight"])}
    params["position"] = {"embedding": w["embeddings.position_embeddings.weight"]}
    params["segment"] = {"embedding": w["embeddings.token_type_embeddings.weight"]}
    params["embed_ln"] = ln("embeddings.LayerNorm")
    for i in range(c.num_layers):
        p = f"encoder.layer.{i}."
        qkv = [w[f"{p}attention.self.{n}.weight"].T for n in ("query", "key", "value")]
        qkv_bias = [w[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")]
        params[f"layer_{i}"] = {
            "attn": {
                "qkv_kernel": np.stack(qkv, 1).reshape(D, 3, H, K),
                "qkv_bias": np.stack(qkv_bias).reshape(3, H, K),
                "out_kernel": w[f"{p}attention.output.dense.weight"].T.reshape(H, K, D),
                "out_bias": w[f"{p}attention.output.dense.bias"],
            },
            "ln_1": ln(f"{p}attention.output.LayerNorm"),
            "mlp": {"fc": dense(f"{p}intermediate.dense"), "proj": dense(f"{p}output.dense")},
            "ln_2": ln(f"{p}output.LayerNorm"),
        }
    params["mlm_dense"] = dense("cls.predictions.transform.dense")
    params["mlm_ln"] = ln("cls.predictions.transform.LayerNorm")
    params["mlm_bias"] = padded(w["cls.predictions.bias"])
    return params

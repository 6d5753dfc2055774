"""Hugging Face `BertForMaskedLM` checkpoints (config.json + model.safetensors) as genzoo BERT,
and back (`to_hf`: a BertForMaskedLM, or a fine-tuned classifier's BertForSequenceClassification).

torch's Linear weights are [out, in]; genzoo's kernels are [in, out], with q/k/v stacked as
[D, 3, heads, head_dim] (heads major, as Hugging Face splits them). The vocabulary is
zero-padded to a multiple of 128. BertForMaskedLM has no pooler or next-sentence head:
those keep genzoo's random init (a fine-tune's `cls_head` starts fresh anyway).
"""

from __future__ import annotations

import jax
import numpy as np

from genzoo.converters import contiguous, convert, read_hf
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


def to_hf(fields, params, class_names=None) -> tuple[dict, dict, str]:
    """(config.json, {tensor name: float32 array}, class) of the Hugging Face BERT computing what
    genzoo's does: `_params` inverted. A fine-tuned classifier (`model.num_classes`) becomes a
    BertForSequenceClassification (pooler, classifier, labels), any other a BertForMaskedLM."""
    c = bert.BertConfig.from_cfg(fields)
    D, V = c.width, c.vocab_size
    w = lambda x: np.asarray(x, np.float32)  # noqa: E731
    dense = lambda t, name: {f"{name}.weight": w(t["kernel"]).T, f"{name}.bias": w(t["bias"])}  # noqa: E731

    def ln(tree, name):
        norm = tree["LayerNorm_0"]
        return {f"{name}.weight": w(norm["scale"]), f"{name}.bias": w(norm["bias"])}

    t = {"bert.embeddings.word_embeddings.weight": w(params["word"]["embedding"])[:V],
         "bert.embeddings.position_embeddings.weight": w(params["position"]["embedding"]),
         "bert.embeddings.token_type_embeddings.weight": w(params["segment"]["embedding"]),
         **ln(params["embed_ln"], "bert.embeddings.LayerNorm")}  # fmt: skip
    for i in range(c.num_layers):
        layer, p = params[f"layer_{i}"], f"bert.encoder.layer.{i}."
        attn = layer["attn"]
        qkv, qkv_bias = w(attn["qkv_kernel"]).reshape(D, 3, D), w(attn["qkv_bias"]).reshape(3, D)
        for j, name in enumerate(("query", "key", "value")):
            t[f"{p}attention.self.{name}.weight"] = qkv[:, j].T
            t[f"{p}attention.self.{name}.bias"] = qkv_bias[j]
        t[f"{p}attention.output.dense.weight"] = w(attn["out_kernel"]).reshape(D, D).T
        t[f"{p}attention.output.dense.bias"] = w(attn["out_bias"])
        t.update({**ln(layer["ln_1"], f"{p}attention.output.LayerNorm"),
                  **dense(layer["mlp"]["fc"], f"{p}intermediate.dense"),
                  **dense(layer["mlp"]["proj"], f"{p}output.dense"),
                  **ln(layer["ln_2"], f"{p}output.LayerNorm")})  # fmt: skip
    config = {
        "model_type": "bert", "vocab_size": V, "hidden_size": D,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "intermediate_size": c.mlp_hidden, "hidden_act": "gelu",
        "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.dropout,
        "max_position_embeddings": c.max_len, "type_vocab_size": c.type_vocab_size,
        "layer_norm_eps": c.ln_epsilon, "initializer_range": 0.02, "pad_token_id": 0,
        "tie_word_embeddings": True,
    }  # fmt: skip
    if c.num_classes:
        names = list(class_names or [str(k) for k in range(c.num_classes)])
        t.update({**dense(params["pooler"], "bert.pooler.dense"),
                  **dense(params["cls_head"], "classifier")})  # fmt: skip
        config.update(architectures=["BertForSequenceClassification"],
                      num_labels=c.num_classes, id2label=dict(enumerate(names)),
                      label2id={n: k for k, n in enumerate(names)})  # fmt: skip
        return config, contiguous(t), "BertForSequenceClassification"
    t.update({**dense(params["mlm_dense"], "cls.predictions.transform.dense"),
              **ln(params["mlm_ln"], "cls.predictions.transform.LayerNorm"),
              "cls.predictions.bias": w(params["mlm_bias"])[:V]})  # fmt: skip
    config["architectures"] = ["BertForMaskedLM"]
    return config, contiguous(t), "BertForMaskedLM"

"""BERT (Devlin et al., 2018): a bidirectional encoder with masked-LM and next-sentence heads.

Post-LN blocks of the shared `TransformerBlock`, learned positions and segment (type)
embeddings, the MLM head tied to the token table. With `num_classes > 0` the same encoder
classifies its [CLS] vector instead (fine-tuning through `--init-from`: the encoder's
parameters come from the pretrained run, the new head starts fresh).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo.evaluation import lm
from genzoo.layers import (
    Dropout,
    Embed,
    LayerNorm,
    TransformerBlock,
    call_blocks,
    gelu,
    partitioned,
)
from genzoo.layers.transformer import stack_macs
from genzoo.models.base import FromConfig, require, require_transformer_shape

KIND = "masked_lm"


@dataclasses.dataclass(frozen=True)
class BertConfig(FromConfig):
    vocab_size: int
    max_len: int = 128
    num_layers: int = 4
    num_heads: int = 4
    width: int = 256
    mlp_hidden: int = 1024
    dropout: float = 0.1
    type_vocab_size: int = 2
    ln_epsilon: float = 1e-12
    mask_rate: float = 0.15  # of maskable tokens: 80% [MASK], 10% random, 10% kept
    # Positions scored per row (BERT's max_predictions_per_seq); 0: 1.5 x mask_rate x L + 4.
    # The MLM head runs on these only: over all L positions it costs a third of the step.
    max_predictions: int = 0
    nsp: bool = False  # the next-sentence head and loss
    num_classes: int = 0  # > 0: classify [CLS] (fine-tuning) instead of the MLM objective
    mask_id: int = 4  # the tokenizer's [MASK]; ids below `first_word_id` are never masked
    first_word_id: int = 7
    dtype: str = "float32"
    remat: str = "none"  # activation rematerialisation per layer: none, full, dots
    scan_layers: bool = False  # one lax.scan over the layers: XLA compiles one layer, not N

    def validate(self) -> None:
        require_transformer_shape(self, "num_layers", "num_heads", "width", "max_len",
                                  "mlp_hidden", "type_vocab_size")  # fmt: skip
        require(0.0 < self.mask_rate < 1.0, "model.mask_rate must be in (0, 1)")

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // 128) * 128

    def predictions(self, length: int) -> int:
        return min(length, self.max_predictions or math.ceil(1.5 * self.mask_rate * length) + 4)


def _dense(features, axes, name, dtype):
    return nn.Dense(
        features, dtype=dtype, name=name,
        kernel_init=partitioned(nn.initializers.normal(0.02), axes),
        bias_init=partitioned(nn.initializers.zeros, axes[-1:]),
    )  # fmt: skip


class Bert(nn.Module):
    cfg: BertConfig

    def setup(self):
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        self.word = Embed(c.padded_vocab, c.width, ("vocab", "embed"), dtype, name="word")
        self.position = Embed(c.max_len, c.width, ("pos", "embed"), dtype, name="position")
        self.segment = Embed(c.type_vocab_size, c.width, (None, "embed"), dtype, name="segment")
        self.embed_ln = LayerNorm(c.ln_epsilon, dtype=dtype)
        self.drop = Dropout(c.dropout)
        self.layers = [
            TransformerBlock(
                num_heads=c.num_heads, mlp_hidden=c.mlp_hidden, mode="bidirectional",
                post_ln=True, dropout_rate=c.dropout, ln_epsilon=c.ln_epsilon, dtype=dtype,
                name=f"layer_{i}",
            )
            for i in range(c.num_layers)
        ]  # fmt: skip
        self.mlm_dense = _dense(c.width, ("embed", "mlp"), "mlm_dense", dtype)
        self.mlm_ln = LayerNorm(c.ln_epsilon, dtype=dtype)
        self.mlm_bias = self.param(
            "mlm_bias", partitioned(nn.initializers.zeros, ("vocab",)), (c.padded_vocab,)
        )
        self.pooler = _dense(c.width, ("embed", "mlp"), "pooler", dtype)
        # Pretraining's next-sentence head, or a fine-tune's classifier (which starts fresh).
        name = "cls_head" if c.num_classes else "nsp_head"
        self.cls_head = _dense(c.num_classes or 2, ("mlp", None), name, dtype)

    def encode(self, tokens_BxL, segments_BxL, valid_BxL, deterministic=True):
        """Final hidden states [B, L, D]; padded positions are never attended to."""
        B, L = tokens_BxL.shape
        positions_BxL = jnp.broadcast_to(jnp.arange(L), (B, L))
        x_BxLxD = self.word(tokens_BxL) + self.position(positions_BxL) + self.segment(segments_BxL)
        x_BxLxD = self.drop(self.embed_ln(x_BxLxD), deterministic=deterministic)
        x_BxLxD, _ = call_blocks(self.layers, self.cfg, x_BxLxD, deterministic,
                                 key_valid_BxL=valid_BxL)  # fmt: skip
        return x_BxLxD

    def mlm_logits(self, h_BxLxD):
        c = self.cfg
        h_BxLxD = self.mlm_ln(gelu(self.mlm_dense(h_BxLxD)))
        logits_BxLxV = self.word.attend(h_BxLxD) + self.mlm_bias.astype(h_BxLxD.dtype)
        return logits_BxLxV[..., : c.vocab_size].astype(jnp.float32)

    def cls_logits(self, h_BxLxD, deterministic=True):
        pooled_BxD = jnp.tanh(self.pooler(h_BxLxD[:, 0]))
        pooled_BxD = self.drop(pooled_BxD, deterministic=deterministic)
        return self.cls_head(pooled_BxD).astype(jnp.float32)

    def __call__(self, tokens_BxL, segments_BxL, valid_BxL, scored_BxP=None, deterministic=True):
        """(MLM logits at the positions `scored_BxP` (all when None), [CLS] logits)."""
        h_BxLxD = self.encode(tokens_BxL, segments_BxL, valid_BxL, deterministic)
        h_BxPxD = h_BxLxD if scored_BxP is None else jnp.take_along_axis(
            h_BxLxD, scored_BxP[..., None], axis=1
        )  # fmt: skip
        return self.mlm_logits(h_BxPxD), self.cls_logits(h_BxLxD, deterministic)


def mask_tokens(rng, tokens_BxL, valid_BxL, c: BertConfig):
    """BERT's corruption: each maskable token is picked with probability `mask_rate` (at most
    `c.predictions(L)` per row, in order); of those, 80% become [MASK], 10% a random word and
    10% stay. Returns (inputs, picked)."""
    pick_rng, kind_rng, word_rng = jax.random.split(rng, 3)
    maskable_BxL = valid_BxL & (tokens_BxL >= c.first_word_id)
    picked_BxL = maskable_BxL & (jax.random.uniform(pick_rng, tokens_BxL.shape) < c.mask_rate)
    picked_BxL &= jnp.cumsum(picked_BxL, axis=1) <= c.predictions(tokens_BxL.shape[1])
    u_BxL = jax.random.uniform(kind_rng, tokens_BxL.shape)
    random_BxL = jax.random.randint(word_rng, tokens_BxL.shape, c.first_word_id, c.vocab_size)
    corrupted_BxL = jnp.where(
        u_BxL < 0.8, c.mask_id, jnp.where(u_BxL < 0.9, random_BxL, tokens_BxL)
    )
    return jnp.where(picked_BxL, corrupted_BxL, tokens_BxL), picked_BxL


def _sums(params, batch, rng, c: BertConfig, train: bool):
    """Summed losses and counts of one batch (the MLM and NSP objectives, or the classifier)."""
    model = Bert(c)
    tokens_BxL, valid_BxL = batch["tokens"], batch["tokens_mask"] > 0
    segments_BxL, row_B = batch["segments"], batch["mask"]
    mask_rng, drop_rng = jax.random.split(rng)
    if c.num_classes:
        inputs_BxL, picked_BxL = tokens_BxL, jnp.zeros_like(valid_BxL)
    else:
        inputs_BxL, picked_BxL = mask_tokens(mask_rng, tokens_BxL, valid_BxL, c)
    # The picked positions first (stable: in order), then as many others as fill P slots; a
    # classifier scores none (one slot keeps the shapes).
    P = 1 if c.num_classes else c.predictions(tokens_BxL.shape[1])
    scored_BxP = jnp.argsort(~picked_BxL, axis=1, stable=True)[:, :P]
    mlm_BxPxV, cls_BxK = model.apply(
        {"params": params}, inputs_BxL, segments_BxL, valid_BxL, scored_BxP,
        deterministic=not train, rngs={"dropout": drop_rng},
    )  # fmt: skip
    if c.num_classes:
        label_B = batch["label"]
        nll_B = lm.token_nll(cls_BxK[:, : c.num_classes], label_B)
        right_B = jnp.argmax(cls_BxK[:, : c.num_classes], -1) == label_B
        return {"cls_nll": jnp.sum(nll_B * row_B), "cls_correct": jnp.sum(right_B * row_B),
                "num_examples": row_B.sum()}  # fmt: skip
    weight_BxP = jnp.take_along_axis(picked_BxL, scored_BxP, axis=1) * row_B[:, None]
    target_BxP = jnp.take_along_axis(tokens_BxL, scored_BxP, axis=1)
    nll_BxP = lm.token_nll(mlm_BxPxV, target_BxP)
    right_BxP = jnp.argmax(mlm_BxPxV, -1) == target_BxP
    sums = {
        "mlm_nll": jnp.sum(nll_BxP * weight_BxP),
        "mlm_correct": jnp.sum(right_BxP * weight_BxP),
        "num_masked": weight_BxP.sum(),
        "num_examples": row_B.sum(),
    }
    if c.nsp:
        nsp_B = batch["next"]
        sums["nsp_nll"] = jnp.sum(lm.token_nll(cls_BxK[:, :2], nsp_B) * row_B)
        sums["nsp_correct"] = jnp.sum((jnp.argmax(cls_BxK[:, :2], -1) == nsp_B) * row_B)
    return sums


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = BertConfig.from_cfg(cfg)
    tokens = jnp.zeros((1, c.max_len), jnp.int32)
    return Bert(c).init({"params": rng}, tokens, tokens, tokens > -1)["params"]


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    """Mean MLM cross-entropy per masked token (+ NSP's per pair), or the classifier's."""
    c = BertConfig.from_cfg(cfg)
    s = _sums(params, batch, rng, c, train)
    n = jnp.maximum(s["num_examples"], 1.0)
    if c.num_classes:
        return s["cls_nll"] / n, {"accuracy": s["cls_correct"] / n}
    m = jnp.maximum(s["num_masked"], 1.0)
    value, metrics = s["mlm_nll"] / m, {"mlm_accuracy": s["mlm_correct"] / m}
    if c.nsp:
        value = value + s["nsp_nll"] / n
        metrics.update(mlm_loss=s["mlm_nll"] / m, nsp_accuracy=s["nsp_correct"] / n)
    return value, metrics


def eval_sums(params, batch, rng, cfg):
    return _sums(params, batch, rng, BertConfig.from_cfg(cfg), False)


def eval_summary(totals, meta):
    n = max(float(totals["num_examples"]), 1.0)
    if "cls_nll" in totals:
        return {"accuracy": float(totals["cls_correct"]) / n, "loss": float(totals["cls_nll"]) / n,
                "num_examples": int(n)}  # fmt: skip
    m = max(float(totals["num_masked"]), 1.0)
    out = {"mlm_loss": float(totals["mlm_nll"]) / m,
           "mlm_accuracy": float(totals["mlm_correct"]) / m, "num_masked": int(m)}  # fmt: skip
    if "nsp_nll" in totals:
        out.update(
            nsp_loss=float(totals["nsp_nll"]) / n, nsp_accuracy=float(totals["nsp_correct"]) / n
        )
    return out


def flops_per_example(cfg, shapes) -> float:
    c = BertConfig.from_cfg(cfg)
    (L,) = shapes["tokens"]
    body = stack_macs(c.num_layers, L, c.width, c.mlp_hidden)
    # The MLM head on the scored positions only (a classifier keeps one slot, `_sums`), then
    # the pooler and the [CLS] head.
    scored = 1 if c.num_classes else c.predictions(L)
    mlm_head = (c.width + c.padded_vocab) * c.width * scored
    head = mlm_head + c.width * (c.width + (c.num_classes or 2))
    return float(6 * (body + head))


@functools.partial(jax.jit, static_argnames=("c",))
def _encode(params, tokens_BxL, segments_BxL, valid_BxL, *, c):
    model = Bert(c)
    h_BxLxD = model.apply({"params": params}, tokens_BxL, segments_BxL, valid_BxL, method="encode")
    return h_BxLxD, model.apply({"params": params}, h_BxLxD, method="mlm_logits")


def encode(params, cfg, tokens_BxL, segments_BxL, valid_BxL):
    """(final hidden states [B, L, D], MLM logits [B, L, V]) without any corruption."""
    return _encode(params, jnp.asarray(tokens_BxL, jnp.int32), jnp.asarray(segments_BxL, jnp.int32),
                   jnp.asarray(valid_BxL, bool), c=BertConfig.from_cfg(cfg))  # fmt: skip


@functools.partial(jax.jit, static_argnames=("c",))
def _classify(params, tokens_BxL, segments_BxL, valid_BxL, *, c):
    model = Bert(c)
    h_BxLxD = model.apply({"params": params}, tokens_BxL, segments_BxL, valid_BxL, method="encode")
    logits_BxK = model.apply({"params": params}, h_BxLxD, method="cls_logits")
    return jax.nn.softmax(logits_BxK[:, : c.num_classes], axis=-1)


def classify(params, cfg, tokens_BxL, segments_BxL, valid_BxL):
    """Class probabilities [B, num_classes] of a fine-tuned classifier (`num_classes > 0`)."""
    return _classify(params, jnp.asarray(tokens_BxL, jnp.int32),
                     jnp.asarray(segments_BxL, jnp.int32), jnp.asarray(valid_BxL, bool),
                     c=BertConfig.from_cfg(cfg))  # fmt: skip


def max_length(cfg) -> int:
    return int(BertConfig.from_cfg(cfg).max_len)


def unboxed_init(rng, cfg):
    """`init` without the logical-axis boxes (plain arrays), for converters."""
    return nn.unbox(init(rng, cfg))

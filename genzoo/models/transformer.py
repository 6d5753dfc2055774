"""The encoder-decoder Transformer of "Attention is all you need" (Vaswani et al., 2017).

Encoder and decoder stacks of the shared `TransformerBlock` (post-LN as published, pre-LN
as an option), sinusoidal positions, embeddings scaled by sqrt(D) and optionally shared
between source, target and output (a joint vocabulary), label smoothing. Translation
decodes greedily or by beam search with the shared decoders in `genzoo.sampling`; the
encoder's cross-attention keys/values are computed once per source, before decoding.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo import sampling
from genzoo.data.tokenizers import BOS, EOS
from genzoo.evaluation import lm
from genzoo.layers import (
    Dropout,
    Embed,
    LayerNorm,
    TransformerBlock,
    call_blocks,
    cross_kv,
    empty_kv,
    sinusoidal_positions,
)
from genzoo.models.base import FromConfig, require, require_transformer_shape

KIND = "translator"


@dataclasses.dataclass(frozen=True)
class TransformerConfig(FromConfig):
    src_vocab_size: int
    tgt_vocab_size: int
    num_layers: int = 6  # in the encoder, and in the decoder
    num_heads: int = 8
    width: int = 512
    mlp_hidden: int = 2048
    dropout: float = 0.1
    label_smoothing: float = 0.1
    post_ln: bool = True  # as published; pre-LN trains more easily at depth
    share_embeddings: bool = True  # source, target and output: needs a joint vocabulary
    max_decode_len: int = 128  # the longest translation `sample` produces
    dtype: str = "float32"
    remat: str = "none"  # activation rematerialisation per layer: none, full, dots
    scan_layers: bool = False  # one lax.scan over each stack: XLA compiles one layer, not N

    def validate(self) -> None:
        require_transformer_shape(self, "num_layers", "num_heads", "width", "mlp_hidden",
                                  "max_decode_len")  # fmt: skip
        require(
            not self.share_embeddings or self.src_vocab_size == self.tgt_vocab_size,
            "model.share_embeddings needs one joint vocabulary (data.tokenizer=joint)",
        )
        require(0.0 <= self.label_smoothing < 1.0, "model.label_smoothing must be in [0, 1)")

    def padded(self, vocab: int) -> int:
        return -(-vocab // 128) * 128  # shards evenly over `tensor`


class EncoderDecoder(nn.Module):
    cfg: TransformerConfig

    def setup(self):
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        # std D^-1/2 times the sqrt(D) scale: unit-variance token vectors, as in tensor2tensor.
        embed = lambda vocab, name: Embed(
            c.padded(vocab), c.width, ("vocab", "embed"), dtype, c.width**-0.5, name=name
        )
        self.tgt_embed = embed(c.tgt_vocab_size, "tgt_embed")
        if not c.share_embeddings:
            self.src_embed = embed(c.src_vocab_size, "src_embed")
            self.out_embed = embed(c.tgt_vocab_size, "out_embed")
        block = lambda mode, cross, name: TransformerBlock(
            num_heads=c.num_heads, mlp_hidden=c.mlp_hidden, mode=mode, cross_attention=cross,
            post_ln=c.post_ln, dropout_rate=c.dropout, activation="relu", dtype=dtype, name=name,
        )  # fmt: skip
        self.encoder = [block("bidirectional", False, f"enc_{i}") for i in range(c.num_layers)]
        self.decoder = [block("causal", True, f"dec_{i}") for i in range(c.num_layers)]
        if not c.post_ln:  # pre-LN stacks end with a norm; post-LN blocks already end normed
            self.enc_ln = LayerNorm(dtype=dtype)
            self.dec_ln = LayerNorm(dtype=dtype)
        self.drop = Dropout(c.dropout)

    def _embed(self, table, ids_BxL, start, deterministic, positions_BxL=None):
        c = self.cfg
        B, L = ids_BxL.shape
        if positions_BxL is None:
            positions_BxL = jnp.broadcast_to(start + jnp.arange(L), (B, L))
        x_BxLxD = table(ids_BxL) * jnp.sqrt(c.width).astype(table.dtype)
        x_BxLxD = x_BxLxD + sinusoidal_positions(positions_BxL, c.width, x_BxLxD.dtype)
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "act_embed"))
        return self.drop(x_BxLxD, deterministic=deterministic)

    def encode(self, src_BxS, src_valid_BxS, deterministic=True, packing=None):
        """The source's memory [B, S, D]; padded positions are never attended to.

        `packing`: {"src_segments", "src_positions", ...} of packed rows (`data.examples`).
        """
        p = packing or {}
        table = self.tgt_embed if self.cfg.share_embeddings else self.src_embed
        x_BxSxD = self._embed(table, src_BxS, 0, deterministic, p.get("src_positions"))
        x_BxSxD, _ = call_blocks(self.encoder, self.cfg, x_BxSxD, deterministic,
                                 key_valid_BxL=src_valid_BxS,
                                 segments_BxL=p.get("src_segments"))  # fmt: skip
        return x_BxSxD if self.cfg.post_ln else self.enc_ln(x_BxSxD)

    def decode(self, tgt_BxL, memory_BxSxD, src_valid_BxS, cache=None, deterministic=True,
               packing=None):  # fmt: skip
        """Next-token logits [B, L, tgt_vocab] (float32) and the updated cache.

        With a cache (`init_cache`), `memory_BxSxD` is unused: every layer's cross-attention
        reads the source's keys/values from it, and `src_valid_BxS` comes from it too.
        """
        c = self.cfg
        start = 0 if cache is None else cache["index"]
        if cache is not None:
            src_valid_BxS = cache["src_valid"]
        p = packing or {}
        x_BxLxD = self._embed(self.tgt_embed, tgt_BxL, start, deterministic, p.get("tgt_positions"))
        x_BxLxD, layers = call_blocks(
            self.decoder,
            c,
            x_BxLxD,
            deterministic,
            caches=None if cache is None else cache["layers"],
            memory_BxSxD=memory_BxSxD,
            memory_valid_BxS=src_valid_BxS,
            segments_BxL=p.get("tgt_segments"),
            memory_segments_BxS=p.get("src_segments"),
            cache_index=start,
        )
        if not c.post_ln:
            x_BxLxD = self.dec_ln(x_BxLxD)
        out = self.tgt_embed if c.share_embeddings else self.out_embed
        # Constrain the padded vocabulary (divides any `tensor` axis), then drop the padding.
        logits_BxLxP = nn.with_logical_constraint(
            out.attend(x_BxLxD), ("batch", "length", "act_vocab")
        )
        logits_BxLxV = logits_BxLxP[..., : c.tgt_vocab_size].astype(jnp.float32)
        new_cache = None if cache is None else {**cache, "index": start + tgt_BxL.shape[1],
                                                "layers": layers}  # fmt: skip
        return logits_BxLxV, new_cache

    def __call__(self, src_BxS, src_valid_BxS, tgt_BxL, deterministic=True, packing=None):
        memory_BxSxD = self.encode(src_BxS, src_valid_BxS, deterministic, packing)
        return self.decode(tgt_BxL, memory_BxSxD, src_valid_BxS, None, deterministic, packing)[0]


def _forward(params, batch, rng, c: TransformerConfig, train: bool):
    """Logits for every target position but the first, the targets and their mask.

    Packed rows hold several examples: positions and segments come from the batch, and a
    target whose input is the previous example's last token (its BOS) is not predicted.
    """
    tgt_BxT, mask_BxL = batch["tgt"], batch["tgt_mask"][:, 1:]
    packing = None
    if "tgt_segments" in batch:
        seg_BxT = batch["tgt_segments"]
        packing = {
            "src_segments": batch["src_segments"],
            "src_positions": batch["src_positions"],
            "tgt_segments": seg_BxT[:, :-1],
            "tgt_positions": batch["tgt_positions"][:, :-1],
        }
        mask_BxL = mask_BxL * (seg_BxT[:, 1:] == seg_BxT[:, :-1])
    logits_BxLxV = EncoderDecoder(c).apply(
        {"params": params}, batch["src"], batch["src_mask"] > 0, tgt_BxT[:, :-1],
        deterministic=not train, packing=packing, rngs={"dropout": rng},
    )  # fmt: skip
    return logits_BxLxV, tgt_BxT[:, 1:], mask_BxL


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = TransformerConfig.from_cfg(cfg)
    src, tgt = jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 8), jnp.int32)
    return EncoderDecoder(c).init({"params": rng}, src, src > -1, tgt)["params"]


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    """Label-smoothed cross-entropy per target token; `nll` (unsmoothed) as a metric."""
    c = TransformerConfig.from_cfg(cfg)
    logits_BxLxV, targets_BxL, mask_BxL = _forward(params, batch, rng, c, train)
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV)
    nll_BxL = -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], -1)[..., 0]
    # Smoothing spreads `label_smoothing` of the mass uniformly over the vocabulary.
    smoothed_BxL = (1 - c.label_smoothing) * nll_BxL - c.label_smoothing * logp_BxLxV.mean(-1)
    n = jnp.maximum(mask_BxL.sum(), 1.0)
    return jnp.sum(smoothed_BxL * mask_BxL) / n, {"nll": jnp.sum(nll_BxL * mask_BxL) / n}


def eval_sums(params, batch, rng, cfg):
    c = TransformerConfig.from_cfg(cfg)
    logits_BxLxV, targets_BxL, mask_BxL = _forward(params, batch, rng, c, False)
    return lm.nll_sums(logits_BxLxV, targets_BxL, mask_BxL)


def eval_summary(totals, meta):
    return lm.summary(totals, meta)


def flops_per_example(cfg, shapes) -> float:
    """Training FLOPs of one padded (source, target) pair: 6 per parameter-token of the
    matmuls, plus the attention products (12 per layer, width and key)."""
    c = TransformerConfig.from_cfg(cfg)
    (S,), (T,) = shapes["src"], shapes["tgt"]
    D, F, N = c.width, c.mlp_hidden, c.num_layers
    enc = N * (4 * D * D + 2 * D * F) * S
    dec = (N * (8 * D * D + 2 * D * F) + c.padded(c.tgt_vocab_size) * D) * T
    attention = 12 * N * D * (S * S + T * T + S * T)
    return float(6 * (enc + dec) + attention)


def init_cache(params, c: TransformerConfig, memory_BxSxD, src_valid_BxS, length: int):
    """Decoder cache: empty self-attention slots, and each layer's cross keys/values computed
    once from the source's memory."""
    B, H = memory_BxSxD.shape[0], c.num_heads
    layers = [
        {"self": empty_kv(B, length, H, c.width // H, c.dtype),
         "cross": cross_kv(params[f"dec_{i}"]["cross_attn"], memory_BxSxD, jnp.dtype(c.dtype))}
        for i in range(c.num_layers)
    ]  # fmt: skip
    return {"index": jnp.array(0, jnp.int32), "src_valid": src_valid_BxS, "layers": layers}


@functools.partial(jax.jit, static_argnames=("c", "max_new_tokens", "num_beams"))
def _translate(params, src_BxS, src_valid_BxS, length_penalty, *, c, max_new_tokens, num_beams):
    model = EncoderDecoder(c)
    memory_BxSxD = model.apply({"params": params}, src_BxS, src_valid_BxS, method="encode")
    cache = init_cache(params, c, memory_BxSxD, src_valid_BxS, max_new_tokens + 1)
    step = lambda tokens, cache: model.apply(
        {"params": params}, tokens, None, None, cache, method="decode"
    )
    bos_Bx1 = jnp.full((src_BxS.shape[0], 1), BOS, jnp.int32)
    if num_beams > 1:
        return sampling.beam_search(step, cache, bos_Bx1, beam_size=num_beams,
                                    max_new_tokens=max_new_tokens, length_penalty=length_penalty,
                                    eos_id=EOS)  # fmt: skip
    return sampling.decode(step, cache, bos_Bx1, jax.random.PRNGKey(0),
                           max_new_tokens=max_new_tokens, temperature=jnp.float32(0.0),
                           top_k=jnp.int32(0), top_p=jnp.float32(1.0), eos_id=EOS)  # fmt: skip


def translate(params, cfg, src_BxS, src_valid_BxS, *, max_new_tokens, num_beams=1,
              length_penalty=1.0):  # fmt: skip
    """Target ids [B, max_new_tokens] after BOS for each source row (EOS, then EOS-padded).

    `num_beams` 1 is greedy decoding; more runs beam search ranked by log-probability /
    length ** `length_penalty`.
    """
    return _translate(
        params, jnp.asarray(src_BxS, jnp.int32), jnp.asarray(src_valid_BxS, bool),
        jnp.float32(length_penalty), c=TransformerConfig.from_cfg(cfg),
        max_new_tokens=max_new_tokens, num_beams=num_beams,
    )  # fmt: skip


def max_decode_length(cfg) -> int:
    return int(TransformerConfig.from_cfg(cfg).max_decode_len)

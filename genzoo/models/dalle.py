"""DALL·E (Ramesh et al., 2021): one decoder-only Transformer over [caption; image codes].

A caption of T word ids (padded to T: the padding is a token like any other, as the
paper's per-position padding) and the h x w grid of codes a trained image tokenizer gives
the picture (`model.requires.image_tokenizer`, computed once and cached with the data) make
one sequence. Slots, for inputs [BOS, caption_0..caption_{T-1}, code_0..code_{hw-2}]:

    slot 0..T     text: word embedding + text position           (BOS, then the caption)
    slot T+1..    image: code embedding + row + column embedding (code j-1 at slot T+j)

Slot i < T predicts caption_i (text head), slot i >= T predicts code_{i-T} (image head);
the loss weights text 1/8 and image 7/8 as the paper does (`text_loss_weight`).
`caption_dropout` replaces a row's caption by the empty one, so the same network also
models p(image) and classifier-free guidance can push samples towards the caption:
logits = cond + (scale - 1) (cond - uncond), exactly the conditional ones at scale 1.
Sampling fills the KV cache with [BOS; caption] and then draws hw codes one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo import sampling
from genzoo.evaluation import lm
from genzoo.layers import Dropout, Embed, LayerNorm, TransformerBlock, call_blocks, partitioned
from genzoo.layers.attention import empty_kv
from genzoo.layers.transformer import stack_macs
from genzoo.models.base import FromConfig, padded, require, require_transformer_shape

KIND = "text_to_image"
REQUIRES = {"image_tokenizer": "image_tokenizer", "clip": "contrastive"}
EOS = 1  # the caption tokenizer's EOS (genzoo.data.captions); the empty caption is [EOS]


@dataclasses.dataclass(frozen=True)
class DalleConfig(FromConfig):
    vocab_size: int  # caption words (from the data)
    max_caption_len: int = 12
    image_vocab_size: int = -1  # codebook size (from the image tokenizer, through the data)
    image_grid: tuple = (8, 8)
    num_layers: int = 4
    num_heads: int = 4
    width: int = 256
    dropout: float = 0.0
    text_loss_weight: float = 1.0 / 8
    caption_dropout: float = 0.1
    dtype: str = "float32"
    remat: str = "none"  # activation rematerialisation per block: none, full, dots
    scan_layers: bool = False  # one lax.scan over the blocks: XLA compiles one block, not N

    def validate(self) -> None:
        require_transformer_shape(self, "vocab_size", "num_layers", "num_heads", "width",
                                  "image_vocab_size", "max_caption_len")  # fmt: skip
        require(0.0 <= self.text_loss_weight <= 1.0, "model.text_loss_weight must be in [0, 1]")
        require(0.0 <= self.caption_dropout < 1.0, "model.caption_dropout must be in [0, 1)")

    @property
    def num_codes(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    @property
    def length(self) -> int:  # slots of one training sequence
        return self.max_caption_len + self.num_codes


def _head(features: int, name: str):
    init = partitioned(nn.initializers.normal(0.02), ("embed", "vocab"))
    return nn.Dense(features, use_bias=False, kernel_init=init, name=name)


class DALLE(nn.Module):
    cfg: DalleConfig

    def setup(self):
        c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        self.word = Embed(padded(c.vocab_size + 1), c.width, ("vocab", "embed"), dtype)  # + BOS
        self.text_position = Embed(c.max_caption_len + 1, c.width, ("pos", "embed"), dtype)
        self.code = Embed(padded(c.image_vocab_size), c.width, ("vocab", "embed"), dtype)
        self.row = Embed(c.image_grid[0], c.width, ("pos", "embed"), dtype)
        self.column = Embed(c.image_grid[1], c.width, ("pos", "embed"), dtype)
        self.blocks = [
            TransformerBlock(num_heads=c.num_heads, mlp_hidden=4 * c.width, mode="causal",
                             dropout_rate=c.dropout, out_std=0.02 / (2 * c.num_layers) ** 0.5,
                             dtype=dtype, name=f"block_{i}")
            for i in range(c.num_layers)
        ]  # fmt: skip
        self.ln_f = LayerNorm(dtype=dtype)
        self.text_head = _head(padded(c.vocab_size), "text_head")
        self.image_head = _head(padded(c.image_vocab_size), "image_head")
        self.drop = Dropout(c.dropout)

    def __call__(self, tokens_BxL, *, cache=None, deterministic=True):
        """Final features [B, L, D] of slots `cache.index`.. (0.. without a cache), and the
        updated cache. Which slots are text and which image follows from their index."""
        c = self.cfg
        B, L = tokens_BxL.shape
        start = 0 if cache is None else cache["index"]
        slot_L = start + jnp.arange(L)
        is_image_L = slot_L > c.max_caption_len
        code_L = jnp.maximum(slot_L - c.max_caption_len - 1, 0)
        text_BxLxD = self.word(jnp.where(is_image_L, 0, tokens_BxL)) + self.text_position(
            jnp.minimum(slot_L, c.max_caption_len)
        )
        row_L, column_L = code_L // c.image_grid[1], code_L % c.image_grid[1]
        image_BxLxD = (self.code(jnp.where(is_image_L, tokens_BxL, 0)) + self.row(row_L)
                       + self.column(column_L))  # fmt: skip
        x_BxLxD = jnp.where(is_image_L[None, :, None], image_BxLxD, text_BxLxD)
        x_BxLxD = self.drop(x_BxLxD, deterministic=deterministic)
        x_BxLxD, new_layers = call_blocks(
            self.blocks, c, x_BxLxD, deterministic, cache_index=start,
            caches=None if cache is None else cache["layers"],
        )  # fmt: skip
        new_cache = None if cache is None else {**cache, "index": start + L, "layers": new_layers}
        return self.ln_f(x_BxLxD), new_cache

    def text_logits(self, x_BxLxD):
        return self.text_head(x_BxLxD)[..., : self.cfg.vocab_size].astype(jnp.float32)

    def image_logits(self, x_BxLxD):
        return self.image_head(x_BxLxD)[..., : self.cfg.image_vocab_size].astype(jnp.float32)

    def forward(self, tokens_BxL, deterministic=True):
        """(text logits of slots < T, image logits of slots >= T): a whole sequence."""
        x_BxLxD, _ = self(tokens_BxL, deterministic=deterministic)
        T = self.cfg.max_caption_len
        return self.text_logits(x_BxLxD[:, :T]), self.image_logits(x_BxLxD[:, T:])


def sequence(caption_BxT, codes_BxN, c: DalleConfig):
    """Model inputs [B, T + hw] for a caption and its image codes (the last code is only a
    target): BOS, the caption, then the codes but the last."""
    bos_Bx1 = jnp.full((caption_BxT.shape[0], 1), c.vocab_size, jnp.int32)
    return jnp.concatenate([bos_Bx1, caption_BxT, codes_BxN[:, :-1]], axis=1)


def empty_captions(batch: int, c: DalleConfig):
    """The unconditional caption: EOS then padding."""
    return jnp.zeros((batch, c.max_caption_len), jnp.int32).at[:, 0].set(EOS)


def _sums(params, batch, rng, c: DalleConfig, train: bool):
    caption_BxT, keep_BxT = batch["caption"], batch["caption_mask"] * batch["mask"][:, None]
    codes_BxN = batch["codes"].reshape(caption_BxT.shape[0], -1).astype(jnp.int32)
    if train and c.caption_dropout > 0:  # the empty caption teaches p(image) for guidance
        drop_rng, rng = jax.random.split(rng)
        dropped_B = jax.random.bernoulli(drop_rng, c.caption_dropout, (caption_BxT.shape[0],))
        caption_BxT = jnp.where(dropped_B[:, None], empty_captions(len(dropped_B), c), caption_BxT)
        keep_BxT = keep_BxT * ~dropped_B[:, None]  # its text is not worth predicting
    text_BxTxV, image_BxNxK = DALLE(c).apply(
        {"params": params}, sequence(caption_BxT, codes_BxN, c), deterministic=not train,
        rngs={"dropout": rng}, method=DALLE.forward,
    )  # fmt: skip
    image_mask_BxN = jnp.broadcast_to(batch["mask"][:, None], codes_BxN.shape)
    return {
        "text_nll": jnp.sum(lm.token_nll(text_BxTxV, caption_BxT) * keep_BxT),
        "text_n": keep_BxT.sum(),
        "image_nll": jnp.sum(lm.token_nll(image_BxNxK, codes_BxN) * image_mask_BxN),
        "image_n": image_mask_BxN.sum(),
    }


def _weighted(s, c: DalleConfig):
    text = s["text_nll"] / jnp.maximum(s["text_n"], 1.0)
    image = s["image_nll"] / jnp.maximum(s["image_n"], 1.0)
    return c.text_loss_weight * text + (1.0 - c.text_loss_weight) * image, text, image


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = DalleConfig.from_cfg(cfg)
    tokens = jnp.zeros((1, c.length), jnp.int32)
    return DALLE(c).init({"params": rng}, tokens, method=DALLE.forward)["params"]


def loss(params, batch, rng, cfg, *, train: bool = True, step=0, deps=None):
    """1/8 text + 7/8 image cross-entropy (nats per token); codes come with the batch."""
    c = DalleConfig.from_cfg(cfg)
    total, text, image = _weighted(_sums(params, batch, rng, c, train), c)
    return total, {"text_loss": text, "image_loss": image}


def eval_sums(params, batch, rng, cfg, deps=None):
    return _sums(params, batch, rng, DalleConfig.from_cfg(cfg), False)


def eval_summary(totals, meta):
    """Headline: nats per image code (what sample quality rests on), then text and bits."""
    text = float(totals["text_nll"]) / max(float(totals["text_n"]), 1.0)
    image = float(totals["image_nll"]) / max(float(totals["image_n"]), 1.0)
    return {"image_nll": image, "text_nll": text, "image_bits_per_code": image / math.log(2)}


def flops_per_example(cfg, shapes) -> float:
    """Training FLOPs of one caption + image sequence (PaLM's appendix formula)."""
    c = DalleConfig.from_cfg(cfg)
    L = c.length
    blocks = stack_macs(c.num_layers, L, c.width, 4 * c.width)
    return float(6 * (blocks + (c.vocab_size + c.image_vocab_size) * c.width * L))


def init_cache(c: DalleConfig, batch: int):
    layer = {"self": empty_kv(batch, c.length, c.num_heads, c.width // c.num_heads, c.dtype)}
    return {"index": jnp.array(0, jnp.int32), "layers": [layer] * c.num_layers}


@functools.partial(jax.jit, static_argnames=("c", "guided"))
def _generate(params, caption_BxT, rng, knobs, guidance, *, c: DalleConfig, guided: bool):
    model, B = DALLE(c), caption_BxT.shape[0]
    bos_Bx1 = jnp.full((B, 1), c.vocab_size, jnp.int32)
    prompt_BxP = jnp.concatenate([bos_Bx1, caption_BxT], axis=1)
    unconditional_BxP = jnp.concatenate([bos_Bx1, empty_captions(B, c)], axis=1)

    def step(tokens_BxL, cache):
        if guided:  # rows B.. read the empty caption: the prefill differs, later codes do not
            other = unconditional_BxP if tokens_BxL.shape[1] == prompt_BxP.shape[1] else tokens_BxL
            tokens_BxL = jnp.concatenate([tokens_BxL, other], axis=0)
        x_BxLxD, cache = model.apply({"params": params}, tokens_BxL, cache=cache)
        logits_BxLxK = model.apply({"params": params}, x_BxLxD, method=DALLE.image_logits)
        if guided:
            cond, uncond = logits_BxLxK[:B], logits_BxLxK[B:]
            logits_BxLxK = cond + (guidance - 1.0) * (cond - uncond)
        return logits_BxLxK, cache

    temperature, top_k, top_p = knobs
    cache = init_cache(c, 2 * B if guided else B)
    return sampling.decode(step, cache, prompt_BxP, rng, max_new_tokens=c.num_codes,
                           temperature=temperature, top_k=top_k, top_p=top_p)  # fmt: skip


def generate_codes(params, captions_BxT, rng, cfg, *, guidance=1.0, temperature=1.0, top_k=0,
                   top_p=1.0, two_branches=None):  # fmt: skip
    """Image codes [B, h, w] for padded caption ids [B, T], drawn with the KV cache.

    `guidance` 1 runs the conditional model alone; another scale also runs the empty caption
    (twice the batch). `two_branches=True` forces the guided path (tests compare them)."""
    c = DalleConfig.from_cfg(cfg)
    guided = (guidance != 1.0) if two_branches is None else two_branches
    codes_BxN = _generate(params, jnp.asarray(captions_BxT, jnp.int32), rng,
                          sampling.knobs(temperature, top_k, top_p), jnp.float32(guidance),
                          c=c, guided=guided)  # fmt: skip
    return codes_BxN.reshape(-1, *c.image_grid)


def logits_recomputed(params, tokens_BxL, cfg):
    """Image logits of every slot from one uncached pass (tests compare the cache to it)."""
    c = DalleConfig.from_cfg(cfg)
    m = DALLE(c)
    x_BxLxD, _ = m.apply({"params": params}, tokens_BxL)
    return m.apply({"params": params}, x_BxLxD, method=DALLE.image_logits)


def grid_shape(cfg) -> tuple[int, int]:
    return tuple(DalleConfig.from_cfg(cfg).image_grid)


def prepare_data(data, deps):
    """Each image's codes from the tokenizer run (cached), and the codebook's size and grid."""
    from genzoo.data.codes import attach_codes

    return attach_codes(data, deps["image_tokenizer"])

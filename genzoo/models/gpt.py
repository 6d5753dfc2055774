"""GPT: a decoder-only Transformer language model (pre-LayerNorm, learned positions, tied head).

Family protocol (what the trainer and CLI call): `init`, `loss`, `eval_sums`,
`eval_summary`, `flops_per_example`, `sample`.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo import sampling
from genzoo.errors import UserError
from genzoo.evaluation import lm
from genzoo.layers import Dropout, Embed, LayerNorm, TransformerBlock, call_blocks, quant
from genzoo.layers.attention import empty_kv
from genzoo.layers.transformer import stack_macs
from genzoo.models.base import FromConfig, require_transformer_shape

KIND = "language_model"
INT8_MATMULS = True  # every weight goes through genzoo.layers.quant: int8 copies sample in int8


@dataclasses.dataclass(frozen=True)
class GPTConfig(FromConfig):
    vocab_size: int
    block_size: int = 256
    num_layers: int = 6
    num_heads: int = 6
    width: int = 384
    dropout: float = 0.0
    use_bias: bool = True
    ln_epsilon: float = 1e-5
    gelu_approximate: bool = False
    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: str = "none"  # activation rematerialisation per block: none, full, dots
    scan_layers: bool = False  # one lax.scan over the blocks: XLA compiles one block, not N
    loss_chunk: int = 0  # > 0: the loss's logits for this many positions at a time

    def validate(self) -> None:
        require_transformer_shape(
            self, "vocab_size", "num_layers", "num_heads", "width", "block_size"
        )
        if self.loss_chunk < 0:
            raise UserError(f"model.loss_chunk must be >= 0, got {self.loss_chunk}")
        if self.block_size < 2:  # a window must keep one token and add one to slide (sampling)
            raise UserError(f"model.block_size must be at least 2, got {self.block_size}")

    @property
    def padded_vocab(self) -> int:
        # A multiple of 128 shards evenly over any tensor axis and suits matmul tiles.
        return -(-self.vocab_size // 128) * 128


class GPT(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, tokens_BxL, *, cache=None, deterministic=True, hidden_only=False):
        """Logits [B, L, vocab_size] (float32) and the updated cache (None without one);
        with `hidden_only`, the final normalised states [B, L, D] and the head's table.

        A cache's `pad` [B] counts left-padding slots per row: positions start after them,
        so a left-padded prompt gives the same logits as the same prompt alone.
        """
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        B, L = tokens_BxL.shape
        start = 0 if cache is None else cache["index"]
        pad_B = None if cache is None else cache["pad"]
        positions_BxL = jnp.broadcast_to(start + jnp.arange(L), (B, L))
        if pad_B is not None:
            positions_BxL = jnp.maximum(positions_BxL - pad_B[:, None], 0)
        wte = Embed(c.padded_vocab, c.width, ("vocab", "embed"), dtype, name="wte")
        wpe = Embed(c.block_size, c.width, ("pos", "embed"), dtype, name="wpe")
        x_BxLxD = wte(tokens_BxL) + wpe(positions_BxL)
        x_BxLxD = Dropout(c.dropout)(x_BxLxD, deterministic=deterministic)
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "act_embed"))
        # Left padding (ragged prompt batches) is never attended to.
        key_valid_BxT = None
        if cache is not None:
            key_valid_BxT = jnp.arange(cache["layers"][0]["self"]["k"].shape[2]) >= pad_B[:, None]
        blocks = [
            TransformerBlock(
                num_heads=c.num_heads,
                mlp_hidden=4 * c.width,
                mode="causal",
                dropout_rate=c.dropout,
                use_bias=c.use_bias,
                ln_epsilon=c.ln_epsilon,
                activation="gelu_tanh" if c.gelu_approximate else "gelu",
                # GPT-2's scaled init of residual projections keeps the stream's variance flat.
                out_std=0.02 / (2 * c.num_layers) ** 0.5,
                dtype=dtype,
                name=f"block_{i}",
            )
            for i in range(c.num_layers)
        ]
        caches = None if cache is None else cache["layers"]
        x_BxLxD, new_layers = call_blocks(blocks, c, x_BxLxD, deterministic, caches,
                                          key_valid_BxL=key_valid_BxT,
                                          cache_index=start)  # fmt: skip
        x_BxLxD = LayerNorm(c.ln_epsilon, c.use_bias, dtype, name="ln_f")(x_BxLxD)
        if hidden_only:  # for a loss that applies the tied head itself (chunked_token_nll)
            return x_BxLxD, quant.dequantized(wte.table_NxD)
        # Constrain the padded vocabulary (divides any `tensor` axis), then drop the padding.
        logits_BxLxP = nn.with_logical_constraint(
            wte.attend(x_BxLxD), ("batch", "length", "act_vocab")
        )
        logits_BxLxV = logits_BxLxP[..., : c.vocab_size].astype(jnp.float32)
        new_cache = None if cache is None else {**cache, "index": start + L, "layers": new_layers}
        return logits_BxLxV, new_cache


def init_cache(c: GPTConfig, batch: int, length: int, pad_B=None):
    """An empty cache of `length` slots; `pad_B` left-padding slots per row (default none)."""
    layer = {"self": empty_kv(batch, length, c.num_heads, c.width // c.num_heads, c.dtype)}
    pad_B = jnp.zeros((batch,), jnp.int32) if pad_B is None else jnp.asarray(pad_B, jnp.int32)
    return {"index": jnp.array(0, jnp.int32), "pad": pad_B, "layers": [layer] * c.num_layers}


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = GPTConfig.from_cfg(cfg)
    return GPT(c).init({"params": rng}, jnp.zeros((1, c.block_size), jnp.int32))["params"]


def logits(params, tokens_BxL, cfg):
    return GPT(GPTConfig.from_cfg(cfg)).apply({"params": params}, tokens_BxL)[0]


def _token_nll(params, batch, rng, c: GPTConfig, train: bool):
    """Nats of each target [B, L]; with `loss_chunk`, the logits of only that many positions
    exist at once (forward and backward): the vocabulary-wide float32 logits of the whole
    batch, the step's largest array for big vocabularies, are never built."""
    rngs = {"dropout": rng} if train else {}
    apply = lambda **kw: GPT(c).apply(
        {"params": params}, batch["inputs"], deterministic=not train, rngs=rngs, **kw
    )
    if not c.loss_chunk:
        return lm.token_nll(apply()[0], batch["targets"])
    x_BxLxD, table_PxD = apply(hidden_only=True)
    return lm.chunked_token_nll(x_BxLxD, table_PxD, batch["targets"], c.vocab_size, c.loss_chunk)


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    """Mean next-token cross-entropy in nats over `batch['mask']`."""
    nll_BxL = _token_nll(params, batch, rng, GPTConfig.from_cfg(cfg), train)
    return lm.masked_mean(nll_BxL, batch["mask"])


def eval_sums(params, batch, rng, cfg):
    nll_BxL = _token_nll(params, batch, rng, GPTConfig.from_cfg(cfg), train=False)
    return lm.masked_sums(nll_BxL, batch["mask"])


def eval_summary(totals, meta):
    return lm.summary(totals, meta)


def check_config(cfg, shapes) -> None:
    """Positions past the context have no embedding (they would train into NaN)."""
    (seq_len,) = shapes["inputs"]
    if seq_len > cfg.block_size:
        raise UserError(f"data.seq_len {seq_len} exceeds the model's context "
                        f"model.block_size={cfg.block_size}")  # fmt: skip
    chunk = cfg.get("loss_chunk", 0)
    if chunk and seq_len % chunk:
        raise UserError(f"model.loss_chunk={chunk} must divide data.seq_len={seq_len}")


def flops_per_example(cfg, shapes) -> float:
    """Training FLOPs (forward + backward) for one sequence, as in the PaLM paper's appendix."""
    c = GPTConfig.from_cfg(cfg)
    (seq_len,) = shapes["inputs"]
    blocks = stack_macs(c.num_layers, seq_len, c.width, 4 * c.width)
    return float(6 * (blocks + c.padded_vocab * c.width * seq_len))


@functools.partial(jax.jit, static_argnames=("c", "max_new_tokens", "num_beams"))
def _generate(params, prompt_BxP, pad_B, rng, knobs, *, c: GPTConfig, max_new_tokens, num_beams):
    model = GPT(c)
    step = lambda tokens, cache: model.apply({"params": params}, tokens, cache=cache)
    temperature, top_k, top_p, repetition_penalty, length_penalty, eos_id = knobs
    # Slots for this call's tokens only (both lengths are static already): every decode step's
    # attention reads the whole cache, and a 1024-slot one dominated GPT-2's steps at batch 8.
    slots = min(c.block_size, prompt_BxP.shape[1] + max_new_tokens)
    cache = init_cache(c, prompt_BxP.shape[0], slots, pad_B)
    if num_beams > 1:  # the search copies the cache per beam
        return sampling.beam_search(
            step, cache, prompt_BxP, beam_size=num_beams, max_new_tokens=max_new_tokens,
            length_penalty=length_penalty, eos_id=eos_id,
        )  # fmt: skip
    valid_BxP = jnp.arange(prompt_BxP.shape[1])[None] >= pad_B[:, None]
    return sampling.decode(
        step,
        cache,
        prompt_BxP,
        rng,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        eos_id=eos_id,
        prompt_valid_BxP=valid_BxP,
    )


def sample(
    params,
    rng,
    cfg,
    *,
    prompt_BxP,
    max_new_tokens,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    repetition_penalty=1.0,
    eos_id=-1,
    pad_B=None,
    num_beams=1,
    length_penalty=1.0,
):
    """Continues each prompt row by `max_new_tokens` tokens; returns [B, max_new_tokens] int32.

    Rows of different lengths are left-padded, with `pad_B` giving each row's padding.
    `num_beams > 1` runs beam search (deterministic; sampling knobs are ignored).
    """
    prompt_BxP = jnp.asarray(prompt_BxP, jnp.int32)
    pad_B = jnp.zeros(prompt_BxP.shape[0], jnp.int32) if pad_B is None else jnp.asarray(pad_B)
    knobs = (
        *sampling.knobs(temperature, top_k, top_p),
        jnp.float32(repetition_penalty),
        jnp.float32(length_penalty),
        jnp.int32(eos_id),
    )
    return _generate(
        params,
        prompt_BxP,
        pad_B.astype(jnp.int32),
        rng,
        knobs,
        c=GPTConfig.from_cfg(cfg),  # a frozen dataclass: hashable whatever mapping cfg is
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
    )


@functools.partial(jax.jit, static_argnames=("c",))
def _token_log_probs(params, tokens_BxT, *, c: GPTConfig):
    logits_BxTxV = GPT(c).apply({"params": params}, tokens_BxT)[0]
    return -lm.token_nll(logits_BxTxV[:, :-1], tokens_BxT[:, 1:])


def token_log_probs(params, tokens_BxT, cfg):
    """log p(x_t | x_<t) for t = 1..T-1, [B, T-1] nats; right padding affects only its slots."""
    return _token_log_probs(params, jnp.asarray(tokens_BxT, jnp.int32), c=GPTConfig.from_cfg(cfg))


RAGGED_PROMPTS = True  # `sample` takes left-padded prompt batches (pad_B)


def context_length(cfg) -> int:
    return int(cfg.block_size)

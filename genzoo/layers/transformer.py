"""The Transformer block every Transformer family builds from (GPT, encoder-decoder, BERT).

Pre-LayerNorm (GPT-2) or post-LayerNorm (the 2017 paper, BERT) residual sub-layers:
self-attention, optional cross-attention over an encoder's output, and the MLP.
Parameter names (`ln_1`, `attn`, `ln_cross`, `cross_attn`, `ln_2`, `mlp`) are stable,
so imported checkpoints map onto them once.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo.layers.attention import Attention
from genzoo.layers.basic import MLP, Dtype, LayerNorm


class TransformerBlock(nn.Module):
    num_heads: int
    mlp_hidden: int
    mode: str = "causal"  # self-attention: "causal" or "bidirectional"
    cross_attention: bool = False
    post_ln: bool = False
    dropout_rate: float = 0.0
    use_bias: bool = True
    ln_epsilon: float = 1e-5
    activation: str = "gelu"
    out_std: float = 0.02  # init std of the residual projections (GPT-2 scales it by depth)
    dtype: Dtype = jnp.float32

    def _residual(self, x_BxLxD, name: str, sublayer):
        """x + f(LN(x)) (pre-LN) or LN(x + f(x)) (post-LN); returns (x, whatever f adds)."""
        norm = LayerNorm(self.ln_epsilon, self.use_bias, self.dtype, name=name)
        if self.post_ln:
            h_BxLxD, extra = sublayer(x_BxLxD)
            return norm(x_BxLxD + h_BxLxD), extra
        h_BxLxD, extra = sublayer(norm(x_BxLxD))
        return x_BxLxD + h_BxLxD, extra

    @nn.compact
    def __call__(
        self,
        x_BxLxD,
        *,
        key_valid_BxL=None,
        memory_BxSxD=None,
        memory_valid_BxS=None,
        segments_BxL=None,
        memory_segments_BxS=None,
        cache=None,
        cache_index=None,
        deterministic=True,
    ):
        """Output [B, L, D] and the updated cache: {"self": {k, v}, "cross": {k, v}} or None.

        `key_valid_BxL` masks padded keys of the self-attention (with a cache: of the cache's
        slots); `memory_valid_BxS` those of the source. Packed rows give segment ids
        (`segments_BxL`, `memory_segments_BxS`): attention stays within one example.
        """
        D = x_BxLxD.shape[-1]
        attn = lambda mode, name: Attention(
            num_heads=self.num_heads,
            head_dim=D // self.num_heads,
            mode=mode,
            dropout_rate=self.dropout_rate,
            use_bias=self.use_bias,
            out_std=self.out_std,
            dtype=self.dtype,
            name=name,
        )
        cache = cache or {}
        x_BxLxD, self_cache = self._residual(
            x_BxLxD,
            "ln_1",
            lambda h: attn(self.mode, "attn")(
                h,
                key_valid_BxT=key_valid_BxL,
                segments_BxL=segments_BxL,
                key_segments_BxT=segments_BxL,
                kv_cache=cache.get("self"),
                cache_index=cache_index,
                deterministic=deterministic,
            ),
        )
        new_cache = {"self": self_cache}
        if self.cross_attention:
            x_BxLxD, cross_cache = self._residual(
                x_BxLxD,
                "ln_cross",
                lambda h: attn("cross", "cross_attn")(
                    h,
                    memory_BxSxD=memory_BxSxD,
                    key_valid_BxT=memory_valid_BxS,
                    segments_BxL=segments_BxL,
                    key_segments_BxT=memory_segments_BxS,
                    kv_cache=cache.get("cross"),
                    deterministic=deterministic,
                ),
            )
            new_cache["cross"] = cross_cache
        mlp = MLP(
            hidden=self.mlp_hidden,
            dropout_rate=self.dropout_rate,
            use_bias=self.use_bias,
            activation=self.activation,
            out_std=self.out_std,
            dtype=self.dtype,
            name="mlp",
        )
        x_BxLxD, _ = self._residual(
            x_BxLxD, "ln_2", lambda h: (mlp(h, deterministic=deterministic), None)
        )
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "act_embed"))
        return x_BxLxD, (new_cache if cache else None)


# What a rematerialised block keeps for the backward pass; the rest is recomputed.
REMAT_POLICIES = {
    "none": None,  # keep every activation (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block's input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls'
    # outputs: recompute norms, activations, softmax (cheap, and the largest on long contexts)
}


def _call(block, x_BxLxD, arrays: dict, deterministic: bool):
    return block(x_BxLxD, deterministic=deterministic, **arrays)


def call_block(block: TransformerBlock, remat: str, x_BxLxD, deterministic: bool, **arrays):
    """`block(x, deterministic=..., **arrays)`, rematerialised under policy `remat` (same
    values and gradients, less activation memory). Not with a cache: decoding keeps nothing
    for a backward pass."""
    if remat == "none" or arrays.get("cache") is not None:
        return block(x_BxLxD, deterministic=deterministic, **arrays)
    # `deterministic` decides Python branches (dropout or not): static, so passed by position.
    rematted = nn.remat(_call, policy=REMAT_POLICIES[remat], static_argnums=(3,))
    return rematted(block, x_BxLxD, arrays, deterministic)


def call_blocks(blocks, cfg, x_BxLxD, deterministic: bool, caches=None, **arrays):
    """`x` through `blocks` in order (each under `call_block` with policy `cfg.remat`); returns
    x and the blocks' new caches (a list, or None without `caches`, one per block).

    With `cfg.scan_layers`, identical blocks (all but their names) run as one `lax.scan` over their
    parameters stacked along a leading layer axis: XLA compiles one block, not N. The
    parameters keep their per-block layout (`block_0`, `block_1`, ...), so checkpoints,
    imports, freezing and pruning are unchanged, and the values are the unrolled stack's
    (dropout masks aside: each layer's key is split from one). Initialisation and decoding
    with a cache always unroll."""
    remat = cfg.remat
    if cfg.scan_layers and caches is None and len(blocks) > 1 and not blocks[0].is_initializing():
        return _scanned(blocks, remat, x_BxLxD, deterministic, arrays), None
    new_caches = []
    for i, block in enumerate(blocks):
        cache = None if caches is None else caches[i]
        x_BxLxD, new_cache = call_block(block, remat, x_BxLxD, deterministic, cache=cache, **arrays)
        new_caches.append(new_cache)
    return x_BxLxD, (None if caches is None else new_caches)


def _scanned(blocks, remat: str, x_BxLxD, deterministic: bool, arrays: dict):
    template = blocks[0].clone(parent=None, name=None)  # unbound: applied to each layer's slice
    per_layer = [nn.meta.unbox(block.variables["params"]) for block in blocks]
    params_N = jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_layer)
    drops = not deterministic and blocks[0].dropout_rate > 0  # as the unrolled blocks: no key asked
    keys_N = jax.random.split(blocks[0].make_rng("dropout"), len(blocks)) if drops else None

    def layer(x_BxLxD, params_and_key):
        params, key = params_and_key
        rngs = None if key is None else {"dropout": key}
        x_BxLxD, _ = template.apply(
            {"params": params}, x_BxLxD, deterministic=deterministic, rngs=rngs, **arrays
        )
        return x_BxLxD, None

    if remat != "none":  # the same policies as call_block's, applied to the loop's body
        layer = jax.checkpoint(layer, policy=REMAT_POLICIES[remat], prevent_cse=False)
    x_BxLxD, _ = jax.lax.scan(layer, x_BxLxD, (params_N, keys_N))
    return x_BxLxD


def stack_macs(num_layers: int, length: int, width: int, mlp_hidden: int) -> int:
    """Multiply-adds of `num_layers` self-attention blocks over `length` tokens: per token and
    layer the weight matmuls (q, k, v, out: 4 D^2; the MLP: 2 D F) and attention's two
    products with every key (2 L D). x6 is a training step's FLOPs (MFU's numerator)."""
    per_token = 4 * width * width + 2 * width * mlp_hidden + 2 * length * width
    return num_layers * length * per_token

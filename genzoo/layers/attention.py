"""Causal multi-head self-attention with an optional key/value cache for decoding."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from genzoo.layers.basic import Dtype, partitioned


def _attend(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, allowed_BxLxT, dropout):
    """Softmax attention, normalised after the value product (one [L, T] pass fewer).

    The row maximum is subtracted for range only (no gradient needed: it cancels).
    Dropout on the unnormalised weights equals dropout on the probabilities.
    """
    scores_BxHxLxT = jnp.matmul(q_BxHxLxK, k_BxHxTxK.swapaxes(-1, -2)).astype(jnp.float32)
    scores_BxHxLxT = jnp.where(allowed_BxLxT[:, None], scores_BxHxLxT, jnp.finfo(jnp.float32).min)
    top_BxHxLx1 = lax.stop_gradient(scores_BxHxLxT.max(-1, keepdims=True))
    weights_BxHxLxT = jnp.exp(scores_BxHxLxT - top_BxHxLx1)
    total_BxHxLx1 = weights_BxHxLxT.sum(-1, keepdims=True)
    kept_BxHxLxT = dropout(weights_BxHxLxT).astype(v_BxHxTxK.dtype)
    out_BxHxLxK = jnp.matmul(kept_BxHxLxT, v_BxHxTxK).astype(jnp.float32) / total_BxHxLx1
    return out_BxHxLxK.astype(v_BxHxTxK.dtype)


class CausalSelfAttention(nn.Module):
    """Attention where position t sees positions <= t.

    Without a cache the L inputs attend among themselves. With a cache
    (`kv_cache = {"k": BxTxHxK, "v": BxTxHxK}` and `cache_index` = slots already
    filled) the new keys/values are written at `cache_index` and queries attend over
    all T slots masked by position, so prefill and one-token steps share one code path.
    `pad_B` left-padding slots per row are never attended to (ragged prompt batches).
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    use_bias: bool = True
    out_std: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD, *, kv_cache=None, cache_index=None, pad_B=None, deterministic=True):
        B, L, D = x_BxLxD.shape
        H, K = self.num_heads, self.head_dim
        normal = nn.initializers.normal
        w_Dx3xHxK = self.param(
            "qkv_kernel", partitioned(normal(0.02), ("embed", None, "heads", "kv")), (D, 3, H, K)
        )
        # Plain 2-D matmuls per projection: XLA:CPU's backward of a dot over [B, L, D] or a
        # 4-D kernel is ~2x slower than over [B*L, D]; heads stay the major part of H*K so a
        # `tensor`-sharded heads axis survives the reshape.
        # One-token decode steps are bound by per-op overhead instead: one fused projection.
        w_Dx3xHxK = w_Dx3xHxK.astype(self.dtype)
        if L == 1:
            qkv_Bx1x3xHxK = jnp.einsum("bld,dthk->blthk", x_BxLxD, w_Dx3xHxK)
            q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (qkv_Bx1x3xHxK[:, :, i] for i in range(3))
        else:
            x_NxD = x_BxLxD.reshape(B * L, D)
            q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
                (x_NxD @ w_Dx3xHxK[:, i].reshape(D, H * K)).reshape(B, L, H, K) for i in range(3)
            )
        if self.use_bias:
            b_3xHxK = self.param(
                "qkv_bias", partitioned(nn.initializers.zeros, (None, "heads", "kv")), (3, H, K)
            ).astype(self.dtype)
            q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
                t + b_3xHxK[i] for i, t in enumerate((q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
            )
        q_BxLxHxK = nn.with_logical_constraint(q_BxLxHxK, ("batch", "length", "act_heads", "kv"))

        if kv_cache is None:
            k_BxTxHxK, v_BxTxHxK, new_cache = k_BxLxHxK, v_BxLxHxK, None
            q_pos_L = jnp.arange(L)
        else:
            at = (0, cache_index, 0, 0)
            k_BxTxHxK = lax.dynamic_update_slice(
                kv_cache["k"], k_BxLxHxK.astype(kv_cache["k"].dtype), at
            )
            v_BxTxHxK = lax.dynamic_update_slice(
                kv_cache["v"], v_BxLxHxK.astype(kv_cache["v"].dtype), at
            )
            new_cache = {"k": k_BxTxHxK, "v": v_BxTxHxK}
            q_pos_L = cache_index + jnp.arange(L)
        k_pos_T = jnp.arange(k_BxTxHxK.shape[1])
        # [B, H, length, K] layout: the score and value products become plain batched matmuls.
        q_BxHxLxK = q_BxLxHxK.transpose(0, 2, 1, 3) / jnp.sqrt(K).astype(self.dtype)
        k_BxHxTxK = k_BxTxHxK.transpose(0, 2, 1, 3).astype(self.dtype)
        v_BxHxTxK = v_BxTxHxK.transpose(0, 2, 1, 3).astype(self.dtype)
        dropout = nn.Dropout(self.dropout_rate)
        # Without a cache, query block i only needs keys up to its own end: splitting the
        # queries in 4 skips the fully masked upper blocks (~40% of attention work at L=256).
        blocks = 4 if kv_cache is None and L % 4 == 0 and L >= 64 else 1
        size = L // blocks
        outs = []
        for i in range(blocks):
            rows = slice(i * size, (i + 1) * size)
            keys = slice(0, (i + 1) * size if kv_cache is None else k_pos_T.shape[0])
            allowed_1xLxT = (k_pos_T[None, keys] <= q_pos_L[rows, None])[None]
            if pad_B is not None:
                allowed_1xLxT = allowed_1xLxT & (k_pos_T[None, None, keys] >= pad_B[:, None, None])
            outs.append(
                _attend(
                    q_BxHxLxK[:, :, rows],
                    k_BxHxTxK[:, :, keys],
                    v_BxHxTxK[:, :, keys],
                    allowed_1xLxT,
                    lambda p: dropout(p, deterministic=deterministic),
                )
            )
        out_BxLxHxK = jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)

        w_HxKxD = self.param(
            "out_kernel", partitioned(normal(self.out_std), ("heads", "kv", "embed")), (H, K, D)
        )
        out_NxHK = out_BxLxHxK.reshape(B * L, H * K)
        y_BxLxD = (out_NxHK @ w_HxKxD.astype(self.dtype).reshape(H * K, D)).reshape(B, L, D)
        if self.use_bias:
            b_D = self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (D,))
            y_BxLxD = y_BxLxD + b_D.astype(self.dtype)
        y_BxLxD = nn.Dropout(self.dropout_rate)(y_BxLxD, deterministic=deterministic)
        return y_BxLxD, new_cache

"""Multi-head attention for every Transformer family: causal, bidirectional and cross.

One module, three modes:
- `causal`: position t sees positions <= t (GPT, a translation decoder). With a cache
  (`kv_cache = {"k": BxHxTxK, "v": BxHxTxK}` from `empty_kv`, `cache_index` = slots already
  filled) the new keys/values are written at `cache_index` and queries attend over all T
  slots masked by position, so prefill and one-token steps share one code path.
- `bidirectional`: every position sees every valid position (an encoder, BERT).
- `cross`: queries from `x`, keys/values from `memory` (the encoder's output). While
  decoding, `kv_cache` holds the source's keys/values, computed once per source with
  `cross_kv` from the layer's parameters, and `memory` is not needed.
`key_valid_BxT` (True = may be attended to) masks padding in every mode; packed rows (several
examples per row) pass segment ids, and a query sees only keys of its own segment.
"""

from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from genzoo.errors import env_choice
from genzoo.layers import dots, dropout, flash, quant
from genzoo.layers.attend import attend, query_blocks
from genzoo.layers.basic import Dtype, partitioned
from genzoo.layers.dropout import Dropout, keep_mask, quantized_rate

log = logging.getLogger(__name__)
MODES = ("causal", "bidirectional", "cross")
_Q_AXES = ("batch", "length", "act_heads", "kv")  # logical axes of the [B, L, H, K] heads


def _implementation(q_BxLxHxK, k_BxTxHxK, mode: str, cached: bool, masked: bool,
                    dropout_active: bool):  # fmt: skip
    """Which kernel computes softmax(q k^T) v: "cudnn" (its fused flash attention: on GPU, in
    16-bit, plain self-attention without padding, packing, cache or dropout on the weights,
    which cuDNN would draw from state, not from the step's key), "pallas" (`layers.flash`:
    self- or cross-attention of equal lengths without a cache, padding and packing as
    segments, dropout inside the kernel; opt-in with `GENZOO_ATTENTION=pallas` until timed on
    a GPU, interpreted on CPU, never on TPU) or "xla" (`attend`: everything, CPU's fused path).
    `GENZOO_ATTENTION=xla` forces the last (A/B timing). Also the mesh spec the Pallas
    kernels run per shard of (None on one device): q's logical axes under the config's rules,
    if `flash.shardable` (else XLA)."""
    choice = env_choice("GENZOO_ATTENTION")
    self_attention = mode != "cross" and not cached
    mesh = jax.sharding.get_abstract_mesh()
    spec = None  # without logical rules (a bare `jax.set_mesh`): replicated, P(None, ...)
    if choice == "pallas" and not (mesh.empty or mesh.size == 1):
        spec = nn.logical_to_mesh_axes(_Q_AXES)
    if (
        choice == "pallas"
        and jax.default_backend() in ("gpu", "cpu")  # Triton kernels; CPU interprets (tests)
        and not cached
        and flash.supports(q_BxLxHxK, k_BxTxHxK)
        and (spec is None or flash.shardable(q_BxLxHxK, spec, mesh))
    ):
        if jax.default_backend() == "cpu":
            _warn_interpreted()
        return "pallas", spec
    cudnn = (
        choice == "auto"
        and jax.default_backend() == "gpu"
        and q_BxLxHxK.dtype in (jnp.bfloat16, jnp.float16)
        and q_BxLxHxK.shape[-1] % 8 == 0
        and q_BxLxHxK.shape[-1] <= 128
        and self_attention
        and not masked
        and not dropout_active
    )
    return ("cudnn" if cudnn else "xla"), None


@functools.cache
def _warn_interpreted():
    log.warning("GENZOO_ATTENTION=pallas on CPU: the GPU kernels run interpreted (for tests); "
                "expect steps many times slower")  # fmt: skip


def segment_ids(segments_BxL, key_segments_BxT, key_valid_BxT, B, L, T):
    """Padding and packing as the flash kernels' (query, key) segments: padded keys take a
    segment no query has."""
    q_seg_BxL = jnp.zeros((B, L), jnp.int32) if segments_BxL is None else segments_BxL
    k_seg_BxT = key_segments_BxT
    if k_seg_BxT is None:  # self-attention's keys are its queries
        k_seg_BxT = jnp.zeros((B, T), jnp.int32) if segments_BxL is None else segments_BxL
    if key_valid_BxT is not None:
        k_seg_BxT = jnp.where(key_valid_BxT, k_seg_BxT, flash.NO_QUERY)
    return q_seg_BxL.astype(jnp.int32), k_seg_BxT.astype(jnp.int32)


def heads_major(x_BxTxHxK):
    """[B, T, H, K] -> [B, H, T, K] (and back: the permutation is its own inverse)."""
    return x_BxTxHxK.transpose(0, 2, 1, 3)


def xla_attention(q_BxLxHxK, k_BxHxTxK, v_BxHxTxK, *, causal: bool, q_offset=0,
                  key_valid_BxT=None, segments=None, rng=None, rate: float = 0.0,
                  blocked: bool = True):  # fmt: skip
    """softmax(q k^T / sqrt(K)) v through `attend` (every mode, CPU's fused path), [B, L, H, K].

    Keys and values come heads-major, as a cache stores them (`heads_major` for the others):
    the score and value products are then plain batched matmuls. `q_offset`: the first
    query's position (a cache's fill) for the causal mask; `segments` (query [B, L], key
    [B, T] ids) for packed rows; `rng` draws dropout on the weights at `rate` (already
    quantized) when given; `blocked`: causal query blocks (not when decoding)."""
    B, L, H, K = q_BxLxHxK.shape
    q_BxHxLxK = heads_major(q_BxLxHxK) / jnp.sqrt(K).astype(q_BxLxHxK.dtype)
    T = k_BxHxTxK.shape[2]
    allowed_BxLxT = jnp.ones((1, L, T), bool)
    if causal:
        q_pos_L = q_offset + jnp.arange(L)
        allowed_BxLxT = (jnp.arange(T)[None, :] <= q_pos_L[:, None])[None]
    if key_valid_BxT is not None:
        allowed_BxLxT = allowed_BxLxT & key_valid_BxT[:, None, :]
    if segments is not None:  # packed rows: attend within one's own example
        segments_BxL, key_segments_BxT = segments
        allowed_BxLxT = allowed_BxLxT & (segments_BxL[:, :, None] == key_segments_BxT[:, None])
    # One dropout mask for the whole [L, T] square, sliced per query block: each random-bit
    # site is its own chain of ops to compile (with threefry, 4 per layer cost the char GPT's
    # step 11.2 s of XLA:CPU compile against 7.6 s for one). Streams by (batch, head), as the
    # Pallas kernels draw them.
    keep_BxHxLxT = None
    if rng is not None and rate:
        keep_BxHxLxT = keep_mask(rng, rate, (B, H, L, T), stream_axes=2)
    blocks = query_blocks(L, causal and blocked)
    out_BxHxLxK = attend(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, allowed_BxLxT, keep_BxHxLxT, rate,
                         blocks)  # fmt: skip
    return heads_major(out_BxHxLxK)  # back to [B, L, H, K]


def _project(x_BxLxD, w_DxNxHxK, dtype):
    """N projections of x, each [B, L, H, K], as plain 2-D matmuls.

    XLA:CPU's backward of a dot over [B, L, D] or a 4-D kernel is ~2x slower than over
    [B*L, D]; heads stay the major part of H*K so a `tensor`-sharded heads axis survives
    the reshape. One-token decode steps are bound by per-op overhead instead: one einsum.
    """
    B, L, D = x_BxLxD.shape
    _, N, H, K = w_DxNxHxK.shape
    if isinstance(w_DxNxHxK, quant.Int8):  # all N projections in one int8 matmul
        out_MxNHK = quant.matmul(x_BxLxD.reshape(B * L, D), w_DxNxHxK.matrix(), dtype)
        out_BxLxNxHxK = out_MxNHK.reshape(B, L, N, H, K)
        return [out_BxLxNxHxK[:, :, i] for i in range(N)]
    w_DxNxHxK = w_DxNxHxK.astype(dtype)
    if L == 1:
        out_Bx1xNxHxK = jnp.einsum("bld,dnhk->blnhk", x_BxLxD, w_DxNxHxK)
        return [out_Bx1xNxHxK[:, :, i] for i in range(N)]
    x_MxD = x_BxLxD.reshape(B * L, D)
    outs = dots.matmul_split(x_MxD, w_DxNxHxK.reshape(D, N, H * K))
    return [out_MxHK.reshape(B, L, H, K) for out_MxHK in outs]


def empty_kv(batch: int, length: int, heads: int, head_dim: int, dtype) -> dict:
    """A self-attention layer's empty cache of `length` slots, [B, H, T, K]: heads major, as
    the score and value products read it. (Stored [B, T, H, K], each decode step copied every
    layer's whole cache into that layout: the baby GPT's batch-1 token 5.0 -> 3.7 ms on CPU.)"""
    zeros = jnp.zeros((batch, heads, length, head_dim), jnp.dtype(dtype))
    return {"k": zeros, "v": zeros}


def _source_kv(attn_params, memory_BxSxD, dtype) -> tuple:
    """Keys and values [B, S, H, K] of a `cross` Attention over a source."""
    k_BxSxHxK, v_BxSxHxK = _project(memory_BxSxD.astype(dtype), attn_params["kv_kernel"], dtype)
    if "kv_bias" in attn_params:
        b_2xHxK = attn_params["kv_bias"].astype(dtype)
        k_BxSxHxK, v_BxSxHxK = k_BxSxHxK + b_2xHxK[0], v_BxSxHxK + b_2xHxK[1]
    return k_BxSxHxK, v_BxSxHxK


def cross_kv(attn_params, memory_BxSxD, dtype=jnp.float32) -> dict:
    """A `cross` Attention's cache: its keys and values over a source, [B, H, S, K] (as
    `empty_kv`), computed once per source."""
    k_BxSxHxK, v_BxSxHxK = _source_kv(attn_params, memory_BxSxD, dtype)
    return {"k": heads_major(k_BxSxHxK), "v": heads_major(v_BxSxHxK)}


class Attention(nn.Module):
    """Multi-head attention; see the module docstring for the modes and the cache."""

    num_heads: int
    head_dim: int
    mode: str = "causal"
    dropout_rate: float = 0.0
    use_bias: bool = True
    out_std: float = 0.02
    dtype: Dtype = jnp.float32

    def _kernel(self, name, n, D):
        shape, axes = (D, n, self.num_heads, self.head_dim), ("embed", None, "heads", "kv")
        return self.param(name, partitioned(nn.initializers.normal(0.02), axes), shape)

    def _bias(self, name, n):
        shape, axes = (n, self.num_heads, self.head_dim), (None, "heads", "kv")
        return self.param(name, partitioned(nn.initializers.zeros, axes), shape).astype(self.dtype)

    @nn.compact
    def __call__(
        self,
        x_BxLxD,
        *,
        memory_BxSxD=None,
        key_valid_BxT=None,
        segments_BxL=None,
        key_segments_BxT=None,
        kv_cache=None,
        cache_index=None,
        deterministic=True,
    ):
        """Output [B, L, D] and the updated cache (None without one)."""
        if self.mode not in MODES:
            raise ValueError(f"attention mode {self.mode!r} not in {MODES}")
        B, L, D = x_BxLxD.shape
        H, K = self.num_heads, self.head_dim
        new_cache = None
        k_BxTxHxK = v_BxTxHxK = None  # keys and values over the sequence (no cache)
        k_BxHxTxK = v_BxHxTxK = None  # heads-major: a cache's, or what the XLA path reads
        if self.mode == "cross":
            (q_BxLxHxK,) = _project(x_BxLxD, self._kernel("q_kernel", 1, D), self.dtype)
            if self.use_bias:
                q_BxLxHxK = q_BxLxHxK + self._bias("q_bias", 1)[0]
            if kv_cache is None:
                k_BxTxHxK, v_BxTxHxK = _source_kv(
                    {"kv_kernel": self._kernel("kv_kernel", 2, D)}
                    | ({"kv_bias": self._bias("kv_bias", 2)} if self.use_bias else {}),
                    memory_BxSxD,
                    self.dtype,
                )
            else:  # precomputed by `cross_kv`; the parameters still exist for `init`
                self._kernel("kv_kernel", 2, D)
                if self.use_bias:
                    self._bias("kv_bias", 2)
                new_cache = kv_cache
                k_BxHxTxK, v_BxHxTxK = kv_cache["k"], kv_cache["v"]
        else:
            q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = _project(
                x_BxLxD, self._kernel("qkv_kernel", 3, D), self.dtype
            )
            if self.use_bias:
                b_3xHxK = self._bias("qkv_bias", 3)
                q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
                    t + b_3xHxK[i] for i, t in enumerate((q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
                )
            if kv_cache is None:
                k_BxTxHxK, v_BxTxHxK = k_BxLxHxK, v_BxLxHxK
            else:
                at = (0, 0, cache_index, 0)
                put = lambda old, new: lax.dynamic_update_slice(
                    old, heads_major(new).astype(old.dtype), at
                )
                k_BxHxTxK = put(kv_cache["k"], k_BxLxHxK)
                v_BxHxTxK = put(kv_cache["v"], v_BxLxHxK)
                new_cache = {"k": k_BxHxTxK, "v": v_BxHxTxK}
        q_BxLxHxK = nn.with_logical_constraint(q_BxLxHxK, _Q_AXES)

        masked = key_valid_BxT is not None or segments_BxL is not None
        rate = quantized_rate(self.dropout_rate)  # what the masks realise
        dropout_active = not deterministic and rate > 0
        cached = kv_cache is not None  # then only k_BxHxTxK and v_BxHxTxK are set
        how, spec = _implementation(q_BxLxHxK.astype(self.dtype), k_BxTxHxK, self.mode, cached,
                                    masked, dropout_active)  # fmt: skip
        if how == "cudnn":
            out_BxLxHxK = jax.nn.dot_product_attention(
                q_BxLxHxK.astype(self.dtype),
                k_BxTxHxK.astype(self.dtype),
                v_BxTxHxK.astype(self.dtype),
                is_causal=self.mode == "causal",
                implementation="cudnn",
            )
        elif how == "pallas":
            seeds = (jnp.zeros((), jnp.uint32),) * 2
            if dropout_active:  # the same masks as the XLA path's below
                seeds = dropout.seeds(self.make_rng("dropout"))
            out_BxLxHxK = flash.attention(
                *(t.astype(self.dtype) for t in (q_BxLxHxK, k_BxTxHxK, v_BxTxHxK)),
                seeds, self.mode == "causal", rate if dropout_active else 0.0,
                jax.default_backend() != "gpu",  # elsewhere interpreted: tests, not speed
                spec, segment_ids(segments_BxL, key_segments_BxT, key_valid_BxT, B, L,
                                k_BxTxHxK.shape[1]) if masked else None,
            )  # fmt: skip
        else:
            if not cached:
                k_BxHxTxK, v_BxHxTxK = heads_major(k_BxTxHxK), heads_major(v_BxTxHxK)
            out_BxLxHxK = xla_attention(
                *(t.astype(self.dtype) for t in (q_BxLxHxK, k_BxHxTxK, v_BxHxTxK)),
                causal=self.mode == "causal",
                q_offset=0 if not cached or self.mode != "causal" else cache_index,
                key_valid_BxT=key_valid_BxT,
                segments=None if segments_BxL is None else (segments_BxL, key_segments_BxT),
                rng=self.make_rng("dropout") if dropout_active else None,
                rate=rate,
                blocked=not cached,
            )

        w_HxKxD = self.param(
            "out_kernel",
            partitioned(nn.initializers.normal(self.out_std), ("heads", "kv", "embed")),
            (H, K, D),
        )
        out_MxHK = out_BxLxHxK.reshape(B * L, H * K)
        y_MxD = quant.matmul(out_MxHK, quant.as_matrix(w_HxKxD, H * K), self.dtype)
        y_BxLxD = y_MxD.reshape(B, L, D)
        if self.use_bias:
            b_D = self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (D,))
            y_BxLxD = y_BxLxD + b_D.astype(self.dtype)
        y_BxLxD = Dropout(self.dropout_rate)(y_BxLxD, deterministic=deterministic)
        return y_BxLxD, new_cache

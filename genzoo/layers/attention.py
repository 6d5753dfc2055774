"""Multi-head attention for every Transformer family: causal, bidirectional and cross.

One module, three modes:
- `causal`: position t sees positions <= t (GPT, a translation decoder). With a cache
  (`kv_cache = {"k": BxTxHxK, "v": BxTxHxK}`, `cache_index` = slots already filled) the
  new keys/values are written at `cache_index` and queries attend over all T slots masked
  by position, so prefill and one-token steps share one code path.
- `bidirectional`: every position sees every valid position (an encoder, BERT).
- `cross`: queries from `x`, keys/values from `memory` (the encoder's output). While
  decoding, `kv_cache` holds the source's keys/values, computed once per source with
  `cross_kv` from the layer's parameters, and `memory` is not needed.
`key_valid_BxT` (True = may be attended to) masks padding in every mode; packed rows (several
examples per row) pass segment ids, and a query sees only keys of its own segment.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from genzoo.errors import UserError, env_choice
from genzoo.layers import dots, quant
from genzoo.layers.basic import Dtype, partitioned

MODES = ("causal", "bidirectional", "cross")


def _attend(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, allowed_BxLxT, keep_BxHxLxT, rate):
    """Softmax attention, normalised after the value product (one [L, T] pass fewer).

    The row maximum is subtracted for range only (no gradient needed: it cancels).
    Dropout (weights kept where `keep_BxHxLxT`, None for none) on the unnormalised weights
    equals dropout on the probabilities. Same function on every path; `_grad_path()` picks
    XLA's autodiff, the hand-written backward, or (float32) the fused form.
    """
    args = (q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, allowed_BxLxT, keep_BxHxLxT, rate)
    path = _grad_path()
    if path == "fused" and all(t.dtype == jnp.float32 for t in args[:3]):
        bias_BxLxT = jnp.where(allowed_BxLxT, 0.0, _MASKED).astype(jnp.float32)
        scale = None if keep_BxHxLxT is None else jnp.where(keep_BxHxLxT, 1 / (1 - rate), 0.0)
        return _attend_fused(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_BxLxT[:, None], scale)
    return _attend_forward(*args)[0] if path == "autodiff" else _attend_manual(*args)


# An additive mask, not `where`: XLA:CPU hands a dot, an add, the row max, exp and the value
# product to YNNPACK as one fusion; a select splits it there. Finite, so a fully masked row
# gives uniform weights (as `where` with the float minimum did), never inf - inf.
_MASKED = -1e30


def _attend_forward(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, allowed_BxLxT, keep_BxHxLxT, rate):
    """The output and what the hand-written backward reads."""
    scores_BxHxLxT = jnp.matmul(q_BxHxLxK, k_BxHxTxK.swapaxes(-1, -2)).astype(jnp.float32)
    scores_BxHxLxT = jnp.where(allowed_BxLxT[:, None], scores_BxHxLxT, jnp.finfo(jnp.float32).min)
    top_BxHxLx1 = lax.stop_gradient(scores_BxHxLxT.max(-1, keepdims=True))
    weights_BxHxLxT = jnp.exp(scores_BxHxLxT - top_BxHxLx1)
    total_BxHxLx1 = weights_BxHxLxT.sum(-1, keepdims=True)
    kept_BxHxLxT = _dropped(weights_BxHxLxT, keep_BxHxLxT, rate).astype(v_BxHxTxK.dtype)
    out_BxHxLxK = jnp.matmul(kept_BxHxLxT, v_BxHxTxK).astype(jnp.float32) / total_BxHxLx1
    saved = (q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, weights_BxHxLxT, total_BxHxLx1, keep_BxHxLxT,
             out_BxHxLxK)  # fmt: skip
    return out_BxHxLxK.astype(v_BxHxTxK.dtype), saved


def _dropped(x, keep, rate):
    return x if keep is None else jnp.where(keep, x / (1 - rate), 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attend_manual(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, allowed_BxLxT, keep_BxHxLxT, rate):
    return _attend_forward(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, allowed_BxLxT, keep_BxHxLxT, rate)[0]


def _attend_backward(rate, saved, dout_BxHxLxK):
    """Four batched matmuls and two elementwise passes over [L, T]. XLA:CPU's autodiff of
    `_attend_forward` ran its two transposed products (dv, dk) at half the matmul rate."""
    q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, weights_BxHxLxT, total_BxHxLx1, keep, out_BxHxLxK = saved
    dout_BxHxLxK = dout_BxHxLxK.astype(jnp.float32)
    dunnorm_BxHxLxK = (dout_BxHxLxK / total_BxHxLx1).astype(v_BxHxTxK.dtype)
    kept_BxHxLxT = _dropped(weights_BxHxLxT, keep, rate).astype(v_BxHxTxK.dtype)
    dv_BxHxTxK = _matmul_lhs_t(kept_BxHxLxT, dunnorm_BxHxLxK)
    dkept_BxHxLxT = jnp.matmul(dunnorm_BxHxLxK, v_BxHxTxK.swapaxes(-1, -2)).astype(jnp.float32)
    # total = sum of the weights: its gradient, -sum(dout * out) / total, reaches each weight
    dtotal_BxHxLx1 = -(dout_BxHxLxK * out_BxHxLxK).sum(-1, keepdims=True) / total_BxHxLx1
    dscores_BxHxLxT = weights_BxHxLxT * (_dropped(dkept_BxHxLxT, keep, rate) + dtotal_BxHxLx1)
    dq_BxHxLxK = jnp.matmul(dscores_BxHxLxT.astype(q_BxHxLxK.dtype), k_BxHxTxK)
    dk_BxHxTxK = _matmul_lhs_t(dscores_BxHxLxT.astype(k_BxHxTxK.dtype), q_BxHxLxK)
    return dq_BxHxLxK, dk_BxHxTxK.astype(k_BxHxTxK.dtype), dv_BxHxTxK, None, None


_attend_manual.defvjp(_attend_forward, _attend_backward)


def _unnormalised_weights(q_BxHxLxK, k_BxHxTxK, bias_Bx1xLxT):
    """exp(scores - row max) of the fused path: its forward, and its backward's recompute."""
    scores_BxHxLxT = jnp.matmul(q_BxHxLxK, k_BxHxTxK.swapaxes(-1, -2)) + bias_Bx1xLxT
    return jnp.exp(scores_BxHxLxT - scores_BxHxLxT.max(-1, keepdims=True))


def _fused_forward(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT):
    """The output and (without dropout) the weights' row totals [B, H, L, 1], in one YNNPACK
    fusion on CPU: there the totals come out of the value product through a column of ones
    appended to v (a separate row sum would be a second output, which splits the fusion).
    With dropout (`scale` = kept / (1 - rate), else 0) the probabilities are formed first."""
    weights_BxHxLxT = _unnormalised_weights(q_BxHxLxK, k_BxHxTxK, bias_Bx1xLxT)
    if scale_BxHxLxT is not None:
        probs_BxHxLxT = weights_BxHxLxT / weights_BxHxLxT.sum(-1, keepdims=True)
        return jnp.matmul(probs_BxHxLxT * scale_BxHxLxT, v_BxHxTxK), None
    ones_BxHxTx1 = jnp.ones((*v_BxHxTxK.shape[:-1], 1), v_BxHxTxK.dtype)
    sums_BxHxLxK1 = jnp.matmul(weights_BxHxLxT, jnp.concatenate([v_BxHxTxK, ones_BxHxTx1], -1))
    total_BxHxLx1 = sums_BxHxLxK1[..., -1:]
    return sums_BxHxLxK1[..., :-1] / total_BxHxLx1, total_BxHxLx1


@jax.custom_vjp
def _attend_fused(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT):
    """Attention that keeps no [L, T] array of its own for the backward (as a flash kernel
    does): the backward recomputes the weights from q and k. Float32. A fully masked row
    (padding that sees no key) averages v as before; the gradient of such a row reaches q
    and k here, where `where` stopped it: padding's loss is masked anyway."""
    return _fused_forward(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT)[0]


def _attend_fused_forward(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT):
    inputs = (q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT)
    out_BxHxLxK, total_BxHxLx1 = _fused_forward(*inputs)
    return out_BxHxLxK, (*inputs, out_BxHxLxK, total_BxHxLx1)


def _attend_fused_backward(saved, dout_BxHxLxK):
    q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale, out_BxHxLxK, total_BxHxLx1 = saved
    weights_BxHxLxT = _unnormalised_weights(q_BxHxLxK, k_BxHxTxK, bias_Bx1xLxT)
    if total_BxHxLx1 is None:
        total_BxHxLx1 = weights_BxHxLxT.sum(-1, keepdims=True)
    probs_BxHxLxT = weights_BxHxLxT / total_BxHxLx1
    kept_BxHxLxT = probs_BxHxLxT if scale is None else probs_BxHxLxT * scale
    dv_BxHxTxK = _matmul_lhs_t(kept_BxHxLxT, dout_BxHxLxK)
    dprobs_BxHxLxT = jnp.matmul(dout_BxHxLxK, v_BxHxTxK.swapaxes(-1, -2))
    if scale is not None:
        dprobs_BxHxLxT = dprobs_BxHxLxT * scale
    # softmax's Jacobian: dscores = p * (dp - sum_t p dp), and sum_t p dp = sum_k dout * out
    dot_BxHxLx1 = (dout_BxHxLxK * out_BxHxLxK).sum(-1, keepdims=True)
    dscores_BxHxLxT = probs_BxHxLxT * (dprobs_BxHxLxT - dot_BxHxLx1)
    dq_BxHxLxK = jnp.matmul(dscores_BxHxLxT, k_BxHxTxK)
    dk_BxHxTxK = _matmul_lhs_t(dscores_BxHxLxT, q_BxHxLxK)
    return dq_BxHxLxK, dk_BxHxTxK, dv_BxHxTxK, None, None


_attend_fused.defvjp(_attend_fused_forward, _attend_fused_backward)


def _matmul_lhs_t(a_BxHxLxT, b_BxHxLxK):
    """a^T @ b over the last two axes, [B, H, T, K]. XLA:CPU runs a batched dot that contracts
    its lhs's rows at half speed (64x128x128x32: 47 against 90 GFLOP/s); the barrier keeps it
    from folding the explicit (fusable) transpose back into the dot."""
    return jnp.matmul(lax.optimization_barrier(a_BxHxLxT.swapaxes(-1, -2)), b_BxHxLxK)


def _grad_path() -> str:
    """`fused` on CPU, where it was measured (16-bit compute falls back to the hand-written
    `manual` backward); GPUs keep XLA's autodiff until timed there.
    `GENZOO_ATTENTION_GRAD=fused|manual|autodiff` for A/B timing."""
    value = env_choice("GENZOO_ATTENTION_GRAD", ("auto", "fused", "manual", "autodiff"))
    if value == "auto":
        return "fused" if jax.default_backend() == "cpu" else "autodiff"
    return value


def _cudnn(q_BxLxHxK, mode: str, masked: bool, dropout_active: bool):
    """Whether cuDNN's fused (flash) attention computes this call: on GPU, in 16-bit, for
    plain self-attention (no padding, packing or cache: the pre-training hot path) without
    dropout on the weights, which the fused kernel does not apply. `GENZOO_ATTENTION=xla`
    turns it off (A/B timing). Elsewhere `_attend` (XLA) keeps CPU results as they were."""
    return (
        jax.default_backend() == "gpu"
        and os.environ.get("GENZOO_ATTENTION", "auto") != "xla"
        and q_BxLxHxK.dtype in (jnp.bfloat16, jnp.float16)
        and q_BxLxHxK.shape[-1] % 8 == 0
        and q_BxLxHxK.shape[-1] <= 128
        and mode != "cross"
        and not masked
        and not dropout_active
    )


def _query_blocks(L: int, causal_uncached: bool) -> int:
    """Causal without a cache: query block i only needs keys up to its own end, so 4 query
    blocks skip the fully masked upper blocks (~40% of attention work at L=256).
    `GENZOO_ATTENTION_BLOCKS=1` computes one block (A/B timing: on GPU each block is its own
    set of kernels to schedule and autotune)."""
    value = os.environ.get("GENZOO_ATTENTION_BLOCKS", "4")
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"GENZOO_ATTENTION_BLOCKS must be a positive integer, got {value!r}")
    blocks = int(value)
    return blocks if causal_uncached and L % blocks == 0 and L >= 16 * blocks else 1


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


def cross_kv(attn_params, memory_BxSxD, dtype=jnp.float32) -> dict:
    """Keys and values of a `cross` Attention's parameters over a source, once per source."""
    k_BxSxHxK, v_BxSxHxK = _project(memory_BxSxD.astype(dtype), attn_params["kv_kernel"], dtype)
    if "kv_bias" in attn_params:
        b_2xHxK = attn_params["kv_bias"].astype(dtype)
        k_BxSxHxK, v_BxSxHxK = k_BxSxHxK + b_2xHxK[0], v_BxSxHxK + b_2xHxK[1]
    return {"k": k_BxSxHxK, "v": v_BxSxHxK}


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
        if self.mode == "cross":
            (q_BxLxHxK,) = _project(x_BxLxD, self._kernel("q_kernel", 1, D), self.dtype)
            if self.use_bias:
                q_BxLxHxK = q_BxLxHxK + self._bias("q_bias", 1)[0]
            if kv_cache is None:
                kv = cross_kv(
                    {"kv_kernel": self._kernel("kv_kernel", 2, D)}
                    | ({"kv_bias": self._bias("kv_bias", 2)} if self.use_bias else {}),
                    memory_BxSxD,
                    self.dtype,
                )
            else:  # precomputed by `cross_kv`; the parameters still exist for `init`
                self._kernel("kv_kernel", 2, D)
                if self.use_bias:
                    self._bias("kv_bias", 2)
                kv, new_cache = kv_cache, kv_cache
            k_BxTxHxK, v_BxTxHxK = kv["k"], kv["v"]
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
                at = (0, cache_index, 0, 0)
                put = lambda old, new: lax.dynamic_update_slice(old, new.astype(old.dtype), at)
                k_BxTxHxK = put(kv_cache["k"], k_BxLxHxK)
                v_BxTxHxK = put(kv_cache["v"], v_BxLxHxK)
                new_cache = {"k": k_BxTxHxK, "v": v_BxTxHxK}
        q_BxLxHxK = nn.with_logical_constraint(q_BxLxHxK, ("batch", "length", "act_heads", "kv"))

        masked = kv_cache is not None or key_valid_BxT is not None or segments_BxL is not None
        dropout_active = not deterministic and self.dropout_rate > 0
        if _cudnn(q_BxLxHxK.astype(self.dtype), self.mode, masked, dropout_active):
            out_BxLxHxK = jax.nn.dot_product_attention(
                q_BxLxHxK.astype(self.dtype),
                k_BxTxHxK.astype(self.dtype),
                v_BxTxHxK.astype(self.dtype),
                is_causal=self.mode == "causal",
                implementation="cudnn",
            )
        else:
            T = k_BxTxHxK.shape[1]
            causal = self.mode == "causal"
            q_pos_L = (0 if kv_cache is None or not causal else cache_index) + jnp.arange(L)
            k_pos_T = jnp.arange(T)
            # [B, H, length, K] layout: the score and value products become plain batched matmuls.
            q_BxHxLxK = q_BxLxHxK.transpose(0, 2, 1, 3) / jnp.sqrt(K).astype(self.dtype)
            k_BxHxTxK = k_BxTxHxK.transpose(0, 2, 1, 3).astype(self.dtype)
            v_BxHxTxK = v_BxTxHxK.transpose(0, 2, 1, 3).astype(self.dtype)
            blocks = _query_blocks(L, causal and kv_cache is None)
            size = L // blocks
            # One dropout mask for the whole [L, T] square, sliced per block: each random-bit
            # site is its own chain of threefry ops to compile (4 per layer cost the char GPT's
            # step 11.2 s of XLA:CPU compile against 7.6 s for one; step times equal).
            keep_BxHxLxT = None
            if dropout_active:
                rng = self.make_rng("dropout")
                keep_BxHxLxT = jax.random.bernoulli(rng, 1 - self.dropout_rate, (B, H, L, T))
            outs = []
            for i in range(blocks):
                rows = slice(i * size, (i + 1) * size)
                keys = slice(0, (i + 1) * size if blocks > 1 else T)
                allowed_BxLxT = jnp.ones((1, size, k_pos_T[keys].shape[0]), bool)
                if causal:
                    allowed_BxLxT = (k_pos_T[None, keys] <= q_pos_L[rows, None])[None]
                if key_valid_BxT is not None:
                    allowed_BxLxT = allowed_BxLxT & key_valid_BxT[:, None, keys]
                if segments_BxL is not None:  # packed rows: attend within one's own example
                    same_BxLxT = segments_BxL[:, rows, None] == key_segments_BxT[:, None, keys]
                    allowed_BxLxT = allowed_BxLxT & same_BxLxT
                outs.append(
                    _attend(
                        q_BxHxLxK[:, :, rows],
                        k_BxHxTxK[:, :, keys],
                        v_BxHxTxK[:, :, keys],
                        allowed_BxLxT,
                        None if keep_BxHxLxT is None else keep_BxHxLxT[:, :, rows, keys],
                        self.dropout_rate,
                    )
                )
            out_BxLxHxK = jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)

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
        y_BxLxD = nn.Dropout(self.dropout_rate)(y_BxLxD, deterministic=deterministic)
        return y_BxLxD, new_cache

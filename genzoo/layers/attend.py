"""Softmax attention over projected heads: q [B, H, L, K] against keys and values
[B, H, T, K], the part of `Attention` between its projections.

One forward function, three backward paths (`GENZOO_ATTENTION_GRAD`, chosen per backend):
XLA's autodiff, a hand-written backward (`manual`), and on CPU in float32 a `fused` form that
XLA:CPU gives YNNPACK as one subgraph per query block and whose backward recomputes the
weights. Causal attention without a cache runs in query blocks (`query_blocks`): block i
sees keys up to its own end only, so the fully masked upper blocks are never computed.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

from genzoo.errors import UserError, env_choice


def attend(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, allowed_BxLxT, keep_BxHxLxT, rate, blocks=1):
    """Softmax attention [B, H, L, K], normalised after the value product (one [L, T] pass
    fewer); `allowed_BxLxT` (B may be 1) masks, dropout keeps the weights where
    `keep_BxHxLxT` (None for none). `blocks` > 1: causal, T = L, query block i sees the
    keys of blocks 0..i (`query_blocks`).

    The row maximum is subtracted for range only (no gradient needed: it cancels).
    Dropout on the unnormalised weights equals dropout on the probabilities.
    """
    path = _grad_path()
    if path == "fused" and all(t.dtype == jnp.float32 for t in (q_BxHxLxK, k_BxHxTxK, v_BxHxTxK)):
        bias_BxLxT = jnp.where(allowed_BxLxT, 0.0, _MASKED).astype(jnp.float32)
        scale = None if keep_BxHxLxT is None else jnp.where(keep_BxHxLxT, 1 / (1 - rate), 0.0)
        return _attend_fused(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_BxLxT[:, None], scale, blocks)
    outs = []
    for rows, keys in _block_slices(q_BxHxLxK.shape[2], k_BxHxTxK.shape[2], blocks):
        keep = None if keep_BxHxLxT is None else keep_BxHxLxT[:, :, rows, keys]
        args = (q_BxHxLxK[:, :, rows], k_BxHxTxK[:, :, keys], v_BxHxTxK[:, :, keys],
                allowed_BxLxT[:, rows, keys], keep, rate)  # fmt: skip
        outs.append(_attend_forward(*args)[0] if path == "autodiff" else _attend_manual(*args))
    return outs[0] if blocks == 1 else jnp.concatenate(outs, axis=2)


def query_blocks(L: int, causal_uncached: bool) -> int:
    """Causal without a cache: query block i only needs keys up to its own end, so 4 query
    blocks skip the fully masked upper blocks (~40% of attention work at L=256).
    `GENZOO_ATTENTION_BLOCKS=1` computes one block (A/B timing: on GPU each block is its own
    set of kernels to schedule and autotune)."""
    value = os.environ.get("GENZOO_ATTENTION_BLOCKS", "4")
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"GENZOO_ATTENTION_BLOCKS must be a positive integer, got {value!r}")
    blocks = int(value)
    return blocks if causal_uncached and L % blocks == 0 and L >= 16 * blocks else 1


def _block_slices(L: int, T: int, blocks: int) -> list[tuple[slice, slice]]:
    """(query rows, keys) of each query block: block i sees keys [0, its own end)."""
    size = L // blocks
    return [
        (slice(i * size, (i + 1) * size), slice(0, (i + 1) * size if blocks > 1 else T))
        for i in range(blocks)
    ]


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attend_fused(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT, blocks):
    """Attention that keeps no [L, T] array of its own for the backward (as a flash kernel
    does): the backward recomputes the weights from q and k. Float32. All query blocks are
    one custom VJP so the backward joins the blocks' key and value gradients by key block
    (slices summed, then concatenated): through autodiff of per-block key slices each
    block's gradient was padded to T and the pads summed, ~0.2 GB of traffic a layer at the
    baby GPT's shape. A fully masked row (padding that sees no key) averages v as before; its
    gradient reaches q and k here, where `where` stopped it: padding's loss is masked anyway."""
    return _attend_fused_forward(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT,
                                 blocks)[0]  # fmt: skip


def _block_inputs(blocks, q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT):
    """Each query block's (q, k, v, bias, scale) and its rows."""
    for rows, keys in _block_slices(q_BxHxLxK.shape[2], k_BxHxTxK.shape[2], blocks):
        scale = None if scale_BxHxLxT is None else scale_BxHxLxT[:, :, rows, keys]
        yield rows, (q_BxHxLxK[:, :, rows], k_BxHxTxK[:, :, keys], v_BxHxTxK[:, :, keys],
                     bias_Bx1xLxT[:, :, rows, keys], scale)  # fmt: skip


def _attend_fused_forward(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT, blocks):
    inputs = (q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale_BxHxLxT)
    per_block = [_fused_forward(*block) for _, block in _block_inputs(blocks, *inputs)]
    outs, totals = zip(*per_block, strict=True)
    out_BxHxLxK = outs[0] if blocks == 1 else jnp.concatenate(outs, axis=2)
    return out_BxHxLxK, (*inputs, out_BxHxLxK, list(totals))


def _attend_fused_backward(blocks, saved, dout_BxHxLxK):
    *inputs, out_BxHxLxK, totals = saved
    grads = [
        _fused_block_backward(
            *block, out_BxHxLxK[:, :, rows], total_BxHxLx1, dout_BxHxLxK[:, :, rows]
        )  # fmt: skip
        for (rows, block), total_BxHxLx1 in zip(_block_inputs(blocks, *inputs), totals, strict=True)
    ]
    dqs, dks, dvs = zip(*grads, strict=True)
    dq_BxHxLxK = dqs[0] if blocks == 1 else jnp.concatenate(dqs, axis=2)
    return dq_BxHxLxK, _by_key_block(dks), _by_key_block(dvs), None, None


def _by_key_block(parts):
    """The key (or value) gradient [B, H, T, K] from each query block's, which covers keys up
    to the block's end: key block j sums the parts of query blocks j, j+1, ..."""
    if len(parts) == 1:
        return parts[0]
    size = parts[0].shape[2]
    return jnp.concatenate(
        [sum(p[:, :, j * size : (j + 1) * size] for p in parts[j:]) for j in range(len(parts))],
        axis=2,
    )


def _fused_block_backward(q_BxHxLxK, k_BxHxTxK, v_BxHxTxK, bias_Bx1xLxT, scale, out_BxHxLxK,
                          total_BxHxLx1, dout_BxHxLxK):  # fmt: skip
    """One query block's (dq, dk, dv), the weights recomputed."""
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
    return dq_BxHxLxK, dk_BxHxTxK, dv_BxHxTxK


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
    value = env_choice("GENZOO_ATTENTION_GRAD")
    if value == "auto":
        return "fused" if jax.default_backend() == "cpu" else "autodiff"
    return value

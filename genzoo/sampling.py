"""Autoregressive decoding inside `lax.scan`: greedy, temperature, top-k and top-p.

All knobs are traced values, so one compiled decoder serves every setting; only the
prompt length and the number of new tokens are static. Every row draws from its own key
(`row_keys`), so a row's text does not depend on the rows batched beside it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from genzoo.errors import UserError


def row_keys(rng, rows: int, first: int = 0):
    """One key per row: `rng` itself where it already holds `rows` keys, else row b's key is
    `rng` folded with `first + b` (so a row keeps its key whatever batch it falls in)."""
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    if jnp.ndim(rng) > (0 if typed else 1):
        if len(rng) != rows:  # vmap's own error names neither
            raise UserError(f"{len(rng)} keys for {rows} rows: give one key, or one per row")
        return rng
    return jax.vmap(jax.random.fold_in, (None, 0))(rng, first + jnp.arange(rows))


def fold_rows(keys_B, data):
    """Every row's key folded with the same `data` (a step or window number)."""
    return jax.vmap(jax.random.fold_in, (0, None))(keys_B, data)


def filter_logits(logits_BxV, top_k, top_p):
    """Masks to -inf every token outside the top-k (k=0: off) and the top-p nucleus (p=1: off)."""
    neg_inf = jnp.finfo(logits_BxV.dtype).min
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    V = logits_BxV.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    kth_Bx1 = jnp.take_along_axis(sorted_BxV, jnp.full((logits_BxV.shape[0], 1), k - 1), axis=-1)
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg_inf, logits_BxV)
    # Nucleus: keep the smallest prefix of sorted tokens whose mass reaches top_p.
    sorted_BxV = jnp.where(sorted_BxV < kth_Bx1, neg_inf, sorted_BxV)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = mass_before_BxV < top_p
    threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BxV < threshold_Bx1, neg_inf, logits_BxV)


def next_token(keys_B, logits_BxV, temperature, top_k, top_p):
    """One token per row, row b drawn with `keys_B[b]` (one key: see `row_keys`); temperature
    0 means greedy. Branches on the traced knobs skip what a setting does not need: the
    full-vocabulary sort of the filters (k=0 and p=1 keep every token) and the Gumbel noise
    of sampling (greedy). With GPT-2's 50k vocabulary they cost more than the 124M model's
    own decode step on a CPU."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    keys_B = row_keys(keys_B, logits_BxV.shape[0])

    def sample(logits_BxV):
        scaled_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)
        filters = (top_k > 0) | (top_p < 1)
        filtered = lambda x: filter_logits(x, top_k, top_p)
        scaled_BxV = jax.lax.cond(filters, filtered, lambda x: x, scaled_BxV)
        return jax.vmap(jax.random.categorical)(keys_B, scaled_BxV).astype(jnp.int32)

    greedy = lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32)
    return jax.lax.cond(temperature > 0, sample, greedy, logits_BxV)


def knobs(temperature, top_k, top_p):
    """The sampling settings as traced arrays, so changing them never recompiles."""
    return jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p)


def penalize_repeats(logits_BxV, seen_BxV, penalty):
    """CTRL's repetition penalty: seen tokens' logits are divided (if > 0) or multiplied by it."""
    penalized_BxV = jnp.where(logits_BxV > 0, logits_BxV / penalty, logits_BxV * penalty)
    return jnp.where(seen_BxV, penalized_BxV, logits_BxV)


def _mark(seen_BxV, tokens_BxL, valid_BxL):
    rows_BxL = jnp.broadcast_to(jnp.arange(seen_BxV.shape[0])[:, None], tokens_BxL.shape)
    return seen_BxV.at[rows_BxL, tokens_BxL].max(valid_BxL)


def decode(
    step: Callable,
    cache,
    prompt_BxP,
    keys_B,
    *,
    max_new_tokens: int,
    temperature,
    top_k,
    top_p,
    repetition_penalty=1.0,
    eos_id=-1,
    prompt_valid_BxP=None,
):
    """Runs `step(tokens_BxL, cache) -> (logits_BxLxV, cache)` over the prompt, then token by token.

    Returns the new tokens, [B, max_new_tokens] int32; row b's t-th token is drawn with
    `keys_B[b]` folded with t (`keys_B` one key: see `row_keys`). After a row emits `eos_id`
    (-1: none) it keeps emitting `eos_id`. `prompt_valid_BxP` marks real (not padding) prompt
    tokens for the repetition penalty.
    """
    logits_BxPxV, cache = step(prompt_BxP, cache)
    valid_BxP = jnp.ones(prompt_BxP.shape, bool) if prompt_valid_BxP is None else prompt_valid_BxP
    seen_BxV = _mark(jnp.zeros(logits_BxPxV[:, -1].shape, bool), prompt_BxP, valid_BxP)
    keys_B = row_keys(keys_B, prompt_BxP.shape[0])
    logits_BxV = penalize_repeats(logits_BxPxV[:, -1], seen_BxV, repetition_penalty)
    token_B = next_token(fold_rows(keys_B, 0), logits_BxV, temperature, top_k, top_p)
    done_B = token_B == eos_id

    def body(carry, t):
        token_B, cache, seen_BxV, done_B = carry
        logits_Bx1xV, cache = step(token_B[:, None], cache)
        seen_BxV = _mark(seen_BxV, token_B[:, None], jnp.ones((token_B.shape[0], 1), bool))
        logits_BxV = penalize_repeats(logits_Bx1xV[:, -1], seen_BxV, repetition_penalty)
        new_B = next_token(fold_rows(keys_B, t), logits_BxV, temperature, top_k, top_p)
        new_B = jnp.where(done_B, eos_id, new_B)
        return (new_B, cache, seen_BxV, done_B | (new_B == eos_id)), token_B

    (last_B, *_), tokens_NxB = jax.lax.scan(
        body, (token_B, cache, seen_BxV, done_B), jnp.arange(1, max_new_tokens)
    )
    return jnp.concatenate([tokens_NxB.T, last_B[:, None]], axis=1)


def beam_search(
    step: Callable, cache, prompt_BxP, *, beam_size: int, max_new_tokens: int, length_penalty,
    eos_id=-1,
):  # fmt: skip
    """The `beam_size` most likely continuations per row; returns the best, [B, N] int32.

    Beams are ranked by total log-probability / (generated length ** length_penalty). A beam
    that emits `eos_id` is finished: it can only be extended by `eos_id` at no cost, so its
    score and length stay fixed while the others grow.
    """
    B, W = prompt_BxP.shape[0], beam_size
    logits_BxPxV, cache = step(prompt_BxP, cache)
    logp_BxV = jax.nn.log_softmax(logits_BxPxV[:, -1].astype(jnp.float32))
    V = logp_BxV.shape[-1]
    if W > V:  # found while tracing: the CLI's one line, not top_k's ValueError
        raise UserError(f"beams ({W}) must be at most the vocabulary's {V} tokens")
    scores_BxW, tokens_BxW = jax.lax.top_k(logp_BxV, W)  # W distinct first tokens per row
    # Every per-row array of the cache (keys, values, padding) gets one copy per beam.
    per_row = lambda f: lambda x: f(x) if x.ndim and x.shape[0] in (B, B * W) else x
    cache = jax.tree.map(per_row(lambda x: jnp.repeat(x, W, axis=0)), cache)
    seqs_BxWxN = jnp.zeros((B, W, max_new_tokens), jnp.int32).at[:, :, 0].set(tokens_BxW)
    finished_BxW = tokens_BxW == eos_id
    lengths_BxW = jnp.ones((B, W), jnp.float32)

    def body(carry, t):
        seqs_BxWxN, scores_BxW, finished_BxW, lengths_BxW, cache = carry
        last_BW = seqs_BxWxN[:, :, t - 1].reshape(B * W)
        logits_BWx1xV, cache = step(last_BW[:, None], cache)
        logp_BxWxV = jax.nn.log_softmax(logits_BWx1xV[:, -1].astype(jnp.float32)).reshape(B, W, V)
        eos_only_V = jnp.where(jnp.arange(V) == eos_id, 0.0, -jnp.inf)
        logp_BxWxV = jnp.where(finished_BxW[:, :, None], eos_only_V, logp_BxWxV)
        total_BxWV = (scores_BxW[:, :, None] + logp_BxWxV).reshape(B, W * V)
        scores_BxW, flat_BxW = jax.lax.top_k(total_BxWV, W)
        parent_BxW, token_BxW = flat_BxW // V, (flat_BxW % V).astype(jnp.int32)
        take = lambda x: jnp.take_along_axis(x, parent_BxW.reshape(B, W, *[1] * (x.ndim - 2)), 1)
        seqs_BxWxN = take(seqs_BxWxN).at[:, :, t].set(token_BxW)
        was_finished_BxW = take(finished_BxW)
        lengths_BxW = jnp.where(was_finished_BxW, take(lengths_BxW), take(lengths_BxW) + 1)
        finished_BxW = was_finished_BxW | (token_BxW == eos_id)
        rows_BW = (jnp.arange(B)[:, None] * W + parent_BxW).reshape(B * W)
        cache = jax.tree.map(per_row(lambda x: x[rows_BW]), cache)
        return (seqs_BxWxN, scores_BxW, finished_BxW, lengths_BxW, cache), None

    carry = (seqs_BxWxN, scores_BxW, finished_BxW, lengths_BxW, cache)
    (seqs_BxWxN, scores_BxW, _, lengths_BxW, _), _ = jax.lax.scan(
        body, carry, jnp.arange(1, max_new_tokens)
    )
    best_B = jnp.argmax(scores_BxW / lengths_BxW**length_penalty, axis=-1)
    return jnp.take_along_axis(seqs_BxWxN, best_B[:, None, None], axis=1)[:, 0]

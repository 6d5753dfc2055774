"""Autoregressive decoding inside `lax.scan`: greedy, temperature, top-k and top-p.

All knobs are traced values, so one compiled decoder serves every setting; only the
prompt length and the number of new tokens are static.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


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


def next_token(rng, logits_BxV, temperature, top_k, top_p):
    """One token per row; temperature 0 means greedy."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    greedy_B = jnp.argmax(logits_BxV, axis=-1)
    scaled_BxV = filter_logits(logits_BxV / jnp.maximum(temperature, 1e-6), top_k, top_p)
    sampled_B = jax.random.categorical(rng, scaled_BxV, axis=-1)
    return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


def knobs(temperature, top_k, top_p):
    """The sampling settings as traced arrays, so changing them never recompiles."""
    return jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p)


def decode(
    step: Callable,
    cache,
    prompt_BxP,
    rng,
    *,
    max_new_tokens: int,
    temperature,
    top_k,
    top_p,
):
    """Runs `step(tokens_BxL, cache) -> (logits_BxLxV, cache)` over the prompt, then token by token.

    Returns the new tokens, [B, max_new_tokens] int32.
    """
    logits_BxPxV, cache = step(prompt_BxP, cache)
    rng, first_rng = jax.random.split(rng)
    token_B = next_token(first_rng, logits_BxPxV[:, -1], temperature, top_k, top_p)

    def body(carry, step_rng):
        token_B, cache = carry
        logits_Bx1xV, cache = step(token_B[:, None], cache)
        new_B = next_token(step_rng, logits_Bx1xV[:, -1], temperature, top_k, top_p)
        return (new_B, cache), token_B

    (last_B, _), tokens_NxB = jax.lax.scan(
        body, (token_B, cache), jax.random.split(rng, max_new_tokens - 1)
    )
    return jnp.concatenate([tokens_NxB.T, last_B[:, None]], axis=1)

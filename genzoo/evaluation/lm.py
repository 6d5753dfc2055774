"""Language-model losses and figures: nats per token, perplexity, bits per token and per char."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def token_nll(logits_BxLxV, targets_BxL):
    """Negative log-likelihood of each target token, in nats, computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits_BxLxV.astype(jnp.float32), targets_BxL
    )


def chunked_token_nll(x_BxLxD, table_PxD, targets_BxL, vocab_size: int, chunk: int):
    """`token_nll` of the tied head `x @ table.T` (rows past `vocab_size` are padding),
    `chunk` positions at a time: each chunk's logits are recomputed in the backward pass
    (jax.checkpoint) instead of kept, so at most [B, chunk, P] logits exist at once.
    Chunks run along the sequence, so every chunk keeps the batch's sharding."""
    B, L, D = x_BxLxD.shape
    x_CxBxKxD = x_BxLxD.reshape(B, L // chunk, chunk, D).swapaxes(0, 1)
    t_CxBxK = targets_BxL.reshape(B, L // chunk, chunk).swapaxes(0, 1)
    table_PxD = table_PxD.astype(x_BxLxD.dtype)

    @jax.checkpoint
    def piece(x_BxKxD, t_BxK):
        logits_BxKxV = (x_BxKxD @ table_PxD.T)[..., :vocab_size]
        return token_nll(logits_BxKxV, t_BxK)

    nll_CxBxK = jax.lax.map(lambda args: piece(*args), (x_CxBxKxD, t_CxBxK))
    return nll_CxBxK.swapaxes(0, 1).reshape(B, L)


def masked_mean(nll_BxL, mask_BxL):
    """Mean nats per unmasked token, and the metrics a trainer logs for it."""
    return jnp.sum(nll_BxL * mask_BxL) / jnp.maximum(jnp.sum(mask_BxL), 1.0), {}


def masked_sums(nll_BxL, mask_BxL) -> dict:
    """Sums that add up across batches: total nats and number of predicted tokens."""
    return {"nll": jnp.sum(nll_BxL * mask_BxL), "num_tokens": jnp.sum(mask_BxL)}


def nll_sums(logits_BxLxV, targets_BxL, mask_BxL) -> dict:
    return masked_sums(token_nll(logits_BxLxV, targets_BxL), mask_BxL)


def summary(totals: dict, meta: dict) -> dict:
    """Whole-split figures from summed `nll_sums`; `meta['chars_per_token']` gives bits/char."""
    tokens = max(float(totals["num_tokens"]), 1.0)
    loss = float(totals["nll"]) / tokens
    out = {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_token": loss / math.log(2),
        "num_tokens": int(totals["num_tokens"]),
    }
    if meta.get("chars_per_token"):
        out["bits_per_char"] = out["bits_per_token"] / meta["chars_per_token"]
    return out

"""Language-model losses and figures: nats per token, perplexity, bits per token and per char."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def token_nll(logits_BxLxV, targets_BxL):
    """Negative log-likelihood of each target token, in nats, computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits_BxLxV.astype(jnp.float32), targets_BxL
    )


def mean_nll(logits_BxLxV, targets_BxL, mask_BxL):
    """Mean nats per unmasked token, and the metrics a trainer logs for it."""
    nll_BxL = token_nll(logits_BxLxV, targets_BxL)
    loss = jnp.sum(nll_BxL * mask_BxL) / jnp.maximum(jnp.sum(mask_BxL), 1.0)
    return loss, {}


def nll_sums(logits_BxLxV, targets_BxL, mask_BxL) -> dict:
    """Sums that add up across batches: total nats and number of predicted tokens."""
    nll_BxL = token_nll(logits_BxLxV, targets_BxL)
    return {"nll": jnp.sum(nll_BxL * mask_BxL), "num_tokens": jnp.sum(mask_BxL)}


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

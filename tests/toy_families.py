"""Toy families for trainer tests (registered by the tests that use them, never shipped)."""

import jax
import jax.numpy as jnp

KIND = "language_model"
MODEL_STATE = "stats"  # what the loss updates and the optimizer never touches
MOMENTUM = 0.75


def init(rng, cfg):
    width = 8
    return {
        "embed": jax.random.normal(rng, (cfg.vocab_size, width)) * 0.1,
        # A 2-D table in the state: weight decay would shrink it if the optimizer saw it.
        "stats": {"mean": jnp.zeros(width), "table": jnp.ones((3, width)), "count": jnp.zeros(())},
    }


def _features(params, batch):
    return params["embed"][batch["inputs"]]  # [B, L, W]


def loss(params, batch, rng, cfg, *, train, step):
    """Like BatchNorm: the batch mean trains, a running mean (the model state) is kept."""
    h_BxLxW = _features(params, batch)
    batch_mean_W = h_BxLxW.mean((0, 1))
    value = jnp.mean((h_BxLxW - batch_mean_W - 1.0) ** 2)
    stats = params["stats"]
    new = {
        "mean": MOMENTUM * stats["mean"] + (1 - MOMENTUM) * jax.lax.stop_gradient(batch_mean_W),
        "table": stats["table"],
        "count": stats["count"] + 1,
    }
    return value, {"batch_mean": batch_mean_W.mean()}, new


def eval_sums(params, batch, rng, cfg):
    h_BxLxW = _features(params, batch)
    return {"sq": jnp.sum((h_BxLxW - params["stats"]["mean"]) ** 2), "n": jnp.asarray(h_BxLxW.size)}


def eval_summary(totals, meta):
    return {"loss": float(totals["sq"]) / max(float(totals["n"]), 1.0)}

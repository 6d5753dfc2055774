"""A toy family whose float16 gradient (10 per weight) overflows at loss scales above 6553:
under the initial scale of 2**15 its first three steps overflow (trainer tests of loss scaling;
registered by the tests that use it, never shipped)."""

import jax.numpy as jnp

KIND = "language_model"


def init(rng, cfg):
    return {"w": jnp.zeros((4,))}


def loss(params, batch, rng, cfg, *, train, step):
    return jnp.sum(params["w"].astype(jnp.float16) * jnp.float16(10.0)), {}


def eval_sums(params, batch, rng, cfg):
    return {"w": jnp.sum(params["w"]), "n": jnp.asarray(1.0)}


def eval_summary(totals, meta):
    return {"loss": float(totals["w"])}

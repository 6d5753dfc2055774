"""A toy family that needs a trained run (`model.requires`): it learns the teacher's table."""

import jax
import jax.numpy as jnp

KIND = "language_model"
REQUIRES = {"teacher": "language_model"}


def init(rng, cfg):
    return {"embed": jnp.zeros((cfg.vocab_size, 8))}  # the teacher starts random: far away


def _sq(params, batch, deps):
    teacher = jax.lax.stop_gradient(deps["teacher"]["embed"])
    return (params["embed"][batch["inputs"]] - teacher[batch["inputs"]]) ** 2


def loss(params, batch, rng, cfg, *, train, step, deps):
    return jnp.mean(_sq(params, batch, deps)), {}


def eval_sums(params, batch, rng, cfg, *, deps):
    sq = _sq(params, batch, deps)
    return {"sq": jnp.sum(sq), "n": jnp.asarray(sq.size)}


def eval_summary(totals, meta):
    return {"loss": float(totals["sq"]) / max(float(totals["n"]), 1.0)}

"""Baum-Welch's M-step as an optax transformation (`optim.name=em`), stepwise (Liang & Klein, 2009).

The family's loss is -mean log p(x) with its softmax normalisers held constant, so its
gradient with respect to each logit is minus that event's expected count per token (the
E-step; see models/hmm.py). The M-step sets every distribution to its normalised counts:
new logits = log(counts), the update being new - old. Counts are kept as running
statistics s <- (1 - eta) s + eta * batch counts with eta = (t + 2)^-power (eta = 1 at
the first step, and always with power 0: plain batch EM, which never lowers the
likelihood of the batch it saw). A pseudo-count of `smoothing` times the mean count of a
row keeps unseen events possible.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class EMState(NamedTuple):
    count: jax.Array
    stats: Any  # running expected counts, shaped like the params


def em(power: float = 0.7, smoothing: float = 1e-3) -> optax.GradientTransformation:
    def init(params):
        return EMState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params):
        eta = jnp.where(state.count == 0, 1.0, (state.count + 2.0) ** -power)
        stats = jax.tree.map(lambda s, g: (1 - eta) * s + eta * jnp.maximum(-g, 0.0),
                             state.stats, grads)  # fmt: skip

        def m_step(s, p):
            prior = smoothing * jnp.mean(s, axis=-1, keepdims=True)
            return jnp.log(s + prior + 1e-30) - p  # a state never visited: uniform rows

        return jax.tree.map(m_step, stats, params), EMState(state.count + 1, stats)

    return optax.GradientTransformation(init, update)

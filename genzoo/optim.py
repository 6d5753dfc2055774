"""Optax builders: warmup + cosine schedule, clipping, AdamW with a weight-decay mask."""

from __future__ import annotations

import jax
import optax

from genzoo.errors import UserError


def schedule(o) -> optax.Schedule:
    """Linear warmup to `lr`, cosine decay to `min_lr` at `decay_steps`, then flat."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.lr,
        warmup_steps=o.warmup_steps,
        decay_steps=max(o.decay_steps, o.warmup_steps + 1),
        end_value=o.min_lr,
    )


def decay_mask(params):
    """Decay matrices and embeddings only; biases and norm scales are left alone (as in GPT-2)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def build(o) -> optax.GradientTransformation:
    if o.name != "adamw":
        raise UserError(f"unknown optimizer {o.name!r} (known: adamw)")
    return optax.chain(
        optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity(),
        optax.adamw(
            schedule(o), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask
        ),
    )

"""Optax builders: warmup + cosine schedule, clipping, AdamW (or Lion, Adafactor, SGD) with a
weight-decay mask, groups."""

from __future__ import annotations

import fnmatch

import jax
import jax.numpy as jnp
import ml_collections
import optax

from genzoo import em, pruning
from genzoo.config_checks import OPTIMIZERS
from genzoo.errors import UserError

GROUP_FIELDS = ("lr", "min_lr", "warmup_steps", "b1", "b2", "eps", "weight_decay", "clip_norm")


def inverse_sqrt_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
    """ "Attention is all you need": linear warmup to `peak`, then peak * sqrt(warmup / step)
    (the paper's d^-0.5 * min(step^-0.5, step * warmup^-1.5), with `peak` its value at warmup)."""
    warmup = max(warmup_steps, 1)

    def fn(step):
        step = jnp.maximum(step, 1).astype(jnp.float32)
        return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))

    return fn


def schedule(o) -> optax.Schedule:
    """`o.schedule`: "cosine" (linear warmup to `lr`, cosine decay to `min_lr` at
    `decay_steps`, then flat) or "inverse_sqrt" (the 2017 Transformer's)."""
    if o.get("schedule", "cosine") == "inverse_sqrt":
        return inverse_sqrt_schedule(o.lr, o.warmup_steps)
    if o.get("schedule", "cosine") != "cosine":
        raise UserError(f"optim.schedule must be cosine or inverse_sqrt, got {o.schedule!r}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.lr,
        warmup_steps=o.warmup_steps,
        decay_steps=max(o.decay_steps, o.warmup_steps + 1),
        end_value=o.min_lr,
    )


def logged_rates(o):
    """The learning rates a step logs: `lr`, or with `o.groups` each group's (`lr/generator`):
    one base rate would misreport a two-time-scale GAN."""
    if not o.get("groups"):
        base = schedule(o)
        return lambda step: {"lr": base(step)}
    per_group = {g: schedule(group_config(o, g)) for g in o.groups}
    return lambda step: {f"lr/{g}": rate(step) for g, rate in per_group.items()}


def decay_mask(params):
    """Decay matrices and embeddings only; biases and norm scales are left alone (as in GPT-2)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _single(o) -> optax.GradientTransformation:
    """`o.name` with the shared fields: the schedule, clipping, and weight decay on matrices
    and embeddings (`decay_mask`). Lion reads b1/b2 as its two interpolations (use a 3-10x
    smaller lr than AdamW's); SGD reads b1 as its momentum (0: plain SGD); Adafactor keeps
    factored second moments (memory O(rows + cols) per matrix), takes AdamW's lr and ignores
    b1/b2/eps."""
    if o.name == "em":  # needs a loss whose gradients are expected counts (see genzoo/em.py)
        return em.em(o.get("em_power", 0.7), o.get("em_smoothing", 1e-3))
    lr = schedule(o)
    if o.name == "adamw":
        step = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=decay_mask)  # fmt: skip
    elif o.name == "lion":
        step = optax.lion(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
    elif o.name == "adafactor":
        # Not optax.adafactor: it adds weight decay after the learning rate (0.1 took 10% of
        # every weight each step) and scales steps by each matrix's RMS. This is Hugging
        # Face's common fine-tuning form: factored RMS, clipped, AdamW's lr and decay.
        step = optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0),
                           optax.add_decayed_weights(o.weight_decay, decay_mask),
                           optax.scale_by_learning_rate(lr))  # fmt: skip
    elif o.name == "sgd":
        step = optax.chain(optax.add_decayed_weights(o.weight_decay, decay_mask),
                           optax.sgd(lr, momentum=o.b1 or None))  # fmt: skip
    else:
        raise UserError(f"unknown optimizer {o.name!r} (known: {', '.join(OPTIMIZERS)})")
    clip = optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity()
    return optax.chain(clip, step)


def minimise(loss, params, tx: optax.GradientTransformation, steps: int):
    """`params` after `steps` full-batch steps of `tx` on `loss(params)`: the small convex
    fits beside the trainer (the bag-of-words baseline) and the optimizer tests."""

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


def group_config(o, group: str):
    """The optimizer fields for one parameter group: the shared ones with its overrides."""
    merged = ml_collections.ConfigDict({k: v for k, v in o.items() if k != "groups"})
    for key, value in o.groups[group].items():
        if key not in GROUP_FIELDS:
            raise UserError(f"optim.groups.{group}.{key} is not a per-group field ({GROUP_FIELDS})")
        merged[key] = value
    return merged


def param_path(path) -> str:
    """'block_5/attn/qkv_kernel' for a parameter's key path."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def matcher(globs: str):
    """A predicate over parameter paths: matches one of the comma-separated globs."""
    patterns = [p.strip() for p in globs.split(",") if p.strip()]
    return lambda path: any(fnmatch.fnmatchcase(path, p) for p in patterns)


def trainable_mask(params, trainable: str):
    """True for parameters whose path matches one of the comma-separated globs ("" = all)."""
    if not trainable.strip(" ,"):
        return jax.tree.map(lambda _: True, params)
    matches = matcher(trainable)
    mask = jax.tree_util.tree_map_with_path(lambda path, _: matches(param_path(path)), params)
    if not any(jax.tree.leaves(mask)):
        raise UserError(f"train.trainable={trainable!r} matches no parameter")
    return mask


def build(o, params, trainable: str = "", model_state: str | None = None):
    """`_build`'s optimizer, followed by magnitude pruning of the trained kernels when
    `o.prune_sparsity > 0`."""
    tx = _build(o, params, trainable, model_state)
    if o.get("prune_sparsity", 0.0) <= 0:
        return tx

    def prunable(tree):
        chosen = jax.tree.map(lambda k, t: k and t, pruning.kernels(tree),
                              trainable_mask(tree, trainable))  # fmt: skip
        if model_state:
            chosen = {**chosen, model_state: jax.tree.map(lambda _: False, tree[model_state])}
        return chosen

    return optax.chain(tx, pruning.magnitude_pruning(
        o.prune_sparsity, o.prune_begin, o.prune_end, o.prune_every, o.prune_scope, prunable
    ))  # fmt: skip


def _build(o, params, trainable: str = "", model_state: str | None = None):
    """AdamW (one per top-level group of `params` with `o.groups`); frozen parameters get none.

    `params` may be arrays or shapes. Frozen parameters (outside `trainable`) and the model
    state (`params[model_state]`, which the loss updates) go through `optax.set_to_zero`, so
    they keep no optimizer state and the optimizer never moves them.
    """
    trained = {k: v for k, v in params.items() if k != model_state} if model_state else params
    if o.groups:
        groups = tuple(o.groups.keys())
        if not isinstance(trained, dict) or set(trained) != set(groups):
            top = sorted(trained) if isinstance(trained, dict) else "not a dict"
            raise UserError(f"optim.groups {sorted(groups)} must name the parameter groups ({top})")
        transforms = {g: _single(group_config(o, g)) for g in groups}
        labels = {g: jax.tree.map(lambda _, g=g: g, sub) for g, sub in trained.items()}
    else:
        transforms = {"trainable": _single(o)}
        labels = jax.tree.map(lambda _: "trainable", trained)
    if not trainable and not model_state:
        return _single(o) if not o.groups else optax.multi_transform(transforms, labels)
    if trainable:
        mask = trainable_mask(trained, trainable)
        labels = jax.tree.map(lambda label, keep: label if keep else "frozen", labels, mask)
    if model_state:
        labels = {**labels, model_state: jax.tree.map(lambda _: "frozen", params[model_state])}
    return optax.multi_transform({**transforms, "frozen": optax.set_to_zero()}, labels)

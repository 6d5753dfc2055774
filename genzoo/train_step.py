"""The pure, jitted parts of training: the train state and one optimizer step.

No I/O here: `genzoo.trainer.Trainer` compiles these with shardings and runs them.
A step whose loss or gradients are not finite leaves the state as it was (only the step
counter moves), so no NaN ever reaches parameters, optimizer state or a checkpoint; it
reports `finite` = 0 and the trainer decides whether to stop or go on.

float16 compute scales the loss (`TrainState.loss_scale`): float16's smallest normal number is
6e-5, and the backward pass of a mean over 16k tokens and 50k logits carries values near 1e-9,
which flush to zero. The loss's cotangent is multiplied by a scale and the gradients divided by
it; an overflow halves the scale and skips the step, `SCALE_PERIOD` finite steps in a row double
it (the rule of PyTorch's GradScaler and of jmp). An overflow is not a failure while the scale
can still shrink: `finite` stays 1 and `overflow` is 1.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from genzoo import requires


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # with the family's model state (HasModelState) under its own key
    opt_state: Any
    rng: jax.Array  # raw uint32 key: checkpoints store it like any array
    ema: Any = None  # an exponential moving average of `params` (train.ema_decay > 0)
    loss_scale: Any = None  # {"scale", "good_steps"} under float16 compute (train.loss_scale)

    def eval_params(self):
        """What evaluation and sampling use: the average when there is one."""
        return self.params if self.ema is None else self.ema


SCALE_INIT, SCALE_PERIOD, SCALE_MAX = 2.0**15, 2000, 2.0**24


def initial_loss_scale() -> dict:
    return {"scale": jnp.array(SCALE_INIT, jnp.float32), "good_steps": jnp.array(0, jnp.int32)}


def next_loss_scale(ls: dict, grads_finite) -> dict:
    """Halves the scale after an overflow (not below 1); doubles it after SCALE_PERIOD finite
    steps in a row (not above SCALE_MAX)."""
    grow = ls["good_steps"] + 1 >= SCALE_PERIOD
    kept = jnp.where(grow, jnp.minimum(ls["scale"] * 2, SCALE_MAX), ls["scale"])
    return {
        "scale": jnp.where(grads_finite, kept, jnp.maximum(ls["scale"] / 2, 1.0)),
        "good_steps": jnp.where(grads_finite & ~grow, ls["good_steps"] + 1, 0),
    }


def init_state(rng, *, family, model_cfg, tx, ema: bool, loss_scale: bool = False):
    init_rng, state_rng = jax.random.split(rng)
    params = nn.unbox(family.init(init_rng, model_cfg))
    step = jnp.array(0, jnp.int32)
    return TrainState(step, params, tx.init(params), state_rng, params if ema else None,
                      initial_loss_scale() if loss_scale else None)  # fmt: skip


def deps_kw(family, deps) -> dict:
    """`deps=` for families that declare trained runs they need (genzoo.requires)."""
    return {"deps": deps} if requires.declared(family) else {}


def state_key(family, params):
    """Where the family keeps its model state in `params`, or None (HasModelState)."""
    key = getattr(family, "MODEL_STATE", None)
    return key if isinstance(params, dict) and key in params else None


def _family_loss(family, model_cfg, batch, rng, step, deps=None):
    """params -> (loss, (metrics, new model state or None)), whatever the family returns."""

    def f(params):
        out = family.loss(params, batch, rng, model_cfg, train=True, step=step,
                          **deps_kw(family, deps))  # fmt: skip
        return out[0], (dict(out[1]), out[2] if state_key(family, params) else None)

    return f


def _loss_and_grads(family, model_cfg, params, batch, rng, step, deps=None, scale=None):
    """Loss, gradients, metrics and the new model state (None without one); a dict of losses
    trains each parameter group on its own. `scale` (loss scaling) multiplies the losses'
    cotangents; the gradients returned are divided by it again."""
    losses, vjp, (aux, model_state) = jax.vjp(
        _family_loss(family, model_cfg, batch, rng, step, deps), params, has_aux=True
    )

    def pull(cotangents):
        if scale is None:
            return vjp(cotangents)[0]
        grads = vjp(jax.tree.map(lambda c: c * scale.astype(c.dtype), cotangents))[0]
        return jax.tree.map(lambda g: (g / scale).astype(g.dtype), grads)

    if not isinstance(losses, dict):
        return losses, pull(jnp.ones_like(losses)), aux, model_state
    # One forward pass; one pull-back per group with a one-hot cotangent over the losses,
    # keeping only that group's slice, so group g moves along d loss_g / d params_g only.
    grads = {}
    for group in params:
        if group in losses:
            onehot = {g: jnp.full_like(v, g == group) for g, v in losses.items()}
            grads[group] = pull(onehot)[group]
        else:
            grads[group] = jax.tree.map(jnp.zeros_like, params[group])
    total = sum(losses.values())
    return total, grads, {**aux, **{f"loss_{g}": v for g, v in losses.items()}}, model_state


def _with_model_state(family, params, model_state):
    """`params` with the family's model state replaced (no-op for stateless families)."""
    key = state_key(family, params)
    return params if key is None else {**params, key: model_state}


def train_step(
    state: TrainState,
    batch,
    deps,
    *,
    family,
    model_cfg,
    tx,
    learning_rates,
    grad_accum,
    ema_decay,
    rng_impl="threefry",
):
    """One optimizer step over `batch` (split into `grad_accum` micro-batches); `deps` are
    the parameters of the runs the family requires (never trained here)."""
    rng = jax.random.fold_in(state.rng, state.step)
    if rng_impl != "threefry":
        # Dropout masks from XLA's RngBitGenerator: on GPU it costs a fraction of threefry's
        # hashing; still a pure function of (seed, step), so resume stays exact.
        rng = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl=rng_impl)
    key = state_key(family, state.params)  # the model state's place in the params, or None
    scale = None if state.loss_scale is None else state.loss_scale["scale"]
    if grad_accum == 1:
        loss, grads, aux, model_state = _loss_and_grads(
            family, model_cfg, state.params, batch, rng, state.step, deps, scale
        )
    else:
        # Strided micro-batches (rows i, i+A, ...) so each one stays spread over all devices.
        micro = jax.tree.map(
            lambda x: x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1),
            batch,
        )

        def accumulate(carry, i):
            # Sums of loss, gradients and metrics; the model state threads through in order.
            sums, model_state = carry
            mb = jax.tree.map(lambda x: x[i], micro)
            params = _with_model_state(family, state.params, model_state)
            *out, model_state = _loss_and_grads(
                family, model_cfg, params, mb, jax.random.fold_in(rng, i), state.step, deps, scale
            )
            return (jax.tree.map(jnp.add, sums, tuple(out)), model_state), None

        shapes = jax.eval_shape(
            lambda: _loss_and_grads(family, model_cfg, state.params,
                                    jax.tree.map(lambda x: x[0], micro), rng, state.step, deps,
                                    scale)[:3]
        )  # fmt: skip
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        first = None if key is None else state.params[key]
        (summed, model_state), _ = jax.lax.scan(accumulate, (zeros, first), jnp.arange(grad_accum))
        loss, grads, aux = jax.tree.map(lambda x: x / grad_accum, summed)
    # The model state is not trained: no gradient reaches the optimizer through it.
    if key is not None:
        grads = {**grads, key: jax.tree.map(jnp.zeros_like, grads[key])}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = _with_model_state(family, optax.apply_updates(state.params, updates), model_state)
    out_metrics = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        **learning_rates(state.step),
        **aux,
    }
    ema = state.ema
    if ema is not None:
        ema = jax.tree.map(lambda e, p: e + (1.0 - ema_decay) * (p - e), ema, params)
    # A NaN/Inf loss or gradient keeps the old state: the counter still moves (the batch
    # is spent and the next step draws new randomness), nothing else does.
    grads_finite = jnp.isfinite(out_metrics["grad_norm"])
    finite = jnp.isfinite(loss) & grads_finite
    kept = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state, ema),
        (state.params, state.opt_state, state.ema),
    )
    loss_scale = state.loss_scale
    if loss_scale is not None:
        # Gradients that overflowed under a scale that can still shrink: skipped, not failed.
        overflow = jnp.isfinite(loss) & ~grads_finite & (scale > 1)
        out_metrics.update(loss_scale=scale, overflow=overflow.astype(jnp.float32))
        finite = finite | overflow
        loss_scale = next_loss_scale(loss_scale, grads_finite)
    out_metrics["finite"] = finite.astype(jnp.float32)
    new_state = state.replace(step=state.step + 1, params=kept[0], opt_state=kept[1], ema=kept[2],
                              loss_scale=loss_scale)  # fmt: skip
    return new_state, out_metrics


def eval_step(params, batch, rng, deps, *, family, model_cfg):
    return family.eval_sums(params, batch, rng, model_cfg, **deps_kw(family, deps))

"""THE training loop, for every family.

The trainer knows the family protocol (`genzoo.models`), never a family: it builds
the train state with shardings derived from the parameters' logical axis names,
jits one pure `_train_step` with explicit in/out shardings and a donated state, and
owns the I/O around it: data, checkpoints, metrics, progress, periodic evaluation.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from genzoo import init_from, models, optim, requires, sharding
from genzoo import metrics as metrics_lib
from genzoo.checkpoint import Checkpointer
from genzoo.errors import UserError
from genzoo.models.protocols import CountsFlops

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # with the family's model state (HasModelState) under its own key
    opt_state: Any
    rng: jax.Array  # raw uint32 key: checkpoints store it like any array
    ema: Any = None  # an exponential moving average of `params` (train.ema_decay > 0)

    def eval_params(self):
        """What evaluation and sampling use: the average when there is one."""
        return self.params if self.ema is None else self.ema


def _init_state(rng, *, family, model_cfg, tx, ema: bool):
    init_rng, state_rng = jax.random.split(rng)
    params = nn.unbox(family.init(init_rng, model_cfg))
    step = jnp.array(0, jnp.int32)
    return TrainState(step, params, tx.init(params), state_rng, params if ema else None)


def _deps_kw(family, deps) -> dict:
    """`deps=` for families that declare trained runs they need (genzoo.requires)."""
    return {"deps": deps} if requires.declared(family) else {}


def _state_key(family, params):
    """Where the family keeps its model state in `params`, or None (HasModelState)."""
    key = getattr(family, "MODEL_STATE", None)
    return key if isinstance(params, dict) and key in params else None


def _family_loss(family, model_cfg, batch, rng, step, deps=None):
    """params -> (loss, (metrics, new model state or None)), whatever the family returns."""

    def f(params):
        out = family.loss(params, batch, rng, model_cfg, train=True, step=step,
                          **_deps_kw(family, deps))  # fmt: skip
        return out[0], (dict(out[1]), out[2] if _state_key(family, params) else None)

    return f


def _loss_and_grads(family, model_cfg, params, batch, rng, step, deps=None):
    """Loss, gradients, metrics and the new model state (None without one); a dict of losses
    trains each parameter group on its own."""
    losses, vjp, (aux, model_state) = jax.vjp(
        _family_loss(family, model_cfg, batch, rng, step, deps), params, has_aux=True
    )
    if not isinstance(losses, dict):
        return losses, vjp(jnp.ones_like(losses))[0], aux, model_state
    # One forward pass; one pull-back per group with a one-hot cotangent over the losses,
    # keeping only that group's slice, so group g moves along d loss_g / d params_g only.
    grads = {}
    for group in params:
        if group in losses:
            onehot = {g: jnp.full_like(v, g == group) for g, v in losses.items()}
            grads[group] = vjp(onehot)[0][group]
        else:
            grads[group] = jax.tree.map(jnp.zeros_like, params[group])
    total = sum(losses.values())
    return total, grads, {**aux, **{f"loss_{g}": v for g, v in losses.items()}}, model_state


def _with_model_state(family, params, model_state):
    """`params` with the family's model state replaced (no-op for stateless families)."""
    key = _state_key(family, params)
    return params if key is None else {**params, key: model_state}


def _train_step(
    state: TrainState, batch, deps, *, family, model_cfg, tx, lr_schedule, grad_accum, ema_decay
):
    """One optimizer step over `batch` (split into `grad_accum` micro-batches); `deps` are
    the parameters of the runs the family requires (never trained here)."""
    rng = jax.random.fold_in(state.rng, state.step)
    key = _state_key(family, state.params)  # the model state's place in the params, or None
    if grad_accum == 1:
        loss, grads, aux, model_state = _loss_and_grads(
            family, model_cfg, state.params, batch, rng, state.step, deps
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
                family, model_cfg, params, mb, jax.random.fold_in(rng, i), state.step, deps
            )
            return (jax.tree.map(jnp.add, sums, tuple(out)), model_state), None

        shapes = jax.eval_shape(
            lambda: _loss_and_grads(family, model_cfg, state.params,
                                    jax.tree.map(lambda x: x[0], micro), rng, state.step, deps)[:3]
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
        "lr": lr_schedule(state.step),
        **aux,
    }
    ema = state.ema
    if ema is not None:
        ema = jax.tree.map(lambda e, p: e + (1.0 - ema_decay) * (p - e), ema, params)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
    return new_state, out_metrics


def _eval_step(params, batch, rng, deps, *, family, model_cfg):
    return family.eval_sums(params, batch, rng, model_cfg, **_deps_kw(family, deps))


def _throughput(step_seconds, batch_size, tokens_per_example, flops_per_example, peak) -> dict:
    """perf/* metrics for a mean step time; tokens and MFU where the data and model tell."""
    examples_per_s = batch_size / step_seconds
    row = {"perf/step_seconds": step_seconds, "perf/examples_per_second": examples_per_s}
    if tokens_per_example:
        row["perf/tokens_per_second"] = examples_per_s * tokens_per_example
    if flops_per_example:
        row["perf/flops_per_second"] = examples_per_s * flops_per_example
        row["perf/mfu"] = row["perf/flops_per_second"] / peak
    return row


class Trainer:
    """Compiled init/train/eval functions for one resolved config on one mesh."""

    def __init__(self, cfg, devices=None, deps=None):
        """`deps`: {name: workdir.Run} of the runs `model.requires` names (genzoo.requires)."""
        self.cfg = cfg
        self.family = models.get(cfg.model.family)
        self.model_cfg = cfg.model  # a FrozenConfigDict: hashable, so a static jit argument
        self.mesh = sharding.make_mesh(cfg.mesh, devices)
        self.rules = sharding.rules(cfg.mesh)
        self.dep_runs = dict(deps or {})  # host-side evaluators need the runs themselves
        self.deps, deps_shardings = self._place_deps(deps or {})
        sharding.check_batch(cfg.train.batch_size // cfg.train.grad_accum, self.mesh, self.rules)
        # Shapes and logical axis names of the parameters, without allocating them.
        boxed = jax.eval_shape(lambda r: self.family.init(r, self.model_cfg), jax.random.PRNGKey(0))
        state_key = _state_key(self.family, boxed)  # what the loss updates, not the optimizer
        self.tx = optim.build(cfg.optim, nn.unbox(boxed), cfg.train.trainable, state_key)
        statics = dict(family=self.family, model_cfg=self.model_cfg, tx=self.tx)
        ema = cfg.train.get("ema_decay", 0.0) > 0
        self.abstract_state = jax.eval_shape(
            functools.partial(_init_state, **statics, ema=ema), jax.random.PRNGKey(0)
        )
        repl = sharding.replicated(self.mesh)
        param_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
        sharding.check_divisible(nn.unbox(boxed), param_shardings, optim.param_path)
        opt_shardings = sharding.like_params(
            self.abstract_state.opt_state, self.abstract_state.params, param_shardings, repl
        )
        self.state_shardings = TrainState(
            repl, param_shardings, opt_shardings, repl, param_shardings if ema else None
        )
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)

        self._init = jax.jit(
            functools.partial(_init_state, **statics, ema=ema),
            out_shardings=self.state_shardings,
        )
        self.train_step = jax.jit(
            functools.partial(
                _train_step,
                **statics,
                lr_schedule=optim.schedule(cfg.optim),
                grad_accum=cfg.train.grad_accum,
                ema_decay=cfg.train.get("ema_decay", 0.0),
            ),
            in_shardings=(self.state_shardings, self.batch_sharding, deps_shardings),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=(0,),
        )
        eval_step = jax.jit(
            functools.partial(_eval_step, family=self.family, model_cfg=self.model_cfg),
            in_shardings=(param_shardings, self.batch_sharding, repl, deps_shardings),
            out_shardings=repl,
        )
        self.eval_step = lambda params, batch, rng: eval_step(params, batch, rng, self.deps)

    def _place_deps(self, deps: dict):
        """The required runs' evaluation parameters on this mesh, sharded by their own
        logical axis names; and those shardings (None when the family requires nothing)."""
        want = requires.declared(self.family)
        if set(deps) != set(want):
            raise UserError(
                f"{self.cfg.model.family} needs the runs {sorted(want)}, got {sorted(deps)}"
            )
        if not want:
            return None, None
        placed, shardings = {}, {}
        for name, run in deps.items():
            family, cfg = models.get(run.cfg.model.family), run.cfg.model
            boxed = jax.eval_shape(lambda r, f=family, c=cfg: f.init(r, c), jax.random.PRNGKey(0))
            shardings[name] = sharding.logical_shardings(boxed, self.mesh, self.rules)
            with sharding.activate(self.mesh, self.rules):
                placed[name] = jax.device_put(jax.device_get(run.params), shardings[name])
        return placed, shardings

    def _parts(self, init_params) -> list:
        if init_params is None or isinstance(init_params, list):
            return init_params
        return [init_from.Part("", init_params, "init_from")]  # a whole params tree

    def check_params(self, init_params) -> None:
        """UserError unless `init_params` (a params tree, or `init_from.Part`s) fit this
        model's parameter paths and shapes."""
        init_from.merge(self.abstract_state.params, self._parts(init_params),
                        self.cfg.train.init_fresh)  # fmt: skip

    def init_state(self, init_params=None) -> TrainState:
        """A fresh state; `init_params` (a params tree from another run, or the
        `init_from.Part`s of several) replace random parameters."""
        key = jax.random.PRNGKey(self.cfg.train.seed)
        with sharding.activate(self.mesh, self.rules):
            if init_params is None:
                return self._init(key)
            provided, partial = init_from.merge(
                self.abstract_state.params, self._parts(init_params), self.cfg.train.init_fresh
            )
            # A random init only where some parameter keeps it (it briefly doubles memory).
            base = self._init(key).params if partial else self.abstract_state.params
            params = jax.tree_util.tree_map_with_path(
                lambda p, x: provided.get(optim.param_path(p), x), base
            )
            params = jax.device_put(params, self.state_shardings.params)
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
            _, state_rng = jax.random.split(key)  # as _init_state derives it
            step, state_rng = jax.device_put(
                (jnp.array(0, jnp.int32), state_rng),
                (self.state_shardings.step, self.state_shardings.rng),
            )
            ema = None if self.state_shardings.ema is None else jax.tree.map(jnp.copy, params)
            return TrainState(step, params, opt_state, state_rng, ema)

    def restore(self, checkpointer: Checkpointer, step: int):
        return checkpointer.restore(step, self.abstract_state, self.state_shardings)

    def step(self, state: TrainState, batch: dict):
        with sharding.activate(self.mesh, self.rules):
            return self.train_step(state, sharding.put_batch(batch, self.batch_sharding), self.deps)

    def evaluate(self, params, data, split: str | None = None, max_batches: int | None = None):
        """Whole-split figures (or the first `max_batches` batches) from the family's summary."""
        e = self.cfg.eval
        split = split or e.split
        max_batches = e.max_batches if max_batches is None else max_batches
        totals: dict[str, float] = {}
        with sharding.activate(self.mesh, self.rules):
            for i, batch in enumerate(data.eval_batches(split, e.batch_size, max_batches)):
                rng = jax.random.fold_in(jax.random.PRNGKey(e.seed), i)  # same figures every call
                sums = self.eval_step(params, sharding.put_batch(batch, self.batch_sharding), rng)
                for k, v in jax.device_get(sums).items():
                    totals[k] = totals.get(k, 0.0) + np.float64(v)  # host float64: no drift
        return self.family.eval_summary(totals, data.meta(split))

    def _evaluate_into(self, writer, params, data, step: int) -> str:
        """Evaluates, writes `val/*` metrics at `step`, and returns a line for the user."""
        from genzoo import workdir
        from genzoo.evaluation import evaluators

        figures = self.evaluate(params, data)
        state = TrainState(step, params, None, None)
        run = workdir.Run(self.cfg, data, self, state, step, deps=self.dep_runs)
        host = evaluators.run_all(run, self.cfg.eval.split, step=step)  # those due now
        figures.update({k: v for k, v in host.items() if isinstance(v, (int, float))})
        writer.write(step, {f"val/{k}": v for k, v in figures.items()})
        name, value = next(iter(figures.items()))  # the family's headline figure
        return f"step {step}: {self.cfg.eval.split} {name} {value:.4f}"

    def fit(self, workdir: Path, data, init_params=None) -> TrainState:
        """Trains to `train.steps`, resuming from the latest checkpoint in `workdir`.

        A fresh run starts from `init_params` when given (fine-tuning), with a fresh optimizer.
        """
        cfg = self.cfg
        ckpt = Checkpointer(
            Path(workdir) / "checkpoints", cfg.checkpoint.keep, cfg.checkpoint.async_save
        )
        train_iter = data.train_iterator(cfg.train.batch_size, cfg.train.seed)
        latest = ckpt.latest_step()
        if latest is None:
            state = self.init_state(init_params)
        else:
            state, data_state = self.restore(ckpt, latest)
            train_iter.set_state(data_state)
            log.info("resumed from step %d", latest)
        step = int(state.step)
        writer = metrics_lib.MetricsWriter(Path(workdir), cfg.log.tensorboard)
        # What one example looks like (per-field shapes) decides its cost, for every family.
        tokens = getattr(data, "tokens_per_example", None)
        flops = None
        if isinstance(self.family, CountsFlops):
            flops = self.family.flops_per_example(self.model_cfg, data.example_shapes)
        peak = metrics_lib.peak_flops(cfg.train.peak_flops) if flops else None
        bar = tqdm(
            total=cfg.train.steps,
            initial=step,
            disable=not cfg.log.progress,
            unit="step",
            dynamic_ncols=True,
        )
        if latest is None and init_params is not None and cfg.eval.every_steps > 0:
            # A fine-tune's starting point on its new data: the "before" of before/after.
            bar.write(self._evaluate_into(writer, state.eval_params(), data, 0))
        window_start, window_steps = time.perf_counter(), 0
        try:
            while step < cfg.train.steps:
                batch = next(train_iter)
                t0 = time.perf_counter()
                state, step_metrics = self.step(state, batch)
                step += 1
                window_steps += 1
                if window_steps == 1 and step == int(latest or 0) + 1:
                    jax.block_until_ready(step_metrics)
                    writer.write(step, {"perf/first_step_seconds": time.perf_counter() - t0})
                    window_start, window_steps = time.perf_counter(), 0
                bar.update(1)
                if step % cfg.log.every_steps == 0 or step == cfg.train.steps:
                    scalars = metrics_lib.host_scalars(step_metrics)
                    row = {f"train/{k}": v for k, v in scalars.items()}
                    if window_steps:
                        seconds = (time.perf_counter() - window_start) / window_steps
                        row.update(_throughput(seconds, cfg.train.batch_size, tokens, flops, peak))
                    writer.write(step, row)
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
                    window_start, window_steps = time.perf_counter(), 0
                if cfg.eval.every_steps > 0 and (
                    step % cfg.eval.every_steps == 0 or step == cfg.train.steps
                ):
                    bar.write(self._evaluate_into(writer, state.eval_params(), data, step))
                    window_start, window_steps = time.perf_counter(), 0
                if step % cfg.checkpoint.every_steps == 0 or step == cfg.train.steps:
                    ckpt.save(step, state, train_iter.get_state())
        finally:
            bar.close()
            ckpt.close()
            writer.close()
        return state

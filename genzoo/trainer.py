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
import types
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from genzoo import metrics as metrics_lib
from genzoo import models, optim, sharding
from genzoo.checkpoint import Checkpointer
from genzoo.errors import UserError
from genzoo.models.protocols import CountsFlops

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key: checkpoints store it like any array


def _init_state(rng, *, family, model_cfg, tx):
    init_rng, state_rng = jax.random.split(rng)
    params = nn.unbox(family.init(init_rng, model_cfg))
    return TrainState(jnp.array(0, jnp.int32), params, tx.init(params), state_rng)


def _loss_and_grads(family, model_cfg, params, batch, rng, step):
    """Loss, gradients and metrics; a dict of losses trains each parameter group on its own."""
    f = lambda p: family.loss(p, batch, rng, model_cfg, train=True, step=step)
    losses, vjp, aux = jax.vjp(f, params, has_aux=True)
    if not isinstance(losses, dict):
        return losses, vjp(jnp.ones_like(losses))[0], dict(aux)
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
    return total, grads, {**aux, **{f"loss_{g}": v for g, v in losses.items()}}


def _train_step(state: TrainState, batch, *, family, model_cfg, tx, lr_schedule, grad_accum: int):
    """One optimizer step over `batch` (split into `grad_accum` micro-batches)."""
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum == 1:
        loss, grads, aux = _loss_and_grads(family, model_cfg, state.params, batch, rng, state.step)
    else:
        # Strided micro-batches (rows i, i+A, ...) so each one stays spread over all devices.
        micro = jax.tree.map(
            lambda x: x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1),
            batch,
        )

        def accumulate(carry, i):
            mb = jax.tree.map(lambda x: x[i], micro)
            out = _loss_and_grads(
                family, model_cfg, state.params, mb, jax.random.fold_in(rng, i), state.step
            )
            return jax.tree.map(jnp.add, carry, out), None

        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype),
            jax.eval_shape(
                lambda: _loss_and_grads(
                    family,
                    model_cfg,
                    state.params,
                    jax.tree.map(lambda x: x[0], micro),
                    rng,
                    state.step,
                )
            ),
        )
        summed, _ = jax.lax.scan(accumulate, zeros, jnp.arange(grad_accum))
        loss, grads, aux = jax.tree.map(lambda x: x / grad_accum, summed)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out_metrics = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "lr": lr_schedule(state.step),
        **aux,
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, out_metrics


def _eval_step(params, batch, rng, *, family, model_cfg):
    return family.eval_sums(params, batch, rng, model_cfg)


def _check_same_structure(params, abstract_params, fresh: str = "") -> None:
    """Every parameter the model needs, except the `fresh` globs, with its shape; with
    `fresh` given, parameters of the source the model lacks (an old head) are dropped."""
    got = {optim.param_path(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
    want = {
        optim.param_path(p): x.shape
        for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)
    }
    if fresh:
        is_fresh = optim.matcher(fresh)
        want = {k: v for k, v in want.items() if not is_fresh(k)}
        got = {k: v for k, v in got.items() if k in want}
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            raise UserError(
                f"init_from parameters do not fit this model: {key} is {got.get(key)}, "
                f"the model needs {want.get(key)}"
            )


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

    def __init__(self, cfg, devices=None):
        self.cfg = cfg
        self.family = models.get(cfg.model.family)
        self.model_cfg = cfg.model  # a FrozenConfigDict: hashable, so a static jit argument
        self.mesh = sharding.make_mesh(cfg.mesh, devices)
        self.rules = sharding.rules(cfg.mesh)
        sharding.check_batch(cfg.train.batch_size // cfg.train.grad_accum, self.mesh, self.rules)
        # Shapes and logical axis names of the parameters, without allocating them.
        boxed = jax.eval_shape(lambda r: self.family.init(r, self.model_cfg), jax.random.PRNGKey(0))
        self.tx = optim.build(cfg.optim, nn.unbox(boxed), cfg.train.trainable)
        statics = dict(family=self.family, model_cfg=self.model_cfg, tx=self.tx)
        self.abstract_state = jax.eval_shape(
            functools.partial(_init_state, **statics), jax.random.PRNGKey(0)
        )
        repl = sharding.replicated(self.mesh)
        param_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
        sharding.check_divisible(nn.unbox(boxed), param_shardings, optim.param_path)
        opt_shardings = sharding.like_params(
            self.abstract_state.opt_state, self.abstract_state.params, param_shardings, repl
        )
        self.state_shardings = TrainState(repl, param_shardings, opt_shardings, repl)
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)

        self._init = jax.jit(
            functools.partial(_init_state, **statics),
            out_shardings=self.state_shardings,
        )
        self.train_step = jax.jit(
            functools.partial(
                _train_step,
                **statics,
                lr_schedule=optim.schedule(cfg.optim),
                grad_accum=cfg.train.grad_accum,
            ),
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(
            functools.partial(_eval_step, family=self.family, model_cfg=self.model_cfg),
            in_shardings=(param_shardings, self.batch_sharding, repl),
            out_shardings=repl,
        )

    def check_params(self, params) -> None:
        """UserError unless `params` have exactly this model's parameter paths and shapes."""
        _check_same_structure(params, self.abstract_state.params, self.cfg.train.init_fresh)

    def init_state(self, init_params=None) -> TrainState:
        """A fresh state; `init_params` (from another run) replace the random parameters."""
        key = jax.random.PRNGKey(self.cfg.train.seed)
        with sharding.activate(self.mesh, self.rules):
            if init_params is None:
                return self._init(key)
            self.check_params(init_params)
            if self.cfg.train.init_fresh:  # new parameters (a head) keep their random init
                is_fresh = optim.matcher(self.cfg.train.init_fresh)
                fresh = self._init(key).params
                source = {optim.param_path(p): x
                          for p, x in jax.tree_util.tree_leaves_with_path(init_params)}  # fmt: skip
                init_params = jax.tree_util.tree_map_with_path(
                    lambda p, x: (
                        x if is_fresh(optim.param_path(p)) else source[optim.param_path(p)]
                    ),
                    fresh,
                )
            # Otherwise no random init to throw away (it would briefly double memory).
            params = jax.device_put(init_params, self.state_shardings.params)
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
            _, state_rng = jax.random.split(key)  # as _init_state derives it
            step, state_rng = jax.device_put(
                (jnp.array(0, jnp.int32), state_rng),
                (self.state_shardings.step, self.state_shardings.rng),
            )
            return TrainState(step, params, opt_state, state_rng)

    def restore(self, checkpointer: Checkpointer, step: int):
        return checkpointer.restore(step, self.abstract_state, self.state_shardings)

    def step(self, state: TrainState, batch: dict):
        with sharding.activate(self.mesh, self.rules):
            return self.train_step(state, sharding.put_batch(batch, self.batch_sharding))

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
        run = workdir.Run(self.cfg, data, self, types.SimpleNamespace(params=params), step)
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
            bar.write(self._evaluate_into(writer, state.params, data, 0))
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
                    bar.write(self._evaluate_into(writer, state.params, data, step))
                    window_start, window_steps = time.perf_counter(), 0
                if step % cfg.checkpoint.every_steps == 0 or step == cfg.train.steps:
                    ckpt.save(step, state, train_iter.get_state())
        finally:
            bar.close()
            ckpt.close()
            writer.close()
        return state

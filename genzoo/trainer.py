"""THE training loop, for every family.

The trainer knows the family protocol (`genzoo.models`), never a family: it builds
the train state with shardings derived from the parameters' logical axis names,
jits one pure `train_step.train_step` with explicit in/out shardings and a donated state, and
owns the I/O around it: data, checkpoints, metrics, progress, periodic evaluation.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genzoo import aot, distributed, host_memory, init_from, models, optim, requires, sharding
from genzoo import metrics as metrics_lib
from genzoo.checkpoint import Checkpointer
from genzoo.errors import NonFinite, Preempted, UserError
from genzoo.models.protocols import CountsFlops
from genzoo.preemption import StopRequest, agreed
from genzoo.train_step import (
    TrainState,
    eval_step,
    init_state,
    initial_loss_scale,
    state_key,
    train_step,
)
from genzoo.trainer_start import StartUp

log = logging.getLogger(__name__)


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


def loss_scaling(cfg) -> bool:
    """`train.loss_scale`: "auto" scales the loss under float16 compute only (bfloat16 has
    float32's range); "dynamic" always, "none" never. Configs saved before the key: never,
    so their checkpoints keep reading."""
    mode = cfg.train.get("loss_scale", "none")
    return mode == "dynamic" or (mode == "auto" and cfg.model.get("dtype") == "float16")


def _host_memory_for_step(program: aot.Program) -> None:
    """On CPU, small step temporaries keep their pages between steps (genzoo.host_memory)."""
    if program.temp_bytes is not None and jax.default_backend() == "cpu":
        host_memory.reuse_large_blocks(program.temp_bytes)


class Trainer(StartUp):
    """Compiled init/train/eval functions for one resolved config on one mesh."""

    def __init__(self, cfg, devices=None, deps=None, executables=None):
        """`deps`: {name: workdir.Run} of the runs `model.requires` names (genzoo.requires);
        `executables`: a `genzoo.executables.Store` that keeps the compiled programs."""
        self.cfg = cfg
        aot.gpu_compile_settings()
        self.family = models.get(cfg.model.family)
        self.model_cfg = cfg.model  # a FrozenConfigDict: hashable, so a static jit argument
        self.mesh = sharding.make_mesh(cfg.mesh, devices)
        self.rules = sharding.rules(cfg.mesh)
        self.dep_runs = dict(deps or {})  # host-side evaluators need the runs themselves
        self.deps, deps_shardings = self._place_deps(deps or {})
        sharding.check_batch(cfg.train.batch_size // cfg.train.grad_accum, self.mesh, self.rules)
        # Shapes and logical axis names of the parameters, without allocating them.
        boxed = jax.eval_shape(lambda r: self.family.init(r, self.model_cfg), jax.random.PRNGKey(0))
        model_state = state_key(self.family, boxed)  # what the loss updates, not the optimizer
        if (cfg.optim.name == "em") != bool(cfg.model.get("expected_counts", False)):
            raise UserError("optim.name=em and model.expected_counts=true go together: the "
                            "M-step reads the counts that loss's gradients give")  # fmt: skip
        self.tx = optim.build(cfg.optim, nn.unbox(boxed), cfg.train.trainable, model_state)
        statics = dict(family=self.family, model_cfg=self.model_cfg, tx=self.tx)
        ema = cfg.train.get("ema_decay", 0.0) > 0
        scaled = loss_scaling(cfg)
        init = functools.partial(init_state, **statics, ema=ema, loss_scale=scaled)
        self.abstract_state = jax.eval_shape(init, jax.random.PRNGKey(0))
        repl = sharding.replicated(self.mesh)
        param_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
        sharding.check_divisible(nn.unbox(boxed), param_shardings, optim.param_path)
        opt_shardings = sharding.like_params(
            self.abstract_state.opt_state, self.abstract_state.params, param_shardings, repl
        )
        scale_shardings = {"scale": repl, "good_steps": repl} if scaled else None
        self.state_shardings = TrainState(repl, param_shardings, opt_shardings, repl,
                                          param_shardings if ema else None,
                                          scale_shardings)  # fmt: skip
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)

        init = jax.jit(init, out_shardings=self.state_shardings)
        self._init = aot.Program(init, "initial state", compiler_options=aot.run_once_options())
        self.train_step = jax.jit(
            functools.partial(
                train_step,
                **statics,
                learning_rates=optim.logged_rates(cfg.optim),
                grad_accum=cfg.train.grad_accum,
                ema_decay=cfg.train.get("ema_decay", 0.0),
                rng_impl=cfg.train.get("rng_impl", "threefry"),
            ),
            in_shardings=(self.state_shardings, self.batch_sharding, deps_shardings),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=(0,),
        )
        evaluate_step = jax.jit(
            functools.partial(eval_step, family=self.family, model_cfg=self.model_cfg),
            in_shardings=(param_shardings, self.batch_sharding, repl, deps_shardings),
            out_shardings=repl,
        )
        # Compiled ahead of time (fit starts both early); their memory analysis is read.
        self.step_program = aot.Program(
            self.train_step, "train step", _host_memory_for_step, runs_often=True
        )
        self.eval_program = aot.Program(evaluate_step, "eval step")
        self.eval_step = lambda params, batch, rng: self.eval_program(params, batch, rng, self.deps)
        if executables is not None:  # the mesh is not in the config when `devices` is given
            ids = np.vectorize(lambda d: d.id)(self.mesh.devices).tolist()
            executables = executables.narrowed(f"mesh {self.mesh.axis_names} {ids}")
        for program in (self._init, self.step_program, self.eval_program):
            program.store = executables

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
            _, state_rng = jax.random.split(key)  # as train_step.init_state derives it
            step, state_rng = jax.device_put(
                (jnp.array(0, jnp.int32), state_rng),
                (self.state_shardings.step, self.state_shardings.rng),
            )
            ema = None if self.state_shardings.ema is None else jax.tree.map(jnp.copy, params)
            loss_scale = self.state_shardings.loss_scale
            if loss_scale is not None:
                loss_scale = jax.device_put(initial_loss_scale(), loss_scale)
            return TrainState(step, params, opt_state, state_rng, ema, loss_scale)

    def restore(self, checkpointer: Checkpointer, which="latest"):
        """(state, data-iterator state, step, damaged newer steps) from `which`: latest (the
        newest readable), best, or a step number."""
        return checkpointer.restore(which, self.abstract_state, self.state_shardings)

    def step(self, state: TrainState, batch: dict):
        with sharding.activate(self.mesh, self.rules):
            batch = sharding.put_batch(batch, self.batch_sharding, self.cfg.train.batch_size)
            return self.step_program(state, batch, self.deps)

    def evaluate(self, params, data, split: str | None = None, max_batches: int | None = None):
        """Whole-split figures (or the first `max_batches` batches) from the family's summary."""
        e = self.cfg.eval
        split = split or e.split
        max_batches = e.max_batches if max_batches is None else max_batches
        totals: dict[str, float] = {}
        with sharding.activate(self.mesh, self.rules):
            rows = sharding.process_rows(self.batch_sharding, e.batch_size)
            for i, batch in enumerate(data.eval_batches(split, e.batch_size, max_batches)):
                rng = jax.random.fold_in(jax.random.PRNGKey(e.seed), i)  # same figures every call
                batch = jax.tree.map(lambda x: x[rows], batch)
                batch = sharding.put_batch(batch, self.batch_sharding, e.batch_size)
                sums = self.eval_step(params, batch, rng)
                for k, v in jax.device_get(sums).items():
                    totals[k] = totals.get(k, 0.0) + np.float64(v)  # host float64: no drift
        return self.family.eval_summary(totals, data.meta(split))

    def _evaluate_into(self, writer, params, data, step: int) -> tuple[str, dict]:
        """Evaluates and writes `val/*` metrics at `step`: a line for the user, and the row."""
        from genzoo import workdir
        from genzoo.evaluation import evaluators

        t0 = time.perf_counter()
        figures = self.evaluate(params, data)
        state = TrainState(step, params, None, None)
        run = workdir.Run(self.cfg, data, self, state, step, deps=self.dep_runs)
        host = evaluators.run_all(run, self.cfg.eval.split, step=step)  # those due now
        figures.update({k: v for k, v in host.items() if isinstance(v, (int, float))})
        row = {f"val/{k}": v for k, v in figures.items()}
        writer.write(step, row)
        log.info("evaluation at step %d: %.2f s", step, time.perf_counter() - t0)
        name, value = next(iter(figures.items()))  # the family's headline figure
        return f"step {step}: {self.cfg.eval.split} {name} {value:.4f}", row

    def _best_value(self, row: dict) -> float:
        metric = self.cfg.checkpoint.keep_best
        if metric not in row:
            raise UserError(f"checkpoint.keep_best={metric!r} is not an evaluation figure "
                            f"(these are: {', '.join(row)})")  # fmt: skip
        return float(row[metric])

    def fit(self, workdir: Path, data, init_params=None) -> TrainState:
        """Trains to `train.steps` (or `train.max_seconds` of wall time, whichever comes
        first), resuming from the newest readable checkpoint in `workdir`.

        A fresh run starts from `init_params` when given (fine-tuning), with a fresh optimizer.
        Raises `Preempted` after saving on SIGTERM/SIGINT, `NonFinite` after more than
        `train.skip_nonfinite` steps with a NaN/Inf loss or gradient (never saved: see
        train_step)."""
        # Signals are caught from here, not from the first step: a preemption while the step
        # compiles (minutes on a GPU) saves after the first step and exits 75 like any other.
        with StopRequest() as stop:
            return self._fit(workdir, data, init_params, stop)

    def _fit(self, workdir: Path, data, init_params, stop: StopRequest) -> TrainState:
        cfg, c = self.cfg, self.cfg.checkpoint
        ckpt = Checkpointer(Path(workdir) / "checkpoints", c.keep, c.async_save,
                            keep_best=c.keep_best, best_mode=c.best_mode)  # fmt: skip
        rows = sharding.process_rows(self.batch_sharding, cfg.train.batch_size)
        log.info("process %d of %d reads rows %d:%d of each batch of %d", jax.process_index(),
                 jax.process_count(), rows.start, rows.stop, cfg.train.batch_size)  # fmt: skip
        # A wall-time budget counts this invocation from here, compile included.
        budget = cfg.train.get("max_seconds", 0.0)  # configs saved before the key: no budget
        deadline = time.monotonic() + budget if budget > 0 else None
        train_iter = data.train_iterator(cfg.train.batch_size, cfg.train.seed, rows=rows)
        main = distributed.is_main()  # files and progress: process 0 only
        compiles = self.step_program.compiled is None  # else compiled before this fit
        # What one example looks like (per-field shapes) decides its cost, for every family.
        tokens = getattr(data, "tokens_per_example", None)
        flops = None
        if isinstance(self.family, CountsFlops):
            flops = self.family.flops_per_example(self.model_cfg, data.example_shapes)
        peak = None
        if flops:  # before any compile starts: a CPU's peak measured beside one reads low
            peak, source = metrics_lib.peak_flops(cfg.train.peak_flops,
                                                  cfg.model.get("dtype", "float32"))  # fmt: skip
            log.info("MFU divides by %.4g FLOP/s: %s", peak, source)
        state, latest, writer, batch, t_first = self._begin(workdir, ckpt, train_iter, data,
                                                            init_params)  # fmt: skip
        step = int(state.step)
        bar = metrics_lib.progress_bar(cfg.train.steps, step, bool(cfg.log.progress and main))
        say = bar.write if main else lambda line: None
        if latest is None and init_params is not None and cfg.eval.every_steps > 0:
            # A fine-tune's starting point on its new data: the "before" of before/after.
            say(self._evaluate_into(writer, state.eval_params(), data, 0)[0])
        window_start, window_steps = time.perf_counter(), 0
        last_save, saved_step, skipped, overflowed = time.monotonic(), latest, 0, 0
        # (step, finite flag, loss-scale overflow flag or None) checked one step late: no sync
        # per step, and every step counts, not only the logged ones.
        previous = None

        def check(pending) -> int:
            nonlocal overflowed
            if pending is None:
                return 0
            overflowed += pending[2] is not None and bool(pending[2])
            if bool(pending[1]):
                return 0
            if skipped + 1 > cfg.train.skip_nonfinite:
                raise NonFinite(
                    f"step {pending[0]}: the loss or gradients are NaN/Inf; stopped without "
                    f"saving it (last checkpoint: {saved_step or 'none'}); lower optim.lr or set "
                    "train.skip_nonfinite=N to skip up to N such steps"
                )
            print(f"genzoo: step {pending[0]} skipped: NaN/Inf loss or gradients", file=sys.stderr)
            return 1

        log.info("training from step %d to %d", step, cfg.train.steps)
        try:
            while step < cfg.train.steps:
                batch = next(train_iter) if batch is None else batch
                state, step_metrics = self.step(state, batch)
                batch = None
                step += 1
                window_steps += 1
                skipped += check(previous)
                previous = (step, step_metrics["finite"], step_metrics.get("overflow"))
                if window_steps == 1 and step == int(latest or 0) + 1:
                    jax.block_until_ready(step_metrics)
                    first = {"perf/first_step_seconds": time.perf_counter() - t_first}
                    if compiles:  # this launch's trace and compile of the step
                        phases = self.step_program.seconds.items()
                        first.update({f"perf/{k}_seconds": v for k, v in phases})
                    writer.write(step, {**first, **({"perf/peak_flops": peak} if peak else {})})
                    window_start, window_steps = time.perf_counter(), 0
                bar.update(1)
                now = time.monotonic()
                stopping, out_of_time, save_by_clock = agreed(
                    (stop.signal is not None, deadline is not None and now >= deadline,
                     c.every_seconds > 0 and now - last_save >= c.every_seconds),
                    step, cfg.log.every_steps,
                )  # fmt: skip
                last = step == cfg.train.steps or out_of_time
                if step % cfg.log.every_steps == 0 or last:
                    scalars = metrics_lib.host_scalars(step_metrics)
                    row = {f"train/{k}": v for k, v in scalars.items()}
                    row["train/skipped_steps"] = skipped + (scalars["finite"] == 0)
                    if "overflow" in scalars:  # float16's loss scale halved and the step skipped
                        row["train/overflow_steps"] = overflowed + (scalars["overflow"] == 1)
                    if window_steps:
                        seconds = (time.perf_counter() - window_start) / window_steps
                        row.update(_throughput(seconds, cfg.train.batch_size, tokens, flops,
                                               peak))  # fmt: skip
                    writer.write(step, row)
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
                    window_start, window_steps = time.perf_counter(), 0
                best = None
                if cfg.eval.every_steps > 0 and (step % cfg.eval.every_steps == 0 or last):
                    skipped += check(previous)  # a skipped step is counted before use
                    previous = None
                    line, row = self._evaluate_into(writer, state.eval_params(), data, step)
                    say(line)
                    if c.keep_best and ckpt.improves(value := self._best_value(row)):
                        best = value
                    window_start, window_steps = time.perf_counter(), 0
                due = step % c.every_steps == 0 or last or best is not None or stopping
                if due or save_by_clock:
                    skipped += check(previous)
                    previous = None
                    t_save = time.perf_counter()
                    ckpt.save(step, state, train_iter.get_state(), best_value=best)
                    log.info("checkpoint %d: %.2f s on the training thread", step,
                             time.perf_counter() - t_save)  # fmt: skip
                    last_save, saved_step = time.monotonic(), step
                if last:
                    break
                if stopping:
                    raise Preempted(
                        f"stopped by {stop.name or 'a signal to another process'} at step "
                        f"{step} with its checkpoint saved; run the same command to resume"
                    )
            check(previous)
        finally:  # ckpt.close waits for the save in flight: a preempted run keeps its last step
            _close_all(bar.close, ckpt.close, writer.close)
        return state


def _close_all(*closers) -> None:
    """Runs every closer even when one fails (a full disk fails the checkpoint's wait and the
    metrics' flush alike, and TensorBoard's writer must still stop), then raises the first
    failure."""
    first = None
    for close in closers:
        try:
            close()
        except Exception as err:
            first = first or err
    if first is not None:
        raise first

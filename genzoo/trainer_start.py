"""How `Trainer.fit` starts: resume or a fresh state, and the programs compiled before the
first step, overlapped where they can be (a mixin of `genzoo.trainer.Trainer`)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax

from genzoo import aot, distributed, sharding
from genzoo import metrics as metrics_lib
from genzoo.checkpoint import Checkpointer
from genzoo.train_step import TrainState

log = logging.getLogger("genzoo.trainer")


class StartUp:
    """`Trainer`'s start: needs its `cfg`, mesh, programs, `restore` and `init_state`."""

    def _resume(self, ckpt: Checkpointer, train_iter):
        """(state, step) of the newest readable checkpoint, or None for a fresh run. Damaged
        newer checkpoints are moved aside, so that this run's saves can take their steps."""
        if not ckpt.steps():
            return None
        state, data_state, step, damaged = self.restore(ckpt)
        for bad in damaged:
            ckpt.set_aside(bad)
        train_iter.set_state(data_state)
        log.info("resumed from step %d", step)
        return state, step

    def _begin(self, workdir: Path, ckpt: Checkpointer, train_iter, data, init_params):
        """(state, its checkpoint step or None, metrics writer, first batch or None, the
        first step's start time). Tracing holds the GIL and XLA's compiles do not, so a fresh
        state is traced first, then compiled on a worker thread while this one traces and
        compiles the train step; the eval step compiles on a second worker meanwhile (4 or
        more cores, `aot.start_workers`) or on the first while training runs. With stored
        executables (`genzoo.executables`) they load instead, tracing nothing."""
        cfg = self.cfg
        overlap = aot.overlap_start()
        workers = aot.start_workers() if overlap else 1
        pool = ThreadPoolExecutor(workers, thread_name_prefix="genzoo-start") if overlap \
            else aot.Inline()  # fmt: skip
        evaluates = overlap and cfg.eval.every_steps > 0
        try:
            resumed = self._resume(ckpt, train_iter)
            if resumed is None:
                fresh = pool.submit(self._fresh_state, init_params, self._trace_init(init_params))
            if evaluates and workers > 1:  # beside the train step's compile
                pool.submit(self._precompile_eval, data)
            main = distributed.is_main()
            writer = metrics_lib.MetricsWriter(Path(workdir), cfg.log.tensorboard, main, False)
            try:
                batch, t_first = None, time.perf_counter()
                if (resumed[1] if resumed else 0) < cfg.train.steps:
                    batch = next(train_iter)
                    t_first = time.perf_counter()  # the first step's time: compile included
                    self._precompile(batch)
                writer.start_tensorboard()
                if evaluates and workers == 1:  # compiles while training runs
                    pool.submit(self._precompile_eval, data)
                state, latest = resumed or (fresh.result(), None)
            except BaseException:
                writer.close()
                raise
        finally:
            pool.shutdown(wait=False)
        return state, latest, writer, batch, t_first

    def _trace_init(self, init_params):
        """The initial state's compile, traced (None when it is not needed or compiled)."""
        if init_params is not None or self._init.compiled is not None:
            return None  # fine-tunes mostly load every parameter
        with sharding.activate(self.mesh, self.rules):
            return self._init.trace(jax.random.PRNGKey(self.cfg.train.seed))

    def _fresh_state(self, init_params, compile_init=None) -> TrainState:
        t0 = time.perf_counter()
        if compile_init is not None:
            compile_init()
        state = jax.block_until_ready(self.init_state(init_params))
        log.info("initial state: %.1f s (compile included)", time.perf_counter() - t0)
        return state

    def _precompile(self, batch: dict) -> None:
        """Compiles the train step from the state's shapes and the first batch's (this
        process's rows; the global batch has `train.batch_size`)."""
        with sharding.activate(self.mesh, self.rules):
            batch = self._shapes(batch, self.cfg.train.batch_size)
            self.step_program.compile(self.abstract_state, batch, self.deps, if_missing=True)

    def _precompile_eval(self, data) -> None:
        """Compiles the eval step from the parameters' shapes and the first eval batch's."""
        e = self.cfg.eval
        try:
            first = next(iter(data.eval_batches(e.split, e.batch_size, 1)), None)
            if first is None or self.eval_program.compiled is not None:
                return
            batch, rng = self._shapes(first, e.batch_size), jax.random.PRNGKey(e.seed)
            with sharding.activate(self.mesh, self.rules):
                self.eval_program.compile(self.abstract_state.params, batch, rng, self.deps)
        except Exception as err:  # the first evaluation compiles it then, and says why
            log.warning("eval step not compiled ahead: %s", err)

    @staticmethod
    def _shapes(batch: dict, rows: int) -> dict:
        """A host batch's types with the global batch's `rows` (processes hold some rows)."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype), batch)

"""What the benchmarks share: the character GPT's config and timing of its train step."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np

from genzoo import executables, experiment
from genzoo.trainer import Trainer

VOCAB = 65  # tiny Shakespeare's characters


def char_gpt_config(
    variant: str | None, overrides=(), vocab: int = VOCAB
) -> ml_collections.FrozenConfigDict:
    """`gpt_shakespeare_char` resolved without loading data (the benchmarks use random tokens)."""
    cfg = experiment.load("gpt_shakespeare_char", variant, overrides)
    cfg.model.vocab_size = vocab
    cfg.optim.decay_steps = cfg.train.steps
    cfg.eval.batch_size = cfg.train.batch_size
    return ml_collections.FrozenConfigDict(cfg)


def time_train_steps(cfg, steps: int, warmup: int = 2, memory: bool = False) -> dict:
    """Seconds of the first (compiling) step and the mean of `steps` later ones, one device;
    `memory`: also the compiled step's temporaries (XLA's memory analysis), in GiB."""
    with train_stepper(cfg) as stepper:
        for _ in range(warmup):
            stepper.step()
        out = {
            "first_step_s": stepper.first_step_s,
            "step_s": seconds_per_call(stepper.step, steps),
        }
        temp_bytes = stepper.trainer.step_program.temp_bytes  # the step's own analysis
        if memory and temp_bytes is not None:
            out["xla_temp_gib"] = temp_bytes / 2**30
        return out


@dataclasses.dataclass
class Stepper:
    trainer: Trainer
    first_step_s: float
    step: Callable[[], object]  # dispatches one more step, returns its metrics


@contextlib.contextmanager
def train_stepper(cfg):
    """genzoo's train step on random tokens, after its first (compiling) step, run as a first
    `genzoo train` launch runs it: compiled, stored (in a throwaway folder) and, where the
    trainer does so (CPU), run from the stored copy."""
    B, L, V = cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size
    rng = np.random.default_rng(0)
    batch = {
        "inputs": rng.integers(0, V, (B, L), dtype=np.int32),
        "targets": rng.integers(0, V, (B, L), dtype=np.int32),
        "mask": np.ones((B, L), np.float32),
    }
    with tempfile.TemporaryDirectory() as folder:
        store = executables.Store(Path(folder), executables.config_context(cfg))
        trainer = Trainer(cfg, devices=jax.devices()[:1], executables=store)
        state = [trainer.init_state()]

        def step():
            state[0], metrics = trainer.step(state[0], batch)
            return metrics

        t0 = time.perf_counter()
        jax.block_until_ready(step())
        yield Stepper(trainer, time.perf_counter() - t0, step)


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    """Mean seconds of `calls` calls, dispatched back to back, up to the last one's result."""
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict:
    """Seconds per call of each contender over `rounds` rounds of `calls` calls, taking turns
    (order reversed every other round), so a drift in the machine's speed (this VM's runs
    differ by 10-25%) lands on every contender alike. Per contender: the median round and
    every round, in seconds."""
    times = {name: [] for name in contenders}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for name in order:
            times[name].append(seconds_per_call(contenders[name], calls))
    return {name: {"median_s": float(np.median(t)), "rounds_s": t} for name, t in times.items()}


def write_report(path, report: dict) -> None:
    """The benchmark's JSON (folders made as needed), with the GENZOO_ and XLA_FLAGS settings
    it ran under, and a line saying where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    knobs = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("GENZOO_", "XLA_FLAGS"))}
    out.write_text(json.dumps({**report, "environment": knobs}, indent=2))
    print(f"wrote {out}")

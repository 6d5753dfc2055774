"""What the benchmarks share: the character GPT's config and timing of its train step."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
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
    `memory`: also the compiled step's temporaries (XLA's memory analysis), in GiB. The step
    runs as in a first `genzoo train` launch: compiled, stored (in a throwaway folder) and,
    where the trainer does so (CPU), run from the stored copy."""
    with tempfile.TemporaryDirectory() as folder:
        store = executables.Store(Path(folder), executables.config_context(cfg))
        return _time_steps(Trainer(cfg, devices=jax.devices()[:1], executables=store),
                           cfg, steps, warmup, memory)  # fmt: skip


def _time_steps(trainer, cfg, steps: int, warmup: int, memory: bool) -> dict:
    B, L, V = cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size
    rng = np.random.default_rng(0)
    batch = {
        "inputs": rng.integers(0, V, (B, L), dtype=np.int32),
        "targets": rng.integers(0, V, (B, L), dtype=np.int32),
        "mask": np.ones((B, L), np.float32),
    }
    state = trainer.init_state()
    t0 = time.perf_counter()
    state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    out = {"first_step_s": first, "step_s": (time.perf_counter() - t0) / steps}
    if (
        memory and trainer.step_program.temp_bytes is not None
    ):  # the step's own analysis, no recompile
        out["xla_temp_gib"] = trainer.step_program.temp_bytes / 2**30
    return out


def cpu_info() -> dict:
    """The CPU model, core count and vector-instruction flags (they decide who wins)."""
    info = {
        "machine": platform.machine(),
        "cores": os.cpu_count(),
    }
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["model"] = next(
            x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")
        )
        flags = next(x.split(":", 1)[1].split() for x in lines if x.startswith("flags"))
        info["flags"] = sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except (OSError, StopIteration):
        pass
    return info


def write_report(path, report: dict) -> None:
    """The benchmark's JSON (folders made as needed), and a line saying where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")

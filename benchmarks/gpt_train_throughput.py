"""Training throughput of genzoo's GPT against the machine's own matmul peak, in one run.

    .venv/bin/python benchmarks/gpt_train_throughput.py [--steps 20] [--variants cpu,baby]

Prints a table and writes benchmarks/results/gpt_train_throughput.json. The reference
is the best float32 matmul FLOP/s XLA reaches in the same process, so MFU is a ratio
from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from genzoo import experiment, metrics
from genzoo.models import gpt
from genzoo.trainer import Trainer

SIZES = {  # name: (experiment variant, overrides)
    "smoke": ("smoke", ()),
    "cpu": ("cpu", ()),
    "baby": (None, ("train.batch_size=16",)),  # nanoGPT's baby GPT at batch 16
}


def measure(name: str, steps: int) -> dict:
    variant, overrides = SIZES[name]
    cfg = experiment.load("gpt_shakespeare_char", variant, overrides)
    cfg.model.vocab_size = 65
    cfg.optim.decay_steps = cfg.train.steps
    cfg.eval.batch_size = cfg.train.batch_size
    trainer = Trainer(ml_collections.FrozenConfigDict(cfg), devices=jax.devices()[:1])
    B, L = cfg.train.batch_size, cfg.data.seq_len
    rng = np.random.default_rng(0)
    batch = {
        "inputs": rng.integers(0, 65, (B, L), dtype=np.int32),
        "targets": rng.integers(0, 65, (B, L), dtype=np.int32),
        "mask": np.ones((B, L), np.float32),
    }
    state = trainer.init_state()
    t0 = time.perf_counter()
    state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for _ in range(3):  # warm-up
        state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / steps
    flops = gpt.flops_per_example(cfg.model, L) * B / step_s
    return {
        "size": name,
        "batch": B,
        "seq_len": L,
        "first_step_s": compile_s,
        "step_s": step_s,
        "tokens_per_s": B * L / step_s,
        "model_flops_per_s": flops,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--variants", default="cpu,baby")
    p.add_argument("--out", default="benchmarks/results/gpt_train_throughput.json")
    args = p.parse_args()
    peak = metrics.measure_matmul_peak()
    rows = [measure(v, args.steps) for v in args.variants.split(",")]
    for r in rows:
        r["mfu_vs_xla_matmul_peak"] = r["model_flops_per_s"] / peak
    print(f"XLA fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")
    print(
        f"{'size':<6} {'batch':>5} {'len':>4} {'compile s':>9} {'step ms':>8} "
        f"{'tokens/s':>9} {'GFLOP/s':>8} {'MFU':>6}"
    )
    for r in rows:
        print(
            f"{r['size']:<6} {r['batch']:>5} {r['seq_len']:>4} {r['first_step_s']:>9.2f} "
            f"{r['step_s'] * 1e3:>8.1f} {r['tokens_per_s']:>9.0f} "
            f"{r['model_flops_per_s'] / 1e9:>8.1f} "
            f"{r['mfu_vs_xla_matmul_peak']:>6.1%}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": _cpu_model(), "arch": platform.machine(), "devices": len(jax.devices())}
    out.write_text(
        json.dumps({"machine": machine, "matmul_peak_flops": peak, "rows": rows}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

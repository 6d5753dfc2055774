"""Training throughput of genzoo's GPT against the machine's own matmul peak, in one run.

    .venv/bin/python benchmarks/gpt_train_throughput.py [--steps 20] [--variants cpu,baby]

Prints a table and writes benchmarks/results/gpt_train_throughput.json. The reference
is the best float32 matmul FLOP/s XLA reaches in the same process, so MFU is a ratio
from one run on one machine.
"""

from __future__ import annotations

import argparse

import jax
from common import char_gpt_config, time_train_steps, write_report

from genzoo import metrics
from genzoo.models import gpt

SIZES = {  # name: (experiment variant, overrides)
    "smoke": ("smoke", ()),
    "cpu": ("cpu", ()),
    "baby": (None, ("train.batch_size=16",)),  # nanoGPT's baby GPT at batch 16
}


def measure(name: str, steps: int) -> dict:
    variant, overrides = SIZES[name]
    cfg = char_gpt_config(variant, overrides)
    B, L = cfg.train.batch_size, cfg.data.seq_len
    timing = time_train_steps(cfg, steps, warmup=3)
    return {
        "size": name,
        "batch": B,
        "seq_len": L,
        **timing,
        "tokens_per_s": B * L / timing["step_s"],
        "model_flops_per_s": gpt.flops_per_example(cfg.model, {"inputs": (L,)})
        * B
        / timing["step_s"],
    }


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
    machine = {**metrics.cpu_info(), "devices": len(jax.devices())}
    write_report(args.out, {"machine": machine, "matmul_peak_flops": peak, "rows": rows})


if __name__ == "__main__":
    main()

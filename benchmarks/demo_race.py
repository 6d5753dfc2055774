"""The README demo against PyTorch eager in the same wall-time budget: who ends better?

    .venv/bin/python benchmarks/demo_race.py [--seconds 180] [--seeds 1337,1,2]

Both train `gpt_shakespeare_char --variant cpu` (4x128, ctx 128, batch 16; AdamW 2e-3, warmup
100 then cosine to 1e-4 over 2000 steps, betas 0.9/0.99, weight decay 0.1 on matrices, clip
1.0; nanoGPT's init) on the same batches from genzoo's tiny Shakespeare loader, evaluate the
whole validation split every 500 steps and once more when the budget is spent, and stop at
2000 steps or at the budget, whichever comes first. Each clock starts at its first training
step (compiles included), after imports and data loading. genzoo runs as `make demo` does,
through the CLI, with `--set train.max_seconds=S`; PyTorch runs in this process (with the
malloc settings genzoo's trainer applies to this model, which speed PyTorch up too). Prints a
table and writes benchmarks/results/demo_race.json. Needs torch and the data ($GENZOO_DATA_DIR).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
import torch.nn.functional as F
import torch_gpt
from common import write_report

from genzoo import data as data_lib
from genzoo import experiment, host_memory, optim
from genzoo import metrics as metrics_lib

EXPERIMENT, VARIANT = "gpt_shakespeare_char", "cpu"


def genzoo_run(seconds: float, seed: int) -> dict:
    """The demo's own command with a time budget; its figures from metrics.jsonl."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(Path(sys.executable).with_name("genzoo")), "train", EXPERIMENT, "--variant",
               VARIANT, "--workdir", f"{tmp}/run", "--set", f"train.max_seconds={seconds}",
               "--set", f"train.seed={seed}", "--set", "log.progress=false"]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        rows = metrics_lib.read(Path(tmp) / "run" / "metrics.jsonl")
    evals = [r for r in rows if "val/loss" in r]
    first = next(r["perf/first_step_seconds"] for r in rows if "perf/first_step_seconds" in r)
    return {"steps": evals[-1]["step"], "val_loss": evals[-1]["val/loss"],
            "first_step_s": first, "process_wall_s": wall,
            "curve": [(r["step"], r["val/loss"]) for r in evals]}  # fmt: skip


def nanogpt_init(model: torch.nn.Module, num_layers: int) -> None:
    """GPT-2's init, as nanoGPT and genzoo use it: N(0, 0.02), residual projections scaled."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.zeros_(p)
        elif "ln" in name:
            torch.nn.init.ones_(p)
        else:
            std = (
                0.02 / math.sqrt(2 * num_layers)
                if name.endswith(("proj.weight", "out.weight"))
                else 0.02
            )
            torch.nn.init.normal_(p, 0.0, std)


@torch.no_grad()
def torch_eval(model, data, vocab: int) -> float:
    model.eval()
    total = count = 0.0
    for b in data.eval_batches("validation", 16):
        logits = model(torch.from_numpy(b["inputs"]).long())
        targets = torch.from_numpy(b["targets"]).long().reshape(-1)
        nll = F.cross_entropy(logits.reshape(-1, vocab).float(), targets, reduction="none")
        mask = torch.from_numpy(b["mask"]).reshape(-1)
        total += float((nll * mask).sum())
        count += float(mask.sum())
    model.train()
    return total / count


def torch_run(seconds: float, seed: int) -> dict:
    cfg = experiment.load(EXPERIMENT, VARIANT, [f"train.seed={seed}"])
    cfg.optim.decay_steps = cfg.train.steps
    data = data_lib.load(cfg.data)
    V, m, o = data.tokenizer.vocab_size, cfg.model, cfg.optim
    host_memory.reuse_large_blocks(0)  # what genzoo's trainer does for this model's step
    torch.manual_seed(cfg.train.seed)
    model = torch_gpt.GPT(torch_gpt.Shape(m.num_layers, m.width, m.num_heads, m.block_size, V))
    nanogpt_init(model, m.num_layers)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)  # fmt: skip
    # genzoo's own schedule (warmup, cosine decay), tabulated once for every step.
    lrs = np.asarray(jax.vmap(optim.schedule(o))(np.arange(cfg.train.steps)))
    batches = data.train_iterator(cfg.train.batch_size, cfg.train.seed)
    curve, step, first = [], 0, None
    t0 = time.perf_counter()
    while step < cfg.train.steps:
        b = next(batches)
        for group in opt.param_groups:
            group["lr"] = float(lrs[step])
        logits = model(torch.from_numpy(b["inputs"]).long())
        loss = F.cross_entropy(
            logits.reshape(-1, V), torch.from_numpy(b["targets"]).long().reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
        opt.step()
        step += 1
        first = first or time.perf_counter() - t0
        out_of_time = time.perf_counter() - t0 >= seconds
        if step % cfg.eval.every_steps == 0 or out_of_time or step == cfg.train.steps:
            curve.append((step, torch_eval(model, data, V)))
        if out_of_time:
            break
    return {"steps": step, "val_loss": curve[-1][1], "first_step_s": first, "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument(
        "--seeds",
        default="1337",
        help="comma-separated: one race per seed (the "
        "seed draws both sides' weights and the batch order they share)",
    )
    p.add_argument("--out", default="benchmarks/results/demo_race.json")
    args = p.parse_args()
    os.environ.setdefault("GENZOO_DATA_DIR", str(Path(__file__).parents[1] / "../shared/data"))
    seeds = [int(s) for s in args.seeds.split(",")]
    races = {seed: {"genzoo": genzoo_run(args.seconds, seed),
                    "pytorch": torch_run(args.seconds, seed)} for seed in seeds}  # fmt: skip
    print(f"{args.seconds:.0f} s each on {metrics_lib.cpu_info().get('model', '?')}")
    print("{:6} {:8} {:>6} {:>9} {:>11}".format("seed", "", "steps", "val loss", "1st step s"))
    for seed, rows in races.items():
        for name, r in rows.items():
            print(f"{seed:<6} {name:8} {r['steps']:>6} {r['val_loss']:>9.4f} "
                  f"{r['first_step_s']:>11.2f}")  # fmt: skip
    mean = {name: float(np.mean([rows[name]["val_loss"] for rows in races.values()]))
            for name in ("genzoo", "pytorch")}  # fmt: skip
    winner = min(mean, key=mean.get)
    print("mean val loss: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items())
          + f" over {len(seeds)} seed(s); better model: {winner}")  # fmt: skip
    first = races[seeds[0]]  # the single-seed report's shape, as before
    cpu = {**metrics_lib.cpu_info(), "torch_threads": torch.get_num_threads()}
    write_report(args.out, {"cpu": cpu,
                            "seconds": args.seconds, "winner": winner, **first,
                            "seeds": {str(k): v for k, v in races.items()},
                            "mean_val_loss": mean})  # fmt: skip


if __name__ == "__main__":
    main()

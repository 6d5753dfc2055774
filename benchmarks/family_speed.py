"""The same training step timed for every experiment, so a regression in any family shows.

    .venv/bin/python benchmarks/family_speed.py [--steps 10] [--only gpt_shakespeare_char,...]

The median of `--steps` steps, each timed alone (after a first, compiling, step and one more).
Each experiment's `cpu` variant (its default config where it has none), real data from
$GENZOO_DATA_DIR (or the package), one device. Experiments that start from trained runs
(DALL·E's tokenizer and CLIP, a fine-tune's pretrained model) use the runs their config names
when they exist here; otherwise (unless `--no-build`) `genzoo chain`'s links are trained for one
step each in a scratch folder: a step's time depends on the runs' shapes, not on how well they
trained. Experiments that still cannot run here (WMT14, a token corpus) are listed as skipped.
Prints one table
(examples/s, tokens/s where the data has tokens, MFU where the family counts FLOPs, first
step, memory: the device's peak where it reports one, else XLA's plan for the step, marked *)
and writes benchmarks/results/family_speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from common import write_report

from genzoo import chain, experiment, metrics, models, requires, workdir
from genzoo import data as data_lib
from genzoo.checkpoint import saved_steps
from genzoo.errors import UserError
from genzoo.models.protocols import CountsFlops
from genzoo.trainer import Trainer


def _variant(name: str) -> str | None:
    return "cpu" if "cpu" in experiment.variants(name) else None


def runs_folder(name: str, scratch: Path | None) -> Path:
    """Where `name`'s linked runs are: here when each has a checkpoint (or without `scratch`),
    else `scratch`, after training the missing ones there for one step each."""
    links = chain.plan(name, _variant(name))[:-1]
    if scratch is None or all(saved_steps(Path(path)) for _, _, path in links):
        return Path.cwd()
    genzoo = Path(sys.executable).with_name("genzoo")
    for exp, var, path in links:
        if saved_steps(scratch / path):
            continue
        print(f"{'':26} (training {path} for one step in a scratch folder)", flush=True)
        subprocess.run([str(genzoo), "train", exp, *(["--variant", var] if var else []),
                        "--workdir", path, "--set", "train.steps=1", "--set", "eval.every_steps=0",
                        "--set", "log.progress=false"], cwd=scratch, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    return scratch


def measure(name: str, steps: int) -> dict:
    variant = _variant(name)
    cfg = experiment.load(name, variant, ["log.progress=false"])
    family = models.get(cfg.model.family)
    deps = {}
    if requires.declared(family):
        cfg.model.requires = requires.pin(family, cfg.model.get("requires"))
        deps = requires.open_all(cfg.model.requires)
    data = workdir.with_deps(family, data_lib.load(cfg.data), deps)
    frozen = workdir.resolve(cfg, data)
    trainer = Trainer(frozen, devices=jax.devices()[:1], deps=deps)
    batches = data.train_iterator(frozen.train.batch_size, 0)
    state = trainer.init_state()
    t0 = time.perf_counter()
    state, m = trainer.step(state, next(batches))
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    state, m = trainer.step(state, next(batches))
    jax.block_until_ready(m)
    times = []  # each step alone, the median kept: a 2-core VM's neighbours move the mean ~20%
    for _ in range(steps):
        batch = next(batches)
        t0 = time.perf_counter()
        state, m = trainer.step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    B = frozen.train.batch_size
    row = {"experiment": name, "variant": variant or "default", "family": cfg.model.family,
           "batch": B, "step_s": step_s, "first_step_s": first,
           "examples_per_s": B / step_s}  # fmt: skip
    tokens = getattr(data, "tokens_per_example", None)
    if tokens:
        row["tokens_per_s"] = B * tokens / step_s
    if isinstance(family, CountsFlops):
        flops = family.flops_per_example(frozen.model, data.example_shapes)
        peak, _ = metrics.peak_flops(0.0, frozen.model.get("dtype", "float32"))
        row["mfu"] = B * flops / step_s / peak
    row["peak_memory_gib"], row["memory_from"] = step_memory(trainer)
    return row


def step_memory(trainer) -> tuple[float | None, str]:
    """GiB: the device's peak where it reports one (GPU, TPU), else what XLA planned for the
    train step (CPU): its arguments, the outputs not written over them, and temporaries."""
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("peak_bytes_in_use"):
        return stats["peak_bytes_in_use"] / 2**30, "device peak"
    try:
        a = trainer.step_program.compiled.memory_analysis()
        planned = (a.argument_size_in_bytes + a.output_size_in_bytes - a.alias_size_in_bytes
                   + a.temp_size_in_bytes)  # fmt: skip
    except (AttributeError, NotImplementedError, TypeError):  # no analysis on this backend
        return None, "-"
    return planned / 2**30, "XLA plan"


def measure_all(names: list[str], steps: int, scratch: Path | None) -> list[dict]:
    """One row per experiment that runs here, printed as it comes; a line for each skipped."""
    header = ("experiment", "variant", "batch", "step ms", "examples/s", "tokens/s", "MFU",
              "1st step s", "memory GiB")  # fmt: skip
    print("{:26} {:8} {:>5} {:>9} {:>10} {:>10} {:>6} {:>10} {:>11}".format(*header),
          flush=True)  # fmt: skip
    rows = []
    for name in names:
        try:
            with contextlib.chdir(runs_folder(name, scratch)):
                r = measure(name, steps)
        except UserError as e:  # data or a run this machine lacks: say so, keep the table
            print(f"{name:26} skipped: {e}"[:160], flush=True)
            continue
        except subprocess.CalledProcessError as e:
            print(f"{name:26} skipped: building a linked run failed: {e}"[:160], flush=True)
            continue
        rows.append(r)
        tok = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        gib = r["peak_memory_gib"]
        planned = "*" if r["memory_from"] == "XLA plan" else ""
        memory = "-" if gib is None else f"{gib:.2f}{planned}"
        cells = (name, r["variant"], r["batch"], r["step_s"] * 1e3, r["examples_per_s"], tok, mfu,
                 r["first_step_s"], memory)  # fmt: skip
        print("{:26} {:8} {:>5} {:>9.1f} {:>10.1f} {:>10} {:>6} {:>10.1f} {:>11}".format(*cells),
              flush=True)  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--only", default="")
    p.add_argument("--out", default="benchmarks/results/family_speed.json")
    p.add_argument(
        "--no-build",
        action="store_true",
        help="skip experiments whose linked runs do not exist, rather than build them",
    )
    args = p.parse_args()
    out = Path(args.out).absolute()
    if os.environ.get("GENZOO_DATA_DIR"):  # read from the scratch folder too
        os.environ["GENZOO_DATA_DIR"] = str(Path(os.environ["GENZOO_DATA_DIR"]).absolute())
    names = args.only.split(",") if args.only else [r[0] for r in experiment.list_experiments()]
    with tempfile.TemporaryDirectory() as scratch:  # the one-step linked runs, removed after
        rows = measure_all(names, args.steps, None if args.no_build else Path(scratch))
    write_report(out, {"device": jax.devices()[0].device_kind, "rows": rows})


if __name__ == "__main__":
    main()

"""Wall time of one training command, phase by phase, under a few compile settings.

    python benchmarks/char_wall.py                      # the GPU target: bf16 char GPT < 30 s
    python benchmarks/char_wall.py --variant smoke --runs default,second   # a CPU smoke run

Each run is `genzoo -v train EXPERIMENT --set ...` in a fresh process, workdir and compile
cache (`second` reuses the first run's cache and its steps: the same command launched again,
which loads its stored executables rather than tracing). From its log: when the
initial state, the compiled train and eval steps and the first training step were ready; from
metrics.jsonl: the first step (compile included), the median step and the last validation
loss; from XLA's own timers, its longest compile phases (`xla_timers`). The first run trains
`--steps`, the others `--probe-steps`. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_report

# name: (environment, overrides) on top of the base command.
RUNS = {
    "default": ({}, []),
    "second": ({}, []),  # the first run's command and compile cache: a second launch
    "pallas": ({"GENZOO_ATTENTION": "pallas"}, []),  # layers/flash.py: dropout in the kernel
    "threefry_kernel": ({"GENZOO_THREEFRY": "kernel"}, []),
    "rbg": ({}, ["train.rng_impl=rbg"]),
    "no_autotune": ({"XLA_FLAGS": "--xla_gpu_autotune_level=0"}, []),
    "no_triton_gemm": ({"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"}, []),
    "no_dropout": ({}, ["model.dropout=0.0"]),
    "scan": ({}, ["model.scan_layers=true"]),  # one lax.scan over the blocks: one compiled block
    "blocks1": ({"GENZOO_ATTENTION_BLOCKS": "1"}, []),  # one attention block, not 4
    "blocks1_no_autotune": (
        {"GENZOO_ATTENTION_BLOCKS": "1", "XLA_FLAGS": "--xla_gpu_autotune_level=0"},
        [],
    ),
    "manual_grad": ({"GENZOO_ATTENTION_GRAD": "manual"}, []),  # attention's hand-written backward
    "autodiff_grad": ({"GENZOO_ATTENTION_GRAD": "autodiff"}, []),  # CPU's A/B: XLA's autodiff
    "serial_start": ({"GENZOO_OVERLAP": "0"}, []),  # init, then the step's compile
    "overlap_start": ({"GENZOO_OVERLAP": "1"}, []),  # both at once (default with >= 4 cores)
    # glibc malloc with one arena (what CPU runs get; GPU runs got it until 2026-11-28): the
    # suspect for the H200's ~3.6x slower compiles (genzoo/host_memory.py), and malloc untouched.
    "malloc_reuse": ({"GENZOO_MALLOC": "reuse"}, []),
    "malloc_default": ({"GENZOO_MALLOC": "default"}, []),
}
PHASES = {  # log line -> phase name (the time the line was written)
    "process 0 of": "data_ready_s",  # the train split's reader is built
    "initial state:": "init_ready_s",
    "train step:": "step_compiled_s",
    "eval step:": "eval_compiled_s",
    "training from step": "training_from_s",
}
LINE = re.compile(r"^\s*(\d+) ms  (.*)$")
# XLA's own timers (XLA_SCOPED_LOGGING_TIMER, VLOG 1 of its compiler drivers): where a
# compile's seconds go (HLO passes with GEMM autotuning, LLVM, ptxas), on GPU and CPU alike.
XLA_TIMERS = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "gpu_compiler=1,cpu_compiler=1"}
TIMER = re.compile(r"\] (.+?) time: ([\d.]+) (us|ms|s|min|h) ")
UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def xla_timers(lines, most: int = 12, at_least: float = 0.1) -> dict[str, float]:
    """The longest of XLA's timed compile phases in `lines`, seconds by label (a label seen
    again, e.g. per program, gets `#2`...)."""
    found = {}
    for m in filter(None, map(TIMER.search, lines)):
        seconds = float(m[2]) * UNIT[m[3]]
        if seconds >= at_least:
            label, n = m[1], 1
            while label in found:
                n += 1
                label = f"{m[1]} #{n}"
            found[label] = round(seconds, 3)
    return dict(sorted(found.items(), key=lambda kv: -kv[1])[:most])


def run(name: str, args, steps: int, work: Path, cache: Path, like: str) -> dict:
    env_extra, overrides = RUNS[like]
    env = {**os.environ, **XLA_TIMERS, **env_extra, "JAX_COMPILATION_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "genzoo.cli", "-v", "train", args.experiment, "--workdir",
           str(work), "--set", f"train.steps={steps}", "--set", "log.progress=false"]  # fmt: skip
    cmd += ["--variant", args.variant] if args.variant else []
    for o in [*args.set, *overrides]:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    row = {"wall_s": time.perf_counter() - t0, "rc": out.returncode, "steps": steps}
    # The phase lines (and warnings) beside the JSON: what a surprise needs explaining.
    log = Path(args.out).with_name(f"{Path(args.out).stem}_{work.name}_{name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    kept = [x for x in out.stderr.splitlines() if LINE.match(x) or "WARN" in x or TIMER.search(x)]
    if out.returncode:  # a failure's traceback too (a GPU session is too short to rerun it)
        kept += ["--- stderr tail ---", *out.stderr.splitlines()[-80:]]
    log.write_text("\n".join(kept))
    if out.returncode:
        row["error"] = out.stderr.strip().splitlines()[-1:] or ["?"]
    evals, saves = [], []
    for line in out.stderr.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        ms, text = int(m[1]), m[2]
        row.setdefault("first_log_s", ms / 1e3)  # imports and the backend are up
        for key, phase in PHASES.items():
            if text.startswith(key):
                row[phase] = ms / 1e3
        if text.startswith(("train step:", "eval step:", "initial state: t", "initial state: l")):
            kind = {"t": "step", "e": "eval", "i": "init"}[text[0]]  # trace/compile, or load
            for phase, seconds in re.findall(r"(trace|compile|load) ([\d.]+) s", text):
                row[f"{kind}_{phase}_s"] = float(seconds)
        if text.startswith("evaluation at step"):
            evals.append(float(text.rsplit(" ", 2)[-2]))
            row.setdefault("first_eval_done_s", ms / 1e3)  # after any wait for its compile
        if text.startswith("checkpoint "):
            saves.append(float(text.split(": ")[1].split()[0]))
    row.update(evals_s=sum(evals), num_evals=len(evals), saves_s=sum(saves),
               xla_timers=xla_timers(out.stderr.splitlines()))  # fmt: skip
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (work / "metrics.jsonl").is_file() else []  # fmt: skip
    steps_s = [r["perf/step_seconds"] for r in rows if "perf/step_seconds" in r]
    first = [r["perf/first_step_seconds"] for r in rows if "perf/first_step_seconds" in r]
    val = [r["val/loss"] for r in rows if "val/loss" in r]
    row.update(first_step_s=first[0] if first else None,
               step_ms=1e3 * statistics.median(steps_s) if steps_s else None,
               val_loss=val[-1] if val else None)  # fmt: skip
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--experiment", default="gpt_shakespeare_char")
    p.add_argument("--variant", default=None)
    p.add_argument("--set", action="append", default=None, help="base overrides")
    p.add_argument("--runs", default="default,second,no_autotune,no_dropout")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--probe-steps", type=int, default=300)
    p.add_argument("--out", default="benchmarks/results/char_wall.json")
    args = p.parse_args()
    if args.set is None:
        args.set = [] if args.variant else ["model.dtype=bfloat16"]
    names = [n for n in args.runs.split(",") if n]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        sys.exit(f"char_wall: unknown runs {unknown}; choose from {sorted(RUNS)}")
    import jax

    report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
              "command": f"genzoo train {args.experiment} "
              + " ".join(f"--set {o}" for o in args.set), "runs": {}}  # fmt: skip
    cols = ["wall_s", "first_step_s", "first_log_s", "data_ready_s", "init_compile_s",
            "init_ready_s", "step_compiled_s", "step_trace_s", "step_compile_s", "step_load_s",
            "training_from_s", "eval_compiled_s", "first_eval_done_s", "step_ms", "evals_s",
            "saves_s", "val_loss"]  # fmt: skip
    print(f"{'run':14s} " + " ".join(f"{c:>15s}" for c in cols), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root, first_cache = Path(tmp), None
        for i, name in enumerate(names):
            cache = first_cache if name == "second" and first_cache else root / f"cache_{i}"
            first_cache = first_cache or cache
            # A second launch is the same command: other steps would be another LR schedule,
            # another program (what made the H200's "second launch" recompile its step).
            steps = args.steps if i == 0 or name == "second" else args.probe_steps
            like = names[0] if name == "second" else name  # a second launch of the first
            row = run(name, args, steps, root / f"run_{i}", cache, like)
            report["runs"][name if name not in report["runs"] else f"{name}_{i}"] = row
            cells = [f"{row[c]:15.3f}" if isinstance(row.get(c), float) else f"{'-':>15s}"
                     for c in cols]  # fmt: skip
            print(f"{name:14s} " + " ".join(cells) + (f"  {row['error']}" if row["rc"] else ""),
                  flush=True)  # fmt: skip
            for label, seconds in list(row["xla_timers"].items())[:4]:  # where compiles went
                print(f"{'':14s}   xla {seconds:8.2f} s  {label}", flush=True)
            write_report(args.out, report)  # after every run: a timeout keeps what finished


if __name__ == "__main__":
    main()

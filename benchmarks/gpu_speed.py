"""genzoo's GPT against the same model in PyTorch eager and torch.compile, on one GPU.

    python benchmarks/gpu_speed.py [--steps 20] [--only baby_fp32,baby_bf16,gpt2_bf16]

Rows: nanoGPT's baby GPT (6x384, ctx 256, vocab 65, batch 64) in float32 (TF32 matmuls on
both sides) and with bf16 compute (float32 master weights; autocast for torch), and the
GPT-2 124M shape (12x768, ctx 1024, vocab 50304, batch 16) in bf16. Random tokens, AdamW,
gradient clipping, no dropout. MFU divides by the vendor's dense peak for the compute
dtype (genzoo.metrics.peak_flops). Prints a table; writes benchmarks/results/gpu_speed.json
with tokens/s, MFU, first-step (compile) seconds, peak memory and (genzoo) the step's XLA
temporaries. `--genzoo-extras chunk128,remat_dots,pallas,scan` adds genzoo rows with those
memory switches, the Pallas flash kernels or scanned blocks; `--only tiny_fp32 --impls genzoo`
is a dry run without a GPU.
"""

from __future__ import annotations

import argparse
import os
import time
from unittest import mock

import jax
import torch
import torch_gpt
from common import char_gpt_config, time_train_steps, write_report

from genzoo import metrics

ROWS = {  # name: (shape, batch, bf16 compute)
    "baby_fp32": (torch_gpt.Shape(6, 384, 6, 256, 65), 64, False),
    "baby_bf16": (torch_gpt.Shape(6, 384, 6, 256, 65), 64, True),
    "gpt2_bf16": (torch_gpt.Shape(12, 768, 12, 1024, 50304), 16, True),
    "tiny_fp32": (torch_gpt.Shape(2, 64, 2, 128, 65), 8, False),  # a dry run on any machine
}
# Extra genzoo rows: the same step with a memory switch or another attention kernel
# (--genzoo-extras chunk128,remat_dots,pallas): name -> (environment, overrides).
GENZOO_EXTRAS = {
    "chunk128": ({}, ["model.loss_chunk=128"]),
    "remat_dots": ({}, ["model.remat=dots"]),
    "scan": ({}, ["model.scan_layers=true"]),  # one compiled block: first step vs steps/s
    "remat_full": ({}, ["model.remat=full"]),
    "pallas": ({"GENZOO_ATTENTION": "pallas"}, []),  # layers/flash.py
}


def genzoo_row(shape, batch: int, bf16: bool, steps: int, env=None, extra=()) -> dict:
    overrides = [*extra, f"train.batch_size={batch}", "model.dropout=0.0",
                 f"model.num_layers={shape.num_layers}", f"model.width={shape.width}",
                 f"model.num_heads={shape.heads}", f"model.block_size={shape.context}",
                 f"data.seq_len={shape.context}",
                 f"model.dtype={'bfloat16' if bf16 else 'float32'}"]  # fmt: skip
    cfg = char_gpt_config(None, overrides, vocab=shape.vocab)
    with mock.patch.dict(os.environ, env or {}):  # read while the step is traced
        out = time_train_steps(cfg, steps, memory=True)
    stats = jax.devices()[0].memory_stats() or {}  # the process's peak so far (CPU: none)
    out["peak_memory_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30
    return out


def torch_row(shape, batch: int, bf16: bool, steps: int, compiled: bool) -> dict:
    cuda = torch.cuda.is_available()  # else the CPU: a dry run of the script, not a figure
    device, sync = ("cuda", torch.cuda.synchronize) if cuda else ("cpu", lambda: None)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = torch_gpt.GPT(shape).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, shape.vocab, (batch, shape.context), device=device)
    y = torch.randint(0, shape.vocab, (batch, shape.context), device=device)
    if compiled:
        model = torch.compile(model)
    step = torch_gpt.train_step_fn(model, opt, x, y, shape.vocab,
                                   torch.bfloat16 if bf16 else None)  # fmt: skip
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(2):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    out = {"first_step_s": first, "step_s": (time.perf_counter() - t0) / steps}
    out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--only", default="baby_fp32,baby_bf16,gpt2_bf16")
    p.add_argument("--impls", default="torch_eager,torch_compile,genzoo")
    p.add_argument("--genzoo-extras", default="", help=f"any of {','.join(GENZOO_EXTRAS)}")
    p.add_argument("--out", default="benchmarks/results/gpu_speed.json")
    args = p.parse_args()
    device = jax.devices()[0]
    report = {"device": device.device_kind, "torch": torch.__version__, "jax": jax.__version__,
              "rows": {}}  # fmt: skip
    header = ("row", "impl", "tok/s", "MFU", "1st step s", "peak GiB", "XLA temp", "vs compile")
    print("{:10} {:18} {:>11} {:>6} {:>10} {:>9} {:>9} {:>10}".format(*header), flush=True)
    for name in args.only.split(","):
        shape, batch, bf16 = ROWS[name]
        peak, source = metrics.known_peak(device, "bfloat16" if bf16 else "float32")
        tokens = batch * shape.context
        results = {}
        extras = [f"genzoo_{x}" for x in args.genzoo_extras.split(",") if x]
        for impl in [*args.impls.split(","), *extras]:
            try:
                if impl == "genzoo":
                    r = genzoo_row(shape, batch, bf16, args.steps)
                elif impl.startswith("genzoo_"):
                    env, extra = GENZOO_EXTRAS[impl.removeprefix("genzoo_")]
                    r = genzoo_row(shape, batch, bf16, args.steps, env, extra)
                else:
                    r = torch_row(shape, batch, bf16, args.steps, impl == "torch_compile")
            except Exception as e:  # noqa: BLE001 - one failed implementation keeps the table
                print(f"{name:10} {impl:14} failed: {type(e).__name__}: {e}"[:300], flush=True)
                continue
            r["tokens_per_s"] = tokens / r["step_s"]
            r["mfu"] = r["tokens_per_s"] * shape.flops_per_token(shape.context) / peak
            results[impl] = r
        ref = results.get("torch_compile", {}).get("tokens_per_s")
        for impl, r in results.items():
            r["ratio_vs_torch_compile"] = r["tokens_per_s"] / ref if ref else None
            cells = (name, impl, r["tokens_per_s"], r["mfu"], r["first_step_s"],
                     r["peak_memory_gib"], r.get("xla_temp_gib", float("nan")),
                     r["ratio_vs_torch_compile"] or float("nan"))  # fmt: skip
            print("{:10} {:18} {:>11.0f} {:>6.1%} {:>10.1f} {:>9.2f} {:>9.2f} {:>9.2f}x".format(
                *cells), flush=True)  # fmt: skip
        report["rows"][name] = {"peak_flops": peak, "peak_source": source, "batch": batch,
                                "shape": shape.__dict__, "bf16": bf16, **results}  # fmt: skip
        write_report(args.out, report)  # after every row: a device session's timeout keeps them


if __name__ == "__main__":
    main()

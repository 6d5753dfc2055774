"""genzoo's GPT against a PyTorch eager reference of the same model, measured in one run.

    .venv/bin/python benchmarks/gpt_speed.py [--shapes baby demo] [--rounds 16] [--train-steps 2]
        [--dropout 0.0]

Same model (nanoGPT's baby GPT: 6 layers, 6 heads, width 384, context 256, vocab 65),
same batch (16), float32, no dropout unless `--dropout` (nanoGPT trains the baby GPT with
0.2), on this CPU. Reports the fp32 matmul peak each library reaches,
training tokens/s (the two frameworks' steps take turns, `--rounds` of `--train-steps` steps,
after warm-up steps that last until genzoo's step page-faults no memory; the ratio is the
median of the rounds' ratios) and MFU against the best peak, first-step
(compile) time, and batch-1 greedy decode tokens/s with a KV cache (taking turns too, `--rounds`
rounds) and without one (one run each). Prints a table; writes
benchmarks/results/gpt_speed.json. Needs torch (`pip install torch==2.13.0`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch_gpt
from common import (
    char_gpt_config,
    interleaved,
    seconds_per_call,
    train_stepper,
    write_report,
)
from flax.linen import unbox

from genzoo import host_memory, metrics
from genzoo.models import gpt

V = 65  # tiny Shakespeare's characters
# name: (genzoo variant of gpt_shakespeare_char, torch shape, batch). "baby" is nanoGPT's baby
# GPT (6x384, ctx 256); "demo" is what `make demo` trains (4x128, ctx 128).
SHAPES = {
    "baby": (None, torch_gpt.Shape(6, 384, 6, 256, V), 16),
    "demo": ("cpu", torch_gpt.Shape(4, 128, 4, 128, V), 16),
}


# ---- the PyTorch reference (benchmarks/torch_gpt.py, eager) ---------------------------------


def torch_stepper(shape: str, dropout: float = 0.0):
    """PyTorch's train step after its first one: (first step seconds, one more step)."""
    _, s, B = SHAPES[shape]
    torch.manual_seed(0)
    model = torch_gpt.GPT(dataclasses.replace(s, dropout=dropout))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, V, (B, s.context))
    y = torch.randint(0, V, (B, s.context))
    step = torch_gpt.train_step_fn(model, opt, x, y, V)
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0, step


def torch_decoder(shape: str, new_tokens: int, cached: bool):
    """A call that greedily decodes `new_tokens` after a 1-token prompt (no grad)."""
    _, s, _ = SHAPES[shape]
    torch.manual_seed(0)
    model = torch_gpt.GPT(s).eval()
    idx = torch.zeros((1, 1), dtype=torch.long)

    @torch.no_grad()
    def run():
        if cached:
            caches = [[] for _ in range(s.num_layers)]
            logits = model(idx, caches, 0)
            for t in range(new_tokens):
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                logits = model(nxt, caches, t + 1)
            return nxt
        out = idx
        for _ in range(new_tokens):
            out = torch.cat([out, model(out)[:, -1].argmax(-1, keepdim=True)], 1)
        return out

    return run


# ---- genzoo ---------------------------------------------------------------------------------


def genzoo_config(shape: str, dropout: float = 0.0):
    variant, _, B = SHAPES[shape]
    return char_gpt_config(variant, [f"train.batch_size={B}", f"model.dropout={dropout}"])


@functools.partial(jax.jit, static_argnames=("cfg",))
def _uncached_decode(params, buffer_1xT, start, cfg):
    """Greedy decode recomputing the whole (causal, fixed-size) buffer for every token."""

    def body(t, buf):
        logits = gpt.logits(params, buf, cfg)
        return buf.at[0, t + 1].set(jnp.argmax(logits[0, t]).astype(jnp.int32))

    return jax.lax.fori_loop(start, buffer_1xT.shape[1] - 1, body, buffer_1xT)


def genzoo_decoder(shape: str, new_tokens: int, cached: bool):
    """A call that greedily decodes `new_tokens` after a 1-token prompt (compiled already)."""
    cfg = genzoo_config(shape).model
    params = jax.jit(lambda r: unbox(gpt.init(r, cfg)))(jax.random.PRNGKey(0))
    prompt = np.zeros((1, 1), np.int32)
    if cached:
        run = lambda: gpt.sample(params, jax.random.PRNGKey(0), cfg, prompt_BxP=prompt,
                                 max_new_tokens=new_tokens, temperature=0.0)  # fmt: skip
    else:
        buffer = jnp.zeros((1, new_tokens + 1), jnp.int32)
        run = lambda: _uncached_decode(params, buffer, 0, cfg)
    jax.block_until_ready(run())  # compile
    return run


def decode_speeds(shape: str, new_tokens: int, rounds: int) -> dict:
    """Batch-1 greedy decode tokens/s per framework. With the KV cache (the target) the two
    take turns for `rounds` rounds, ratio = median of the rounds' ratios; without it (only
    the cache's own speed-up reads it; genzoo's takes ~10 s at the baby shape) one run each."""
    cached = interleaved(
        {"genzoo": genzoo_decoder(shape, new_tokens, True),
         "pytorch": torch_decoder(shape, new_tokens, True)},
        rounds, 1,
    )  # fmt: skip
    out = {}
    for name, decoder in (("genzoo", genzoo_decoder), ("pytorch", torch_decoder)):
        uncached = seconds_per_call(decoder(shape, new_tokens, False), 1)
        out[name] = {
            "decode_cached_tokens_per_s": new_tokens / cached[name]["median_s"],
            "decode_cached_rounds_s": cached[name]["rounds_s"],
            "decode_uncached_tokens_per_s": new_tokens / uncached,
        }
    ratios = np.array(cached["pytorch"]["rounds_s"]) / np.array(cached["genzoo"]["rounds_s"])
    out["cached_decode_speedup_vs_pytorch"] = float(np.median(ratios))
    return out


def matmul_peaks(n: int = 2048) -> dict:
    a = np.ones((n, n), np.float32)
    ta = torch.from_numpy(a)
    best = {"xla": metrics.measure_matmul_peak(n)}
    for name, f in (("torch", lambda: ta @ ta), ("numpy", lambda: a @ a)):
        f()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        best[name] = 2 * n**3 / min(times)
    return best


def warm_up(genzoo_step, torch_step, most: int = 12) -> int:
    """Steps of both, taking turns, until one of genzoo's page-faults no memory (at most
    `most`). Sharing one heap with PyTorch, XLA's one large block of step temporaries finds
    the freed space split by PyTorch's tensors for the first few steps and is faulted in
    afresh (~200k minor faults, ~0.1 s); alone, or once the heap has grown, it is reused.
    Both frameworks get the same number of steps."""
    for n in range(1, most + 1):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(genzoo_step())
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        torch_step()
        if n >= 2 and faults == 0:
            return n
    return most


def train_both(shape: str, rounds: int, steps: int, dropout: float) -> dict:
    """Both train steps, taking turns (`common.interleaved`); per framework its first step
    and median step, and the median over rounds of PyTorch's step time over genzoo's."""
    with train_stepper(genzoo_config(shape, dropout)) as genzoo:
        torch_first, torch_step = torch_stepper(shape, dropout)
        warmup = warm_up(genzoo.step, torch_step)
        timed = interleaved({"genzoo": genzoo.step, "pytorch": torch_step}, rounds, steps)
    g, t = timed["genzoo"], timed["pytorch"]
    ratios = np.array(t["rounds_s"]) / np.array(g["rounds_s"])
    return {
        "warmup_steps": warmup,
        "genzoo": {"first_step_s": genzoo.first_step_s, "step_s": g["median_s"],
                   "rounds_step_s": g["rounds_s"]},
        "pytorch": {"first_step_s": torch_first, "step_s": t["median_s"],
                    "rounds_step_s": t["rounds_s"]},
        "train_speedup_vs_pytorch": float(np.median(ratios)),
    }  # fmt: skip


def measure(shape: str, rounds: int, train_steps: int, best_peak: float, dropout: float) -> dict:
    _, s, B = SHAPES[shape]
    new_tokens = s.context - 1  # after a 1-token prompt: the whole context
    flops_per_step = gpt.flops_per_example(genzoo_config(shape).model, {"inputs": (s.context,)})
    trained = train_both(shape, rounds, train_steps, dropout)
    decoded = decode_speeds(shape, new_tokens, rounds)
    rows = {}
    for name in ("genzoo", "pytorch"):
        t = trained[name]
        rows[name] = {
            **t,
            "train_tokens_per_s": B * s.context / t["step_s"],
            "mfu_vs_best_peak": flops_per_step * B / t["step_s"] / best_peak,
            **decoded[name],
        }
    g, t = rows["genzoo"], rows["pytorch"]
    rows["warmup_steps"] = trained["warmup_steps"]
    rows["ratios"] = {
        "train_speedup_vs_pytorch": trained["train_speedup_vs_pytorch"],
        "cached_decode_speedup_vs_pytorch": decoded["cached_decode_speedup_vs_pytorch"],
        "genzoo_cache_speedup": g["decode_cached_tokens_per_s"] / g["decode_uncached_tokens_per_s"],
        "pytorch_cache_speedup": t["decode_cached_tokens_per_s"]
        / t["decode_uncached_tokens_per_s"],
    }
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=16, help="turns each framework's training takes")
    p.add_argument("--train-steps", type=int, default=2, help="train steps per turn")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--dropout", type=float, default=0.0, help="training dropout, both sides")
    p.add_argument("--out", default="benchmarks/results/gpt_speed.json")
    args = p.parse_args()
    # The malloc settings genzoo's trainer applies to these shapes (their step temporaries
    # are under host_memory.block_limit() on the machines measured), for both sides.
    host_memory.reuse_large_blocks(0)
    peaks = matmul_peaks()
    best_peak = max(peaks.values())
    print(
        "fp32 matmul peak (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items())
    )
    report = {"cpu": {**metrics.cpu_info(), "torch_threads": torch.get_num_threads()},
              "dropout": args.dropout, "matmul_peaks": peaks, "shapes": {}}  # fmt: skip
    header = ("", "", "train tok/s", "MFU", "1st step s", "decode+cache", "decode no cache")
    print("{:6} {:8} {:>11} {:>6} {:>10} {:>12} {:>15}".format(*header))
    for shape in args.shapes:
        rows = measure(shape, args.rounds, args.train_steps, best_peak, args.dropout)
        report["shapes"][shape] = rows
        for name in ("genzoo", "pytorch"):
            r = rows[name]
            cells = (shape, name, r["train_tokens_per_s"], r["mfu_vs_best_peak"],
                     r["first_step_s"], r["decode_cached_tokens_per_s"],
                     r["decode_uncached_tokens_per_s"])  # fmt: skip
            print("{:6} {:8} {:>11.0f} {:>6.1%} {:>10.2f} {:>12.0f} {:>15.0f}".format(*cells))
        for k, v in rows["ratios"].items():
            print(f"  {shape} {k}: {v:.2f}x")
    write_report(args.out, report)


if __name__ == "__main__":
    main()

"""genzoo's GPT against a PyTorch eager reference of the same model, measured in one run.

    .venv/bin/python benchmarks/gpt_speed.py [--train-steps 5] [--new-tokens 255]

Same model (nanoGPT's baby GPT: 6 layers, 6 heads, width 384, context 256, vocab 65),
same batch (16), float32, on this CPU. Reports the fp32 matmul peak each library reaches,
training tokens/s and MFU against the best peak, first-step (compile) time, and batch-1
decode tokens/s with and without a KV cache. Prints a table; writes
benchmarks/results/gpt_speed.json. Needs torch (`pip install torch==2.13.0`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch_gpt
from common import char_gpt_config, cpu_info, time_train_steps
from flax.linen import unbox

from genzoo import metrics
from genzoo.models import gpt

L, D, H, N_LAYER, V, B = 256, 384, 6, 6, 65, 16


SHAPE = torch_gpt.Shape(N_LAYER, D, H, L, V)


# ---- the PyTorch reference (benchmarks/torch_gpt.py, eager) ---------------------------------


def torch_train(steps: int) -> dict:
    torch.manual_seed(0)
    model = torch_gpt.GPT(SHAPE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, V, (B, L))
    y = torch.randint(0, V, (B, L))
    step = torch_gpt.train_step_fn(model, opt, x, y, V)

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"first_step_s": first, "step_s": (time.perf_counter() - t0) / steps}


@torch.no_grad()
def torch_decode(new_tokens: int, cached: bool) -> float:
    torch.manual_seed(0)
    model = torch_gpt.GPT(SHAPE).eval()
    idx = torch.zeros((1, 1), dtype=torch.long)
    t0 = time.perf_counter()
    if cached:
        caches = [[] for _ in range(N_LAYER)]
        logits = model(idx, caches, 0)
        for t in range(new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            logits = model(nxt, caches, t + 1)
    else:
        for _ in range(new_tokens):
            nxt = model(idx)[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], 1)
    return new_tokens / (time.perf_counter() - t0)


# ---- genzoo ---------------------------------------------------------------------------------


def baby_config():
    return char_gpt_config(None, [f"train.batch_size={B}", "model.dropout=0.0"])


def genzoo_train(steps: int) -> dict:
    return time_train_steps(baby_config(), steps)


@jax.jit
def _uncached_decode(params, buffer_1xT, start):
    """Greedy decode recomputing the whole (causal, fixed-size) buffer for every token."""
    cfg = baby_config().model

    def body(t, buf):
        logits = gpt.logits(params, buf, cfg)
        return buf.at[0, t + 1].set(jnp.argmax(logits[0, t]).astype(jnp.int32))

    return jax.lax.fori_loop(start, buffer_1xT.shape[1] - 1, body, buffer_1xT)


def genzoo_decode(new_tokens: int, cached: bool) -> float:
    cfg = baby_config().model
    params = jax.jit(lambda r: unbox(gpt.init(r, cfg)))(jax.random.PRNGKey(0))
    prompt = np.zeros((1, 1), np.int32)
    if cached:
        run = lambda: gpt.sample(params, jax.random.PRNGKey(0), cfg, prompt_BxP=prompt,
                                 max_new_tokens=new_tokens, temperature=0.0)  # fmt: skip
    else:
        buffer = jnp.zeros((1, new_tokens + 1), jnp.int32)
        run = lambda: _uncached_decode(params, buffer, 0)
    jax.block_until_ready(run())  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    return new_tokens / (time.perf_counter() - t0)


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=L - 1, help="after a 1-token prompt")
    p.add_argument("--out", default="benchmarks/results/gpt_speed.json")
    args = p.parse_args()
    peaks = matmul_peaks()
    best_peak = max(peaks.values())
    flops_per_step = gpt.flops_per_example(baby_config().model, {"inputs": (L,)}) * B
    rows = {}
    for name, train, decode in (
        ("genzoo", genzoo_train, genzoo_decode),
        ("pytorch", torch_train, torch_decode),
    ):
        t = train(args.train_steps)
        rows[name] = {
            **t,
            "train_tokens_per_s": B * L / t["step_s"],
            "mfu_vs_best_peak": flops_per_step / t["step_s"] / best_peak,
            "decode_cached_tokens_per_s": decode(args.new_tokens, True),
            "decode_uncached_tokens_per_s": decode(args.new_tokens, False),
        }
    g, t = rows["genzoo"], rows["pytorch"]
    ratios = {
        "train_speedup_vs_pytorch": g["train_tokens_per_s"] / t["train_tokens_per_s"],
        "cached_decode_speedup_vs_pytorch": g["decode_cached_tokens_per_s"]
        / t["decode_cached_tokens_per_s"],
        "genzoo_cache_speedup": g["decode_cached_tokens_per_s"] / g["decode_uncached_tokens_per_s"],
        "pytorch_cache_speedup": t["decode_cached_tokens_per_s"]
        / t["decode_uncached_tokens_per_s"],
    }
    print(
        "fp32 matmul peak (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items())
    )
    header = ("", "train tok/s", "MFU", "1st step s", "decode+cache", "decode no cache")
    print("{:8} {:>11} {:>6} {:>10} {:>12} {:>15}".format(*header))
    for name, r in rows.items():
        cells = (name, r["train_tokens_per_s"], r["mfu_vs_best_peak"], r["first_step_s"])
        cells += (r["decode_cached_tokens_per_s"], r["decode_uncached_tokens_per_s"])
        print("{:8} {:>11.0f} {:>6.1%} {:>10.2f} {:>12.0f} {:>15.0f}".format(*cells))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "cpu": {**cpu_info(), "torch_threads": torch.get_num_threads()},
        "matmul_peaks": peaks,
        "rows": rows,
        "ratios": ratios,
    }
    report.update(batch=B, seq_len=L, new_tokens=args.new_tokens)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

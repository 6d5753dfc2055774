"""int8 operands against float32 in cached decoding, and what int8 does to a model, in one run.

    .venv/bin/python benchmarks/int8_decode.py [--run runs/demo] [--batches 1,8]

Speed: greedy decoding (a 1-token prompt, 32 new tokens, KV cache) of one random-weight model
of GPT-2 124M's shape (no GPT-2 checkpoint is offline here) as float32 and as the int8 copy
`genzoo quantize` writes, sampled as `genzoo.load` samples it (int8 operands where
`genzoo.layers.quant` uses them); alternating, best of 4 per contender.
Quality, with --run (a trained char GPT workdir): validation loss of the float run, of its
int8 weights dequantized (what `genzoo eval` of the copy reports) and with int8 operands in
every matmul, weights and activations alike (what sampling computes in its decode steps).
Prints a table and writes benchmarks/results/int8_decode.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from common import write_report

from genzoo import experiment, quantize, workdir
from genzoo.layers import quant
from genzoo.metrics import cpu_info
from genzoo.models import gpt

NEW_TOKENS = 32


def gpt2_shape() -> ml_collections.FrozenConfigDict:
    c = experiment.load("gpt_shakespeare_char").model
    c.update(num_layers=12, num_heads=12, width=768, block_size=1024, vocab_size=50257,
             gelu_approximate=True, dropout=0.0)  # fmt: skip
    return ml_collections.FrozenConfigDict(c)


def decode_speed(cfg, batches) -> list[dict]:
    params = jax.jit(lambda r: nn.unbox(gpt.init(r, cfg)))(jax.random.PRNGKey(0))
    tensors, _ = quantize.quantize_params(params)
    abstract = jax.eval_shape(lambda: params)
    floats = quantize.dequantize(tensors, abstract)
    trees = {"float32": jax.device_put(floats),
             "int8": jax.device_put(quantize.int8_params(tensors, floats))}  # fmt: skip
    rows = []
    for B in batches:
        prompt = np.zeros((B, 1), np.int32)

        def greedy(params, prompt=prompt):
            return lambda: np.asarray(gpt.sample(params, jax.random.PRNGKey(0), cfg,
                prompt_BxP=prompt, max_new_tokens=NEW_TOKENS, temperature=0.0))  # fmt: skip

        run = {name: greedy(p) for name, p in trees.items()}
        tokens = {name: f() for name, f in run.items()}  # compiles
        seconds = {name: [] for name in run}
        for _ in range(4):
            for name, f in run.items():
                t0 = time.perf_counter()
                f()
                seconds[name].append(time.perf_counter() - t0)
        speed = {name: B * NEW_TOKENS / min(s) for name, s in seconds.items()}
        same = float(np.mean(tokens["int8"] == tokens["float32"]))
        rows.append({"batch": B, "float32_tokens_per_s": speed["float32"],
                     "int8_tokens_per_s": speed["int8"], "ratio": speed["int8"] / speed["float32"],
                     "greedy_tokens_equal": same})  # fmt: skip
    return rows


def quality(path: Path) -> dict:
    """Validation loss: float run, int8 weights dequantized, int8 operands in every matmul."""
    run = workdir.open_run(path)
    tensors, _ = quantize.quantize_params(run.params)
    abstract = jax.eval_shape(lambda: run.params)
    out = {"float32": run.trainer.evaluate(run.params, run.data, max_batches=-1)["loss"]}
    floats = quantize.dequantize(tensors, abstract)
    deq = jax.device_put(floats, run.trainer.state_shardings.params)
    out["int8_weights"] = run.trainer.evaluate(deq, run.data, max_batches=-1)["loss"]
    # Every weight int8 and every product int8 x int8, whatever its size and row count.
    quant.MIN_INT8_SIZE, quant.MAX_INT8_ROWS = 0, 1 << 30
    int8 = jax.device_put(quantize.int8_params(tensors, floats))
    sums = jax.jit(lambda p, b: gpt.eval_sums(p, b, None, run.cfg.model))
    totals: dict = {}
    for batch in run.data.eval_batches(run.cfg.eval.split, run.cfg.eval.batch_size, -1):
        for k, v in jax.device_get(sums(int8, batch)).items():
            totals[k] = totals.get(k, 0.0) + np.float64(v)
    out["int8_operands"] = gpt.eval_summary(totals, run.data.meta(run.cfg.eval.split))["loss"]
    return {k: float(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained char GPT workdir for the quality rows")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--out", default="benchmarks/results/int8_decode.json")
    args = p.parse_args()
    rows = decode_speed(gpt2_shape(), [int(b) for b in args.batches.split(",")])
    print(f"{'GPT-2 124M shape, greedy':>26} {'float32 tok/s':>13} {'int8 tok/s':>10} {'ratio':>6}")
    for r in rows:
        print(f"{'batch ' + str(r['batch']):>26} {r['float32_tokens_per_s']:13.1f} "
              f"{r['int8_tokens_per_s']:10.1f} {r['ratio']:6.2f}")  # fmt: skip
    report = {"cpu": cpu_info(), "backend": jax.default_backend(), "new_tokens": NEW_TOKENS,
              "decode": rows}  # fmt: skip
    if args.run:
        report["quality"] = q = quality(args.run)
        print(f"{args.run}: validation loss float32 {q['float32']:.4f}, int8 weights "
              f"{q['int8_weights']:.4f}, int8 operands {q['int8_operands']:.4f}")  # fmt: skip
    write_report(args.out, report)


if __name__ == "__main__":
    main()

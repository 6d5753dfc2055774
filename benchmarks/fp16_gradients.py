"""How much of a GPT's gradient survives reduced-precision compute, against float32.

    .venv/bin/python benchmarks/fp16_gradients.py [--shapes 16x64x65,16x256x4096,8x512x16384]

Each shape is batch x context x vocabulary for the char GPT's 4x128 model with random weights
and tokens: the gradient of one step's mean loss under float16 compute without loss scaling,
with genzoo's initial loss scale (2**15, `train.loss_scale=auto`), and under bfloat16, each
compared with float32's (relative L2 error per parameter, median and worst; the largest share
of a parameter's entries flushed to zero that float32 had not). The per-logit cotangent of a
mean loss is about 1 / (batch * context * vocabulary): below float16's 6e-8 it vanishes.
Prints a table and writes benchmarks/results/fp16_gradients.json.
"""

from __future__ import annotations

import argparse
import datetime

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from common import write_report

from genzoo import experiment, models
from genzoo import train_step as ts
from genzoo.metrics import cpu_info

CASES = {"float16": None, "float16, loss scale 2**15": ts.SCALE_INIT, "bfloat16": None}


def model_config(context: int, vocab: int, dtype: str):
    c = experiment.load("gpt_shakespeare_char", "cpu").model
    c.update(block_size=context, vocab_size=vocab, dtype=dtype, dropout=0.0)
    return ml_collections.FrozenConfigDict(c)


def gradients(family, cfg, params, batch, scale):
    scale = None if scale is None else jnp.float32(scale)
    fn = jax.jit(
        lambda p: ts._loss_and_grads(family, cfg, p, batch, jax.random.PRNGKey(2), 0, None, scale)[
            1
        ]
    )
    return [np.asarray(g, np.float64) for g in jax.tree.leaves(fn(params))]


def compare(got, want) -> dict:
    errors = [
        np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)
        for g, w in zip(got, want, strict=True)
    ]
    flushed = [np.mean((g == 0) & (w != 0)) for g, w in zip(got, want, strict=True)]
    return {"median_rel_err": float(np.median(errors)), "max_rel_err": float(max(errors)),
            "max_flushed": float(max(flushed))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="16x64x65,16x256x4096,8x512x16384")
    parser.add_argument("--out", default="benchmarks/results/fp16_gradients.json")
    args = parser.parse_args()
    family, rows = models.get("gpt"), []
    for shape in args.shapes.split(","):
        b, context, vocab = map(int, shape.split("x"))
        params = nn.unbox(
            family.init(jax.random.PRNGKey(0), model_config(context, vocab, "float32"))
        )
        tokens = jax.random.randint(jax.random.PRNGKey(1), (b, context + 1), 0, vocab)
        batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                 "mask": jnp.ones((b, context), jnp.float32)}  # fmt: skip
        want = gradients(family, model_config(context, vocab, "float32"), params, batch, None)
        for case, scale in CASES.items():
            cfg = model_config(context, vocab, case.split(",")[0])
            got = gradients(family, cfg, params, batch, scale)
            rows.append({"shape": shape, "compute": case, **compare(got, want)})
            r = rows[-1]
            print(f"{shape:>14}  {case:<26} median {r['median_rel_err']:.2e}  "
                  f"worst {r['max_rel_err']:.2e}  flushed {r['max_flushed']:.1%}")  # fmt: skip
    write_report(args.out, {"date": datetime.date.today().isoformat(), "cpu": cpu_info(),
                            "model": "gpt_shakespeare_char cpu (4x128)", "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()

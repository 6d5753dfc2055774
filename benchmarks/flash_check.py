"""The Pallas flash kernels against the XLA path (and cuDNN) on one device, attention alone.

    python benchmarks/flash_check.py            # on a GPU: `gpu_run.sh`'s `flash` step (~1-2 min)
    python benchmarks/flash_check.py --small    # anywhere (CPU: interpreted), checks the script

Per case (the char GPT's attention in bf16 and fp32, GPT-2 124M's, BERT's padded rows; with
and without dropout): how far `layers.flash`'s outputs and q/k/v gradients are from the XLA
path's (`layers.attend`, what `Attention` runs otherwise; relative to its largest value: the
masks are the same, so only rounding may differ), the compile time and the milliseconds of one
forward and backward of each, taking turns, and cuDNN's where it applies (16-bit, no dropout,
no padding). A failing contender is recorded and the rest still run: a GPU session is short.
Prints a line per case; writes JSON after each (default benchmarks/results/flash_check.json).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from common import interleaved, write_report

from genzoo.layers import flash
from genzoo.layers.attention import heads_major, segment_ids, xla_attention
from genzoo.layers.dropout import quantized_rate, seeds

# name: (B, L, H, K, dtype, causal, padded, dropout rates)
CASES = {
    "char_bf16": (64, 256, 6, 64, jnp.bfloat16, True, False, (0.0, 0.2)),
    "char_fp32": (64, 256, 6, 64, jnp.float32, True, False, (0.2,)),
    "gpt2_bf16": (16, 1024, 12, 64, jnp.bfloat16, True, False, (0.0, 0.1)),
    "bert_bf16": (32, 128, 12, 64, jnp.bfloat16, False, True, (0.1,)),
}


def xla_path(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, rng, causal, rate, valid_BxL):
    """`Attention`'s XLA branch for self-attention, with the rate its masks realise."""
    return xla_attention(q_BxLxHxK, heads_major(k_BxLxHxK), heads_major(v_BxLxHxK), causal=causal,
                         key_valid_BxT=valid_BxL, rng=rng, rate=quantized_rate(rate))  # fmt: skip


def contenders(case, rate, interpret, tiles=()):
    """name -> attention(q, k, v): the XLA path, the kernels with `flash.TILES` and with each
    of `tiles` (`pallas_<tiles>`), cuDNN where it applies."""
    B, L, H, K, dtype, causal, padded, _ = case
    rng = jax.random.key(7)
    valid_BxL = None
    if padded:  # lengths from half to all of L
        lengths_B = jax.random.randint(jax.random.key(8), (B,), L // 2, L + 1)
        valid_BxL = jnp.arange(L)[None] < lengths_B[:, None]
    segments = None if valid_BxL is None else segment_ids(None, None, valid_BxL, B, L, L)
    out = {
        "xla": lambda q, k, v: xla_path(q, k, v, rng, causal, rate, valid_BxL),
        "pallas": lambda q, k, v: flash.attention(
            q, k, v, seeds(rng), causal, rate, interpret, None, segments
        ),  # fmt: skip
    }
    for t in tiles:
        out[f"pallas_{t.name()}"] = lambda q, k, v, t=t: flash.attention(
            q, k, v, seeds(rng), causal, rate, interpret, None, segments, t
        )
    if jax.default_backend() == "gpu" and dtype != jnp.float32 and not rate and not padded:
        out["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="cudnn"
        )
    return out


def check(name, case, rate, interpret, rounds, calls, tiles=()) -> dict:
    B, L, H, K, dtype = case[:5]
    q, k, v, dout = (jax.random.normal(key, (B, L, H, K), dtype)
                     for key in jax.random.split(jax.random.key(0), 4))  # fmt: skip
    row = {"case": name, "shape": [B, L, H, K], "dtype": jnp.dtype(dtype).name, "dropout": rate}
    steps, results = {}, {}
    for impl, fn in contenders(case, rate, interpret, tiles).items():

        def loss(q, k, v, fn=fn):
            return (fn(q, k, v).astype(jnp.float32) * dout.astype(jnp.float32)).sum()

        try:
            t0 = time.perf_counter()
            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
            row[f"{impl}_compile_s"] = time.perf_counter() - t0
            results[impl] = jax.block_until_ready(step(q, k, v))
            steps[impl] = lambda step=step: step(q, k, v)
        except Exception as err:  # noqa: BLE001 - recorded; the other contenders still run
            row[f"{impl}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    if "xla" in results:
        want = jax.tree.leaves(results["xla"][1])
        for impl in results.keys() - {"xla"}:
            got = jax.tree.leaves(results[impl][1])
            row[f"{impl}_grad_rel_err"] = max(
                float(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32)).max())
                / float(jnp.abs(w.astype(jnp.float32)).max())
                for g, w in zip(got, want, strict=True)
            )
    for impl, timing in interleaved(steps, rounds, calls).items():
        row[f"{impl}_ms"] = timing["median_s"] * 1e3
    if "pallas_ms" in row and "xla_ms" in row:
        row["xla_over_pallas"] = row["xla_ms"] / row["pallas_ms"]
    kernels = {impl: row[f"{impl}_ms"] for impl in steps if impl.startswith("pallas")}
    if len(kernels) > 1:
        best = min(kernels, key=kernels.get)
        row["fastest_tiles"] = best.removeprefix("pallas_") if best != "pallas" \
            else flash.TILES.name()  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 x 64 x 2 x 16 shapes")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--tiles", default="",
                        help="other tilings to time, e.g. 128x128/128x32/3,64x64/64x32/2 "
                             "(fwd queries x keys / bwd outer x inner / stages)")  # fmt: skip
    parser.add_argument(
        "--sweep",
        default="char_bf16,char_fp32,gpt2_bf16",
        help="the cases (their dropout rates > 0) that time --tiles",
    )
    parser.add_argument("--out", default="benchmarks/results/flash_check.json")
    args = parser.parse_args()
    tiles = [flash.Tiles.parse(t) for t in args.tiles.split(",") if t]
    interpret = jax.default_backend() != "gpu"
    device = jax.devices()[0]
    rows = []
    report = {"device": getattr(device, "device_kind", str(device)),
              "backend": jax.default_backend(), "interpreted": interpret,
              "jax": jax.__version__, "rows": rows}  # fmt: skip
    for name in args.cases.split(","):
        case = CASES[name]
        if args.small:
            case = (2, 64, 2, 16, *case[4:])
        for rate in case[-1]:
            swept = tiles if rate and name in args.sweep.split(",") else ()
            rows.append(check(name, case, rate, interpret, args.rounds, args.calls, swept))
            r = rows[-1]
            cells = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in r.items() if k not in ("case", "shape", "dtype")]  # fmt: skip
            print(f"{name:<10} {' '.join(cells)}", flush=True)
            write_report(args.out, report)  # after every row: a timeout keeps what finished


if __name__ == "__main__":
    main()

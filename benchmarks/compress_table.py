"""The compression table: int8 copies and pruned fine-tunes against their float, dense originals.

    .venv/bin/python benchmarks/compress_table.py --float runs/demo \\
        --pruned runs/prune/dense runs/prune/s50 runs/prune/s80 runs/prune/s80g

For `--float`: quantizes it into a temporary workdir (`genzoo quantize`), then for both
reports validation bits/char (loss in nats/token for other vocabularies), the size of
the weights, and cached greedy decode speed (batch 1, the context's worth of tokens,
second call: compiled). For each `--pruned` run: the fraction of zero kernel weights and
validation loss. Writes benchmarks/results/compression.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
from common import write_report

import genzoo
from genzoo import pruning, quantize, workdir


def figures(path: Path) -> dict:
    run = workdir.open_run(path)
    out = run.trainer.evaluate(run.params, run.data, max_batches=-1)
    lm = genzoo.load(path)
    new = int(run.cfg.model.get("block_size", 256)) - 1
    lm.generate("\n", max_new_tokens=new, temperature=0.0)  # compile
    t0 = time.perf_counter()
    lm.generate("\n", max_new_tokens=new, temperature=0.0)
    out["decode_tokens_per_s"] = new / (time.perf_counter() - t0)
    out["sparsity"] = pruning.sparsity(run.params)
    return out


def weight_bytes(path: Path) -> int:
    if quantize.is_quantized(path):
        return (path / quantize.WEIGHTS).stat().st_size
    return sum(x.nbytes for x in jax.tree.leaves(workdir.open_run(path).params))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--float", type=Path, required=True, help="a trained language-model workdir")
    p.add_argument("--pruned", type=Path, nargs="*", default=[], help="fine-tunes to compare")
    p.add_argument("--out", default="benchmarks/results/compression.json")
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "int8"
        quantize.write(workdir.open_run(args.float), copy)
        for name, path in (("float32", args.float), ("int8", copy)):
            rows[name] = {**figures(path), "weight_bytes": weight_bytes(path)}
    for path in args.pruned:
        rows[path.name] = figures(path)
    print(f"{'run':>10} {'loss':>8} {'bits/char':>9} {'sparsity':>8} {'weights MiB':>11} "
          f"{'decode tok/s':>12}")  # fmt: skip
    for name, r in rows.items():
        size = f"{r['weight_bytes'] / 2**20:.2f}" if "weight_bytes" in r else ""
        print(f"{name:>10} {r['loss']:>8.4f} {r.get('bits_per_char', float('nan')):>9.4f} "
              f"{r['sparsity']:>8.1%} {size:>11} {r['decode_tokens_per_s']:>12.0f}")  # fmt: skip
    write_report(args.out, {"float": str(args.float), "rows": rows})


if __name__ == "__main__":
    main()

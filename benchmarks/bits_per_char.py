"""One table of validation bits per character on tiny Shakespeare: counts, HMM, GPT.

    .venv/bin/python benchmarks/bits_per_char.py [--workdirs runs/hmm_shakespeare_char runs/demo]

Count baselines are fit on the train split here; trained runs are evaluated on the whole
validation split through the same code as `genzoo eval`.
Writes benchmarks/results/bits_per_char.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ml_collections
from common import write_report

from genzoo import data, workdir
from genzoo.evaluation import baselines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdirs", nargs="*", default=["runs/hmm_shakespeare_char", "runs/demo"])
    p.add_argument("--out", default="benchmarks/results/bits_per_char.json")
    args = p.parse_args()
    text = data.load(ml_collections.ConfigDict({"name": "tinyshakespeare_char", "seq_len": 64}))
    train, valid = text.splits["train"], text.splits["validation"]
    V = text.tokenizer.vocab_size
    rows = [
        {
            "model": f"{n}-gram counts (add-1)",
            "bits_per_char": baselines.ngram_bits_per_char(train, valid, n, V),
        }
        for n in (1, 2)
    ]
    for wd in args.workdirs:
        if not Path(wd, "config.json").is_file():
            print(f"skipping {wd}: not trained")
            continue
        run = workdir.open_run(Path(wd))
        figures = run.trainer.evaluate(run.params, run.data, "validation", max_batches=-1)
        name = f"{run.cfg.experiment.name} {run.cfg.experiment.variant}".strip()
        rows.append(
            {"model": f"{name} (step {run.step})", "bits_per_char": figures["bits_per_char"]}
        )
    print(f"{'model':<45} {'bits/char':>9}")
    for r in rows:
        print(f"{r['model']:<45} {r['bits_per_char']:>9.3f}")
    write_report(args.out, rows)


if __name__ == "__main__":
    main()

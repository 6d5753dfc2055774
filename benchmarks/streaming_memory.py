"""Host memory of training on a token corpus read by index, as the corpus grows.

    .venv/bin/python benchmarks/streaming_memory.py                 # 0.01 and 4 GiB corpora
    .venv/bin/python benchmarks/streaming_memory.py --gib 0.01 32   # one larger than this RAM

For each size: writes a uint16 corpus (train.bin, val.bin) in blocks, converts it to
array_record (timed, in its own process), then trains `gpt_token_corpus --variant smoke`
on it in a fresh process and reads that process's peak resident memory (wait4). The
reference is what reading the whole split into memory costs (np.fromfile, the way small
data sets load). Writes benchmarks/results/streaming_memory.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import write_report

GIB = 2**30
BLOCK = 1 << 26  # tokens written per block: 128 MiB


def write_corpus(folder: Path, gib: float) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    n = int(gib * GIB // 2)
    rng = np.random.default_rng(0)
    with open(folder / "train.bin", "wb") as f:
        for start in range(0, n, BLOCK):
            size = min(BLOCK, n - start)
            ((np.arange(start, start + size) % 500) + rng.integers(0, 2, size)).astype(
                np.uint16
            ).tofile(f)
    (np.arange(100_000) % 500).astype(np.uint16).tofile(folder / "val.bin")
    return n


def run(argv: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GiB, stderr tail) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {err[-1500:]}")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024 / GIB, err[-300:]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, nargs="+", default=[0.01, 4.0], help="corpus sizes")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scratch", default="/tmp/genzoo-streaming", help="deleted afterwards")
    p.add_argument("--out", default="benchmarks/results/streaming_memory.json")
    args = p.parse_args()
    scratch = Path(args.scratch)
    env = dict(os.environ, GENZOO_CACHE_DIR=str(scratch / "cache"))
    py = sys.executable
    rows = []
    try:
        for gib in args.gib:
            folder = scratch / f"corpus_{gib:g}"
            # Everything runs in children: a child's peak RSS starts from its parent's (the
            # kernel keeps the forked copy's high-water mark across exec), so this one stays small.
            write = f"import streaming_memory as s; s.write_corpus(s.Path({str(folder)!r}), {gib})"
            written, _, _ = run([py, "-c", write], dict(env, PYTHONPATH=str(Path(__file__).parent)))
            tokens = int(gib * GIB // 2)
            build = f"from genzoo.data import corpus; corpus.open_corpus({str(folder)!r})"
            build_s, build_rss, _ = run([py, "-c", build], env)
            whole = f"import numpy as np; t = np.fromfile({str(folder / 'train.bin')!r}, np.uint16)"
            _, whole_rss, _ = run([py, "-c", whole + "; t.sum()"], env)
            train = [py, "-m", "genzoo.cli", "train", "gpt_token_corpus", "--variant", "smoke",
                     "--workdir", str(scratch / f"run_{gib:g}"), "--set", f"data.path={folder}",
                     "--set", f"train.steps={args.steps}",
                     "--set", "log.progress=false"]  # fmt: skip
            train_s, train_rss, _ = run(train, env)
            rows.append(dict(corpus_gib=gib, tokens=tokens, write_s=written, build_s=build_s,
                             build_peak_rss_gib=build_rss, train_s=train_s,
                             train_peak_rss_gib=train_rss,
                             whole_split_rss_gib=whole_rss))  # fmt: skip
            shutil.rmtree(folder)
            shutil.rmtree(scratch / "cache", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{'corpus GiB':>10} {'tokens':>14} {'build s':>8} {'build RSS':>10} "
          f"{'train RSS':>10} {'in memory':>10}")  # fmt: skip
    for r in rows:
        print(f"{r['corpus_gib']:>10g} {r['tokens']:>14,} {r['build_s']:>8.1f} "
              f"{r['build_peak_rss_gib']:>9.2f}G {r['train_peak_rss_gib']:>9.2f}G "
              f"{r['whole_split_rss_gib']:>9.2f}G")  # fmt: skip
    growth = rows[-1]["train_peak_rss_gib"] - rows[0]["train_peak_rss_gib"]
    grown = rows[-1]["corpus_gib"] - rows[0]["corpus_gib"]
    print(f"train peak RSS grew {growth:+.3f} GiB while the corpus grew {grown:g} GiB")
    from genzoo.metrics import cpu_info  # here: the parent stays free of jax while it measures

    write_report(args.out, dict(cpu=cpu_info(), steps=args.steps, rows=rows,
                                rss_growth_gib=growth))  # fmt: skip


if __name__ == "__main__":
    main()

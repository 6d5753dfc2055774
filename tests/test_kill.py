"""The kill test (slow): 5 SIGKILLs, one of them while an asynchronous save is in flight, and
2 SIGTERMs, then a resume to the end; the parameters must equal an uninterrupted run's bit
for bit.

    .venv/bin/python -m pytest -m slow tests/test_kill.py -s     # prints what it did
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from genzoo import workdir
from genzoo.errors import EXIT_PREEMPTED

STEPS = 400
ARGS = ["train", "gpt_shakespeare_char", "--variant", "smoke", "--set", f"train.steps={STEPS}",
        "--set", "checkpoint.every_steps=25", "--set", "log.every_steps=1",
        "--set", "eval.every_steps=0", "--set", "model.dropout=0.1",
        "--set", "log.progress=false"]  # fmt: skip


def _start(path: Path) -> subprocess.Popen:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
    return subprocess.Popen([sys.executable, "-m", "genzoo.cli", *ARGS, "--workdir", str(path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def _logged_step(path: Path) -> int:
    try:
        lines = (path / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [int(x.split(",")[0].split(":")[1]) for x in lines if x.startswith('{"step"')]
    return max(steps, default=0)


def _saving(path: Path) -> bool:
    return any(".orbax-checkpoint-tmp" in p.name for p in (path / "checkpoints").glob("*"))


def _wait_for(proc, predicate, timeout=120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.001)
    return False


@pytest.mark.slow
def test_kills_and_terms_then_resume_is_bit_identical(tmp_path):
    rng = random.Random(0)
    whole, hurt = tmp_path / "whole", tmp_path / "hurt"
    assert _start(whole).wait() == 0
    events = ["kill", "kill_during_save", "term", "kill", "kill", "term", "kill"]
    report = []
    for event in events:
        proc = _start(hurt)
        start = _logged_step(hurt)
        target = start + rng.randint(5, 60)
        if event == "kill_during_save":  # an orbax temporary folder exists while a save runs
            caught = _wait_for(proc, lambda: _saving(hurt))
        else:
            caught = _wait_for(proc, lambda t=target: _logged_step(hurt) >= t)
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {event}: {proc.stderr.read().decode()[-500:]}")
        if event == "term":
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == EXIT_PREEMPTED
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        report.append((event, caught, _logged_step(hurt)))
    assert _start(hurt).wait() == 0
    print("\n".join(f"{e}: at logged step {s} (condition seen: {c})" for e, c, s in report))
    assert all(c for _, c, _ in report), report
    a, b = workdir.open_run(whole), workdir.open_run(hurt)
    assert a.step == b.step == STEPS
    leaves = lambda run: jax.tree.leaves(jax.device_get((run.state.params, run.state.opt_state)))
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)

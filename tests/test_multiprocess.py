"""Two processes on loopback (4 simulated CPU devices each) train like one process with 8."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from genzoo import cli, workdir
from genzoo.checkpoint import saved_steps

ARGS = ["train", "gpt_shakespeare_char", "--variant", "smoke", "--set", "train.steps=6",
        "--set", "log.every_steps=1", "--set", "eval.every_steps=3",
        "--set", "checkpoint.every_steps=3", "--set", "log.progress=false"]  # fmt: skip


def _losses(path):
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}, {
        r["step"]: r["val/loss"] for r in rows if "val/loss" in r
    }


def _launch(args, run_dir, program=("-m", "genzoo.cli", "-v"), env1=None) -> list:
    """`genzoo -v train ...` as processes 0 and 1 of one run (4 simulated devices each);
    `env1`: variables for process 1 alone."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=4")
    env = dict(os.environ, XLA_FLAGS=flags,
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)  # fmt: skip
    cluster = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    return [subprocess.Popen([sys.executable, *program, *args, "--workdir", str(run_dir),
                              *cluster, "--process-id", str(i)],
                             env={**env, **(env1 or {})} if i else env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(2)]  # fmt: skip


def test_two_processes_match_one_process_with_eight_devices(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main([*ARGS, "--workdir", str(one)]) == 0  # also prepares the data cache
    procs = _launch(ARGS, two)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    # Each process reads only its half of every global batch of 8.
    for i, (_, err) in enumerate(outs):
        assert f"process {i} of 2 reads rows {4 * i}:{4 * i + 4} of each batch of 8" in err.decode()
    # Only process 0 prints (gloo itself announces its ranks on every process).
    assert b"checkpoints:" in outs[0][0] and b"checkpoints:" not in outs[1][0]
    assert b"validation loss" not in outs[1][0]
    (train_1, val_1), (train_2, val_2) = _losses(one), _losses(two)
    assert sorted(train_2) == list(range(1, 7)) and sorted(val_2) == [3, 6]
    for step in train_1:
        np.testing.assert_allclose(train_2[step], train_1[step], atol=1e-6, rtol=0)
    for step in val_1:
        np.testing.assert_allclose(val_2[step], val_1[step], atol=1e-6, rtol=0)
    # The checkpoint two processes wrote together restores in one process.
    a, b = workdir.open_run(one), workdir.open_run(two)
    assert a.step == b.step == 6
    for x, y in zip(jax.tree.leaves(jax.device_get(a.state.params)),
                    jax.tree.leaves(jax.device_get(b.state.params)), strict=True):  # fmt: skip
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    # ... and the run goes on in one process exactly as the one-process run does.
    more = ["--set", "train.steps=8"]
    assert cli.main([*ARGS, *more, "--workdir", str(one)]) == 0
    assert cli.main([*ARGS, *more, "--workdir", str(two)]) == 0
    (train_1, _), (train_2, _) = _losses(one), _losses(two)
    for step in (7, 8):
        np.testing.assert_allclose(train_2[step], train_1[step], atol=1e-6, rtol=0)


def test_a_signal_to_one_process_stops_every_process_at_one_step(tmp_path):
    """SIGTERM to process 1 alone sent it into the checkpoint save's collectives while process 0
    stepped on: the run hung for good. The processes agree at each logging step, so both save
    that step together and exit 75."""
    run_dir = tmp_path / "run"
    args = [*ARGS, "--set", "train.steps=100000", "--set", "eval.every_steps=0",
            "--set", "checkpoint.every_steps=100000", "--set", "log.every_steps=2"]  # fmt: skip
    procs = _launch(args, run_dir)
    try:
        deadline = time.monotonic() + 240
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and "train/loss" in metrics.read_text()):  # step 2 done
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    codes, errs = [p.returncode for p in procs], [err.decode() for _, err in outs]
    assert codes == [75, 75], errs[0][-2000:]
    steps = [int(re.search(r"stopped by .* at step (\d+) with", e).group(1)) for e in errs]
    assert "stopped by SIGTERM" in errs[1] and "a signal to another process" in errs[0]
    assert steps[0] == steps[1] and steps[0] % 2 == 0
    assert saved_steps(run_dir) == [steps[0]]


# Process 1's disk fills at its step-4 save; process 0's does not.
_FULL_DISK_ON_ONE = """
import errno, os, sys
from genzoo import checkpoint, cli
if os.environ.get("FULL_DISK"):
    save = checkpoint.Checkpointer.save
    def full(self, step, *args, **kwargs):
        if step >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, step, *args, **kwargs)
    checkpoint.Checkpointer.save = full
sys.exit(cli.main())
"""


def test_a_process_that_fails_alone_ends_the_run_at_once_saying_why(tmp_path):
    """Process 1's disk fills: it printed its line, then waited 5 minutes at jax's exit
    barrier while process 0 hung in a collective with it, then both aborted with C++ stack
    dumps. Now it leaves at once, and process 0 says why the run ended, with its code."""
    script = tmp_path / "full_disk_on_one.py"
    script.write_text(_FULL_DISK_ON_ONE)
    args = [*ARGS, "--set", "train.steps=100", "--set", "checkpoint.every_steps=2",
            "--set", "eval.every_steps=0"]  # fmt: skip
    procs = _launch(args, tmp_path / "run", program=(str(script),), env1={"FULL_DISK": "1"})
    try:
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            p.kill()
    errs = [err.decode().strip() for _, err in outs]
    assert [p.returncode for p in procs] == [74, 74], errs
    assert errs[1].startswith("genzoo: error: No space left on device") and "\n" not in errs[1]
    assert errs[0].startswith("genzoo: error: process 1 of this run ended first: No space left")
    assert "\n" not in errs[0]


def test_the_environment_describes_the_run_when_the_command_line_does_not(monkeypatch):
    """What `jax.distributed.initialize` receives: the command line's run, else JAX's three
    variables, else (GENZOO_DISTRIBUTED=auto) the cluster's own discovery, else nothing."""
    from genzoo import distributed

    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "GENZOO_DISTRIBUTED"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    distributed.initialize()
    assert calls == []  # one process: nothing to join
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    distributed.initialize()
    assert calls == []  # two of the three variables describe no run
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    distributed.initialize()
    assert calls == [("10.0.0.1:1234", 4, 3)]
    distributed.initialize("h:1", 2, 1)
    assert calls[-1] == ("h:1", 2, 1)  # the command line wins over the environment
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("GENZOO_DISTRIBUTED", "auto")
    distributed.initialize()
    assert calls[-1] == () and len(calls) == 3

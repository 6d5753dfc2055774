"""What the machine does to a run: a full or failing disk (one line, exit 74, nothing
half-written, the same command resumes), programs too large for memory (one line, exit 78),
a preemption before the first step (exit 75 like any other)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import types
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import gpt2_byte_vocab, tiny_gpt2_dir

from genzoo import checkpoint, cli, errors, trainer, workdir
from genzoo.errors import (
    EXIT_OUT_OF_MEMORY,
    EXIT_PREEMPTED,
    EXIT_STORAGE,
    EXIT_USER_ERROR,
    storage_error,
)

SMOKE = ["train", "gpt_shakespeare_char", "--variant", "smoke", "--set", "log.progress=false"]
FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _raised(make):
    try:
        make()
    except BaseException as e:  # noqa: BLE001 - the test inspects whatever was raised
        return e
    raise AssertionError("nothing raised")


def _wrapped_as_orbax_does():
    try:
        raise FULL
    except OSError as e:
        raise RuntimeError("Save Finalize thread (save_finalize) failed") from e


def _raised_while_handling():
    try:
        raise FULL
    except OSError:
        raise ValueError("the commit callback failed") from None  # context kept, cause hidden


TENSORSTORE = (  # the text tensorstore raises (a ValueError) when a write meets a full disk
    'RESOURCE_EXHAUSTED: Error writing "params.wte/0" in OCDBT database at local file "/r/": '
    "Failed to write 50342 bytes to file 7: No space left on device [os_error_code='28']"
)


@pytest.mark.parametrize(
    "make, errno_found",
    [
        (lambda: FULL, errno.ENOSPC),
        (lambda: _raised(_wrapped_as_orbax_does), errno.ENOSPC),
        (lambda: _raised(_raised_while_handling), errno.ENOSPC),
        (
            lambda: ExceptionGroup("writers", [KeyError("x"), OSError(errno.EDQUOT, "q")]),
            errno.EDQUOT,
        ),
        (lambda: ValueError(TENSORSTORE), errno.ENOSPC),
        (lambda: OSError(errno.EIO, "Input/output error"), errno.EIO),
        (lambda: OSError(errno.ENOENT, "No such file or directory"), None),
        (lambda: ValueError(TENSORSTORE.replace("'28'", "'2'")), None),
        (lambda: RuntimeError("No space left on device"), None),  # words alone are not enough
        (lambda: None, None),
    ],
    ids=[
        "direct",
        "cause",
        "context",
        "group",
        "tensorstore",
        "eio",
        "enoent",
        "ts-enoent",
        "words",
        "none",
    ],  # fmt: skip
)
def test_storage_error_is_found_behind_wrappers(make, errno_found):
    found = storage_error(make())
    assert (found.errno if found is not None else None) == errno_found


def _in_a_thread(error):
    def fail():
        raise error

    t = threading.Thread(target=fail)
    t.start()
    t.join()


def test_reports_that_follow_a_storage_failure_are_quiet(monkeypatch):
    """Threads, the unraisable hook and warnings: another failure is reported until a storage
    failure has been seen, and then nothing more is (what follows is its consequence)."""
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    monkeypatch.setattr(sys, "unraisablehook", lambda report: seen.append(report.exc_value))
    monkeypatch.setattr(warnings, "showwarning", lambda message, *a, **k: seen.append(message))
    monkeypatch.setattr(errors, "_STORAGE_FAILED", threading.Event())
    errors.quiet_storage_reports()

    def report_all(name):
        _in_a_thread(KeyError(f"thread {name}"))
        sys.unraisablehook(types.SimpleNamespace(exc_value=KeyError(f"unraisable {name}")))
        warnings.showwarning(f"warning {name}", UserWarning, __file__, 1)

    report_all("before")
    assert [str(x) for x in seen] == ["'thread before'", "'unraisable before'", "warning before"]
    _in_a_thread(FULL)
    report_all("after")
    assert len(seen) == 3  # neither the storage failure nor anything after it


@pytest.fixture(scope="module")
def ten(tmp_path_factory):
    """A smoke run saved at step 10, and its state after 10 more steps without a failure."""
    path = tmp_path_factory.mktemp("storage") / "run"
    assert cli.main([*SMOKE, "--workdir", str(path), "--set", "train.steps=10"]) == 0
    reference = path.with_name("reference")
    shutil.copytree(path, reference)
    assert cli.main([*SMOKE, "--workdir", str(reference), "--set", "train.steps=20"]) == 0
    return path, _params(reference)


def _params(path: Path):
    run = workdir.open_run(path)
    return run.step, [np.asarray(x) for x in jax.tree.leaves(jax.device_get(run.state.params))]


def _checkpoint_bytes(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted((path / "checkpoints").rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.skipif(not os.access("/dev/full", os.W_OK), reason="no /dev/full")
def test_a_full_disk_is_one_line_exit_74_and_the_same_command_resumes(ten, tmp_path, capsys):
    """metrics.jsonl as /dev/full: every write to it fails with ENOSPC, as on a full disk."""
    path = tmp_path / "run"
    shutil.copytree(ten[0], path)
    rows = (path / "metrics.jsonl").read_bytes()
    saved = _checkpoint_bytes(path)
    (path / "metrics.jsonl").unlink()
    (path / "metrics.jsonl").symlink_to("/dev/full")
    capsys.readouterr()
    code = cli.main([*SMOKE, "--workdir", str(path), "--set", "train.steps=20"])
    out, err = capsys.readouterr()
    assert code == EXIT_STORAGE == 74
    assert err.count("\n") == 1 and err.startswith("genzoo: error: No space left on device")
    assert "resumes from its last complete checkpoint" in err
    assert _checkpoint_bytes(path) == saved  # the complete step 10 untouched, nothing added

    (path / "metrics.jsonl").unlink()
    (path / "metrics.jsonl").write_bytes(rows)
    assert cli.main([*SMOKE, "--workdir", str(path), "--set", "train.steps=20"]) == 0
    step, params = _params(path)
    assert step == ten[1][0] == 20
    for got, want in zip(params, ten[1][1], strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_disk_filling_during_an_asynchronous_save_is_one_line_exit_74(tmp_path):
    """A real small file system (a tmpfs; root only): orbax's background write fails, which
    reaches the CLI wrapped in orbax's and tensorstore's exceptions, and reports from its
    threads, TensorBoard's writer and asyncio must stay quiet."""
    small = tmp_path / "small"
    small.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir}
    argv = [sys.executable, "-m", "genzoo.cli", *SMOKE, "--workdir", str(small / "run")]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == EXIT_STORAGE, proc.stderr[-3000:]
        assert proc.stderr.count("\n") == 1, proc.stderr[-3000:]
        assert proc.stderr.startswith("genzoo: error: No space left on device")
        assert checkpoint.saved_steps(small / "run") == []  # the first save (~0.5 MB) failed
        assert list((small / "run" / "checkpoints").glob("*tmp*"))  # left as orbax's temporary
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert checkpoint.saved_steps(small / "run") == [10, 20]
        assert not list((small / "run" / "checkpoints").glob("*tmp*"))  # the failed save's
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_a_failed_save_still_closes_the_metrics(ten, tmp_path, capsys, monkeypatch):
    """The checkpoint's close raising (its save met a full disk) must not leave TensorBoard's
    writer thread running: every closer runs, the first failure is raised."""
    path = tmp_path / "run"
    shutil.copytree(ten[0], path)
    close = checkpoint.Checkpointer.close

    def failing_close(self):
        close(self)
        raise FULL

    monkeypatch.setattr(checkpoint.Checkpointer, "close", failing_close)
    assert cli.main([*SMOKE, "--workdir", str(path), "--set", "train.steps=20"]) == EXIT_STORAGE
    assert capsys.readouterr().err.startswith("genzoo: error: No space left on device")
    writers = [t for t in threading.enumerate() if type(t).__name__ == "_EventLoggerThread"]
    assert writers == []


def test_a_model_too_large_for_memory_is_one_line_exit_78(tmp_path, capsys):
    """A real allocation failure: every matrix of a width-131072 GPT needs 64 GiB or more, so
    XLA refuses the first at once, on any machine with less memory than that."""
    path = tmp_path / "run"
    wide = ["--set", "model.width=131072", "--set", "model.num_heads=1"]
    try:
        code = cli.main([*SMOKE, "--workdir", str(path), *wide])
    except Exception as e:  # pytest's traceback would repr the state, whose arrays never came
        pytest.fail(f"raised {type(e).__name__}: {str(e)[:300]}", pytrace=False)  # to be: a hang
    err = capsys.readouterr().err
    assert code == EXIT_OUT_OF_MEMORY == 78
    assert err.count("\n") == 1 and err.startswith(
        "genzoo: error: out of memory (RESOURCE_EXHAUSTED"
    )
    assert "train.batch_size" in err
    # The launch saved its config but no checkpoint: a smaller model is refused with the way out.
    code = cli.main([*SMOKE, "--workdir", str(path), "--set", "model.num_heads=1"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and f"holds no checkpoint: remove {path}" in err


def test_a_preemption_while_the_step_compiles_saves_after_the_first_step(ten, tmp_path, capsys,
                                                                         monkeypatch):  # fmt: skip
    """SIGTERM before the loop (restoring, compiling: minutes on a GPU) was the default
    action, exit 143 with nothing saved; now it is a stop request like any other."""
    path = tmp_path / "run"
    shutil.copytree(ten[0], path)
    begin = trainer.Trainer._begin

    def preempted_begin(self, *args):
        os.kill(os.getpid(), signal.SIGTERM)  # handled when Python next runs: inside _begin
        return begin(self, *args)

    monkeypatch.setattr(trainer.Trainer, "_begin", preempted_begin)
    assert cli.main([*SMOKE, "--workdir", str(path), "--set", "train.steps=20"]) == EXIT_PREEMPTED
    assert "stopped by SIGTERM at step 11" in capsys.readouterr().err
    assert checkpoint.saved_steps(path) == [10, 11]


def test_an_import_that_meets_a_full_disk_leaves_no_half_run(tmp_path, capsys, monkeypatch):
    """`genzoo import` builds the run beside its workdir and renames it: a failed save leaves
    nothing, so the same command works once there is room (it refused the half-written run)."""
    source, path = tiny_gpt2_dir(tmp_path / "gpt2"), tmp_path / "imported"
    (source / "vocab.json").write_text(json.dumps(gpt2_byte_vocab()))  # bytes, no merges
    save = checkpoint.Checkpointer.save

    def failing_save(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise FULL

    monkeypatch.setattr(checkpoint.Checkpointer, "save", failing_save)
    assert cli.main(["import", "gpt2", str(source), "--workdir", str(path)]) == EXIT_STORAGE
    assert "nothing was kept" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]
    monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    assert cli.main(["import", "gpt2", str(source), "--workdir", str(path)]) == 0
    assert checkpoint.saved_steps(path) == [0]

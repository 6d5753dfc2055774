"""Long jobs: preemption, damaged checkpoints, non-finite steps, best checkpoints, one writer."""

import json
import os
import re
import shutil
import signal
import struct
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from genzoo import checkpoint, cli, metrics, workdir
from genzoo.errors import EXIT_NONFINITE, EXIT_PREEMPTED

SMOKE = ["train", "gpt_shakespeare_char", "--variant", "smoke", "--set", "log.progress=false"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def strict_rows(path: Path) -> list[dict]:
    """metrics.jsonl parsed as strict JSON: a bare NaN or Infinity fails."""

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def params_of(path: Path, which="latest"):
    run = workdir.open_run(path, checkpoint=which)
    return run.step, jax.tree.leaves(jax.device_get(run.state.params))


@pytest.fixture(scope="module")
def ten_twenty(tmp_path_factory):
    """A smoke run with checkpoints at steps 10 and 20."""
    path = tmp_path_factory.mktemp("rel") / "run"
    assert cli.main([*SMOKE, "--workdir", str(path), "--set", "checkpoint.keep=5"]) == 0
    assert checkpoint.saved_steps(path) == [10, 20]
    return path


def _biggest_data_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)),
               key=lambda p: p.stat().st_size)  # fmt: skip


def _step_dir(path: Path) -> Path:
    return next(p for p in path.parents if p.parent.name == "checkpoints")


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_position(f: Path) -> None:
    """The data iterator's saved position one higher in its last digit: same size, valid
    JSON, read without complaint by everything but the step's checksums."""
    meta = _step_dir(f) / "data" / "metadata"
    text = meta.read_text()
    digit = re.search(r"\d(?=\D*$)", text)
    meta.write_text(f"{text[: digit.start()]}{(int(digit[0]) + 1) % 10}{text[digit.end() :]}")


DAMAGE = {
    "truncated": lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "zero_length": lambda f: f.write_bytes(b""),
    "deleted": lambda f: f.unlink(),
    "random_bytes": lambda f: f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size)),
    "flipped_byte": _flip,
    "edited_position": _edit_position,
    # Without the manifest only orbax's own reading notices (a flipped byte it would not), and
    # the hundreds of lines tensorstore prints after it must stay quiet.
    "truncated_unsealed": lambda f: (
        f.write_bytes(f.read_bytes()[:10]),
        _step_dir(f).joinpath(checkpoint.MANIFEST).unlink(),
    ),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_eval_falls_back_past_a_damaged_latest_checkpoint(kind, ten_twenty, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(ten_twenty, path)
    DAMAGE[kind](_biggest_data_file(path / "checkpoints" / "20"))
    code, out, err = run(capsys, "eval", "--workdir", path, "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == 10
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "checkpoint 20 cannot be read" in lines[0], err
    assert "using checkpoint 10" in lines[1]
    assert (path / "checkpoints" / "20").is_dir()  # a reader deletes nothing
    code, _, err = run(capsys, "eval", "--workdir", path, "--checkpoint", "20")
    assert code == 2 and "no readable checkpoint" in err  # asked for exactly 20: refused


def test_train_resumes_from_the_newest_readable_step_and_sets_the_damaged_one_aside(
    ten_twenty, tmp_path, capsys
):
    path = tmp_path / "run"
    shutil.copytree(ten_twenty, path)
    _flip(_biggest_data_file(path / "checkpoints" / "20"))
    code, _, err = run(capsys, *SMOKE, "--workdir", path, "--set", "train.steps=20")
    assert code == 0, err
    assert (path / "damaged_checkpoints" / "20").is_dir()
    # Steps 11..20 again from step 10: the same parameters as the undamaged run's step 20.
    _, want = params_of(ten_twenty)
    step, got = params_of(path)
    assert step == 20
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_all_checkpoints_damaged_is_one_line_error_and_nothing_moves(ten_twenty, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(ten_twenty, path)
    for step in (10, 20):
        (_biggest_data_file(path / "checkpoints" / str(step))).write_bytes(b"")
    code, _, err = run(capsys, *SMOKE, "--workdir", path, "--set", "train.steps=30")
    assert code == 2 and err.strip().splitlines()[-1].startswith("genzoo: error: no readable")
    assert checkpoint.saved_steps(path) == [10, 20]


def test_reader_ignores_a_save_in_progress(ten_twenty, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(ten_twenty, path)
    partial = path / "checkpoints" / "30.orbax-checkpoint-tmp-1"  # orbax's in-flight name
    partial.mkdir()
    (partial / "junk").write_bytes(b"half")
    code, out, err = run(capsys, "eval", "--workdir", path, "--json")
    assert code == 0 and json.loads(out)["step"] == 20 and err == ""
    assert (partial / "junk").is_file()  # never cleaned up by a reader


def test_nonfinite_training_stops_naming_the_step_and_saves_nothing(tmp_path, capsys):
    path = tmp_path / "run"
    code, _, err = run(capsys, *SMOKE, "--workdir", path, "--set", "optim.lr=1e30")
    assert code == EXIT_NONFINITE
    assert len(err.strip().splitlines()) == 1 and "step " in err and "NaN/Inf" in err
    assert checkpoint.saved_steps(path) == []  # warmup reaches 1e30 before step 10
    strict_rows(path / "metrics.jsonl")


def test_skip_nonfinite_skips_and_counts_and_keeps_the_state_finite(tmp_path, capsys):
    path = tmp_path / "run"
    spoil = ["--set", "optim.lr=1e30", "--set", "train.skip_nonfinite=100"]
    code, _, err = run(capsys, *SMOKE, "--workdir", path, *spoil, "--set", "log.every_steps=1")
    assert code == 0, err
    rows = strict_rows(path / "metrics.jsonl")
    skipped = [r["train/skipped_steps"] for r in rows if "train/skipped_steps" in r]
    assert skipped[-1] >= 10 and skipped == sorted(skipped)
    assert any(r.get("train/loss") is None for r in rows)  # logged as null, not NaN
    step, leaves = params_of(path)
    assert step == 20 and all(np.isfinite(x).all() for x in leaves)


def test_sigterm_saves_the_current_step_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    path, whole = tmp_path / "run", tmp_path / "whole"
    # A schedule fixed apart from train.steps: the uninterrupted run must follow the same one.
    fast = ["--set", "eval.every_steps=0", "--set", "log.every_steps=1",
            "--set", "optim.decay_steps=1000", "--set", "checkpoint.every_steps=1000"]  # fmt: skip

    def preempt():  # once a few steps are logged, as a scheduler would
        rows = path / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if rows.is_file() and rows.read_text().count("train/loss") >= 5:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=preempt, daemon=True).start()
    code, _, err = run(capsys, *SMOKE, "--workdir", path, *fast, "--set", "train.steps=100000")
    assert code == EXIT_PREEMPTED, err
    (saved,) = checkpoint.saved_steps(path)  # the only save: at the signal
    assert f"at step {saved} " in err and 5 <= saved < 100000
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    end = saved + 3
    assert run(capsys, *SMOKE, "--workdir", path, *fast, "--set", f"train.steps={end}")[0] == 0
    assert run(capsys, *SMOKE, "--workdir", whole, *fast, "--set", f"train.steps={end}")[0] == 0
    (_, a), (_, b) = params_of(path), params_of(whole)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_second_stop_signal_ends_the_process_at_once():
    """The first SIGTERM/SIGINT asks for a save after the step; a second one (a user who
    cannot wait, a scheduler's last word) exits at once with 128 + its number."""
    import subprocess
    import sys

    script = (
        "import os, signal, time\n"
        "from genzoo.preemption import StopRequest\n"
        "with StopRequest() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert stop.name == 'SIGTERM'\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert "second SIGINT: aborting without saving" in proc.stderr


def test_keep_best_keeps_the_best_step_beside_the_newest(tmp_path, capsys):
    path = tmp_path / "run"
    # best_mode=max on a falling loss: the best is the first evaluation, far from the newest.
    code, _, err = run(capsys, *SMOKE, "--workdir", path, "--set", "eval.every_steps=5",
                       "--set", "checkpoint.keep=1", "--set", "checkpoint.keep_best=val/loss",
                       "--set", "checkpoint.best_mode=max")  # fmt: skip
    assert code == 0, err
    best = json.loads((path / "checkpoints" / checkpoint.BEST).read_text())
    assert best["step"] == 5 and best["metric"] == "val/loss"
    assert checkpoint.saved_steps(path) == [5, 20]
    code, out, _ = run(capsys, "eval", "--workdir", path, "--json", "--checkpoint", "best")
    assert code == 0 and json.loads(out)["step"] == 5
    latest = json.loads(run(capsys, "eval", "--workdir", path, "--json")[1])
    assert latest["step"] == 20 and json.loads(out)["loss"] > latest["loss"]  # max: the worst


def test_a_second_train_into_a_busy_workdir_is_refused(ten_twenty, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(ten_twenty, path)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in path.rglob("*"))
    lock = workdir.WriterLock(path).acquire()  # what a running `train` holds
    try:
        code, out, err = run(capsys, *SMOKE, "--workdir", path, "--set", "train.steps=30")
    finally:
        lock.release()
    assert code == 2 and "another process" in err and out == ""
    assert sorted((str(p), p.stat().st_mtime_ns) for p in path.rglob("*")) == before


def test_eval_json_never_prints_nan_and_exits_nonzero(ten_twenty, monkeypatch, capsys):
    from genzoo.trainer import Trainer

    monkeypatch.setattr(Trainer, "evaluate", lambda *a, **k: {"loss": float("nan")})
    code, out, err = run(capsys, "eval", "--workdir", ten_twenty, "--json")
    assert code == EXIT_NONFINITE and "loss" in err
    row = json.loads(out, parse_constant=lambda t: pytest.fail(f"bare {t}"))
    assert row["loss"] is None and row["nonfinite"] == ["loss"]


def test_metrics_skip_a_torn_line_and_append_after_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/lo')
    writer = metrics.MetricsWriter(tmp_path, tensorboard=False)
    writer.write(3, {"train/loss": 1.5, "val/loss": float("inf")})
    writer.close()
    rows = metrics.read(path)
    assert [r["step"] for r in rows] == [1, 3] and rows[1]["val/loss"] is None
    assert metrics.plot_curves(tmp_path).is_file()


def _scalars(event_file) -> list[tuple[int, str, float]]:
    """(step, tag, value) of a TensorBoard event file (TFRecord framing, no checksums read)."""
    from tensorboardX.proto import event_pb2

    data, at, found = event_file.read_bytes(), 0, []
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
        at += 16 + length
        found += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return found


def test_files_written_whole_get_the_umasks_mode_or_keep_their_own(ten_twenty, tmp_path):
    """A temp file renamed into place was 0600: a teammate could not read a run's config."""
    from genzoo.data import sources

    umask = os.umask(0o022)
    os.umask(umask)
    want = 0o666 & ~umask
    assert want & 0o044  # the suite runs with a umask that lets others read
    assert (ten_twenty / "config.json").stat().st_mode & 0o777 == want
    own = tmp_path / "private.txt"
    own.write_text("old")
    own.chmod(0o600)
    sources.write_atomic(own, lambda f: f.write(b"new"))
    assert own.read_text() == "new" and own.stat().st_mode & 0o777 == 0o600


def test_tensorboard_opened_late_still_gets_every_row(tmp_path):
    """The trainer starts TensorBoard's import after the step compiles: rows written before
    reach the event file too, in order, once it is open."""
    writer = metrics.MetricsWriter(tmp_path, tensorboard=True, start=False)
    writer.write(1, {"train/loss": 3.0})
    writer.write(2, {"train/loss": 2.5})
    assert not (tmp_path / "tensorboard").exists()  # not imported, not opened yet
    writer.start_tensorboard()
    writer.write(3, {"train/loss": 2.0, "val/loss": 2.25})
    writer.close()
    (event_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    assert _scalars(event_file) == [(1, "train/loss", 3.0), (2, "train/loss", 2.5),
                                    (3, "train/loss", 2.0), (3, "val/loss", 2.25)]  # fmt: skip
    assert [r["step"] for r in metrics.read(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_a_torn_peak_flops_cache_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path))
    (tmp_path / "peak_flops_v2.json").write_text('{"cpu:cpu": 1.2')
    monkeypatch.setattr(metrics, "measure_matmul_peak", lambda: 5e9)
    assert metrics.peak_flops(0.0)[0] == 5e9
    assert json.loads((tmp_path / "peak_flops_v2.json").read_text()) == {
        metrics._peak_key(jax.devices()[0]): 5e9
    }


@pytest.mark.parametrize("mesh", ["data=2,fsdp=2,tensor=2", "data=1,fsdp=1,tensor=1"])
def test_a_checkpoint_from_eight_devices_continues_on_another_mesh(
    mesh, make_config, char_data, tmp_path
):
    from genzoo.trainer import Trainer

    overrides = ("checkpoint.every_steps=3", "eval.every_steps=0", "log.progress=false")
    make = lambda steps, *more: make_config(*overrides, f"train.steps={steps}", *more)
    whole = Trainer(make(6)).fit(tmp_path / "whole", char_data)  # mesh data=8 throughout
    Trainer(make(3)).fit(tmp_path / "moved", char_data)
    sizes = [f"mesh.{kv}" for kv in mesh.split(",")]
    devices = jax.devices()[: 8 if "data=2" in mesh else 1]
    moved_trainer = Trainer(make(6, *sizes), devices=devices)
    moved = moved_trainer.fit(tmp_path / "moved", char_data)
    assert int(moved.step) == 6
    layout = jax.tree.leaves(moved_trainer.state_shardings.params)
    for x, y, s in zip(jax.tree.leaves(whole.params), jax.tree.leaves(moved.params), layout,
                       strict=True):  # fmt: skip
        assert y.sharding.is_equivalent_to(s, y.ndim)  # restored onto the new layout
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)


def test_eval_fits_a_saved_mesh_to_the_devices_present(ten_twenty, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(ten_twenty, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["mesh"].update(data=64, fsdp=2, tensor=2)  # trained on a 256-chip slice
    (path / "config.json").write_text(json.dumps(cfg))
    code, out, err = run(capsys, "eval", "--workdir", path, "--json")
    assert code == 0, err
    want = json.loads(run(capsys, "eval", "--workdir", ten_twenty, "--json")[1])
    assert json.loads(out)["loss"] == pytest.approx(want["loss"], abs=1e-5)
    code, out, _ = run(capsys, "eval", "--workdir", path, "--json", "--set", "mesh.data=2",
                       "--set", "mesh.fsdp=2", "--set", "mesh.tensor=2")  # fmt: skip
    assert code == 0 and json.loads(out)["loss"] == pytest.approx(want["loss"], abs=1e-5)


def test_a_torn_codes_cache_is_encoded_again(tmp_path):
    from genzoo.data import codes

    path = tmp_path / "codes.npz"
    np.savez(path, train=np.arange(6).reshape(2, 3))
    assert codes._read(path, ["train"])["train"].shape == (2, 3)
    path.write_bytes(path.read_bytes()[:40])
    assert codes._read(path, ["train"]) is None
    assert codes._read(tmp_path / "missing.npz", ["train"]) is None


def test_the_codes_cache_key_follows_the_tokenizer_run_and_the_images(tmp_path):
    """DALL·E's cached codes are the tokenizer's at one step: another step, the same step
    trained again at the same path (its folder's time), or other images, encode afresh."""
    from types import SimpleNamespace

    from genzoo.data import codes

    step_dir = tmp_path / "checkpoints" / "5"
    step_dir.mkdir(parents=True)
    os.utime(step_dir, ns=(10**18, 10**18))
    data = SimpleNamespace(splits={"train": (np.zeros((2, 4, 4, 3), np.uint8),)})
    at = lambda step: SimpleNamespace(path=tmp_path, step=step)
    key = codes._key(at(5), data)
    assert codes._key(at(5), data) == key and codes._key(at(6), data) != key
    os.utime(step_dir, ns=(2 * 10**18, 2 * 10**18))  # retrained: same path, same step
    retrained = codes._key(at(5), data)
    assert retrained != key
    data.splits["train"] = (np.ones((2, 4, 4, 3), np.uint8),)
    assert codes._key(at(5), data) != retrained

"""Stored executables (genzoo.executables): a second launch loads its programs, traces
nothing, and trains exactly as the launch that compiled them; anything that could change
the program is part of the key; what XLA loaded from its own cache is never stored."""

import os
import random
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from genzoo import aot, data, executables
from genzoo import metrics as metrics_lib
from genzoo.trainer import Trainer


def _fresh_constant() -> float:
    """A constant no earlier test session compiled: XLA's persistent cache (shared across
    sessions) must miss, or nothing is stored."""
    return 1 + random.SystemRandom().random()


def test_second_fit_loads_the_train_step_and_trains_bit_for_bit(tmp_path):
    # A learning rate of its own makes the step's program new to XLA's persistent cache.
    lr = f"optim.lr={1e-3 * _fresh_constant()!r}"
    cfg = tiny_config("train.steps=3", "eval.every_steps=0", "log.progress=false", lr)
    text = data.load(cfg.data)
    store = executables.Store(tmp_path / "exe", executables.config_context(cfg))
    runs = []
    for name in ("first", "second"):
        executables.forget()  # a second launch: a new process, with the disk's copy alone
        trainer = Trainer(cfg, devices=jax.devices()[:1], executables=store)
        state = trainer.fit(tmp_path / name, text)
        rows = metrics_lib.read(tmp_path / name / "metrics.jsonl")
        runs.append(
            (
                trainer,
                jax.device_get(state.params),
                [r["train/loss"] for r in rows if "train/loss" in r],
            )
        )
    (first, params_a, losses_a), (second, params_b, losses_b) = runs
    assert set(first.step_program.seconds) == {"trace", "compile"}
    assert set(second.step_program.seconds) == {"load"}  # no trace, no compile
    assert second.step_program.temp_bytes == first.step_program.temp_bytes  # hooks still run
    assert losses_a == losses_b and losses_a
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    # The second run resumed for longer (a new train.steps; the decay stays the first launch's,
    # as the CLI keeps it): the same programs, loaded.
    executables.forget()
    longer = tiny_config("train.steps=5", "eval.every_steps=0", "log.progress=false", lr,
                         f"optim.decay_steps={cfg.optim.decay_steps}")  # fmt: skip
    store_5 = executables.Store(tmp_path / "exe", executables.config_context(longer))
    resumed = Trainer(longer, devices=jax.devices()[:1], executables=store_5)
    assert int(resumed.fit(tmp_path / "second", text).step) == 5
    assert set(resumed.step_program.seconds) == {"load"}
    # Another mesh is another program: not loaded for the same config.
    two = Trainer(cfg, devices=jax.devices()[:2], executables=store)
    assert two.step_program.store.fingerprint != second.step_program.store.fingerprint
    # Another config is another key: it compiles (and stores) its own; settings only the host
    # loop reads (logging, checkpoints, the time budget) are not part of it.
    context = executables.config_context
    assert context(tiny_config("optim.lr=0.5")) != context(tiny_config())
    assert context(tiny_config("optim.decay_steps=9")) != context(tiny_config())
    fixed = "optim.decay_steps=20"  # else resolved from train.steps (a first launch's)
    for host_only in ("log.every_steps=7", "checkpoint.keep=9", "train.max_seconds=5",
                      "train.steps=4"):  # fmt: skip
        assert context(tiny_config(host_only, fixed)) == context(tiny_config(fixed))


def test_program_stores_only_what_it_compiled_and_survives_a_corrupt_file(tmp_path):
    scale = _fresh_constant()
    fn = jax.jit(lambda x: x * scale)
    x = jax.ShapeDtypeStruct((5,), jnp.float32)
    store = executables.Store(tmp_path, "context")
    program = aot.Program(fn, "scale")
    program.store = store
    program.compile(x)
    (path,) = tmp_path.glob("*.jaxexec")
    loaded = aot.Program(fn, "scale")
    loaded.store = store
    np.testing.assert_array_equal(
        loaded(jnp.arange(5.0)), np.arange(5, dtype=np.float32) * np.float32(scale)
    )
    assert set(loaded.seconds) == {"load"}
    # A damaged file is a miss: removed, compiled again, stored again.
    executables.forget()  # (this process keeps what it loaded in memory: the disk is tested)
    path.write_bytes(b"not an executable")
    again = aot.Program(fn, "scale")
    again.store = store
    np.testing.assert_array_equal(
        again(jnp.arange(5.0)), np.arange(5, dtype=np.float32) * np.float32(scale)
    )
    assert set(again.seconds) == {"trace", "compile"} and path.stat().st_size > 100
    # A compile XLA answered from its persistent cache is not stored.
    with executables.compiled_fresh() as fresh:
        executables._on_event("/jax/compilation_cache/cache_hits")
    assert fresh.value is False
    with executables.compiled_fresh() as fresh:
        pass
    assert fresh.value is True


def test_a_process_keeps_its_programs_for_the_next_trainer_of_the_same_config(tmp_path):
    """In memory, whatever XLA's persistent cache did (this test session's cache has compiled
    this config before, so nothing reaches the disk): one trace for two Trainers."""
    cfg = tiny_config("train.steps=2", "eval.every_steps=0", "log.progress=false")
    text = data.load(cfg.data)
    executables.forget()
    trainers = [Trainer(cfg, devices=jax.devices()[:1], executables=executables.in_memory(cfg))
                for _ in range(2)]  # fmt: skip
    states = [t.fit(tmp_path / str(i), text) for i, t in enumerate(trainers)]
    assert set(trainers[0].step_program.seconds) == {"trace", "compile"}
    assert set(trainers[1].step_program.seconds) == {"load"}
    assert trainers[1].step_program.compiled is trainers[0].step_program.compiled
    jax.tree.map(np.testing.assert_array_equal, *jax.device_get([s.params for s in states]))
    assert not list(tmp_path.glob("**/*.jaxexec"))  # memory only
    # Another config, or the same on other devices, is another program.
    other_cfg = tiny_config("train.steps=2", "eval.every_steps=0", "optim.lr=0.5")
    other = Trainer(other_cfg, devices=jax.devices()[:1],
                    executables=executables.in_memory(other_cfg))  # fmt: skip
    two = Trainer(cfg, devices=jax.devices()[:2], executables=executables.in_memory(cfg))
    batch = next(text.train_iterator(cfg.train.batch_size, 0))
    for trainer in (other, two):
        trainer.step(trainer.init_state(), batch)
        assert set(trainer.step_program.seconds) == {"trace", "compile"}
    executables.forget()
    again = Trainer(cfg, devices=jax.devices()[:1], executables=executables.in_memory(cfg))
    again.step(again.init_state(), batch)
    assert set(again.step_program.seconds) == {"trace", "compile"}


def test_key_covers_config_environment_and_source(tmp_path, monkeypatch):
    base = executables.Store(tmp_path, "config A").fingerprint
    assert executables.Store(tmp_path, "config A").fingerprint == base
    assert executables.Store(tmp_path, "config B").fingerprint != base
    monkeypatch.setenv(
        "XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_thunk_runtime=true"
    )
    assert executables.Store(tmp_path, "config A").fingerprint != base
    monkeypatch.undo()
    monkeypatch.setenv("GENZOO_ATTENTION", "xla")  # a switch the traced code reads is keyed
    assert executables.Store(tmp_path, "config A").fingerprint != base
    monkeypatch.undo()
    # Where the data and caches live is not (a moved data set recompiled every program).
    monkeypatch.setenv("GENZOO_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path / "cache"))
    assert executables.Store(tmp_path, "config A").fingerprint == base
    monkeypatch.undo()
    # Another CPU model sharing the folder (XLA:CPU compiles for the host's features).
    assert '"flags"' in executables.host_cpu() or not Path("/proc/cpuinfo").exists()
    monkeypatch.setattr(executables, "host_cpu", lambda: '{"model name": "another CPU"}')
    assert executables.Store(tmp_path, "config A").fingerprint != base
    monkeypatch.undo()
    # Code outside the installed packages (an experiment, a user's model) is read as source.
    module = tmp_path / "user_model.py"
    module.write_text("WIDTH = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_model  # noqa: F401

    try:
        with_module = executables.Store(tmp_path, "config A").fingerprint
        module.write_text("WIDTH = 2\n")
        assert executables.Store(tmp_path, "config A").fingerprint != with_module
    finally:
        sys.modules.pop("user_model")


def test_libraries_installed_outside_site_packages_are_not_read_as_source(tmp_path, monkeypatch):
    """`pip install --target DIR` (the GPU machines): a launch that builds its data imports
    more of such a library than the next launch does; the key must not change with that."""
    site = tmp_path / "site"
    (site / "wheelpkg").mkdir(parents=True)
    (site / "wheelpkg" / "__init__.py").write_text("X = 1\n")
    info = site / "wheelpkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wheelpkg\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("wheelpkg\n")
    monkeypatch.syspath_prepend(str(site))
    executables._released_packages.cache_clear()
    try:
        before = executables.Store(tmp_path, "config A").fingerprint
        import wheelpkg  # noqa: F401

        assert executables.Store(tmp_path, "config A").fingerprint == before
    finally:
        sys.modules.pop("wheelpkg", None)
        executables._released_packages.cache_clear()


def test_store_is_off_for_several_processes_and_when_asked(monkeypatch):
    monkeypatch.setenv("GENZOO_EXECUTABLES", "0")
    assert executables.for_training("{}") is None
    monkeypatch.delenv("GENZOO_EXECUTABLES")
    assert executables.for_training("{}") is not None  # the tests configure a cache folder
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert executables.for_training("{}") is None


@pytest.mark.parametrize("keep", [2])
def test_store_keeps_the_newest_executables(tmp_path, monkeypatch, keep):
    monkeypatch.setattr(executables, "KEEP", keep)
    store = executables.Store(tmp_path, "context")
    for i in range(4):
        program = aot.Program(jax.jit(lambda x, i=i: x + i + _fresh_constant()), f"add{i}")
        program.store = store
        program.compile(jax.ShapeDtypeStruct((2,), jnp.float32))
    assert len(list(tmp_path.glob("*.jaxexec"))) == keep
    monkeypatch.setattr(executables, "KEEP_BYTES", 1)  # over any size: the newest stays
    program = aot.Program(jax.jit(lambda x: x - _fresh_constant()), "subtract")
    program.store = store
    program.compile(jax.ShapeDtypeStruct((2,), jnp.float32))
    assert len(list(tmp_path.glob("*.jaxexec"))) == 1


@pytest.mark.parametrize("from_disk", [True, False])
def test_a_loaded_executable_counts_as_recently_used(tmp_path, monkeypatch, from_disk):
    """Pruning keeps the `KEEP` most recently *used*: a program loaded by every launch (from
    the disk, or from this process's memory) must outlive one compiled once since."""
    monkeypatch.setattr(executables, "KEEP", 2)
    store = executables.Store(tmp_path, "context")
    spec = jax.ShapeDtypeStruct((2,), jnp.float32)

    def compile_as(name, constant):
        program = aot.Program(jax.jit(lambda x: x * constant), name)
        program.store = store
        program.compile(spec)
        return program

    compile_as("daily", _fresh_constant())
    compile_as("once", _fresh_constant())
    for i, path in enumerate(sorted(tmp_path.glob("*.jaxexec"), key=os.path.getmtime)):
        os.utime(path, (1e9 + i, 1e9 + i))  # "daily" older than "once", a second apart
    if from_disk:
        executables.forget()
    assert compile_as("daily", 0.0).seconds.keys() == {"load"}  # loaded, not compiled
    compile_as("new", _fresh_constant())
    kept = {p.name for p in tmp_path.glob("*.jaxexec")}
    assert kept == {store.path(n, aot._types((spec,)), None).name for n in ("daily", "new")}

"""Model state (what the loss updates, not the optimizer) and the parameter EMA."""

import jax
import numpy as np
import pytest
from conftest import tiny_config

from genzoo import models
from genzoo.trainer import Trainer

STEPS = 4


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(models.FAMILIES, "toy_state", "toy_families")  # tests/toy_families.py
    return lambda *o, devices=1: Trainer(
        tiny_config("model.family=toy_state", "optim.warmup_steps=0", "optim.weight_decay=0.5",
                    *o),
        devices=jax.devices()[:devices] if devices else None,
    )  # fmt: skip


def _batches(char_data, n, batch_size=8):
    it = char_data.train_iterator(batch_size, 0)
    return [next(it) for _ in range(n)]


def test_the_loss_updates_the_model_state_and_the_optimizer_never_does(toy, char_data):
    trainer = toy()
    state = trainer.init_state()
    expected_mean = np.zeros(8)
    for batch in _batches(char_data, STEPS):
        embed = np.asarray(state.params["embed"])
        batch_mean = embed[batch["inputs"]].mean((0, 1))
        expected_mean = 0.75 * expected_mean + 0.25 * batch_mean
        state, _ = trainer.step(state, batch)
    stats = jax.device_get(state.params["stats"])
    assert float(stats["count"]) == STEPS
    np.testing.assert_allclose(stats["mean"], expected_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(stats["table"], np.ones((3, 8)))  # no weight decay, no Adam
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert moments == 2 * state.params["embed"].size  # Adam keeps nothing for the state


def test_gradient_accumulation_threads_the_state_through_micro_batches(toy, char_data):
    trainer = toy("train.grad_accum=2")
    state = trainer.init_state()
    for batch in _batches(char_data, 2):
        state, _ = trainer.step(state, batch)
    assert float(state.params["stats"]["count"]) == 4  # two micro-batches per step


def test_state_and_ema_are_the_same_on_eight_devices_and_after_resume(toy, char_data, tmp_path):
    overrides = ("train.ema_decay=0.5", "checkpoint.every_steps=2", "eval.every_steps=0",
                 "optim.decay_steps=9", "log.progress=false")  # fmt: skip
    one = toy(*overrides, f"train.steps={STEPS}").fit(tmp_path / "a", char_data)
    many = toy(*overrides, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", f"train.steps={STEPS}",
               devices=0).fit(tmp_path / "b", char_data)  # fmt: skip
    toy(*overrides, "train.steps=2").fit(tmp_path / "c", char_data)
    resumed = toy(*overrides, f"train.steps={STEPS}").fit(tmp_path / "c", char_data)
    for other, exact in ((resumed, True), (many, False)):
        for x, y in zip(jax.tree.leaves((one.params, one.ema)),
                        jax.tree.leaves((other.params, other.ema)), strict=True):  # fmt: skip
            if exact:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            else:
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_ema_follows_the_parameters_and_is_what_evaluation_uses(make_config, char_data):
    trainer = Trainer(make_config("train.ema_decay=0.75", "optim.warmup_steps=0"),
                      devices=jax.devices()[:1])  # fmt: skip
    state = trainer.init_state()
    history = [jax.device_get(state.params)]
    for batch in _batches(char_data, 3):
        state, _ = trainer.step(state, batch)
        history.append(jax.device_get(state.params))
    # ema_0 = p_0; ema_t = 0.75 ema_(t-1) + 0.25 p_t
    expected = history[0]
    for p in history[1:]:
        expected = jax.tree.map(lambda e, x: 0.75 * e + 0.25 * x, expected, p)
    ema, last = jax.tree.leaves(state.ema), jax.tree.leaves(history[-1])
    for e, x in zip(ema, jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(e), x, rtol=1e-5, atol=1e-7)
    moved = [not np.allclose(e, p) for e, p in zip(ema, last, strict=True)]
    assert sum(moved) > len(moved) // 2  # the average lags the parameters
    assert state.eval_params() is state.ema

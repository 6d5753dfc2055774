"""float16 compute: dynamic loss scaling keeps small gradients, skips overflowed steps,
adapts its scale, survives a checkpoint; runs without it are unchanged."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import run_steps, tiny_config

from genzoo import cli, models, workdir
from genzoo import metrics as metrics_lib
from genzoo import train_step as ts
from genzoo.trainer import Trainer, loss_scaling

SMOKE = ["train", "gpt_shakespeare_char", "--variant", "smoke", "--set", "log.progress=false",
         "--set", "eval.every_steps=0", "--set", "log.every_steps=1"]  # fmt: skip


class _Tiny:
    """One float32 parameter vector used in float16; the loss's slope is `SLOPE` per element."""

    SLOPE = 1e-8  # below float16's smallest subnormal (6e-8): its cotangent flushes to zero

    @staticmethod
    def init(rng, cfg):
        return {"w": jnp.zeros((4,))}

    @classmethod
    def loss(cls, params, batch, rng, cfg, *, train, step):
        w16 = params["w"].astype(jnp.float16)
        return jnp.sum((w16 * batch).astype(jnp.float32)) * cls.SLOPE, {}


class _Steep(_Tiny):
    """A float16 loss whose gradient (10 per element) overflows float16 at scales above 6553."""

    @staticmethod
    def loss(params, batch, rng, cfg, *, train, step):
        return jnp.sum(params["w"].astype(jnp.float16) * batch), {}


def _steps(family, n, *, scaled=True, batch=None):
    """States after each of `n` SGD (lr 1) steps of a toy family, and each step's metrics."""
    tx = optax.sgd(1.0)
    state = ts.init_state(jax.random.PRNGKey(0), family=family, model_cfg=None, tx=tx, ema=False,
                          loss_scale=scaled)  # fmt: skip
    batch = jnp.full((4,), 10.0, jnp.float16) if batch is None else batch
    step = jax.jit(lambda s: ts.train_step(s, batch, None, family=family, model_cfg=None, tx=tx,
                                           learning_rates=lambda i: {"lr": 1.0}, grad_accum=1,
                                           ema_decay=0.0))  # fmt: skip
    out = []
    for _ in range(n):
        state, m = step(state)
        out.append((state, jax.device_get(m)))
    return out


def test_a_gradient_below_float16s_range_survives_only_with_loss_scaling():
    batch = jnp.ones((4,), jnp.float16)
    ((plain, m_plain),) = _steps(_Tiny, 1, scaled=False, batch=batch)
    ((scaled, m_scaled),) = _steps(_Tiny, 1, batch=batch)
    assert float(m_plain["grad_norm"]) == 0.0  # flushed: the step learns nothing
    np.testing.assert_allclose(scaled.params["w"], -_Tiny.SLOPE, rtol=1e-3)  # w -= lr * slope
    assert float(m_scaled["finite"]) == 1.0 and float(m_scaled["overflow"]) == 0.0
    assert float(m_scaled["loss_scale"]) == ts.SCALE_INIT


def test_an_overflow_halves_the_scale_and_skips_the_step_without_failing():
    """10 * scale overflows float16 (65504) until the scale reaches 4096: three skipped steps,
    then one that moves w by the true gradient, 10."""
    rows = _steps(_Steep, 4)
    scales = [float(m["loss_scale"]) for _, m in rows]
    assert scales == [2.0**15, 2.0**14, 2.0**13, 2.0**12]
    assert [float(m["overflow"]) for _, m in rows] == [1.0, 1.0, 1.0, 0.0]
    assert all(float(m["finite"]) == 1.0 for _, m in rows)  # the trainer is not stopped
    for state, _ in rows[:3]:
        assert float(jnp.abs(state.params["w"]).max()) == 0.0  # skipped: nothing moved
    last = rows[-1][0]
    np.testing.assert_allclose(last.params["w"], -10.0)
    assert int(last.step) == 4 and float(last.loss_scale["scale"]) == 2.0**12


class _NaN(_Tiny):
    @staticmethod
    def loss(params, batch, rng, cfg, *, train, step):
        return jnp.sum(params["w"]) * jnp.nan, {}


def test_a_nan_loss_is_still_a_failure_under_loss_scaling():
    ((state, m),) = _steps(_NaN, 1)
    assert float(m["finite"]) == 0.0 and float(m["overflow"]) == 0.0
    assert int(state.step) == 1 and float(jnp.abs(state.params["w"]).max()) == 0.0


class _Sqrt(_Tiny):
    """A finite loss (0) whose gradient is infinite at any scale: d sqrt(w) / dw at w = 0."""

    @staticmethod
    def loss(params, batch, rng, cfg, *, train, step):
        return jnp.sum(jnp.sqrt(params["w"].astype(jnp.float16))).astype(jnp.float32), {}


def test_an_overflow_at_scale_one_is_a_failure():
    """Halving cannot help once the scale is 1: the step is reported not finite."""
    tx = optax.sgd(1.0)
    state = ts.init_state(jax.random.PRNGKey(0), family=_Sqrt, model_cfg=None, tx=tx, ema=False)
    state = state.replace(loss_scale={"scale": jnp.float32(2.0), "good_steps": jnp.int32(0)})
    finite, scales = [], []
    for _ in range(2):
        state, m = ts.train_step(state, None, None, family=_Sqrt, model_cfg=None, tx=tx,
                                 learning_rates=lambda i: {"lr": 1.0}, grad_accum=1,
                                 ema_decay=0.0)  # fmt: skip
        finite.append(float(m["finite"]))
        scales.append(float(m["loss_scale"]))
    assert scales == [2.0, 1.0] and finite == [1.0, 0.0]


def test_the_scale_doubles_after_a_period_of_finite_steps_within_bounds():
    def after(scale, good, finite):
        ls = {"scale": jnp.float32(scale), "good_steps": jnp.int32(good)}
        new = ts.next_loss_scale(ls, jnp.bool_(finite))
        return float(new["scale"]), int(new["good_steps"])

    assert after(1024.0, 0, True) == (1024.0, 1)
    assert after(1024.0, ts.SCALE_PERIOD - 2, True) == (1024.0, ts.SCALE_PERIOD - 1)
    assert after(1024.0, ts.SCALE_PERIOD - 1, True) == (2048.0, 0)
    assert after(ts.SCALE_MAX, ts.SCALE_PERIOD - 1, True) == (ts.SCALE_MAX, 0)
    assert after(1024.0, 500, False) == (512.0, 0)
    assert after(1.0, 500, False) == (1.0, 0)


def test_grad_accumulation_scales_each_micro_batch():
    tx = optax.sgd(1.0)
    state = ts.init_state(jax.random.PRNGKey(0), family=_Tiny, model_cfg=None, tx=tx, ema=False,
                          loss_scale=True)  # fmt: skip
    rows = jnp.ones((2, 4), jnp.float16)
    new, _ = ts.train_step(state, rows, None, family=_Tiny, model_cfg=None, tx=tx,
                           learning_rates=lambda i: {"lr": 1.0}, grad_accum=2,
                           ema_decay=0.0)  # fmt: skip
    # Two micro-batches of one row each, averaged: one row's slope (without scaling: 0).
    np.testing.assert_allclose(new.params["w"], -_Tiny.SLOPE, rtol=1e-3)


@pytest.mark.parametrize(
    "dtype, mode, expected",
    [("float16", "auto", True), ("bfloat16", "auto", False), ("float32", "dynamic", True),
     ("float16", "none", False), ("float16", None, False)],  # None: a config saved before the key
)  # fmt: skip
def test_which_runs_scale_their_loss(dtype, mode, expected):
    train = {} if mode is None else {"loss_scale": mode}
    assert (
        loss_scaling(ml_collections.ConfigDict({"model": {"dtype": dtype}, "train": train}))
        is expected
    )


def test_float16_gpt_trains_and_resumes_bit_for_bit_with_its_scale(tmp_path, capsys):
    """The scale is part of the checkpoint: 3 + 3 steps equal 6."""
    f16 = ["--set", "model.dtype=float16", "--set", "optim.decay_steps=100"]

    def train(path, steps):
        code = cli.main([*SMOKE, *f16, "--workdir", str(path), "--set", f"train.steps={steps}"])
        assert code == 0, capsys.readouterr().err

    train(tmp_path / "a", 3)
    train(tmp_path / "a", 6)
    train(tmp_path / "b", 6)
    a, b = (workdir.open_run(tmp_path / p).state for p in "ab")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    rows = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    scales = [r["train/loss_scale"] for r in rows if "train/loss_scale" in r]
    assert len(scales) == 6 and all(s >= 1 for s in scales)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_the_log_counts_every_overflowed_step_not_only_the_logged_one(
    monkeypatch, tmp_path, char_data
):
    """Three overflows (steps 1-3) between logs every 4 steps: the row at step 4 counted the
    logged step's flag alone (0)."""
    monkeypatch.setitem(models.FAMILIES, "toy_overflow", "toy_overflow")  # tests/toy_overflow.py
    cfg = tiny_config("model.family=toy_overflow", "train.loss_scale=dynamic", "train.steps=8",
                      "log.every_steps=4", "eval.every_steps=0", "log.progress=false",
                      "optim.warmup_steps=0")  # fmt: skip
    Trainer(cfg, devices=jax.devices()[:1]).fit(tmp_path / "run", char_data)
    rows = [r for r in metrics_lib.read(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    logged = [(r["step"], r["train/overflow"], r["train/overflow_steps"], r["train/loss_scale"])
              for r in rows]  # fmt: skip
    assert logged == [(4, 0.0, 3, 2.0**12), (8, 0.0, 3, 2.0**12)]


def test_runs_without_scaling_keep_the_state_they_had(make_config, char_data):
    trainer = Trainer(make_config(), devices=jax.devices()[:1])
    assert trainer.abstract_state.loss_scale is None
    state, _ = run_steps(trainer, char_data, 1)
    assert state.loss_scale is None


def test_scaled_gradients_of_dict_losses_equal_unscaled_ones():
    """A power-of-two scale is exact in float32: each group's gradient is unchanged."""

    class TwoLosses:
        @staticmethod
        def loss(params, batch, rng, cfg, *, train, step):
            a, b = params["a"], params["b"]
            return {"a": jnp.sum(a * b * batch), "b": jnp.sum((a + 2 * b) ** 2)}, {}

    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([3.0, -1.0])}
    batch = jnp.array([0.5, 4.0])
    plain = ts._loss_and_grads(TwoLosses, None, params, batch, None, 0)[1]
    scaled = ts._loss_and_grads(TwoLosses, None, params, batch, None, 0, None, jnp.float32(1024))[1]
    for group in "ab":
        np.testing.assert_array_equal(scaled[group], plain[group])
    np.testing.assert_array_equal(scaled["a"], params["b"] * batch)


def test_a_float16_run_saved_before_loss_scaling_resumes_without_it(tmp_path, capsys):
    """Its checkpoints hold no scale: resuming with today's default (auto) keeps it unscaled."""
    path = tmp_path / "old"
    f16 = [*SMOKE, "--set", "model.dtype=float16", "--workdir", str(path)]
    assert cli.main([*f16, "--set", "train.loss_scale=none", "--set", "train.steps=2"]) == 0
    saved = json.loads((path / "config.json").read_text())
    del saved["train"]["loss_scale"]  # as written before the key existed
    (path / "config.json").write_text(json.dumps(saved))
    assert workdir.open_run(path).state.loss_scale is None  # eval and sample read it
    assert cli.main([*f16, "--set", "train.steps=4"]) == 0, capsys.readouterr().err
    run = workdir.open_run(path)
    assert run.step == 4 and run.state.loss_scale is None
    assert json.loads((path / "config.json").read_text())["train"]["loss_scale"] == "none"
    # A run saved with its scale resumes with it; asking to drop it is refused (the layout).
    new = [*SMOKE, "--set", "model.dtype=float16", "--workdir", str(tmp_path / "new")]
    assert cli.main([*new, "--set", "train.steps=2"]) == 0
    assert cli.main([*new, "--set", "train.steps=3"]) == 0
    assert workdir.open_run(tmp_path / "new").state.loss_scale is not None
    capsys.readouterr()
    assert cli.main([*new, "--set", "train.steps=4", "--set", "train.loss_scale=none"]) == 2
    assert "train.loss_scale" in capsys.readouterr().err

"""The trainer on the char GPT: golden steps, overfitting, one compile, groups, freezing,
init-from, budgets, the overlapped start (every experiment: tests/test_every_experiment.py)."""

import functools
import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import experiment_config, experiment_data, run_steps

from genzoo import aot
from genzoo import metrics as metrics_lib
from genzoo import train_step as trainer_lib
from genzoo.errors import UserError
from genzoo.trainer import Trainer

# Loss before and after one step of the smoke GPT (seed 1337) on the first generated batch.
GOLDEN_LOSSES = (4.1876783, 4.1671696)


@pytest.fixture(scope="module")
def single_device(make_config):
    return Trainer(make_config(), devices=jax.devices()[:1])


def test_golden_first_steps(single_device, char_data):
    _, losses = run_steps(single_device, char_data, 2)
    np.testing.assert_allclose(losses, GOLDEN_LOSSES, rtol=0, atol=1e-5)


def test_step_compiles_once(single_device, char_data):
    run_steps(single_device, char_data, 1)
    program = single_device.step_program  # compiled ahead of time: memory analysis read
    compiled = program.compiled
    run_steps(single_device, char_data, 3)  # init's state and a step's have the same types
    assert program.compiled is compiled
    assert single_device.train_step._cache_size() == 0  # never traced a second way
    assert 0 < program.temp_bytes < 64 << 20
    assert set(program.seconds) == {"trace", "compile"}


def test_overfits_one_batch(make_config, char_data):
    cfg = make_config(
        "optim.lr=0.01", "optim.warmup_steps=0", "optim.min_lr=0.01", "train.steps=80"
    )
    t = Trainer(cfg, devices=jax.devices()[:1])
    batch = next(char_data.train_iterator(8, seed=0))
    state = t.init_state()
    losses = []
    for _ in range(80):
        state, m = t.step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.6 < losses[0]


# Three steps on one fixed batch without warm-up: the second and third losses exist only if
# the first updates moved the parameters (the warm-up above starts at learning rate 0).
GOLDEN_UPDATED = (4.1876783, 4.1054688, 4.0332704)


def test_golden_losses_after_parameter_updates(make_config, char_data):
    trainer = Trainer(make_config("optim.warmup_steps=0"), devices=jax.devices()[:1])
    state = trainer.init_state()
    batch = next(char_data.train_iterator(trainer.cfg.train.batch_size, trainer.cfg.train.seed))
    losses = []
    for _ in range(3):
        state, metrics = trainer.step(state, batch)
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses, GOLDEN_UPDATED, rtol=0, atol=1e-5)


def test_gpt_parameters_are_sharded_by_logical_rules(make_config):
    many = Trainer(make_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"))
    params = many.init_state().params
    qkv = params["block_0"]["attn"]["qkv_kernel"]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
    wte = params["wte"]["embedding"]
    assert wte.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_grad_accumulation_matches_full_batch(make_config, char_data):
    _, a = run_steps(Trainer(make_config(), devices=jax.devices()[:1]), char_data, 3)
    _, b = run_steps(
        Trainer(make_config("train.grad_accum=2"), devices=jax.devices()[:1]), char_data, 3
    )
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


class _ScalarToy:
    """A toy family of one scalar parameter; subclasses give the loss."""

    @staticmethod
    def init(rng, cfg):
        return {"w": jnp.zeros(())}


def _one_toy_step(family, batch, grad_accum=1):
    """(new state, metrics) of one SGD train step of a toy family from its initial state."""
    tx = optax.sgd(0.1)
    state = trainer_lib.init_state(jax.random.PRNGKey(0), family=family, model_cfg=None, tx=tx,
                                   ema=False)  # fmt: skip
    return trainer_lib.train_step(state, batch, None, family=family, model_cfg=None, tx=tx,
                                  learning_rates=lambda s: {"lr": 0.1}, grad_accum=grad_accum,
                                  ema_decay=0.0)  # fmt: skip


class _Draws(_ScalarToy):
    """The uniform number its key draws, reported per micro-batch (rows 0 and 1)."""

    @staticmethod
    def loss(params, batch, rng, cfg, *, train, step):
        u = jax.random.uniform(rng)
        return params["w"] * u, {"draw_0": u * (batch[0] == 0), "draw_1": u * (batch[0] == 1)}


def test_each_micro_batch_draws_its_own_randomness():
    """Micro-batches with one key would drop the same dropout units in each of them."""
    _, m = _one_toy_step(_Draws, jnp.arange(2), grad_accum=2)
    draws = 2 * float(m["draw_0"]), 2 * float(m["draw_1"])  # each micro-batch's half of the mean
    assert 0 < draws[0] < 1 and 0 < draws[1] < 1 and abs(draws[0] - draws[1]) > 1e-3, draws


class _InfiniteSlope(_ScalarToy):
    """A finite loss (0) whose gradient is not: d sqrt(w) / dw at w = 0."""

    @staticmethod
    def loss(params, batch, rng, cfg, *, train, step):
        return jnp.sqrt(params["w"]), {}


def test_a_step_with_a_finite_loss_but_an_infinite_gradient_changes_nothing():
    new, m = _one_toy_step(_InfiniteSlope, jnp.zeros(2))
    assert float(m["loss"]) == 0.0 and not np.isfinite(float(m["grad_norm"]))
    assert float(m["finite"]) == 0.0
    assert float(new.params["w"]) == 0.0 and int(new.step) == 1  # only the counter moved


def test_gradients_are_clipped_by_global_norm_before_adamw():
    """AdamW scales its first steps' updates by each gradient's size, so a clipped 100x
    gradient followed by a unit one moves the parameters as adamw on the clipped pair does."""
    from genzoo import experiment, optim

    o = experiment.base_config().optim
    o.update(lr=0.1, min_lr=0.1, warmup_steps=0, decay_steps=10, weight_decay=0.0, clip_norm=1.0)
    params = {"w": jnp.zeros((3,))}
    g1, g2 = jnp.array([60.0, 80.0, 0.0]), jnp.array([1.0, 0.0, 0.0])  # norms 100 and 1
    reference = optax.adamw(0.1, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=0.0)

    def two_steps(tx, grads):
        state, moved = tx.init(params), params
        for g in grads:
            updates, state = tx.update({"w": g}, state, moved)
            moved = optax.apply_updates(moved, updates)
        return moved["w"]

    got = two_steps(optim.build(o, params), (g1, g2))
    np.testing.assert_allclose(got, two_steps(reference, (g1 / 100.0, g2)), rtol=1e-5)
    unclipped = two_steps(reference, (g1, g2))
    assert float(jnp.abs(got - unclipped).max()) > 1e-3  # the clip changes where it lands


class _TwoPlayer:
    """A toy family whose two parameter groups each minimise their own loss."""

    @staticmethod
    def loss(params, batch, rng, cfg, *, train, step):
        a, b = params["a"]["w"], params["b"]["w"]
        return {"a": jnp.sum(a * b * batch), "b": jnp.sum((a + 2 * b) ** 2)}, {}


def test_dict_losses_train_each_group_on_its_own_loss():
    params = {"a": {"w": jnp.array([1.0, 2.0])}, "b": {"w": jnp.array([3.0, -1.0])}}
    batch = jnp.array([0.5, 4.0])
    total, grads, aux, _ = trainer_lib._loss_and_grads(_TwoPlayer, None, params, batch, None, 0)
    a, b = params["a"]["w"], params["b"]["w"]
    np.testing.assert_allclose(grads["a"]["w"], b * batch)  # d loss_a / d a only
    np.testing.assert_allclose(grads["b"]["w"], 4 * (a + 2 * b))  # d loss_b / d b only
    np.testing.assert_allclose(total, aux["loss_a"] + aux["loss_b"])


def test_frozen_parameters_do_not_move_and_have_no_optimizer_state(make_config, char_data):
    cfg = make_config("train.trainable=block_1/*,ln_f/*")
    t = Trainer(cfg, devices=jax.devices()[:1])
    state = t.init_state()
    before = jax.device_get(state.params)
    it = char_data.train_iterator(8, 0)
    for _ in range(3):
        state, _ = t.step(state, next(it))
    after = jax.device_get(state.params)
    flat = lambda tree: {
        "/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)
    }
    b, a = flat(before), flat(after)
    trainable = [k for k in b if k.startswith(("block_1/", "ln_f/"))]
    assert trainable and len(trainable) < len(b)
    for key in b:
        if key in trainable:
            assert not np.array_equal(a[key], b[key]), key
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # Adam keeps two moments per trainable parameter and nothing for frozen ones.
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert moments == 2 * sum(b[k].size for k in trainable)


def test_init_from_copies_parameters_and_rejects_other_shapes(make_config, char_data):
    source = Trainer(make_config("train.seed=5"), devices=jax.devices()[:1]).init_state()
    t = Trainer(make_config(), devices=jax.devices()[:1])
    state = t.init_state(jax.device_get(source.params))
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(source.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(state.step) == 0
    assert all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(state.opt_state) if m.ndim)
    wider = Trainer(make_config("model.width=64"), devices=jax.devices()[:1])
    with pytest.raises(UserError, match="do not fit this model"):
        wider.init_state(jax.device_get(source.params))


def test_init_from_sub_trees_fills_only_them_and_checks_each(make_config):
    from genzoo import init_from

    source = jax.device_get(
        Trainer(make_config("train.seed=5"), devices=jax.devices()[:1]).init_state().params
    )
    t = Trainer(make_config(), devices=jax.devices()[:1])
    random = jax.device_get(t.init_state().params)
    extra = {**source["block_1"], "old_head": {"kernel": np.zeros((3, 3), np.float32)}}
    parts = [init_from.Part("block_0", source["block_0"], "a"),
             init_from.Part("block_1", extra, "b")]  # fmt: skip
    params = jax.device_get(t.init_state(parts).params)
    for key in params:
        want = source[key] if key in ("block_0", "block_1") else random[key]
        for x, y in zip(jax.tree.leaves(params[key]), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=key)
    short = {**source["block_0"], "mlp": {"fc_kernel": np.zeros((2, 2), np.float32)}}
    with pytest.raises(UserError, match=r"from a do not fit this model: block_0/mlp/"):
        t.init_state([init_from.Part("block_0", short, "a")])
    with pytest.raises(UserError, match="no sub-tree 'towers'"):
        t.check_params([init_from.Part("towers", source["block_0"], "a")])


def test_init_from_spec_parses_items_and_refuses_overlaps():
    from genzoo import init_from

    assert init_from.parse("runs/a") == [("", "runs/a", "")]
    assert init_from.parse("text=runs/bert, image=runs/vit:encoder/") == [
        ("text", "runs/bert", ""), ("image", "runs/vit", "encoder")]  # fmt: skip
    for bad in ("text=", "=runs/a", "text=runs/a,runs/b", "a=x,a/b=y", "a=x,a=y"):
        with pytest.raises(UserError):
            init_from.parse(bad)


def test_max_seconds_stops_early_with_a_checkpoint_and_an_evaluation(tmp_path):
    """A wall-time budget ends the run like its last step: evaluated, saved, resumable."""
    overrides = ("train.steps=50", "train.max_seconds=1e-6", "eval.every_steps=25",
                 "checkpoint.every_steps=25", "log.progress=false")  # fmt: skip
    cfg = experiment_config("gpt_shakespeare_char", *overrides)
    state = Trainer(cfg, devices=jax.devices()[:1]).fit(
        tmp_path, experiment_data("gpt_shakespeare_char")
    )
    assert int(state.step) == 1  # the budget was spent by the first step
    assert (tmp_path / "checkpoints" / "1").is_dir()
    rows = metrics_lib.read(tmp_path / "metrics.jsonl")
    assert any(r["step"] == 1 and np.isfinite(r["val/loss"]) for r in rows if "val/loss" in r)
    # The same run without a budget continues from that checkpoint.
    cfg = experiment_config("gpt_shakespeare_char", *overrides[:1], *overrides[2:])
    state = Trainer(cfg, devices=jax.devices()[:1]).fit(
        tmp_path, experiment_data("gpt_shakespeare_char")
    )
    assert int(state.step) == 50
    firsts = [r["step"] for r in metrics_lib.read(tmp_path / "metrics.jsonl")
              if "perf/first_step_seconds" in r]  # fmt: skip
    assert firsts == [1, 2]  # the second launch's first step was step 2: it resumed


def test_overlapped_start_trains_as_the_serial_one(tmp_path, monkeypatch):
    """The initial state built on a second thread (and the eval step compiled on a third
    beside the train step's compile, as with 4 or more cores, or on the second while training
    runs) gives the run a serial start gives, step for step; one train-step compile each way.
    With two workers the eval step's compile has begun before the train step's has ended."""
    # On the 2x2x2 mesh: the traces on two threads each need the mesh and the logical rules
    # (thread-local contexts), or a constraint would resolve against nothing.
    overrides = ("train.steps=4", "eval.every_steps=2", "log.progress=false", "mesh.data=2",
                 "mesh.fsdp=2", "mesh.tensor=2")  # fmt: skip
    eval_started, seen = threading.Event(), []
    precompile, precompile_eval = Trainer._precompile, Trainer._precompile_eval

    def precompile_spy(self, batch):
        precompile(self, batch)
        seen.append(eval_started.wait(60) if aot.start_workers() > 1 else None)

    def precompile_eval_spy(self, data):
        eval_started.set()
        precompile_eval(self, data)

    monkeypatch.setattr(Trainer, "_precompile", precompile_spy)
    monkeypatch.setattr(Trainer, "_precompile_eval", precompile_eval_spy)
    results = []
    for overlap, workers in (("1", 2), ("1", 1), ("0", 1)):
        monkeypatch.setenv("GENZOO_OVERLAP", overlap)
        monkeypatch.setattr(aot, "start_workers", lambda workers=workers: workers)
        eval_started.clear()
        trainer = Trainer(experiment_config("gpt_shakespeare_char", *overrides))
        assert dict(trainer.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
        run = tmp_path / f"{overlap}_{workers}"
        state = trainer.fit(run, experiment_data("gpt_shakespeare_char"))
        losses = [(r["step"], r["val/loss"]) for r in metrics_lib.read(run / "metrics.jsonl")
                  if "val/loss" in r]  # fmt: skip
        results.append((jax.device_get(state.params), losses))
        assert trainer.step_program.compiled is not None and trainer.eval_program.compiled
    assert seen == [True, None, None]
    (params_a, losses_a), *others = results
    assert [s for s, _ in losses_a] == [2, 4]
    for params_b, losses_b in others:
        assert losses_a == losses_b
        jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_program_compiles_again_for_other_argument_types():
    program = aot.Program(jax.jit(lambda x: x * 2), "double")
    program.compile(jax.ShapeDtypeStruct((3,), jnp.float32))  # ahead, from shapes
    first = program.compiled
    np.testing.assert_array_equal(program(jnp.ones(3)), 2 * np.ones(3))
    assert program.compiled is first and program.temp_bytes is not None
    np.testing.assert_array_equal(program(jnp.ones(4, jnp.int32)), 2 * np.ones(4))  # recompiled
    second = program.compiled
    assert second is not first
    for _ in range(3):  # alternating types (a smaller last batch, say) reuse both executables
        program(jnp.ones(3)), program(jnp.ones(4, jnp.int32))
    assert program.compiled is second and len(program._by_types) == 2
    failed = aot.Inline().submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result()


def test_initial_state_compiled_for_speed_of_compiling_is_the_same_bit_for_bit(single_device):
    """The trainer compiles the initial state at LLVM level 1 on CPU (aot.run_once_options):
    the values equal plain jit's exactly; trace on one thread, compile on another."""
    from concurrent.futures import ThreadPoolExecutor

    from genzoo.train_step import init_state

    t = single_device
    key = jax.random.PRNGKey(t.cfg.train.seed)
    plain = jax.jit(functools.partial(init_state, family=t.family, model_cfg=t.model_cfg,
                                      tx=t.tx, ema=False))(key)  # fmt: skip
    assert t._init.compiler_options == {"xla_backend_optimization_level": 1}
    program = aot.Program(t._init.fn, "init", compiler_options=t._init.compiler_options)
    finish = program.trace(key)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(finish).result()
    assert program.seconds["compile"] > 0 and program.compiled is not None
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(program(key).params),
                 jax.device_get(plain.params))  # fmt: skip


def test_a_log_file_gets_progress_lines_not_bar_redraws(capsys):
    """Where stderr is no terminal (a Slurm log, nohup) tqdm's redraws piled up; a line every
    interval says the step, rate, time left and loss instead, and eval lines go to stdout."""
    from genzoo import metrics

    bar = metrics.progress_bar(10, 2, enabled=True)  # capsys: stderr is not a terminal
    assert isinstance(bar, metrics.LogLines)
    bar.interval = 0.0
    bar.set_postfix(loss="1.5000", refresh=False)
    bar.update(1)
    bar.write("step 3: validation loss 1.4")
    out, err = capsys.readouterr()
    assert out == "step 3: validation loss 1.4\n"
    assert re.fullmatch(r"step 3/10 \(30%\), [\d.e+]+ step/s, 0:00:\d\d left, loss 1\.5000\n", err)
    bar.interval = 3600.0
    bar.update(1)  # within the interval: nothing
    assert capsys.readouterr() == ("", "")
    assert not isinstance(metrics.progress_bar(10, 0, enabled=False), metrics.LogLines)

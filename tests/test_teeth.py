"""Tests that catch plausible small bugs (each named after the mutation it kills)."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_config

from genzoo import optim
from genzoo.models import hmm
from genzoo.trainer import Trainer


def test_weight_decay_mask_is_false_exactly_for_1d_parameters(make_config):
    trainer = Trainer(make_config(), devices=jax.devices()[:1])
    params = trainer.abstract_state.params
    mask = optim.decay_mask(params)
    for (path, leaf), decay in zip(jax.tree_util.tree_leaves_with_path(params),
                                   jax.tree.leaves(mask), strict=True):  # fmt: skip
        assert decay == (leaf.ndim >= 2), optim.param_path(path)
    names = {optim.param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert "block_0/ln_1/LayerNorm_0/scale" in names and "block_0/attn/qkv_bias" in names


def test_adam_moments_are_sharded_like_their_parameters_and_mlp_over_tensor(make_config):
    many = Trainer(make_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"))
    state = many.init_state()
    P = jax.sharding.PartitionSpec
    mlp = state.params["block_0"]["mlp"]
    assert mlp["fc"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert mlp["proj"]["kernel"].sharding.spec == P("tensor", "fsdp")
    by_path = {optim.param_path(p): x.sharding.spec
               for p, x in jax.tree_util.tree_leaves_with_path(state.params)}  # fmt: skip
    checked = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
        keys = optim.param_path(path).split("/")
        for start in range(len(keys)):
            suffix = "/".join(keys[start:])
            if suffix in by_path and leaf.ndim >= 1:
                assert leaf.sharding.spec == by_path[suffix], suffix
                checked += 1
                break
    assert checked >= 2 * len(by_path)  # mu and nu of every parameter


def test_hmm_eval_sums_score_the_same_windows_as_token_log_probs():
    cfg = tiny_config(name="hmm_shakespeare_char")
    from genzoo import data

    d = data.load(cfg.data)
    params = jax.tree.map(np.asarray, Trainer(cfg, devices=jax.devices()[:1]).init_state().params)
    batch = next(d.eval_batches("validation", 4))
    sums = hmm.eval_sums(params, batch, jax.random.PRNGKey(0), cfg.model)
    windows = np.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1)
    log_p = np.asarray(hmm.token_log_probs(params, windows, cfg.model))
    np.testing.assert_allclose(float(sums["nll"]), -(log_p * batch["mask"]).sum(), rtol=1e-5)


def test_the_step_rng_differs_between_steps(make_config, char_data):
    # Dropout must draw new masks every step: with dropout on, two steps on the same batch
    # from the same state differ only through the rng folded with the step.
    trainer = Trainer(make_config("model.dropout=0.5"), devices=jax.devices()[:1])
    state = trainer.init_state()
    batch = next(char_data.train_iterator(8, 0))
    from genzoo.train_step import _loss_and_grads

    # Jitted once: op by op, the backward pass compiled each of its ops (~25 s).
    loss_at = jax.jit(lambda params, batch, step: _loss_and_grads(
        trainer.family, trainer.model_cfg, params, batch, jax.random.fold_in(state.rng, step),
        step)[0])  # fmt: skip
    loss = lambda step: float(loss_at(state.params, batch, jnp.int32(step)))
    first, second = loss(0), loss(1)
    assert first != second
    _, metrics = trainer.step(state, batch)  # donates `state`: computed above, not after
    np.testing.assert_allclose(float(metrics["loss"]), first, rtol=1e-6)


def test_an_odd_vocabulary_trains_on_a_2x2x2_mesh(char_data):
    # The generated corpus has tiny Shakespeare's 65 symbols, which divide over no `tensor`
    # axis of 2: the model pads its vocabulary, so this must step, not crash.
    assert char_data.tokenizer.vocab_size == 65
    cfg = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    trainer = Trainer(cfg)
    state, metrics = trainer.step(trainer.init_state(), next(char_data.train_iterator(8, 0)))
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1


def test_every_planted_mutant_still_finds_its_snippet():
    """`make mutants` plants each bug by replacing a snippet; code that moves on would leave
    a mutant STALE (planting nothing) until someone runs the slow target. Each snippet is in
    its file exactly once, and the tests named to kill it exist."""
    from pathlib import Path

    from mutant_list import MUTANTS

    root = Path(__file__).resolve().parent.parent
    for name, path, before, _, tests in MUTANTS:
        assert (root / path).read_text().count(before) == 1, f"{name}: {path}"
        for test in tests.split():
            assert (root / test.split("::")[0]).is_file(), f"{name}: {test}"

"""`model.scan_layers` on GPT: a Transformer's blocks as one `lax.scan` give the unrolled stack's
loss and gradients, rematerialise, draw dropout, and shard over a mesh like it (every family's
loss and gradients: tests/test_every_experiment.py)."""

import jax
import numpy as np
from conftest import experiment_config, experiment_data, experiment_deps, run_steps

from genzoo import executables, experiment
from genzoo.models import gpt
from genzoo.trainer import Trainer

CFG = dict(vocab_size=65, block_size=32, num_layers=3, num_heads=2, width=32)


def _gpt_loss(params, tokens_BxL, rng, **extra):
    logits_BxLxV, _ = gpt.GPT(gpt.GPTConfig(**CFG, **extra)).apply(
        {"params": params}, tokens_BxL, deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng},
    )  # fmt: skip
    return jax.nn.log_softmax(logits_BxLxV).mean()


def test_scanned_blocks_rematerialise_and_draw_dropout_from_the_key():
    params = gpt.init(jax.random.PRNGKey(0), CFG)
    tokens_BxL = jax.random.randint(jax.random.PRNGKey(1), (2, 32), 0, 65)
    grad = jax.jit(jax.value_and_grad(_gpt_loss), static_argnums=(2,))
    loss0, grads0 = grad(params, tokens_BxL, None)
    with_remat = jax.jit(jax.value_and_grad(
        lambda p, t: _gpt_loss(p, t, None, scan_layers=True, remat="dots")))  # fmt: skip
    loss1, grads1 = with_remat(params, tokens_BxL)
    assert str(jax.make_jaxpr(with_remat)(params, tokens_BxL)).count("remat2[") == 1
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    for g0, g1 in zip(jax.tree.leaves(grads0), jax.tree.leaves(grads1), strict=True):
        np.testing.assert_allclose(g1, g0, atol=1e-7, rtol=1e-5)

    # With dropout: masks from the key (the same key, the same loss; another key, another).
    drop = jax.jit(lambda p, t, k: _gpt_loss(p, t, k, dropout=0.3, scan_layers=True))
    key = jax.random.PRNGKey(2)
    a, b = drop(params, tokens_BxL, key), drop(params, tokens_BxL, key)
    assert float(a) == float(b) and float(a) != float(drop(params, tokens_BxL, key + 1))
    assert abs(float(a) - float(loss0)) > 1e-4  # dropout is on


def test_scanned_blocks_on_eight_devices_match_unrolled_on_one():
    name = "gpt_shakespeare_char"
    make = lambda *o, devices=None: Trainer(  # noqa: E731
        cfg := experiment_config(name, "model.dropout=0.0", *o), devices=devices,
        deps=experiment_deps(name), executables=executables.in_memory(cfg),
    )  # fmt: skip
    one = make(devices=jax.devices()[:1])
    many = make("model.scan_layers=true", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    _, a = run_steps(one, experiment_data(name), 3)
    _, b = run_steps(many, experiment_data(name), 3)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-6)
    assert a[-1] < a[0]


def test_a_run_may_switch_scanning_on_resume():
    a = experiment.load("gpt_shakespeare_char", "smoke")
    b = experiment.load("gpt_shakespeare_char", "smoke", ["model.scan_layers=true"])
    assert experiment.resume_conflicts(a, b) == []

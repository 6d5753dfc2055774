"""The optimizers `optim.name` offers: each minimises, each decays exactly the matrices by
lr * weight_decay per step (decoupled, as AdamW), and a factored one shards and trains on a
mesh like on one device."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import run_steps

from genzoo import experiment, optim
from genzoo.trainer import Trainer

NAMES = [n for n in optim.OPTIMIZERS if n != "em"]  # EM needs a model of expected counts
LR = {"adamw": 0.05, "adafactor": 0.05, "lion": 0.01, "sgd": 0.05}


def _config(optimizer, **fields):
    o = ml_collections.ConfigDict(experiment.base_config().optim)
    o.update(
        {
            "name": optimizer,
            "lr": LR[optimizer],
            "min_lr": LR[optimizer],
            "warmup_steps": 0,
            "decay_steps": 10_000,
            "clip_norm": 0.0,
            "weight_decay": 0.0,
            **fields,
        }
    )
    return o


def _params():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_each_optimizer_minimises_a_least_squares_problem(name):
    rng = np.random.default_rng(1)
    x, target = rng.normal(size=(64, 8)), rng.normal(size=(64, 8))
    loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - target) ** 2)  # noqa: E731
    params = _params()
    best = float(loss(jax.tree.map(jnp.asarray, _least_squares(x, target))))
    start = float(loss(params))
    params = optim.minimise(loss, params, optim.build(_config(name), params), 300)
    assert float(loss(params)) - best < 0.05 * (start - best), name


def _least_squares(x, target):
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    return {"w": solution[:-1].astype(np.float32), "b": solution[-1].astype(np.float32)}


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_is_lr_times_decay_on_matrices_only(name):
    """With zero gradients only the decay moves the weights: w <- w (1 - lr wd) each step,
    biases untouched. optax.adafactor adds its decay after the learning rate (0.1 took 10%
    of every weight a step). SGD's decay is PyTorch's, through the momentum: off here."""
    params = _params()
    tx = optim.build(_config(name, weight_decay=0.1, b1=0.0 if name == "sgd" else 0.9), params)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):
        updates, state = tx.update(zeros, state, params)
        params = optax.apply_updates(params, updates)
    shrink = (1 - LR[name] * 0.1) ** 3
    np.testing.assert_allclose(params["w"], _params()["w"] * shrink, rtol=1e-5)
    np.testing.assert_array_equal(params["b"], _params()["b"])


def test_an_unknown_optimizer_names_the_known_ones():
    from genzoo.errors import UserError

    with pytest.raises(UserError, match="unknown optimizer 'adam' .known: adamw, lion, adafactor"):
        optim.build(_config("adamw", **{"name": "adam"}), _params())  # Adam is adamw here


def test_adafactor_trains_alike_on_eight_devices_and_one(make_config, char_data):
    """Its factored moments are not shaped like their parameters: they must still place
    and update on an fsdp x tensor mesh as on one device."""
    settings = ("optim.name=adafactor", "optim.warmup_steps=0", "optim.lr=0.003")
    one = Trainer(make_config(*settings), devices=jax.devices()[:1])
    many = Trainer(make_config(*settings, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"))
    _, a = run_steps(one, char_data, 4)
    _, b = run_steps(many, char_data, 4)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert b[-1] < b[0]

"""Magnitude pruning: the schedule, exact sparsity per layer or globally, frozen weights kept."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genzoo import cli, pruning, workdir


def _params(rng):
    return {
        "a": {"kernel": jnp.asarray(rng.normal(size=(40, 50)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=(50,)), jnp.float32)},
        "b": {"kernel": jnp.asarray(rng.normal(size=(50, 30)) * 3.0, jnp.float32)},
        "embed": {"embedding": jnp.asarray(rng.normal(size=(20, 40)), jnp.float32)},
    }  # fmt: skip


def test_the_cubic_schedule_rises_from_begin_to_end():
    target = pruning.schedule(0.8, 10, 110)
    values = [float(target(t)) for t in (0, 10, 35, 60, 110, 500)]
    assert values[0] == values[1] == 0.0 and values[-2] == values[-1] == pytest.approx(0.8)
    assert values[2] > 0.8 * 0.25 and np.all(np.diff(values) >= 0)  # front-loaded


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruning_reaches_the_sparsity_and_keeps_it(scope):
    rng = np.random.default_rng(0)
    params = _params(rng)
    tx = optax.chain(optax.sgd(1e-2),
                     pruning.magnitude_pruning(0.6, 2, 12, 5, scope, pruning.kernels))  # fmt: skip
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(30):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if step == 20:
            zeros_then = jax.tree.map(lambda p: p == 0, params)
    a, b = params["a"]["kernel"], params["b"]["kernel"]
    total = (np.sum(a == 0) + np.sum(b == 0)) / (a.size + b.size)
    assert total == pytest.approx(0.6, abs=2e-3)
    if scope == "layer":
        assert np.mean(a == 0) == pytest.approx(0.6, abs=1e-3)
        assert np.mean(b == 0) == pytest.approx(0.6, abs=1e-3)
    else:  # one threshold: the small-valued layer gives up more
        assert np.mean(a == 0) > 0.7 > 0.5 > np.mean(b == 0)
    assert not np.any(params["a"]["bias"] == 0) and not np.any(params["embed"]["embedding"] == 0)
    # After the last renewal the same weights stay pruned whatever the gradients say.
    for now, then in zip(jax.tree.leaves(params), jax.tree.leaves(zeros_then), strict=True):
        np.testing.assert_array_equal(now == 0, then)


def test_fine_tuning_prunes_only_the_trained_kernels(char_run, tmp_path):
    base, tuned = char_run, tmp_path / "tuned"
    args = ["train", "gpt_shakespeare_char", "--variant", "smoke", "--set", "log.progress=false"]
    assert cli.main([*args, "--workdir", str(tuned), "--init-from", str(base),
                     "--set", "train.trainable=block_1/*", "--set", "optim.prune_sparsity=0.5",
                     "--set", "optim.prune_every=2"]) == 0  # fmt: skip
    before, after = workdir.open_run(base).params, workdir.open_run(tuned).params
    assert pruning.sparsity(after["block_1"]) == pytest.approx(0.5, abs=1e-3)
    for x, y in zip(jax.tree.leaves(before["block_0"]), jax.tree.leaves(after["block_0"]),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(x, y)

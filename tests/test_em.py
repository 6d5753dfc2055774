"""Baum-Welch EM for the HMM: gradients are expected counts, and EM never lowers the likelihood."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genzoo import cli, em, workdir
from genzoo.models import hmm

CFG = dict(vocab_size=12, num_states=5, init_scale=1.0, expected_counts=True)
B, L = 6, 30


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    window = rng.integers(0, 12, (B, L + 1)).astype(np.int32)
    window[:, ::3] = window[:, ::3] % 3  # some structure for the states to find
    return {"inputs": window[:, :-1], "targets": window[:, 1:], "mask": np.ones((B, L), np.float32)}


def _log_likelihood(params, batch) -> float:
    """Total log p(x) of the batch's windows (first token included)."""
    c_BxT, _ = hmm.forward(params, hmm._windows(batch))
    return float(jnp.sum(c_BxT))


def test_count_gradients_are_expected_counts():
    params = nn.unbox(hmm.init(jax.random.PRNGKey(0), CFG))
    batch = _batch()
    grads = jax.grad(lambda p: hmm.loss(p, batch, None, CFG)[0])(params)
    counts = jax.tree.map(lambda g: -g * B * L, grads)  # the loss is a mean over B * L
    assert np.all(np.asarray(counts["emission_SxV"]) >= -1e-5)
    np.testing.assert_allclose(counts["initial_S"].sum(), B, rtol=1e-5)  # one start per row
    np.testing.assert_allclose(counts["transition_SxS"].sum(), B * L, rtol=1e-5)
    np.testing.assert_allclose(counts["emission_SxV"].sum(), B * (L + 1), rtol=1e-5)
    # Emissions of symbol v add up to how often v occurs.
    window = hmm._windows(batch)
    occurrences = np.bincount(np.asarray(window).ravel(), minlength=12)
    np.testing.assert_allclose(counts["emission_SxV"].sum(0), occurrences, atol=1e-3)


def test_an_em_step_never_lowers_the_likelihood():
    params = nn.unbox(hmm.init(jax.random.PRNGKey(1), CFG))
    batch = _batch(1)
    tx = em.em(power=0.0, smoothing=0.0)  # plain batch EM
    state = tx.init(params)
    grad = jax.jit(jax.grad(lambda p: hmm.loss(p, batch, None, CFG)[0]))
    history = [_log_likelihood(params, batch)]
    for _ in range(15):
        updates, state = tx.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
        history.append(_log_likelihood(params, batch))
    assert np.all(np.diff(history) >= -1e-3), history
    assert history[-1] > history[0] + 10.0, history  # and it does climb


def test_em_trains_through_the_cli(tmp_path, capsys):
    run = tmp_path / "em"
    argv = ["train", "hmm_shakespeare_char", "--variant", "smoke", "--workdir", str(run),
            "--set", "optim.name=em", "--set", "model.expected_counts=true",
            "--set", "train.steps=20", "--set", "log.progress=false"]  # fmt: skip
    assert cli.main(argv) == 0
    r = workdir.open_run(run)
    figures = r.trainer.evaluate(r.params, r.data)
    assert np.isfinite(figures["loss"]) and figures["loss"] < np.log(65) - 0.5
    assert cli.main([*argv[:-6], "--set", "optim.name=em", "--workdir", str(tmp_path / "x")]) == 2
    assert "go together" in capsys.readouterr().err

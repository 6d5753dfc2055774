"""Memory-saving switches of the GPT step: the same numbers, less memory (XLA's own count)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from genzoo.errors import UserError
from genzoo.models import gpt

CFG = dict(vocab_size=4000, block_size=64, num_layers=2, num_heads=2, width=64, dropout=0.1)
B, L = 8, 64


@pytest.fixture(scope="module")
def setup():
    params = jax.tree.map(jnp.asarray, gpt.init(jax.random.PRNGKey(0), CFG))
    rng = np.random.default_rng(0)
    batch = {
        "inputs": rng.integers(0, 4000, (B, L), dtype=np.int32),
        "targets": rng.integers(0, 4000, (B, L), dtype=np.int32),
        "mask": (rng.random((B, L)) > 0.1).astype(np.float32),
    }
    return params, batch


def _grad_fn(extra):
    return _grad_fn_for(tuple(sorted(extra.items())))


@functools.cache  # the plain step is every case's reference: traced and compiled once
def _grad_fn_for(extra: tuple):
    cfg = {**CFG, **dict(extra)}
    return jax.jit(jax.value_and_grad(lambda p, b: gpt.loss(p, b, jax.random.PRNGKey(1), cfg)[0]))


def _eval_sums(params, batch, extra):
    return _eval_fn_for(tuple(sorted(extra.items())))(params, batch)


@functools.cache  # jitted once per switch: op by op, the chunked loop's ops compiled one by one
def _eval_fn_for(extra: tuple):
    return jax.jit(lambda p, b: gpt.eval_sums(p, b, None, {**CFG, **dict(extra)}))


@pytest.mark.parametrize(
    "extra",
    [dict(loss_chunk=16), dict(remat="full"), dict(remat="dots", loss_chunk=8)],
    ids=str,
)
def test_chunked_loss_and_remat_give_the_same_loss_and_gradients(setup, extra):
    params, batch = setup
    loss0, grads0 = _grad_fn({})(params, batch)
    loss1, grads1 = _grad_fn(extra)(params, batch)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    for g0, g1 in zip(jax.tree.leaves(grads0), jax.tree.leaves(grads1), strict=True):
        np.testing.assert_allclose(g1, g0, atol=1e-7, rtol=1e-5)
    sums0, sums1 = _eval_sums(params, batch, {}), _eval_sums(params, batch, extra)
    np.testing.assert_allclose(sums1["nll"], sums0["nll"], rtol=1e-6)


def _temp_bytes(setup, extra) -> int:
    params, batch = setup
    return _grad_fn(extra).lower(params, batch).compile().memory_analysis().temp_size_in_bytes


def test_chunked_loss_cuts_the_steps_temporary_memory(setup):
    plain = _temp_bytes(setup, {})
    chunked = _temp_bytes(setup, dict(loss_chunk=8))
    # Float32 logits [8, 64, 4000] are 8 MiB (twice over with their gradient); chunks of 8
    # positions keep 1 MiB of them at a time.
    assert chunked < 0.6 * plain, (plain, chunked)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_wraps_every_block(setup, policy):
    # XLA:CPU schedules recomputation early, so its memory count does not show remat's saving
    # (see docs/design.md); what can be checked here is that every block is rematerialised.
    params, batch = setup
    grad = _grad_fn(dict(remat=policy))
    text = str(jax.make_jaxpr(grad)(params, batch))
    assert text.count("remat2[") == CFG["num_layers"], text[:2000]


def test_bad_switches_are_user_errors():
    with pytest.raises(UserError, match="remat"):
        gpt.GPTConfig.from_cfg({**CFG, "remat": "some"})
    with pytest.raises(UserError, match="loss_chunk"):
        gpt.check_config(ml_collections.ConfigDict({**CFG, "loss_chunk": 24}), {"inputs": (64,)})

"""The Pallas flash-attention kernels (`layers.flash`), interpreted on CPU, and their Triton
lowering for CUDA (what a GPU would compile), checked without a GPU."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genzoo.layers import Attention, flash
from genzoo.layers.dropout import quantized_rate


def _reference(q, k, v, seed, causal, rate):
    """Softmax attention [B, L, H, K] written plainly, dropout from the kernels' own mask."""
    B, L, H, K = q.shape
    s = jnp.einsum("blhk,bthk->bhlt", q, k, precision="highest") / math.sqrt(K)
    if causal:
        s = jnp.where(jnp.tril(jnp.ones((L, L), bool)), s, -jnp.inf)
    p = jax.nn.softmax(s, -1)
    if rate:
        p = jnp.where(flash.keep_mask(seed, rate, B, H, L), p / (1 - quantized_rate(rate)), 0)
    return jnp.einsum("bhlt,bthk->blhk", p, v, precision="highest")


@pytest.mark.parametrize("causal,rate", [(True, 0.0), (True, 0.2), (False, 0.1)])
def test_kernels_equal_plain_attention_values_and_gradients(monkeypatch, causal, rate):
    """Three query blocks of six key blocks forward, three blocks backward (so the online
    softmax crosses blocks and the causal bounds skip some), dropout included: outputs and
    q/k/v gradients to 1e-5."""
    monkeypatch.setattr(flash, "_BLOCK_FWD", 32)
    monkeypatch.setattr(flash, "_BLOCK_KEYS", 16)
    B, L, H, K = 2, 96, 2, 16
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, dout = (jax.random.normal(key, (B, L, H, K)) for key in keys)
    seed = jnp.uint32(12345)

    def grads(fn):
        return jax.grad(lambda *qkv: (fn(*qkv) * dout).sum(), argnums=(0, 1, 2))(q, k, v)

    kernel = lambda q, k, v: flash.attention(q, k, v, seed, causal, rate, True)  # noqa: E731
    plain = lambda q, k, v: _reference(q, k, v, seed, causal, rate)  # noqa: E731
    want = plain(q, k, v)
    np.testing.assert_allclose(kernel(q, k, v), want, atol=1e-5 * np.abs(want).max())
    for got, want in zip(grads(kernel), grads(plain), strict=True):
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_kernel_masks_keep_the_quantised_rate_and_are_independent_across_heads_and_seeds():
    """The counter hash as a dropout source: the kept share is 1 - quantized_rate within
    sampling error, and two heads, two seeds or neighbouring keys agree as often as two
    independent draws do (p^2 + (1 - p)^2)."""
    p = 1 - quantized_rate(0.2)
    mask = np.asarray(flash.keep_mask(jnp.uint32(7), 0.2, 2, 4, 256))
    other = np.asarray(flash.keep_mask(jnp.uint32(8), 0.2, 2, 4, 256))
    n = mask.size
    assert abs(mask.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
    independent = p * p + (1 - p) ** 2
    tol = 5 * math.sqrt(independent * (1 - independent) / (n / 8))
    for a, b in [
        (mask[:, 0], mask[:, 1]),  # heads
        (mask[0], mask[1]),  # batch rows
        (mask, other),  # seeds
        (mask[..., :-1], mask[..., 1:]),  # neighbouring keys
        (mask[..., :-1, :], mask[..., 1:, :]),  # neighbouring queries
    ]:
        assert abs((a == b).mean() - independent) < tol


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower_to_triton_for_cuda(dtype):
    """What a GPU session would find first: Pallas lowers both kernels (dropout on) to Triton
    for CUDA, here on CPU (the step after, PTX, needs the GPU)."""
    q = jax.ShapeDtypeStruct((4, 256, 6, 64), dtype)

    def loss(q, k, v, seed):
        return flash.attention(q, k, v, seed, True, 0.2).astype(jnp.float32).sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    lowered = grad.trace(q, q, q, jax.ShapeDtypeStruct((), jnp.uint32))
    text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2  # forward and backward


def test_attention_takes_the_kernels_with_genzoo_attention_pallas(monkeypatch):
    """`GENZOO_ATTENTION=pallas`: the same outputs and gradients as the default path without
    dropout; with dropout a pure function of the rng (same key, same output; another key,
    another mask), averaging to the exact output. Padding keeps the XLA path."""
    attn = Attention(num_heads=2, head_dim=16, mode="causal", dropout_rate=0.3)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 32))
    params = attn.init(jax.random.PRNGKey(1), x)

    def run(how, *, dropout=False, valid=None):
        """A jitted (output, gradients) of the rng, traced under `how`."""
        monkeypatch.setenv("GENZOO_ATTENTION", how)

        def loss(params, rng):
            out = attn.apply(params, x, key_valid_BxT=valid, deterministic=not dropout,
                             rngs={"dropout": rng})[0]  # fmt: skip
            return (out * jnp.cos(jnp.arange(32.0))).sum(), out

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        step(params, jax.random.PRNGKey(0))  # traced now, under this environment

        def output_and_grads(rng):
            (_, out), grads = step(params, rng)
            return np.asarray(out), grads

        return output_and_grads

    rng = jax.random.PRNGKey(3)
    exact, grads = run("auto")(rng)
    kernel, kernel_grads = run("pallas")(rng)
    np.testing.assert_allclose(kernel, exact, atol=1e-5 * np.abs(exact).max())
    for got, want in zip(jax.tree.leaves(kernel_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    dropped = run("pallas", dropout=True)
    keys = jax.random.split(rng, 66)
    a, again, b = (dropped(r)[0] for r in (keys[0], keys[0], keys[1]))
    scale = np.abs(exact).mean()
    assert np.array_equal(a, again) and np.abs(a - b).mean() > 0.2 * scale
    mean = np.mean([dropped(r)[0] for r in keys[2:]], 0)
    assert np.abs(mean - exact).mean() < 0.25 * scale
    valid = jnp.arange(64)[None] < jnp.array([[64], [40]])
    padded = run("pallas", valid=valid)(rng)[0]
    np.testing.assert_array_equal(padded, run("auto", valid=valid)(rng)[0])


def test_supports_only_shapes_that_tile_into_powers_of_two():
    shape = lambda L, K=64: jax.ShapeDtypeStruct((2, L, 4, K), jnp.float32)  # noqa: E731
    assert flash.supports(shape(256), shape(256)) and flash.supports(shape(384), shape(384))
    assert not flash.supports(shape(96), shape(96))  # one 96-row tile: not a power of two
    assert not flash.supports(shape(256, 48), shape(256, 48))  # head width
    assert not flash.supports(shape(128), shape(256))  # not self-attention

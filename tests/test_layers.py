"""The shared attention layer: masks really mask, causality, cross-attention reads its source."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genzoo.layers import Attention, TransformerBlock, dots
from genzoo.layers.dropout import Dropout, keep_mask, quantized_rate

B, L, S, D, H = 2, 6, 5, 16, 4


def _apply(module, *args, **kw):
    params = module.init(jax.random.PRNGKey(0), *args, **kw)
    return lambda *a, **k: module.apply(params, *a, **k)[0]


@pytest.mark.parametrize("post_ln", [False, True])
def test_padding_really_masks(post_ln):
    block = TransformerBlock(num_heads=H, mlp_hidden=32, mode="bidirectional", post_ln=post_ln)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, L, D))
    valid = jnp.arange(L)[None] < jnp.array([[4], [6]])
    f = _apply(block, x, key_valid_BxL=valid)
    noisy = x.at[0, 4:].set(100.0)  # change row 0's padded positions only
    out, out_noisy = f(x, key_valid_BxL=valid), f(noisy, key_valid_BxL=valid)
    np.testing.assert_allclose(out[0, :4], out_noisy[0, :4], atol=1e-5)
    assert not np.allclose(f(x)[0, :4], out[0, :4])  # without the mask, padding matters


def test_causal_self_attention_by_gradients():
    attn = Attention(num_heads=H, head_dim=D // H, mode="causal")
    x = jax.random.normal(jax.random.PRNGKey(2), (1, L, D))
    f = _apply(attn, x)
    jac = jax.jacobian(lambda x: f(x)[0].sum(-1))(x)[:, 0]  # d out[t] / d x[t'], [L, L, D]
    influence = np.abs(np.asarray(jac)).sum(-1)
    assert np.all(influence[np.triu_indices(L, 1)] == 0)  # no future position matters
    assert np.all(influence[np.tril_indices(L)] > 0)


def test_bidirectional_attention_sees_the_future():
    attn = Attention(num_heads=H, head_dim=D // H, mode="bidirectional")
    x = jax.random.normal(jax.random.PRNGKey(3), (1, L, D))
    f = _apply(attn, x)
    jac = jax.jacobian(lambda x: f(x)[0, 0].sum())(x)  # output at t=0
    assert np.abs(np.asarray(jac)[0, -1]).sum() > 0


def test_cross_attention_reads_the_source_and_its_mask():
    attn = Attention(num_heads=H, head_dim=D // H, mode="cross")
    x = jax.random.normal(jax.random.PRNGKey(4), (B, L, D))
    memory = jax.random.normal(jax.random.PRNGKey(5), (B, S, D))
    valid = jnp.arange(S)[None] < 3
    f = _apply(attn, x, memory_BxSxD=memory)
    out = f(x, memory_BxSxD=memory, key_valid_BxT=valid)
    changed = memory.at[:, 0].add(1.0)
    assert not np.allclose(out, f(x, memory_BxSxD=changed, key_valid_BxT=valid))
    padded_changed = memory.at[:, 3:].add(50.0)
    np.testing.assert_allclose(out, f(x, memory_BxSxD=padded_changed, key_valid_BxT=valid),
                               atol=1e-5)  # fmt: skip


def test_gelu_matches_jax_exact_gelu_in_value_and_gradient():
    from genzoo.layers.basic import _gelu_erf as gelu  # what `gelu` is on CPU

    x = jnp.linspace(-12.0, 12.0, 20_001)
    exact = lambda v: jax.nn.gelu(v, approximate=False)  # noqa: E731
    np.testing.assert_allclose(gelu(x), exact(x), atol=2e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(x), jax.vmap(jax.grad(exact))(x), atol=1e-6)
    assert float(jnp.abs(gelu(x) - jax.nn.gelu(x, approximate=True)).max()) > 1e-4  # not tanh's


def test_hashed_dropout_masks_keep_the_quantised_rate_look_independent_and_keep_the_mean():
    """Masks from the counter hash: the kept share is 1 - 51/256 for rate 0.2; masks repeat for
    one key; two keys, two streams (batch rows, heads), neighbouring counters and the rows of a
    stream agree as often as independent draws do (p^2 + (1 - p)^2); inverted scaling by the
    realised rate keeps the mean of many draws at the input."""
    assert quantized_rate(0.2) == 51 / 256 and quantized_rate(0.001) == 0.0
    p = 1 - 51 / 256
    mask = np.asarray(keep_mask(jax.random.PRNGKey(0), 0.2, (4, 6, 256, 256), stream_axes=2))
    other = np.asarray(keep_mask(jax.random.PRNGKey(1), 0.2, mask.shape, stream_axes=2))
    assert mask.dtype == bool and abs(mask.mean() - p) < 5 * np.sqrt(p * (1 - p) / mask.size)
    np.testing.assert_array_equal(mask, keep_mask(jax.random.PRNGKey(0), 0.2, mask.shape, 2))
    independent = p * p + (1 - p) ** 2
    for a, b in [
        (mask, other),  # keys
        (mask[:, 0], mask[:, 1]),  # heads
        (mask[0], mask[1]),  # batch rows
        (mask[..., :-1], mask[..., 1:]),  # neighbouring keys
        (mask[..., :-1, :], mask[..., 1:, :]),  # neighbouring queries
    ]:
        agree = (a == b).mean()
        assert abs(agree - independent) < 5 * np.sqrt(independent * (1 - independent) / a.size)
    odd = keep_mask(jax.random.PRNGKey(2), 0.2, (7, 333, 5))  # any shape, one stream axis
    assert odd.shape == (7, 333, 5) and abs(float(odd.mean()) - p) < 0.01

    x = jax.random.normal(jax.random.PRNGKey(9), (64, 32))
    drop = Dropout(0.3)
    assert (drop.apply({}, x) == x).all() and (Dropout(0.001).apply({}, x, False) == x).all()
    apply = jax.jit(lambda r: drop.apply({}, x, False, rngs={"dropout": r}))
    outs = np.stack([apply(jax.random.PRNGKey(s)) for s in range(2000)])
    kept, q = outs != 0, quantized_rate(0.3)
    assert abs(kept.mean() - (1 - q)) < 0.01
    np.testing.assert_allclose(outs[0][kept[0]], (x / (1 - q))[kept[0]], rtol=1e-6)
    sigma = np.abs(np.asarray(x)) * np.sqrt(q / (1 - q) / len(outs))
    assert (np.abs(outs.mean(0) - x) <= 5 * sigma + 1e-6).all()


def test_attention_dropout_is_one_mask_whatever_the_query_blocks(monkeypatch):
    """Causal attention over 4 query blocks equals one block, dropout included (one mask for
    the whole square, sliced), and dropout keeps the expected output (inverted scaling)."""
    attn = Attention(num_heads=2, head_dim=8, mode="causal", dropout_rate=0.3)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 64, 16))
    params = attn.init(jax.random.PRNGKey(1), x)

    def outputs(blocks: str, seeds):
        monkeypatch.setenv("GENZOO_ATTENTION_BLOCKS", blocks)
        apply = jax.jit(lambda r: attn.apply(params, x, deterministic=False,
                                             rngs={"dropout": r})[0])  # fmt: skip
        return np.stack([apply(jax.random.PRNGKey(s)) for s in seeds])

    exact = np.asarray(attn.apply(params, x)[0])
    scale = np.abs(exact).mean()
    four, one = outputs("4", range(3)), outputs("1", range(3))
    np.testing.assert_allclose(four, one, atol=1e-6 * np.abs(exact).max())
    assert np.abs(four[0] - four[1]).mean() > 0.2 * scale  # other keys, other masks
    assert np.abs(outputs("4", range(400)).mean(0) - exact).mean() < 0.1 * scale


@pytest.mark.parametrize("path", ["manual", "fused"])
@pytest.mark.parametrize(
    "mode,dtype,dropout",
    [
        ("causal", jnp.float32, 0.0),
        ("causal", jnp.float32, 0.3),
        ("cross", jnp.float32, 0.0),
        ("causal", jnp.bfloat16, 0.3),
    ],  # fmt: skip
)
def test_hand_written_attention_gradient_equals_autodiff(monkeypatch, path, mode, dtype, dropout):
    """The CPU paths' hand-written backwards against XLA's autodiff of the same forward:
    4 causal query blocks, a padding mask (one row sees a single key), dropout and 16-bit
    compute included (`fused` falls back to `manual` for 16-bit)."""
    attn = Attention(num_heads=2, head_dim=8, mode=mode, dropout_rate=dropout, dtype=dtype)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 64, 16))
    memory = jax.random.normal(jax.random.PRNGKey(1), (4, 40, 16)) if mode == "cross" else None
    seen_B = jnp.array([[64], [50], [9], [1]])
    valid = jnp.arange(x.shape[1] if memory is None else 40)[None] < seen_B
    params = attn.init(jax.random.PRNGKey(2), x, memory_BxSxD=memory)

    def grads(how: str):
        monkeypatch.setenv("GENZOO_ATTENTION_GRAD", how)

        def loss(params, x):
            rngs = {"dropout": jax.random.PRNGKey(3)}
            out = attn.apply(params, x, memory_BxSxD=memory, key_valid_BxT=valid,
                             deterministic=dropout == 0, rngs=rngs)[0]  # fmt: skip
            return (out.astype(jnp.float32) * jnp.cos(jnp.arange(16.0))).sum()

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

    (value, got_grads), (value_ad, autodiff) = grads(path), grads("autodiff")
    if path == "manual" or dtype != jnp.float32:
        assert value == value_ad  # one forward
    else:  # the fused forward sums in another order
        np.testing.assert_allclose(value, value_ad, rtol=1e-5)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(autodiff), strict=True):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_attention_forward_equals_the_hand_written_one_with_a_fully_masked_row(
    monkeypatch, dropout
):
    """The fused path's additive mask against `where`: equal outputs everywhere, including a
    row that sees no key at all (both average v there), with and without dropout."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 64, 16))
    valid = jnp.arange(64)[None] < jnp.array([[64], [5], [0]])
    attn = Attention(num_heads=2, head_dim=8, mode="bidirectional", dropout_rate=dropout)
    params = attn.init(jax.random.PRNGKey(2), x)

    def apply(params, x):
        rngs = {"dropout": jax.random.PRNGKey(3)}
        return attn.apply(params, x, key_valid_BxT=valid, deterministic=dropout == 0, rngs=rngs)[0]

    def out(how: str):
        monkeypatch.setenv("GENZOO_ATTENTION_GRAD", how)
        return np.asarray(jax.jit(apply)(params, x))

    fused, manual = out("fused"), out("manual")
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused, manual, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "K,N,parts,dtype",
    [
        (48, 16, 1, jnp.float32),
        (16, 48, 1, jnp.float32),
        (48, 16, 1, jnp.bfloat16),
        (16, 24, 3, jnp.float32),
        (48, 24, 3, jnp.float32),
    ],
)
def test_matmul_backward_equals_autodiff(monkeypatch, K, N, parts, dtype):
    """The CPU backward forms a tall weight's gradient as (dy^T x)^T and joins the gradients
    of a kernel's column blocks (q, k, v) into one product; values must not move."""
    x = jax.random.normal(jax.random.PRNGKey(0), (40, K)).astype(dtype)
    w = jax.random.normal(jax.random.PRNGKey(1), (K, N)).astype(dtype)
    probes = jnp.cos(jnp.arange(40.0 * N)).reshape(parts, 40, N // parts)

    def grads(how: str):
        monkeypatch.setenv("GENZOO_MATMUL_GRAD", how)

        def loss(x, w):
            w_KxPxN = w.reshape(K, parts, -1)
            ys = [dots.matmul(x, w)] if parts == 1 else dots.matmul_split(x, w_KxPxN)
            return sum((y.astype(jnp.float32) * p).sum() for y, p in zip(ys, probes, strict=True))

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

    (dx, dw), (dx_ad, dw_ad) = grads("wide"), grads("autodiff")
    assert dx.dtype == dx_ad.dtype == dtype and dw.dtype == dtype and dw.shape == (K, N)
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    for got, want in ((dx, dx_ad), (dw, dw_ad)):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max())

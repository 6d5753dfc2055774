"""The Pallas flash-attention kernels (`layers.flash`), interpreted on CPU, and their Triton
lowering for CUDA (what a GPU would compile), checked without a GPU."""

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from genzoo import sharding
from genzoo.errors import UserError
from genzoo.experiment import DEFAULT_RULES
from genzoo.layers import Attention, attention, flash
from genzoo.layers.attention import _implementation
from genzoo.layers.dropout import keep_mask, quantized_rate, seeds


def _reference(q, k, v, rng, causal, rate, segments=None):
    """Softmax attention [B, L, H, K] written plainly, dropout from the XLA path's mask."""
    B, L, H, K = q.shape
    s = jnp.einsum("blhk,bthk->bhlt", q, k, precision="highest") / math.sqrt(K)
    if causal:
        s = jnp.where(jnp.tril(jnp.ones((L, L), bool)), s, -jnp.inf)
    if segments is not None:
        s = jnp.where((segments[0][:, :, None] == segments[1][:, None])[:, None], s, -jnp.inf)
    p = jax.nn.softmax(s, -1)
    if rate:
        keep = keep_mask(rng, rate, (B, H, L, L), stream_axes=2)
        p = jnp.where(keep, p / (1 - quantized_rate(rate)), 0)
    return jnp.einsum("bhlt,bthk->blhk", p, v, precision="highest")


def _packed_segments(B, L):
    """Row 0: three examples (ids 1, 2, 3) then padding (id 0); row 1: one example, the last
    40 keys padding (a key segment no query has)."""
    pos = jnp.arange(L)
    row0 = jnp.select([pos < 20, pos < 50, pos < 80], [1, 2, 3], 0)
    return (jnp.stack([row0, jnp.zeros(L, int)]),
            jnp.stack([row0, jnp.where(pos < L - 40, 0, -99)]))  # fmt: skip


SQUARE, RECTANGULAR = flash.Tiles(32, 16, 32, 32), flash.Tiles(32, 16, 32, 16)


@pytest.mark.parametrize(
    "causal,rate,dtype,segmented,tiles",
    [(True, 0.0, jnp.float32, False, SQUARE), (True, 0.2, jnp.float32, False, SQUARE),
     (False, 0.1, jnp.float32, False, SQUARE), (True, 0.2, jnp.bfloat16, False, SQUARE),
     (True, 0.2, jnp.float32, True, SQUARE), (False, 0.1, jnp.float32, True, SQUARE),
     (True, 0.2, jnp.float32, True, RECTANGULAR), (False, 0.1, jnp.float32, True, RECTANGULAR)],
)  # fmt: skip
def test_kernels_equal_plain_attention_values_and_gradients(causal, rate, dtype, segmented,
                                                            tiles):  # fmt: skip
    """Three query blocks of six key blocks forward, three blocks backward, each looping over
    three or six smaller ones (so the online softmax crosses blocks and the causal bounds skip
    some), dropout included, packed and padded rows as segments (blocks that see no key of
    their own segment, segments that cross blocks): outputs and q/k/v gradients to 1e-5 of
    float32 attention (bf16: 2e-2)."""
    B, L, H, K = 2, 96, 2, 16
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, dout = (jax.random.normal(key, (B, L, H, K)) for key in keys)
    rng = jax.random.key(12345)

    def grads(fn):
        return jax.grad(lambda *qkv: (fn(*qkv) * dout).sum(), argnums=(0, 1, 2))(q, k, v)

    segments = _packed_segments(B, L) if segmented else None

    def kernel(q, k, v):
        qkv = (t.astype(dtype) for t in (q, k, v))
        out = flash.attention(*qkv, seeds(rng), causal, rate, True, segments=segments, tiles=tiles)
        return out.astype(jnp.float32)

    plain = lambda q, k, v: _reference(q, k, v, rng, causal, rate, segments)  # noqa: E731
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    want = plain(q, k, v)
    np.testing.assert_allclose(kernel(q, k, v), want, atol=tol * np.abs(want).max())
    for got, want in zip(grads(kernel), grads(plain), strict=True):
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("dtype,sharded,tiles", [
    (jnp.float32, False, None), (jnp.bfloat16, False, None), (jnp.bfloat16, True, None),
    (jnp.bfloat16, False, flash.Tiles.parse("128x128/128x32/3")),
])  # fmt: skip
def test_kernels_lower_to_triton_for_cuda(dtype, sharded, tiles):
    """What a GPU session would find first: Pallas lowers both kernels (dropout on) to Triton
    for CUDA, here on CPU (the step after, PTX, needs the GPU); on a mesh, inside shard_map,
    with padding as segments; with the larger tiles `flash_check.py --tiles` tries."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "tensor"))
    spec = P("data", None, "tensor", None) if sharded else None
    where = {"sharding": NamedSharding(mesh, spec)} if sharded else {}
    q = jax.ShapeDtypeStruct((8, 256, 6, 64), dtype, **where)

    segments = (jax.ShapeDtypeStruct((8, 256), jnp.int32),) * 2 if sharded else None

    def loss(q, k, v, seeds, segments):
        out = flash.attention(q, k, v, seeds, True, 0.2, False, spec, segments, tiles)
        return out.astype(jnp.float32).sum()

    with jax.set_mesh(mesh):
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        lowered = grad.trace(q, q, q, (jax.ShapeDtypeStruct((), jnp.uint32),) * 2, segments)
        text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2  # forward and backward
    assert text.count("sdy.manual_computation") == (2 if sharded else 0)


def test_attention_takes_the_kernels_with_genzoo_attention_pallas(monkeypatch):
    """`GENZOO_ATTENTION=pallas` changes the kernel, not the numbers: outputs and gradients
    equal the XLA path's to 1e-5 with and without dropout and padding (the kernels hash the
    same masks from the same key), and another key draws another mask. A cache or a TPU keeps
    XLA."""
    attn = Attention(num_heads=2, head_dim=16, mode="causal", dropout_rate=0.3)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 32))
    params = attn.init(jax.random.PRNGKey(1), x)

    def run(how, rng, *, dropout=False, valid=None):
        monkeypatch.setenv("GENZOO_ATTENTION", how)

        def loss(params):
            out = attn.apply(params, x, key_valid_BxT=valid, deterministic=not dropout,
                             rngs={"dropout": rng})[0]  # fmt: skip
            return (out * jnp.cos(jnp.arange(32.0))).sum(), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return np.asarray(out), grads

    rng, other = jax.random.split(jax.random.PRNGKey(3))
    exact = run("auto", rng)[0]
    padding = jnp.arange(64)[None] < jnp.array([[64], [40]])
    for dropout, valid in [(False, None), (True, None), (True, padding)]:
        want, want_grads = run("auto", rng, dropout=dropout, valid=valid)
        got, got_grads = run("pallas", rng, dropout=dropout, valid=valid)
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
        for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max())
    unpadded = run("pallas", rng, dropout=True)[0]  # row 1's queries 40+ lose keys 40+
    np.testing.assert_allclose(got[1, :40], unpadded[1, :40], atol=1e-6)
    assert np.abs(got[1, 40:] - unpadded[1, 40:]).mean() > 0.2 * np.abs(unpadded[1, 40:]).mean()
    assert np.abs(got - exact).mean() > 0.2 * np.abs(exact).mean()  # dropout dropped
    assert np.abs(run("pallas", other, dropout=True)[0] - got).mean() > 0.2 * np.abs(exact).mean()
    q = jax.ShapeDtypeStruct((2, 64, 2, 16), jnp.float32)
    assert _implementation(q, q, "causal", True, False, False)[0] == "xla"  # a cache
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")  # Triton kernels: not there
    assert _implementation(q, q, "causal", False, False, True)[0] == "xla"


def test_cross_attention_of_equal_lengths_takes_the_kernels(monkeypatch):
    """A translation decoder's cross-attention (sources padded to the targets' length): the
    kernels equal the XLA path with dropout, padded sources and packed rows."""
    attn = Attention(num_heads=2, head_dim=16, mode="cross", dropout_rate=0.2)
    x, memory = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 64, 32))
    params = attn.init(jax.random.PRNGKey(1), x, memory_BxSxD=memory)
    segments, key_segments = _packed_segments(2, 64)
    valid = jnp.arange(64)[None] < jnp.array([[60], [40]])
    q = jax.ShapeDtypeStruct((2, 64, 2, 16), jnp.float32)

    def run(how):
        monkeypatch.setenv("GENZOO_ATTENTION", how)
        assert _implementation(q, q, "cross", False, True, True)[0] == how.replace("auto", "xla")

        def loss(params):
            out = attn.apply(
                params,
                x,
                memory_BxSxD=memory,
                key_valid_BxT=valid,
                segments_BxL=segments,
                key_segments_BxT=key_segments,
                deterministic=False,
                rngs={"dropout": jax.random.PRNGKey(3)},
            )[0]
            return (out * jnp.cos(jnp.arange(32.0))).sum()

        return jax.jit(jax.value_and_grad(loss))(params)

    (want, want_grads), (got, got_grads) = run("auto"), run("pallas")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max())


def test_the_switch_on_cpu_warns_once_that_kernels_are_interpreted(monkeypatch, caplog):
    monkeypatch.setenv("GENZOO_ATTENTION", "pallas")
    attention._warn_interpreted.cache_clear()
    q = jax.ShapeDtypeStruct((2, 64, 2, 16), jnp.float32)
    for _ in range(2):
        assert _implementation(q, q, "causal", False, False, True)[0] == "pallas"
    assert [r.getMessage().count("interpreted") for r in caplog.records] == [1]


def test_supports_head_widths_and_near_equal_lengths(monkeypatch):
    shape = lambda L, K=64: jax.ShapeDtypeStruct((2, L, 4, K), jnp.float32)  # noqa: E731
    assert flash.supports(shape(256), shape(256)) and flash.supports(shape(384), shape(384))
    assert flash.supports(shape(96), shape(96))  # 32 x 32 tiles (the translation shape)
    assert flash._tile(96, flash.TILES.fwd_q) == 32 and flash._tile(256, flash.TILES.fwd_q) == 128
    assert flash.supports(shape(95), shape(96))  # padded to 96: a decoder's cross-attention
    assert not flash.supports(shape(256, 48), shape(256, 48))  # head width
    assert not flash.supports(shape(1), shape(256))  # a decode step: no place for tiles
    for bad in ("128x64/32x64", "128x8/32x32", "96x64/32x32"):  # inner > outer, < 16, not 2^n
        with pytest.raises(ValueError, match="powers of two"):
            flash.Tiles.parse(bad)
    monkeypatch.setenv("GENZOO_FLASH_TILES", "64x64/64x32/3")
    assert flash.from_environment() == flash.Tiles(64, 64, 64, 32, stages=3)
    monkeypatch.setenv("GENZOO_FLASH_TILES", "96x64/32x32")  # the form checked at start
    with pytest.raises(UserError, match="GENZOO_FLASH_TILES: tiles .* powers of two"):
        flash.from_environment()


@pytest.mark.parametrize("L,T,causal", [(90, 90, True), (95, 96, False)])
def test_lengths_the_tiles_do_not_divide_are_padded_and_keep_the_numbers(L, T, causal):
    """Padded to a multiple of 32 with keys no query sees, sliced back: values and q/k/v
    gradients equal plain attention's, dropout included (counters still number [L, T])."""
    B, H, K = 2, 2, 16
    q, dout = jax.random.normal(jax.random.key(0), (2, B, L, H, K))
    k, v = jax.random.normal(jax.random.key(1), (2, B, T, H, K))
    rng = jax.random.key(5)

    def reference(q, k, v):
        s = jnp.einsum("blhk,bthk->bhlt", q, k, precision="highest") / math.sqrt(K)
        if causal:
            s = jnp.where(jnp.tril(jnp.ones((L, T), bool)), s, -jnp.inf)
        p = jax.nn.softmax(s, -1)
        p = jnp.where(keep_mask(rng, 0.2, (B, H, L, T), stream_axes=2), p / (1 - 51 / 256), 0)
        return jnp.einsum("bhlt,bthk->blhk", p, v, precision="highest")

    def kernel(q, k, v):
        return flash.attention(q, k, v, seeds(rng), causal, 0.2, True)

    def grads(fn):
        return jax.grad(lambda *qkv: (fn(*qkv) * dout).sum(), argnums=(0, 1, 2))(q, k, v)

    want = reference(q, k, v)
    assert kernel(q, k, v).shape == (B, L, H, K)
    np.testing.assert_allclose(kernel(q, k, v), want, atol=1e-5 * np.abs(want).max())
    for got, w in zip(grads(kernel), grads(reference), strict=True):
        np.testing.assert_allclose(got, w, atol=1e-5 * np.abs(w).max())


def _mesh_and_rules(data, fsdp, tensor, **rules):
    mesh = Mesh(np.array(jax.devices()[: data * fsdp * tensor]).reshape(data, fsdp, tensor),
                sharding.AXES)  # fmt: skip
    return mesh, tuple((name, rules.get(name, axes)) for name, axes in DEFAULT_RULES)


def test_on_a_mesh_the_kernels_run_per_shard_unless_length_or_width_is_split(monkeypatch):
    """A Pallas call has no partitioning rule: on several devices the kernels run per shard of
    q's logical axes (batch, heads), and not at all when length or head width would be split
    or a shard count does not divide."""
    monkeypatch.setenv("GENZOO_ATTENTION", "pallas")
    q = jax.ShapeDtypeStruct((8, 256, 4, 64), jnp.float32)

    def pick(mesh, rules, q=q):
        with sharding.activate(mesh, rules):
            return _implementation(q, q, "causal", False, False, True)

    assert pick(*_mesh_and_rules(1, 1, 1)) == ("pallas", None)
    assert pick(*_mesh_and_rules(2, 2, 2)) == ("pallas", P(("data", "fsdp"), None, "tensor", None))
    assert pick(*_mesh_and_rules(2, 1, 4, length="tensor", act_heads=None))[0] == "xla"
    assert pick(*_mesh_and_rules(1, 1, 8))[0] == "xla"  # 4 heads over 8 shards
    three = jax.ShapeDtypeStruct((3, 256, 4, 64), jnp.float32)
    assert pick(*_mesh_and_rules(2, 1, 1), three)[0] == "xla"


def test_kernels_per_shard_equal_the_xla_path_on_the_same_mesh(monkeypatch):
    """Batch over data x fsdp, heads over tensor (8 devices): outputs and gradients with
    dropout and padding equal the XLA path's (dropout streams are numbered globally), and
    nothing of the attention is gathered across devices."""
    mesh, rules = _mesh_and_rules(2, 2, 2)
    attn = Attention(num_heads=2, head_dim=16, mode="causal", dropout_rate=0.3)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 64, 32))
    params = attn.init(jax.random.PRNGKey(1), x)
    rng = jax.random.PRNGKey(3)
    valid = jnp.arange(64)[None] < jnp.array([[64], [40], [50], [64]])

    def run(how):
        monkeypatch.setenv("GENZOO_ATTENTION", how)

        def loss(params, x):
            out = attn.apply(params, x, key_valid_BxT=valid, deterministic=False,
                             rngs={"dropout": rng})[0]  # fmt: skip
            return (out * jnp.cos(jnp.arange(32.0))).sum(), out

        with sharding.activate(mesh, rules):
            x_sharded = jax.device_put(x, sharding.batch_sharding(mesh, rules))
            step = jax.jit(jax.value_and_grad(loss, has_aux=True))
            (_, out), grads = step(params, x_sharded)
            hlo = step.lower(params, x_sharded).compile().as_text()
        return np.asarray(out), grads, hlo

    want, want_grads, xla_hlo = run("auto")
    got, got_grads, hlo = run("pallas")
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max())
    gathered = lambda hlo: sorted(re.findall(r"= (\S+) all-gather\(", hlo))  # noqa: E731
    assert gathered(hlo) == gathered(xla_hlo)  # FSDP's parameters only: f32[32] biases


def test_the_gpu_sessions_flash_check_runs_and_agrees(monkeypatch):
    """`benchmarks/flash_check.py` (the GPU session's first step) works before a GPU session
    needs it: at small shapes, interpreted, the kernels' gradients match the XLA path's."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    import flash_check

    other = flash.Tiles.parse("64x32/64x16/3")  # a tiling `--tiles` sweeps
    row = flash_check.check("char_fp32", (2, 64, 2, 16, jnp.float32, True, True, (0.2,)), 0.2,
                            True, rounds=1, calls=1, tiles=(other,))  # fmt: skip
    assert row["pallas_grad_rel_err"] < 1e-5 and row["xla_ms"] > 0 and row["pallas_ms"] > 0
    assert row["pallas_64x32/64x16/3_grad_rel_err"] < 1e-5
    assert row["fastest_tiles"] in (flash.TILES.name(), other.name())
    assert not [k for k in row if k.endswith("_error")]


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_a_rematerialised_gpt_with_the_kernels_keeps_the_xla_paths_gradients(monkeypatch, remat):
    """The kernels' custom VJP under `nn.remat` (recomputed forward, dropout from the same
    key): loss and gradients of a 2-layer GPT with dropout equal the plain XLA step's."""
    from genzoo.models import gpt

    cfg = dict(vocab_size=50, block_size=64, num_layers=2, num_heads=2, width=64, dropout=0.1)
    params = jax.tree.map(jnp.asarray, gpt.init(jax.random.PRNGKey(0), cfg))
    tokens = np.random.default_rng(0).integers(0, 50, (4, 65), dtype=np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((4, 64), "f4")}

    def grads(how, extra):
        monkeypatch.setenv("GENZOO_ATTENTION", how)
        loss = lambda p: gpt.loss(p, batch, jax.random.PRNGKey(1), {**cfg, **extra})[0]  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    (want, want_grads), (got, got_grads) = grads("xla", {}), grads("pallas", {"remat": remat})
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5 * np.abs(w).max())

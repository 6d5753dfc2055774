"""Flash attention with dropout inside the kernel: Pallas (Triton) kernels for GPUs.

Why: on GPU genzoo hands 16-bit self-attention to cuDNN's fused kernel, but not when the
weights take dropout. cuDNN's dropout draws from a Philox offset kept as state inside the
executable, so its masks are not a function of the step's key and a resumed run would drop
other weights. Without it the bf16 char GPT's step took 13.5 ms against 6.5 with dropout 0
(one H200). Here the mask is `layers.dropout`'s counter hash of (key, batch, head, query,
key position), computed where the weights are, in the forward and again in the backward: no
[L, T] array reaches memory, resume stays exact, and the masks are the XLA path's, so the
switch changes speed, not numbers. Float32 inputs take TF32 products, as PyTorch's do.

Training-time attention of every Transformer family (`supports`): self-attention, causal or
not, and cross-attention whose source and target lengths are within a tile of each other;
no cache; head width a power of two in [16, 128]. Lengths the tiles do not divide are padded
with keys no query sees. Padding and packed rows arrive as segment ids (a query sees keys of
its own segment). `Attention` uses it on GPU with `GENZOO_ATTENTION=pallas` until it is
timed there; `interpret=True` runs the kernels through XLA on any backend (the tests, on
CPU). The backward follows FlashAttention-2: one kernel sweeps query blocks for a key
block's dk and dv, then key blocks for a query block's dq.

On a mesh of several devices a Pallas call has no partitioning rule (XLA would gather its
operands onto every device), so `attention` takes the operands' PartitionSpec and runs the
kernels per shard under `shard_map` (batch and heads may be sharded, length and head width
not: `shardable`); each shard numbers its dropout streams globally, so the masks do not
depend on the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.sharding import PartitionSpec as P

from genzoo.errors import UserError
from genzoo.layers.dropout import hashed_keep, quantized_rate, stream_key, threshold
from genzoo.sharding import shard_count

_LOG2E = math.log2(math.e)
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: no inf - inf in a masked row
NO_QUERY = jnp.iinfo(jnp.int32).min  # the segment of keys no query may see (padding)
# Lengths are padded to a multiple of this (the smallest tile any setting uses).
_PAD = 32


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Tile sizes (powers of two, each the most: a length takes the largest power of two up to
    it that divides it) and Triton's launch settings. The defaults follow jax's own Pallas GPU
    attention: forward 128 queries x 64 keys (FlashAttention-2's Triton choice for head width
    64: a 128 x 128 float32 score tile is 128 registers a thread on 4 warps), backward 32 x 32.
    Untimed on a GPU: `benchmarks/flash_check.py --tiles` sweeps others, and
    `GENZOO_FLASH_TILES=128x64/64x32/2` sets them for a run (`from_environment`)."""

    fwd_q: int = 128  # queries a forward program owns
    fwd_k: int = 64  # keys per step of its loop
    bwd_outer: int = 32  # a backward program's key block (dk, dv) and query block (dq)
    bwd_inner: int = 32  # the step of its loops: query blocks for dk, dv; key blocks for dq
    warps: int = 0  # 0: 4 for head widths up to 64, else 8
    stages: int = 2

    def __post_init__(self):
        sizes = (self.fwd_q, self.fwd_k, self.bwd_outer, self.bwd_inner)
        if any(t < 16 or t & (t - 1) for t in sizes) or self.bwd_inner > self.bwd_outer:
            raise ValueError(f"tiles {self}: powers of two from 16, bwd_inner <= bwd_outer")

    @classmethod
    def parse(cls, text: str) -> Tiles:
        """'FQxFK/OUTERxINNER[/STAGES]', e.g. '128x64/32x32/2'."""
        try:
            parts = text.split("/")
            (fq, fk), (outer, inner) = (map(int, p.split("x")) for p in parts[:2])
            stages = int(parts[2]) if len(parts) > 2 else 2
        except ValueError:
            raise ValueError(f"tiles {text!r}: not FQxFK/OUTERxINNER[/STAGES]") from None
        if len(parts) > 3 or stages < 1:
            raise ValueError(f"tiles {text!r}: not FQxFK/OUTERxINNER[/STAGES]")
        return cls(fq, fk, outer, inner, stages=stages)

    def name(self) -> str:
        return f"{self.fwd_q}x{self.fwd_k}/{self.bwd_outer}x{self.bwd_inner}/{self.stages}"


TILES = Tiles()


def from_environment() -> Tiles:
    """`GENZOO_FLASH_TILES` (A/B timing on a GPU), else `TILES`."""
    text = os.environ.get("GENZOO_FLASH_TILES", "")
    try:
        return Tiles.parse(text) if text else TILES
    except ValueError as err:
        raise UserError(f"GENZOO_FLASH_TILES: {err}") from None


def _tile(L: int, most: int) -> int:
    """The largest power of two up to `most` (itself a power of two) that divides L."""
    return math.gcd(L, most)


def supports(q_BxLxHxK, k_BxTxHxK) -> bool:
    """Whether `attention` takes these shapes (else keep the XLA path): head width a power of
    two in [16, 128], and queries and keys within one tile of each other's length (both are
    padded to a multiple of the tiles; a 1-token decode step is no place for them)."""
    L, K, T = q_BxLxHxK.shape[1], q_BxLxHxK.shape[-1], k_BxTxHxK.shape[1]
    return K in (16, 32, 64, 128) and abs(L - T) < _PAD


def shardable(q_BxLxHxK, spec, mesh) -> bool:
    """Whether `attention` can run per shard of `spec` on `mesh`: length and head width whole,
    batch and heads divisible by their shard counts."""
    spec = tuple(spec) + (None,) * (4 - len(spec))
    B, _, H, _ = q_BxLxHxK.shape
    return not spec[1] and not spec[3] \
        and B % shard_count(mesh, spec[0]) == 0 and H % shard_count(mesh, spec[2]) == 0  # fmt: skip


def _scores(q, k, rows, cols, causal, scale, segs):
    """Scores in base 2 (exp2 of them is the softmax's exp), masked above the diagonal and
    where the query's and the key's segments differ (`segs`: theirs, or None)."""
    s = pl.dot(q, k.T) * (scale * _LOG2E)
    allowed = rows[:, None] >= cols[None, :] if causal else None
    if segs is not None:
        same = segs[0][:, None] == segs[1][None, :]
        allowed = same if allowed is None else allowed & same
    return s if allowed is None else jnp.where(allowed, s, _MASKED)


def _stream(seed0_ref, first_ref, b, h, heads):
    """The key of this program's (batch, head) stream: numbered over the whole batch and all
    `heads` (a shard's first stream is `first`), as `keep_mask` numbers them."""
    stream = first_ref[()] + (b * heads + h).astype(jnp.uint32)
    return stream_key(seed0_ref[()], stream)


def _keep(key, seed1, rows, cols, stride, level):
    """`layers.dropout.keep_mask(..., stream_axes=2)` of a [B, H, L, T] mask (`stride`: the
    caller's T, before padding), one tile of the (batch, head) stream whose key is `key`."""
    counters = rows.astype(jnp.uint32)[:, None] * jnp.uint32(stride) + cols.astype(jnp.uint32)
    return hashed_keep(key, seed1, counters, level)


def _segment_refs(refs, count, segmented):
    """The kernel's first `count` refs, then its two segment refs (None, None without)."""
    return (*refs[:count], *(refs[count : count + 2] if segmented else (None, None)))


def _forward_kernel(*refs, causal, scale, level, keep_scale, heads, stride, segmented, block_k):
    seed0_ref, seed1_ref, first_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref = _segment_refs(
        refs, 6, segmented
    )
    o_ref, lse_ref = refs[-2:]
    block_q, K = q_ref.shape
    L = k_ref.shape[0]
    i, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    key, seed1 = _stream(seed0_ref, first_ref, b, h, heads), seed1_ref[()]
    q = q_ref[...]
    rows = i * block_q + jnp.arange(block_q)
    qseg = qseg_ref[...] if segmented else None

    def body(j, carry):  # online softmax over key blocks
        acc, top, total = carry
        keys = pl.ds(j * block_k, block_k)
        cols = j * block_k + jnp.arange(block_k)
        segs = (qseg, kseg_ref[keys]) if segmented else None
        s = _scores(q, k_ref[keys, :], rows, cols, causal, scale, segs)
        new_top = jnp.maximum(top, s.max(-1))
        w = jnp.exp2(s - new_top[:, None])
        fix = jnp.exp2(top - new_top)
        total = total * fix + w.sum(-1)  # the softmax's denominator counts dropped weights too
        if level:
            w = jnp.where(_keep(key, seed1, rows, cols, stride, level), w, 0.0)
        acc = acc * fix[:, None] + pl.dot(w.astype(v_ref.dtype), v_ref[keys, :])
        return acc, new_top, total

    stop = lax.div(block_q * (i + 1) + block_k - 1, block_k) if causal else L // block_k
    init = (jnp.zeros((block_q, K), jnp.float32), jnp.full((block_q,), _MASKED, jnp.float32),
            jnp.zeros((block_q,), jnp.float32))  # fmt: skip
    acc, top, total = lax.fori_loop(0, stop, body, init)
    o_ref[...] = (acc * (keep_scale / total[:, None])).astype(o_ref.dtype)
    lse_ref[...] = top + jnp.log2(total)


def _backward_kernel(*refs, causal, scale, level, keep_scale, heads, stride, segmented, outer,
                     inner):  # fmt: skip
    seed0_ref, seed1_ref, first_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref = _segment_refs(
        refs, 6, segmented
    )
    do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref = refs[-6:]
    L = q_ref.shape[0]
    b, h, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    key, seed1 = _stream(seed0_ref, first_ref, b, h, heads), seed1_ref[()]

    def grads(q, k, v, do, lse, delta, rows, cols, segs):
        """Probabilities' share of the value gradient and the scores' gradient of a tile."""
        p = jnp.exp2(_scores(q, k, rows, cols, causal, scale, segs) - lse[:, None])
        dp = pl.dot(do, v.T)
        if level:  # dropout: the kept probabilities, scaled, reached the value product
            keep = _keep(key, seed1, rows, cols, stride, level)
            p_kept = jnp.where(keep, p * keep_scale, 0.0)
            dp = jnp.where(keep, dp * keep_scale, 0.0)
        else:
            p_kept = p
        return p_kept, p * (dp - delta[:, None]) * scale  # sum_t p dp = sum_k do * o = delta

    # Key block j (`outer` keys): its dk and dv over the query blocks (`inner`) that see it.
    keys = pl.ds(j * outer, outer)
    k, v = k_ref[keys, :], v_ref[keys, :]
    cols = j * outer + jnp.arange(outer)
    kseg = kseg_ref[keys] if segmented else None

    def dkdv(i, carry):
        dk, dv = carry
        rows_sl = pl.ds(i * inner, inner)
        q, do = q_ref[rows_sl, :], do_ref[rows_sl, :]
        segs = (qseg_ref[rows_sl], kseg) if segmented else None
        p_kept, ds = grads(q, k, v, do, lse_ref[rows_sl], delta_ref[rows_sl],
                           i * inner + jnp.arange(inner), cols, segs)  # fmt: skip
        dv = dv + pl.dot(p_kept.astype(do.dtype).T, do)
        dk = dk + pl.dot(ds.astype(q.dtype).T, q)
        return dk, dv

    per = outer // inner  # inner blocks in an outer one
    zeros = jnp.zeros((outer, k.shape[-1]), jnp.float32)
    dk, dv = lax.fori_loop(j * per if causal else 0, L // inner, dkdv, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)

    # Query block j (`outer` queries): its dq over the key blocks (`inner`) it sees.
    rows_sl = pl.ds(j * outer, outer)
    q, do, lse, delta = q_ref[rows_sl, :], do_ref[rows_sl, :], lse_ref[rows_sl], delta_ref[rows_sl]
    rows = j * outer + jnp.arange(outer)
    qseg = qseg_ref[rows_sl] if segmented else None

    def dq_step(t, dq):
        keys = pl.ds(t * inner, inner)
        k = k_ref[keys, :]
        segs = (qseg, kseg_ref[keys]) if segmented else None
        _, ds = grads(q, k, v_ref[keys, :], do, lse, delta, rows, t * inner + jnp.arange(inner),
                      segs)  # fmt: skip
        return dq + pl.dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(0, (j + 1) * per if causal else L // inner, dq_step, zeros)
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _bind(kernel, K, causal, rate, numbering, segs, **tiles):
    """The kernel with its constants: dropout's top-byte level, 1 / (1 - the realised rate),
    how its masks number streams and counters (`numbering`: all heads, the row's keys) and
    its tile sizes."""
    heads, keys = numbering
    return functools.partial(kernel, causal=causal, scale=1 / math.sqrt(K), level=threshold(rate),
                             keep_scale=1 / (1 - quantized_rate(rate)), heads=heads, stride=keys,
                             segmented=bool(segs), **tiles)  # fmt: skip


def _heads_spec(block, K, index):
    """A [block, K] tile of one (batch, head) of a [B, L, H, K] array."""
    return pl.BlockSpec((None, block, None, K), index)


def _call(kernel, name, tiles, interpret, grid, in_specs, out_specs, out_shape, *args):
    K = out_shape[0].shape[-1]  # head width: the first output is q-shaped
    warps = tiles.warps or (4 if K <= 64 else 8)
    params = plgpu.CompilerParams(num_warps=warps, num_stages=tiles.stages)
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, compiler_params=params, interpret=interpret,
                          name=name)(*args)  # fmt: skip


def _forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scalars, segs, causal, rate, interpret,
             numbering, tiles):  # fmt: skip
    B, L, H, K = q_BxLxHxK.shape
    block_q = _tile(L, tiles.fwd_q)
    kernel = _bind(_forward_kernel, K, causal, rate, numbering, segs,
                   block_k=_tile(L, tiles.fwd_k))  # fmt: skip
    whole = _heads_spec(L, K, lambda i, b, h: (b, 0, h, 0))
    tile = _heads_spec(block_q, K, lambda i, b, h: (b, i, h, 0))
    scalar = pl.BlockSpec((), lambda i, b, h: ())
    seg_specs = [pl.BlockSpec((None, block_q), lambda i, b, h: (b, i)),
                 pl.BlockSpec((None, L), lambda i, b, h: (b, 0))][: len(segs)]  # fmt: skip
    out_BxLxHxK, lse_BxHxL = _call(
        kernel, "genzoo_flash_forward", tiles, interpret, (L // block_q, B, H),
        [scalar, scalar, scalar, tile, whole, whole, *seg_specs],
        [tile, pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))],
        [jax.ShapeDtypeStruct(q_BxLxHxK.shape, q_BxLxHxK.dtype),
         jax.ShapeDtypeStruct((B, H, L), jnp.float32)],
        *scalars, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, *segs,
    )  # fmt: skip
    return out_BxLxHxK, lse_BxHxL


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _flash(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scalars, segs, causal, rate, interpret, numbering,
           tiles):  # fmt: skip
    """The kernels on one device's [B, L, H, K] (L a multiple of 32); `scalars` = (seed0,
    seed1, first stream), `segs` = (query segments, key segments) [B, L] int32, or () for no
    such mask."""
    return _forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scalars, segs, causal, rate, interpret,
                    numbering, tiles)[0]  # fmt: skip


def _flash_fwd(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scalars, segs, causal, rate, interpret,
               numbering, tiles):  # fmt: skip
    out_BxLxHxK, lse_BxHxL = _forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scalars, segs, causal,
                                      rate, interpret, numbering, tiles)  # fmt: skip
    return out_BxLxHxK, (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scalars, segs, out_BxLxHxK, lse_BxHxL)


def _flash_bwd(causal, rate, interpret, numbering, tiles, saved, dout_BxLxHxK):
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scalars, segs, out_BxLxHxK, lse_BxHxL = saved
    B, L, H, K = q_BxLxHxK.shape
    dout = dout_BxLxHxK.astype(jnp.float32)
    delta_BxHxL = (dout * out_BxLxHxK.astype(jnp.float32)).sum(-1).transpose(0, 2, 1)
    outer = _tile(L, tiles.bwd_outer)
    inner = min(_tile(L, tiles.bwd_inner), outer)  # powers of two: inner divides outer
    kernel = _bind(_backward_kernel, K, causal, rate, numbering, segs, outer=outer, inner=inner)
    whole = _heads_spec(L, K, lambda b, h, j: (b, 0, h, 0))
    tile = _heads_spec(outer, K, lambda b, h, j: (b, j, h, 0))
    rows = pl.BlockSpec((None, None, L), lambda b, h, j: (b, h, 0))
    scalar = pl.BlockSpec((), lambda b, h, j: ())
    seg = pl.BlockSpec((None, L), lambda b, h, j: (b, 0))
    like = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
    dq, dk, dv = _call(
        kernel, "genzoo_flash_backward", tiles, interpret, (B, H, L // outer),
        [scalar, scalar, scalar, whole, whole, whole, *(seg for _ in segs), whole, rows, rows],
        [tile, tile, tile], [like(q_BxLxHxK), like(k_BxLxHxK), like(v_BxLxHxK)],
        *scalars, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, *segs, dout_BxLxHxK.astype(q_BxLxHxK.dtype),
        lse_BxHxL, delta_BxHxL,
    )  # fmt: skip
    return dq, dk, dv, (None, None, None), tuple(None for _ in segs)


_flash.defvjp(_flash_fwd, _flash_bwd)


def attention(q_BxLxHxK, k_BxTxHxK, v_BxTxHxK, seeds, causal=True, rate=0.0, interpret=False,
              spec=None, segments=None, tiles=None):  # fmt: skip
    """Softmax attention [B, L, H, K] over keys [B, T, H, K] (causal: T = L); dropout on the
    weights at `rate` with the mask `layers.dropout.keep_mask` draws over [B, H, L, T] (two
    stream axes) from a key whose `layers.dropout.seeds` are `seeds`. `segments`: (query's
    [B, L], key's [B, T]) int32; a query sees only keys of its own segment (padding: a key
    segment no query has). A query that sees no key at all gets some average of values (not
    zeros): padding's output, which no loss reads. Lengths that the tiles do not divide are
    padded with keys no query sees. `spec`: the operands' PartitionSpec on the current mesh
    (`shardable`); None runs the kernels on the whole arrays. `tiles`: `from_environment()`
    unless given."""
    tiles = tiles or from_environment()
    B, L, H, K = q_BxLxHxK.shape
    T = k_BxTxHxK.shape[1]
    numbering = (H, T)  # the XLA path's streams and counters, whatever the padding
    padded = -(-max(L, T) // _PAD) * _PAD
    if segments is None and (L, T) != (padded, padded):
        segments = (jnp.zeros((B, L), jnp.int32), jnp.zeros((B, T), jnp.int32))
    segs = () if segments is None else tuple(t.astype(jnp.int32) for t in segments)
    if segs:
        q_seg_BxP = jnp.pad(segs[0], ((0, 0), (0, padded - L)))
        k_seg_BxP = jnp.pad(segs[1], ((0, 0), (0, padded - T)), constant_values=NO_QUERY)
        segs = (q_seg_BxP, k_seg_BxP)
    q_BxPxHxK, k_BxPxHxK, v_BxPxHxK = (
        jnp.pad(t, ((0, 0), (0, padded - t.shape[1]), (0, 0), (0, 0)))
        for t in (q_BxLxHxK, k_BxTxHxK, v_BxTxHxK)
    )
    if spec is None:
        out_BxPxHxK = _flash(q_BxPxHxK, k_BxPxHxK, v_BxPxHxK, (*seeds, jnp.uint32(0)), segs,
                             causal, rate, interpret, numbering, tiles)  # fmt: skip
        return out_BxPxHxK[:, :L]
    spec = P(*tuple(spec) + (None,) * (4 - len(spec)))

    def per_shard(q_bxPxhxK, k_bxPxhxK, v_bxPxhxK, seed0, seed1, *segs):
        b, _, h, _ = q_bxPxhxK.shape
        first_b = lax.axis_index(spec[0]) * b if spec[0] else 0
        first_h = lax.axis_index(spec[2]) * h if spec[2] else 0
        first = jnp.asarray(first_b * H + first_h).astype(jnp.uint32)
        return _flash(q_bxPxhxK, k_bxPxhxK, v_bxPxhxK, (seed0, seed1, first), segs, causal,
                      rate, interpret, numbering, tiles)  # fmt: skip

    # check_vma off: Pallas calls carry no varying-axes rule; every output varies as `spec`.
    in_specs = (spec, spec, spec, P(), P(), *(P(spec[0], None) for _ in segs))
    sharded = jax.shard_map(per_shard, in_specs=in_specs, out_specs=spec, check_vma=False)
    return sharded(q_BxPxHxK, k_BxPxHxK, v_BxPxHxK, *seeds, *segs)[:, :L]

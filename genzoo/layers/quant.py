"""int8 weights inside the matmuls, for sampling from `genzoo quantize` copies.

A weight is `Int8`: int8 values of the float weight's shape and float32 scales of size 1
on the contraction axes (the leading ones) and full size on the output axes, so that
`x @ w == (x @ values) * scale`. `matmul` quantizes the activations too (per row, absmax,
dynamically) and multiplies int8 by int8 into int32 in one `dot_general`; `take` looks up
rows of an int8 table. Layers call these on whatever their parameter is: float weights take
the plain path unchanged.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from genzoo.errors import env_choice
from genzoo.layers import dots

# Measured with XLA:CPU on the 2-core AMD EPYC (docs/design.md): int8 x int8 -> int32 beat
# float32 from 2 to 64 rows (768 -> 3072: 1.3x at 2 rows, 2.1x at 8; the 768 -> 50304 head
# 3.5x at 8 rows), lost at 2048 rows (0.7x), and at one row XLA:CPU has no fast int8 path
# (5-10x slower), so one row is padded to two.
MAX_INT8_ROWS = 64
# Smaller weights stay float: with them the quantize/rescale ops cost more than the product
# saves (the 4x128 demo model decoded at 0.72x of float with every weight int8; the GPT-2
# shape's 768-wide weights at 1.22-1.31x: benchmarks/int8_decode.py).
MIN_INT8_SIZE = 1 << 18


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Int8:
    values: jax.Array  # int8
    scale: jax.Array  # float32, broadcastable against values; 1 on the contraction axes

    @property
    def shape(self) -> tuple:
        return self.values.shape

    def __getitem__(self, index) -> Int8:
        return Int8(self.values[index], self.scale[index])

    def matrix(self) -> Int8:
        """The [contraction, output] form: the leading axes where the scale has size 1."""
        out = [i for i, n in enumerate(self.scale.shape) if n != 1]
        c = out[0] if out else self.values.ndim - 1
        rows = math.prod(self.values.shape[:c])
        return Int8(self.values.reshape(rows, -1), self.scale.reshape(1, -1))

    def dequantize(self, dtype) -> jax.Array:
        return (self.values.astype(jnp.float32) * self.scale).astype(dtype)


def int8_operands(rows: int) -> bool:
    """GENZOO_INT8=auto (the default): int8 operands for at most MAX_INT8_ROWS rows (decode
    steps); larger products dequantize the weight and multiply in float (prompts, scoring).
    GENZOO_INT8=off: always dequantize (the weight-only numerics of `genzoo eval`)."""
    return env_choice("GENZOO_INT8") == "auto" and rows <= MAX_INT8_ROWS


def matmul(x_MxK, w_KxN, dtype, rows_out: bool = False):
    """x @ w in `dtype` for a float weight or an `Int8` one ([K, N] values, [1, N] scales);
    `rows_out`: w is given as [N, K] (a tied head's table, scaled per row), x @ w.T."""
    if not isinstance(w_KxN, Int8):
        if rows_out:
            return x_MxK @ w_KxN.T.astype(dtype)
        return dots.matmul(x_MxK.astype(dtype), w_KxN.astype(dtype))
    M = x_MxK.shape[0]
    if not int8_operands(M):
        w = w_KxN.dequantize(dtype)
        return x_MxK @ (w.T if rows_out else w)
    x_MxK = x_MxK.astype(jnp.float32)
    absmax_Mx1 = jnp.max(jnp.abs(x_MxK), axis=-1, keepdims=True)
    scale_Mx1 = jnp.where(absmax_Mx1 > 0, absmax_Mx1 / 127.0, 1.0)
    q_MxK = jnp.clip(jnp.round(x_MxK / scale_Mx1), -127, 127).astype(jnp.int8)
    pad = M == 1 and jax.default_backend() == "cpu"
    if pad:
        q_MxK = jnp.pad(q_MxK, ((0, 1), (0, 0)))
    # Contract the table's own axis: a transposed int8 copy of it cost XLA:CPU 146 ms a call
    # for GPT-2's head, the product itself 5.5 ms.
    dims = (((1,), (1,) if rows_out else (0,)), ((), ()))
    acc_MxN = jax.lax.dot_general(q_MxK, w_KxN.values, dims, preferred_element_type=jnp.int32)
    w_scale_1xN = w_KxN.scale.T if rows_out else w_KxN.scale
    return (acc_MxN[:M].astype(jnp.float32) * scale_Mx1 * w_scale_1xN).astype(dtype)


def take(table_NxD, ids, dtype):
    """Rows `ids` of a float table or an `Int8` one scaled per row ([N, 1] scales)."""
    if not isinstance(table_NxD, Int8):
        return jnp.take(table_NxD, ids, axis=0).astype(dtype)
    rows = table_NxD.values[ids].astype(jnp.float32) * table_NxD.scale[ids]
    return rows.astype(dtype)


def dequantized(w):
    """A float weight as it is; an `Int8` one as float32."""
    return w.dequantize(jnp.float32) if isinstance(w, Int8) else w


def as_matrix(w, rows: int):
    """The [rows, output] form of a weight whose leading axes (`rows` entries) contract."""
    return w.matrix() if isinstance(w, Int8) else w.reshape(rows, -1)

"""The 2-D float matmul every Dense-like layer runs, with its backward arranged for XLA:CPU.

A weight's gradient contracts the rows of both operands (x^T @ dy). XLA:CPU hands that dot
to Eigen (YNNPACK takes no operand with its rows contracted), which on the 2-core AMD EPYC
ran [4096, 1536]^T @ [4096, 384] at ~155 GFLOP/s but the mirrored (dy^T @ x, output
[384, 1536]) at ~190, PyTorch's rate: its output wants more columns than rows. So where the
weight is taller than wide, the backward forms dy^T @ x and transposes that small result; an
`optimization_barrier` stops XLA folding the transpose back into the dot. Same values,
same dot count; GPUs keep autodiff (not measured there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from genzoo.errors import env_choice

_ROWS = (((0,), (0,)), ((), ()))  # contract the leading (row) axis of both operands


def matmul(x_MxK, w_KxN):
    """x @ w for 2-D float operands of one dtype: `matmul_split` with one column block (its
    compiled gradient has the same ops as a custom VJP written for this case alone)."""
    if _wide_grad():
        return _matmul_split(x_MxK, w_KxN[:, None])[0]
    return x_MxK @ w_KxN


def _wide_grad() -> bool:
    """`GENZOO_MATMUL_GRAD=auto|wide|autodiff`: auto is `wide` on CPU (A/B timing knob)."""
    value = env_choice("GENZOO_MATMUL_GRAD")
    return value == "wide" or (value == "auto" and jax.default_backend() == "cpu")


def _weight_grad(x_MxK, dy_MxN):
    """x^T @ dy, [K, N]; for K > N as (dy^T @ x)^T, the form Eigen runs at full rate."""
    if x_MxK.shape[1] > dy_MxN.shape[1]:
        dw_NxK = lax.dot_general(dy_MxN, x_MxK, _ROWS)
        return lax.optimization_barrier(dw_NxK).T
    return lax.dot_general(x_MxK, dy_MxN, _ROWS)


def matmul_split(x_MxK, w_KxPxN) -> list:
    """[x @ w[:, p] for each of the P column blocks of w] (q, k and v from one kernel).

    The products stay separate (one merged product's split outputs cost strided copies, 1.11x
    slower); on CPU the backward joins the outputs' gradients so the weight gets one
    [K, P*N] gradient dot instead of P square ones (Eigen: ~195 against ~155 GFLOP/s)."""
    if _wide_grad():
        return list(_matmul_split(x_MxK, w_KxPxN))
    return [x_MxK @ w_KxPxN[:, p] for p in range(w_KxPxN.shape[1])]


@jax.custom_vjp
def _matmul_split(x_MxK, w_KxPxN):
    return tuple(x_MxK @ w_KxPxN[:, p] for p in range(w_KxPxN.shape[1]))


def _split_forward(x_MxK, w_KxPxN):
    return _matmul_split(x_MxK, w_KxPxN), (x_MxK, w_KxPxN)


def _split_backward(saved, dys):
    x_MxK, w_KxPxN = saved
    K, P, N = w_KxPxN.shape
    dy_MxPN = jnp.concatenate(dys, axis=1)
    dx_MxK = dy_MxPN @ w_KxPxN.reshape(K, P * N).T
    return dx_MxK, _weight_grad(x_MxK, dy_MxPN).reshape(K, P, N)


_matmul_split.defvjp(_split_forward, _split_backward)

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
from jax import lax

from genzoo.errors import env_choice

_ROWS = (((0,), (0,)), ((), ()))  # contract the leading (row) axis of both operands


def matmul(x_MxK, w_KxN):
    """x @ w for 2-D float operands of one dtype."""
    return _matmul_wide_grad(x_MxK, w_KxN) if _wide_grad() else x_MxK @ w_KxN


def _wide_grad() -> bool:
    """`GENZOO_MATMUL_GRAD=auto|wide|autodiff`: auto is `wide` on CPU (A/B timing knob)."""
    value = env_choice("GENZOO_MATMUL_GRAD", ("auto", "wide", "autodiff"))
    return value == "wide" or (value == "auto" and jax.default_backend() == "cpu")


@jax.custom_vjp
def _matmul_wide_grad(x_MxK, w_KxN):
    return x_MxK @ w_KxN


def _forward(x_MxK, w_KxN):
    return x_MxK @ w_KxN, (x_MxK, w_KxN)


def _backward(saved, dy_MxN):
    x_MxK, w_KxN = saved
    K, N = w_KxN.shape
    dx_MxK = dy_MxN @ w_KxN.T
    if K > N:
        dw_NxK = lax.dot_general(dy_MxN, x_MxK, _ROWS)
        dw_KxN = lax.optimization_barrier(dw_NxK).T
    else:
        dw_KxN = lax.dot_general(x_MxK, dy_MxN, _ROWS)
    return dx_MxK, dw_KxN


_matmul_wide_grad.defvjp(_forward, _backward)

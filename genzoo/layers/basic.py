"""Feed-forward, normalisation and embedding layers annotated with logical axis names."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo.layers import quant
from genzoo.layers.dropout import Dropout

Dtype = Any


def partitioned(init, axes: tuple):
    """An initializer whose parameter carries logical axis names (mapped to the mesh by rules)."""
    return nn.with_logical_partitioning(init, axes)


class LayerNorm(nn.Module):
    """LayerNorm over the model width; statistics in float32 whatever the compute dtype."""

    epsilon: float = 1e-5
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD):
        return nn.LayerNorm(
            epsilon=self.epsilon,
            use_bias=self.use_bias,
            dtype=self.dtype,
            scale_init=partitioned(nn.initializers.ones, ("embed",)),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        )(x_BxLxD)


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def gelu(x):
    """Exact GELU, x * Phi(x). On CPU through `erf` with the derivative written out
    (`_gelu_erf`); elsewhere jax.nn.gelu, the form the GPU figures were measured with (the
    two agree to 1e-6, so parameters move freely between backends)."""
    if jax.default_backend() == "cpu":
        return _gelu_erf(x)
    return jax.nn.gelu(x, approximate=False)


@jax.custom_jvp
def _gelu_erf(x):
    """jax.nn.gelu's erfc form and its autodiff cost XLA:CPU extra passes (a Transformer
    block's forward and backward in isolation: 89 -> 59 ms; ~4% of the demo's step)."""
    return 0.5 * x * (1 + jax.lax.erf(x * _SQRT_HALF))


@_gelu_erf.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    erf = jax.lax.erf(x * _SQRT_HALF)
    cdf = 0.5 * (1 + erf)
    return 0.5 * x * (1 + erf), (cdf + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)) * dx


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2's "gelu_new"
    "relu": jax.nn.relu,  # the 2017 Transformer
}


class Dense(nn.Module):
    """nn.Dense's parameters (`kernel` [K, N] with logical `axes`, `bias` [N]) over [M, K]
    inputs, through `quant.matmul`: an int8 kernel (a `genzoo quantize` copy) multiplies as
    int8."""

    features: int
    axes: tuple
    init_std: float = 0.02
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_MxK):
        init = partitioned(nn.initializers.normal(self.init_std), self.axes)
        w_KxN = self.param("kernel", init, (x_MxK.shape[-1], self.features))
        y_MxN = quant.matmul(x_MxK.astype(self.dtype), w_KxN, self.dtype)
        if self.use_bias:
            bias_init = partitioned(nn.initializers.zeros, self.axes[-1:])
            y_MxN = y_MxN + self.param("bias", bias_init, (self.features,)).astype(self.dtype)
        return y_MxN


class MLP(nn.Module):
    """Width D -> hidden F -> D; `out_std` lets residual projections init smaller."""

    hidden: int
    dropout_rate: float = 0.0
    use_bias: bool = True
    activation: str = "gelu"
    out_std: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD, *, deterministic: bool = True):
        B, L, D = x_BxLxD.shape
        # Dense layers on [B*L, D]: XLA:CPU's backward of a dot over 3-D inputs is ~2x slower.
        h_NxF = Dense(
            self.hidden,
            ("embed", "mlp"),
            use_bias=self.use_bias,
            dtype=self.dtype,
            name="fc",
        )(x_BxLxD.reshape(B * L, D))
        h_NxF = ACTIVATIONS[self.activation](h_NxF)
        h_NxF = nn.with_logical_constraint(h_NxF, ("batch", "act_mlp"))
        proj = Dense(D, ("mlp", "embed"), self.out_std, self.use_bias, self.dtype, name="proj")
        y_NxD = proj(h_NxF)
        y_BxLxD = y_NxD.reshape(B, L, D)
        return Dropout(self.dropout_rate)(y_BxLxD, deterministic=deterministic)


class Embed(nn.Module):
    """Token or position table [N, D]; `attend` reuses it as an output head (tied weights)."""

    num_embeddings: int
    features: int
    axes: tuple = ("vocab", "embed")
    dtype: Dtype = jnp.float32
    init_std: float = 0.02

    def setup(self):
        self.table_NxD = self.param(
            "embedding",
            partitioned(nn.initializers.normal(self.init_std), self.axes),
            (self.num_embeddings, self.features),
        )

    def __call__(self, ids):
        return quant.take(self.table_NxD, ids, self.dtype)

    def attend(self, x_BxLxD):
        B, L, D = x_BxLxD.shape
        x_MxD = x_BxLxD.reshape(B * L, D)  # 2-D: see MLP
        return quant.matmul(x_MxD, self.table_NxD, self.dtype, rows_out=True).reshape(B, L, -1)


def sinusoidal_positions(positions_BxL, width: int, dtype=jnp.float32):
    """Fixed position encodings of "Attention is all you need", [B, L, width].

    Sines in the first half of the features and cosines in the second (tensor2tensor's
    layout; a fixed permutation of the paper's interleaving), wavelengths 2π .. 10000·2π.
    """
    half = width // 2
    inv_freq_H = jnp.exp(-jnp.log(10000.0) * jnp.arange(half) / max(half - 1, 1))
    angle_BxLxH = positions_BxL[..., None].astype(jnp.float32) * inv_freq_H
    enc_BxLxD = jnp.concatenate([jnp.sin(angle_BxLxH), jnp.cos(angle_BxLxH)], axis=-1)
    if width % 2:
        enc_BxLxD = jnp.pad(enc_BxLxD, ((0, 0), (0, 0), (0, 1)))
    return enc_BxLxD.astype(dtype)

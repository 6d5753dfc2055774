"""Feed-forward, normalisation and embedding layers annotated with logical axis names."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class MLP(nn.Module):
    """Width D -> hidden F -> D with GELU; `out_std` lets residual projections init smaller."""

    hidden: int
    dropout_rate: float = 0.0
    use_bias: bool = True
    gelu_approximate: bool = False
    out_std: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD, *, deterministic: bool = True):
        B, L, D = x_BxLxD.shape
        # Dense layers on [B*L, D]: XLA:CPU's backward of a dot over 3-D inputs is ~2x slower.
        h_NxF = nn.Dense(
            self.hidden,
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=partitioned(nn.initializers.normal(0.02), ("embed", "mlp")),
            bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
            name="fc",
        )(x_BxLxD.reshape(B * L, D))
        h_NxF = jax.nn.gelu(h_NxF, approximate=self.gelu_approximate)
        h_NxF = nn.with_logical_constraint(h_NxF, ("batch", "act_mlp"))
        y_NxD = nn.Dense(
            D,
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=partitioned(nn.initializers.normal(self.out_std), ("mlp", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            name="proj",
        )(h_NxF)
        y_BxLxD = y_NxD.reshape(B, L, D)
        return nn.Dropout(self.dropout_rate)(y_BxLxD, deterministic=deterministic)


class Embed(nn.Module):
    """Token or position table [N, D]; `attend` reuses it as an output head (tied weights)."""

    num_embeddings: int
    features: int
    axes: tuple = ("vocab", "embed")
    dtype: Dtype = jnp.float32

    def setup(self):
        self.table_NxD = self.param(
            "embedding",
            partitioned(nn.initializers.normal(0.02), self.axes),
            (self.num_embeddings, self.features),
        )

    def __call__(self, ids):
        return jnp.take(self.table_NxD, ids, axis=0).astype(self.dtype)

    def attend(self, x_BxLxD):
        B, L, D = x_BxLxD.shape
        x_MxD = x_BxLxD.reshape(B * L, D)  # 2-D: see MLP
        return (x_MxD @ self.table_NxD.astype(self.dtype).T).reshape(B, L, -1)

"""Convolutional encoder/decoder for 28x28 images, shared by the VAE, the GAN and the classifier.

Image models are small: their parameters replicate (no logical names that shard) and
the batch is split over the data-parallel axes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo.layers.basic import Dtype, partitioned


def _replicated(init, ndim: int):
    return partitioned(init, (None,) * ndim)


def _stride2(layer_cls, width: int, dtype, name: str):
    """A 4x4, stride-2 (transposed) convolution: halves (doubles) height and width."""
    return layer_cls(
        width,
        (4, 4),
        strides=(2, 2),
        dtype=dtype,
        kernel_init=_replicated(nn.initializers.lecun_normal(), 4),
        bias_init=_replicated(nn.initializers.zeros, 1),
        name=name,
    )


def _dense(features: int, dtype, name: str):
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=_replicated(nn.initializers.lecun_normal(), 2),
        bias_init=_replicated(nn.initializers.zeros, 1),
        name=name,
    )


def _norm(kind: str, dtype, name: str, train: bool):
    """A normalisation layer by name: "none", "layer" (over channels) or "batch" (DCGAN's:
    batch statistics while training, their running averages otherwise; momentum 0.9 is
    PyTorch's 0.1)."""
    init = dict(scale_init=_replicated(nn.initializers.ones, 1),
                bias_init=_replicated(nn.initializers.zeros, 1))  # fmt: skip
    if kind == "layer":
        return nn.LayerNorm(dtype=dtype, name=name, **init)
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            dtype=dtype, name=name, **init)  # fmt: skip
    if kind == "none":
        return lambda h: h
    raise ValueError(f"unknown norm {kind!r} (none, layer, batch)")


class ConvEncoder(nn.Module):
    """[B, 28, 28, C] -> [B, features]: two stride-2 4x4 convolutions, then a dense layer.

    `norm` normalises every convolution's output but the first (DCGAN's discriminator)."""

    features: int
    widths: tuple = (32, 64)
    dtype: Dtype = jnp.float32
    norm: str = "none"

    @nn.compact
    def __call__(self, x_BxHxWxC, train: bool = False):
        h = x_BxHxWxC.astype(self.dtype)
        for i, width in enumerate(self.widths):
            h = _stride2(nn.Conv, width, self.dtype, f"conv_{i}")(h)
            if i > 0:
                h = _norm(self.norm, self.dtype, f"norm_{i}", train)(h)
            h = jax.nn.leaky_relu(h, 0.2)
        h_BxF = h.reshape(h.shape[0], -1)
        h_BxF = nn.with_logical_constraint(h_BxF, ("batch", None))
        return _dense(self.features, self.dtype, "out")(h_BxF)


class ConvDecoder(nn.Module):
    """[B, Z] -> [B, 28, 28, C] logits: dense to 7x7, then two stride-2 transposed convolutions.

    `norm` normalises each hidden layer ("layer", or DCGAN's "batch").
    """

    out_channels: int = 1
    widths: tuple = (64, 32)
    norm: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z_BxZ, train: bool = False):
        norm = lambda h, name: _norm(self.norm, self.dtype, name, train)(h)
        h = _dense(7 * 7 * self.widths[0], self.dtype, "in")(z_BxZ.astype(self.dtype))
        h_Bx7x7xC = jax.nn.relu(norm(h.reshape(-1, 7, 7, self.widths[0]), "norm_in"))
        h = h_Bx7x7xC
        widths = (*self.widths[1:], self.out_channels)
        for i, width in enumerate(widths):
            h = _stride2(nn.ConvTranspose, width, self.dtype, f"deconv_{i}")(h)
            if i < len(widths) - 1:
                h = jax.nn.relu(norm(h, f"norm_{i}"))
        return h.astype(jnp.float32)


def prior_noise(keys_N, latent: int):
    """[N, Z] standard normal latents, row i from `keys_N[i]` alone: an image does not depend
    on how many are drawn beside it (the sampling batch size)."""
    return jax.vmap(lambda key: jax.random.normal(key, (latent,)))(keys_N)


def encoder_macs(image_shape, widths, features: int) -> int:
    """Multiply-adds of `ConvEncoder` on one image: each 4x4 convolution at its output's
    positions, then the dense layer (MFU's numerator for the image families)."""
    h, w, channels = image_shape
    macs = 0
    for width in widths:
        h, w = -(-h // 2), -(-w // 2)
        macs += h * w * 16 * channels * width
        channels = width
    return macs + h * w * channels * features


def decoder_macs(image_shape, widths, latent: int) -> int:
    """Multiply-adds of `ConvDecoder` (its `widths`, widest first) from one latent vector: the
    dense layer to 7x7, then each transposed convolution at its input's positions."""
    h, w = 7, 7
    macs = latent * h * w * widths[0]
    channels = widths[0]
    for width in (*widths[1:], image_shape[-1]):
        macs += h * w * 16 * channels * width
        channels, h, w = width, 2 * h, 2 * w
    return macs

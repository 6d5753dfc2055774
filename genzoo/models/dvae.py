"""Discrete image tokenizers: DALL·E's dVAE (Gumbel-softmax) and VQ-VAE, one family.

An encoder maps an image to an h x w grid (H/4 x W/4) and each cell to one of K codes; a
decoder maps the grid of code vectors back to pixels. `quantizer` picks how cells become
codes while training:

- "gumbel" (Ramesh et al., 2021): the encoder gives logits over the K codes; a Gumbel-
  softmax relaxation with temperature annealed from `tau_start` to `tau_end` mixes the
  codebook's vectors; the loss adds `kl_weight` x KL(q || uniform prior) per cell.
- "vq" (van den Oord et al., 2017): the encoder gives a vector per cell, replaced by its
  nearest code; gradients pass straight through; `commitment` x ||z_e - sg(e)||^2 keeps the
  encoder near its codes. The codebook is not trained by gradients but moved by moving
  averages of the vectors assigned to each code (model state, `params["vq"]`), and codes
  left unused (average count below `restart_below`) restart at random encoder outputs.

Pixels are modelled as Gaussians with a fixed `recon_sigma` around the decoder's means, on
8-bit bins: `bits_per_dim` is the negative ELBO per subpixel in bits (hard codes; the
uniform prior costs log2 K bits per cell). Evaluation always uses hard (argmax) codes,
as DALL·E's transformer will.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo.layers import partitioned
from genzoo.models.base import FromConfig, require, require_positive, require_widths

KIND = "image_tokenizer"
MODEL_STATE = "vq"  # the VQ codebook and its moving averages (quantizer="vq" only)


@dataclasses.dataclass(frozen=True)
class DVAEConfig(FromConfig):
    quantizer: str = "gumbel"  # or "vq"
    codebook_size: int = 256
    code_dim: int = 64
    widths: tuple = (64, 128)  # channels at H/2 and H/4
    image_shape: tuple = (32, 32, 3)
    recon_sigma: float = 0.1
    tau_start: float = 1.0
    tau_end: float = 1.0 / 16
    tau_anneal_steps: int = 2000
    kl_weight: float = 1.0
    commitment: float = 0.25
    ema_decay: float = 0.99
    restart_below: float = 0.03  # a code whose moving-average count falls below restarts
    dtype: str = "float32"

    def validate(self) -> None:
        require(self.quantizer in ("gumbel", "vq"), "model.quantizer is gumbel or vq")
        require(
            self.codebook_size > 1, f"model.codebook_size must be > 1, got {self.codebook_size}"
        )
        require_positive(self, "code_dim")
        require_widths(self, 2, " (at H/2 and H/4)")
        require_positive(self, "recon_sigma", "tau_start", "tau_end")
        require(0 <= self.ema_decay < 1, f"model.ema_decay must be in [0, 1), got {self.ema_decay}")
        h, w, _ = self.image_shape
        require(h % 4 == 0 and w % 4 == 0, f"image sides must be multiples of 4, got {h}x{w}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_shape[0] // 4, self.image_shape[1] // 4


def _conv(features, kernel, stride, name, dtype, transpose=False):
    cls = nn.ConvTranspose if transpose else nn.Conv
    return cls(features, (kernel, kernel), strides=(stride, stride), dtype=dtype, name=name,
               kernel_init=partitioned(nn.initializers.lecun_normal(), (None,) * 4),
               bias_init=partitioned(nn.initializers.zeros, (None,)))  # fmt: skip


class ResBlock(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC):
        C = x_BxHxWxC.shape[-1]
        h = _conv(C, 3, 1, "conv_0", self.dtype)(jax.nn.relu(x_BxHxWxC))
        return x_BxHxWxC + _conv(C, 1, 1, "conv_1", self.dtype)(jax.nn.relu(h))


class Encoder(nn.Module):
    """[B, H, W, C] -> [B, H/4, W/4, out]: two stride-2 convolutions with residual blocks."""

    out: int
    widths: tuple
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC):
        h = _conv(self.widths[0], 3, 1, "stem", self.dtype)(2.0 * x_BxHxWxC - 1.0)
        for i, width in enumerate(self.widths):
            h = jax.nn.relu(_conv(width, 4, 2, f"down_{i}", self.dtype)(h))
            h = ResBlock(self.dtype, name=f"res_{i}")(h)
        return _conv(self.out, 1, 1, "out", self.dtype)(jax.nn.relu(h))


class Decoder(nn.Module):
    """[B, h, w, D] code vectors -> [B, 4h, 4w, C] pixel means in [0, 1]."""

    channels: int
    widths: tuple
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z_BxhxwxD):
        widths = self.widths[::-1]
        h = _conv(widths[0], 1, 1, "stem", self.dtype)(z_BxhxwxD)
        for i, width in enumerate(widths):
            h = ResBlock(self.dtype, name=f"res_{i}")(h)
            h = jax.nn.relu(_conv(width, 4, 2, f"up_{i}", self.dtype, transpose=True)(h))
        return jax.nn.sigmoid(_conv(self.channels, 3, 1, "out", self.dtype)(h).astype(jnp.float32))


class DVAE(nn.Module):
    cfg: DVAEConfig

    def setup(self):
        c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        out = c.codebook_size if c.quantizer == "gumbel" else c.code_dim
        self.encoder = Encoder(out, c.widths, dtype)
        self.decoder = Decoder(c.image_shape[-1], c.widths, dtype)
        if c.quantizer == "gumbel":  # trained by gradients (VQ's lives in the model state)
            self.codebook = self.param(
                "codebook", partitioned(nn.initializers.normal(1.0), (None, None)),
                (c.codebook_size, c.code_dim),
            )  # fmt: skip

    def encode(self, x_BxHxWxC):
        """Logits over codes (gumbel) or code-space vectors (vq), [B, h, w, K or D]."""
        return self.encoder(x_BxHxWxC).astype(jnp.float32)

    def decode(self, z_BxhxwxD):
        return self.decoder(z_BxhxwxD)

    def __call__(self, x_BxHxWxC):  # for init: every parameter
        h = self.encode(x_BxHxWxC)
        if self.cfg.quantizer == "gumbel":
            h = jax.nn.softmax(h) @ self.codebook
        return self.decode(h)


def _vq_init(rng, c: DVAEConfig) -> dict:
    codebook = jax.random.uniform(rng, (c.codebook_size, c.code_dim), minval=-1.0, maxval=1.0)
    return {"codebook": codebook, "count": jnp.ones(c.codebook_size), "sum": codebook}


def nearest_codes(z_NxD, codebook_KxD):
    """Index of the nearest code (squared L2) for each row."""
    d_NxK = (jnp.sum(z_NxD**2, -1, keepdims=True) - 2 * z_NxD @ codebook_KxD.T
             + jnp.sum(codebook_KxD**2, -1)[None])  # fmt: skip
    return jnp.argmin(d_NxK, axis=-1)


def vq_ema_update(state, z_NxD, codes_N, valid_N, rng, c: DVAEConfig) -> dict:
    """The codebook's moving averages after one batch, with dead codes restarted."""
    onehot_NxK = jax.nn.one_hot(codes_N, c.codebook_size) * valid_N[:, None]
    g = c.ema_decay
    count_K = g * state["count"] + (1 - g) * onehot_NxK.sum(0)
    sum_KxD = g * state["sum"] + (1 - g) * onehot_NxK.T @ z_NxD
    codebook_KxD = sum_KxD / jnp.maximum(count_K, 1e-5)[:, None]
    # Restart dead codes at random encoder outputs of this batch (valid rows only).
    dead_K = count_K < c.restart_below
    logits_N = jnp.where(valid_N > 0, 0.0, -jnp.inf)
    pick_K = jax.random.categorical(rng, logits_N, shape=(c.codebook_size,))
    fresh_KxD = z_NxD[pick_K]
    return {
        "codebook": jnp.where(dead_K[:, None], fresh_KxD, codebook_KxD),
        "count": jnp.where(dead_K, 1.0, count_K),
        "sum": jnp.where(dead_K[:, None], fresh_KxD, sum_KxD),
    }


def gumbel_softmax(rng, logits, tau):
    """A relaxed one-hot sample: softmax((logits + Gumbel noise) / tau); one-hot as tau -> 0."""
    u = jax.random.uniform(rng, logits.shape, minval=1e-6, maxval=1.0)
    return jax.nn.softmax((logits - jnp.log(-jnp.log(u))) / tau)


def temperature(c: DVAEConfig, step):
    """Exponential anneal from tau_start to tau_end over tau_anneal_steps."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(c.tau_anneal_steps, 1), 0.0, 1.0)
    return c.tau_start * (c.tau_end / c.tau_start) ** frac


def _recon_nll(x_BxHxWxC, mean_BxHxWxC, c: DVAEConfig):
    """Per-image NLL (nats) of 8-bit pixels under Gaussians of std recon_sigma."""
    var = c.recon_sigma**2
    per_dim = 0.5 * (x_BxHxWxC - mean_BxHxWxC) ** 2 / var + 0.5 * math.log(2 * math.pi * var)
    per_dim = per_dim + math.log(256.0)  # density on [0, 1] -> probability of a 1/256 bin
    return per_dim.reshape(per_dim.shape[0], -1).sum(-1)


def _forward(params, batch, rng, c: DVAEConfig, step, train: bool):
    """Per-image reconstruction NLL and squared error, code penalty (KL or commitment),
    the codes [B, h, w], and the new VQ state (None for gumbel)."""
    model, x = DVAE(c), batch["image"]
    valid_B = batch["mask"]
    h = model.apply({"params": params["model"]}, x, method=DVAE.encode)
    new_state = None
    if c.quantizer == "gumbel":
        logits_BxhxwxK = h
        codes = jnp.argmax(logits_BxhxwxK, -1)
        if train:
            soft = gumbel_softmax(rng, logits_BxhxwxK, temperature(c, step))
        else:
            soft = jax.nn.one_hot(codes, c.codebook_size)
        z = soft @ params["model"]["codebook"]
        logq = jax.nn.log_softmax(logits_BxhxwxK)
        penalty_B = jnp.sum(jnp.exp(logq) * logq, (1, 2, 3)) + math.log(c.codebook_size) * (
            codes[0].size
        )  # KL(q || uniform), summed over cells
    else:
        state, B = params[MODEL_STATE], x.shape[0]
        codebook = jax.lax.stop_gradient(state["codebook"])
        z_NxD = h.reshape(-1, c.code_dim)
        codes_N = nearest_codes(z_NxD, codebook)
        codes = codes_N.reshape(h.shape[:-1])
        e = codebook[codes]
        z = h + jax.lax.stop_gradient(e - h)  # straight through
        penalty_B = jnp.sum((h - jax.lax.stop_gradient(e)) ** 2, (1, 2, 3))
        if train:
            valid_N = jnp.repeat(valid_B, z_NxD.shape[0] // B)
            z_sg = jax.lax.stop_gradient(z_NxD)
            new_state = vq_ema_update(state, z_sg, codes_N, valid_N, rng, c)
    mean = model.apply({"params": params["model"]}, z, method=DVAE.decode)
    sq_B = jnp.sum((x - mean) ** 2, (1, 2, 3))
    return _recon_nll(x, mean, c), sq_B, penalty_B, codes, new_state


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = DVAEConfig.from_cfg(cfg)
    model_rng, vq_rng = jax.random.split(rng)
    x = jnp.zeros((1, *c.image_shape))
    params = {"model": DVAE(c).init(model_rng, x)["params"]}
    if c.quantizer == "vq":
        params[MODEL_STATE] = _vq_init(vq_rng, c)
    return params


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    """Per-image negative ELBO (gumbel: recon + kl_weight x KL) or recon + commitment (vq),
    averaged over the batch; metrics per subpixel."""
    c = DVAEConfig.from_cfg(cfg)
    nll_B, sq_B, penalty_B, _, new_state = _forward(params, batch, rng, c, step, train)
    valid_B = batch["mask"]
    n = jnp.maximum(valid_B.sum(), 1.0)
    weight = c.kl_weight if c.quantizer == "gumbel" else c.commitment
    value = jnp.sum((nll_B + weight * penalty_B) * valid_B) / n
    dims = math.prod(c.image_shape)
    metrics = {"mse": jnp.sum(sq_B * valid_B) / (n * dims),
               "penalty": jnp.sum(penalty_B * valid_B) / n}  # fmt: skip
    if c.quantizer == "gumbel":
        metrics["tau"] = temperature(c, step)
    if new_state is None:
        return value, metrics
    return value, metrics, new_state


def eval_sums(params, batch, rng, cfg):
    c = DVAEConfig.from_cfg(cfg)
    nll_B, sq_B, _, codes, _ = _forward(params, batch, rng, c, 0, train=False)
    valid_B = batch["mask"]
    usage_K = jnp.sum(jax.nn.one_hot(codes, c.codebook_size) * valid_B[:, None, None, None],
                      (0, 1, 2))  # fmt: skip
    return {"nll": jnp.sum(nll_B * valid_B), "sq": jnp.sum(sq_B * valid_B), "n": valid_B.sum(),
            "subpixels": valid_B.sum() * math.prod(c.image_shape), "usage": usage_K}  # fmt: skip


def eval_summary(totals, meta):
    """Reconstruction MSE per subpixel, bits per subpixel (hard codes under the uniform
    prior), codebook perplexity and dead codes over the whole split."""
    import numpy as np

    usage = np.asarray(totals["usage"], np.float64)
    n = max(float(totals["n"]), 1.0)
    dims = float(totals["subpixels"]) / n
    cells, K = usage.sum() / n, len(usage)
    p = usage / max(usage.sum(), 1.0)
    entropy = -float(np.sum(p[p > 0] * np.log(p[p > 0])))
    bits = (float(totals["nll"]) / n + cells * math.log(K)) / (dims * math.log(2))
    return {"bits_per_dim": bits, "mse": float(totals["sq"]) / (n * dims),
            "perplexity": math.exp(entropy), "dead_codes": int((usage == 0).sum()),
            "num_examples": int(n)}  # fmt: skip


def flops_per_example(cfg, shapes) -> float:
    """Convolutions dominate: 2 x MACs per layer, x3 for forward and backward. Counted layer
    by layer: the decoder is not the encoder's mirror (it keeps the H/4 width up to H/2),
    and a transposed convolution costs its input's positions x kernel x channels."""
    c = DVAEConfig.from_cfg(cfg)
    H, W, C = c.image_shape
    w0, w1 = c.widths
    at = lambda s: (H // s) * (W // s)  # positions at 1/s of the image's side
    res = lambda s, w: at(s) * 10 * w * w  # a 3x3 then a 1x1 convolution, w -> w
    out = c.codebook_size if c.quantizer == "gumbel" else c.code_dim
    encoder = (at(1) * 9 * C * w0 + at(2) * 16 * w0 * w0 + res(2, w0)
               + at(4) * 16 * w0 * w1 + res(4, w1) + at(4) * w1 * out)  # fmt: skip
    mix = at(4) * c.codebook_size * c.code_dim if c.quantizer == "gumbel" else 0  # soft codes
    decoder = (at(4) * c.code_dim * w1 + res(4, w1) + at(4) * 16 * w1 * w1 + res(2, w1)
               + at(2) * 16 * w1 * w0 + at(1) * 9 * w0 * C)  # fmt: skip
    return float(6 * (encoder + mix + decoder))


# ---- the image_tokenizer kind -------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("c",))
def _encode(params, images_BxHxWxC, *, c: DVAEConfig):
    h = DVAE(c).apply({"params": params["model"]}, images_BxHxWxC, method=DVAE.encode)
    if c.quantizer == "gumbel":
        return jnp.argmax(h, -1)
    codes_N = nearest_codes(h.reshape(-1, c.code_dim), params[MODEL_STATE]["codebook"])
    return codes_N.reshape(h.shape[:-1])


@functools.partial(jax.jit, static_argnames=("c",))
def _decode(params, codes_Bxhxw, *, c: DVAEConfig):
    book = (params["model"] if c.quantizer == "gumbel" else params[MODEL_STATE])["codebook"]
    return DVAE(c).apply({"params": params["model"]}, book[codes_Bxhxw], method=DVAE.decode)


def encode(params, images_BxHxWxC, cfg):
    """Hard codes [B, h, w] of images in [0, 1]."""
    return _encode(params, jnp.asarray(images_BxHxWxC, jnp.float32), c=DVAEConfig.from_cfg(cfg))


def decode(params, codes_Bxhxw, cfg):
    """Pixel means [B, H, W, C] in [0, 1] of code grids."""
    return _decode(params, jnp.asarray(codes_Bxhxw, jnp.int32), c=DVAEConfig.from_cfg(cfg))


def reconstruct(params, images_BxHxWxC, cfg):
    return decode(params, encode(params, images_BxHxWxC, cfg), cfg)


def grid_shape(cfg) -> tuple[int, int]:
    return DVAEConfig.from_cfg(cfg).grid


def codebook_size(cfg) -> int:
    return DVAEConfig.from_cfg(cfg).codebook_size

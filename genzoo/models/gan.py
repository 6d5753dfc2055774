"""DCGAN (Radford et al., 2015): a transposed-conv generator and a conv discriminator, two
parameter groups.

`loss` returns `{"generator": ..., "discriminator": ...}`; the trainer moves each group
along its own loss only (simultaneous updates), with one optimizer per group
(`optim.groups`: a two-time-scale update is two learning rates). `norm="batch"` is the
published BatchNorm (generator: every hidden layer; discriminator: every convolution but
the first), its running statistics kept as model state in `params["batch_stats"]`;
`norm="layer"` (LayerNorm in the generator only) needs no state.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo.layers import ConvDecoder, ConvEncoder
from genzoo.layers.conv import decoder_macs, encoder_macs, prior_noise
from genzoo.models.base import FromConfig, require, require_conv_decoder

KIND = "image_generator"
MODEL_STATE = "batch_stats"  # present in the params with norm="batch"


LOSSES = ("non_saturating", "hinge")


@dataclasses.dataclass(frozen=True)
class GANConfig(FromConfig):
    latent: int = 64
    widths: tuple = (32, 64)
    loss: str = "non_saturating"  # or "hinge"
    norm: str = "layer"  # or "batch" (DCGAN as published)
    image_shape: tuple = (28, 28, 1)
    dtype: str = "float32"

    def validate(self) -> None:
        require_conv_decoder(self)
        require(self.loss in LOSSES, f"model.loss must be {' or '.join(LOSSES)}, got {self.loss!r}")
        require(
            self.norm in ("layer", "batch"), f"model.norm must be layer or batch, got {self.norm!r}"
        )


class Generator(nn.Module):
    cfg: GANConfig

    @nn.compact
    def __call__(self, z_BxZ, train: bool = False):
        """Images in [0, 1], [B, H, W, C]."""
        c = self.cfg
        decoder = ConvDecoder(c.image_shape[-1], c.widths[::-1], c.norm, jnp.dtype(c.dtype))
        return jax.nn.sigmoid(decoder(z_BxZ, train))


class Discriminator(nn.Module):
    cfg: GANConfig

    @nn.compact
    def __call__(self, image_BxHxWxC, train: bool = False):
        """Real-vs-fake logit per image, [B]."""
        c = self.cfg
        norm = "batch" if c.norm == "batch" else "none"
        h = ConvEncoder(1, c.widths, jnp.dtype(c.dtype), norm)(2.0 * image_BxHxWxC - 1.0, train)
        return h[:, 0].astype(jnp.float32)


def gan_losses(real_logits_B, fake_logits_B, kind: str, mask_B=None):
    """(generator loss, discriminator loss), batch means.

    non_saturating: D minimises -log D(x) - log(1 - D(G(z))), G minimises -log D(G(z)).
    hinge: D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z)).
    """
    mask_B = jnp.ones_like(real_logits_B) if mask_B is None else mask_B
    mean = lambda v: jnp.sum(v * mask_B) / jnp.maximum(mask_B.sum(), 1.0)
    if kind == "non_saturating":
        d = mean(jax.nn.softplus(-real_logits_B) + jax.nn.softplus(fake_logits_B))
        g = mean(jax.nn.softplus(-fake_logits_B))
    elif kind == "hinge":
        d = mean(jax.nn.relu(1.0 - real_logits_B) + jax.nn.relu(1.0 + fake_logits_B))
        g = mean(-fake_logits_B)
    else:
        raise ValueError(f"unknown GAN loss {kind!r}")
    return g, d


def _apply(module, params, stats, name, x, train):
    """`module` on `x`; with BatchNorm, also its statistics after this call (updated when
    training: the discriminator's twice per step, once on real and once on fake images)."""
    if stats is None:
        return module.apply({"params": params[name]}, x, train), None
    variables = {"params": params[name], "batch_stats": stats[name]}
    if not train:
        return module.apply(variables, x, train), stats
    out, updates = module.apply(variables, x, train, mutable=["batch_stats"])
    return out, {**stats, name: updates["batch_stats"]}


def _logits(params, batch, rng, c: GANConfig, train: bool):
    """(real logits, fake logits, batch statistics or None)."""
    stats = params.get(MODEL_STATE)
    z_BxZ = jax.random.normal(rng, (batch["image"].shape[0], c.latent))
    fake, stats = _apply(Generator(c), params, stats, "generator", z_BxZ, train)
    disc = Discriminator(c)
    real_B, stats = _apply(disc, params, stats, "discriminator", batch["image"], train)
    fake_B, stats = _apply(disc, params, stats, "discriminator", fake, train)
    return real_B, fake_B, stats


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = GANConfig.from_cfg(cfg)
    g_rng, d_rng = jax.random.split(rng)
    g = Generator(c).init(g_rng, jnp.zeros((1, c.latent)))
    d = Discriminator(c).init(d_rng, jnp.zeros((1, *c.image_shape)))
    params = {"generator": g["params"], "discriminator": d["params"]}
    if c.norm == "batch":
        params[MODEL_STATE] = {"generator": g["batch_stats"], "discriminator": d["batch_stats"]}
    return params


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    c = GANConfig.from_cfg(cfg)
    real_B, fake_B, stats = _logits(params, batch, rng, c, train)
    g, d = gan_losses(real_B, fake_B, c.loss, batch["mask"])
    accuracy = 0.5 * (jnp.mean(real_B > 0) + jnp.mean(fake_B < 0))
    out = {"generator": g, "discriminator": d}, {"d_accuracy": accuracy}
    return out if stats is None else (*out, stats)


def eval_sums(params, batch, rng, cfg):
    c = GANConfig.from_cfg(cfg)
    real_B, fake_B, _ = _logits(params, batch, rng, c, train=False)
    mask_B = batch["mask"]
    g, d = gan_losses(real_B, fake_B, c.loss, mask_B)
    n = mask_B.sum()
    correct = jnp.sum(((real_B > 0) * 0.5 + (fake_B < 0) * 0.5) * mask_B)
    return {"generator_loss": g * n, "discriminator_loss": d * n, "correct": correct, "n": n}


def eval_summary(totals, meta):
    n = max(float(totals["n"]), 1.0)
    return {
        "discriminator_loss": float(totals["discriminator_loss"]) / n,
        "generator_loss": float(totals["generator_loss"]) / n,
        "discriminator_accuracy": float(totals["correct"]) / n,
    }


def flops_per_example(cfg, shapes) -> float:
    """2 per multiply-add of one step: the generator's forward and backward (3 G), the
    discriminator's forward on the real and the fake image (2 D), its backward for its own
    loss on both (4 D), and the generator's gradient back through it on the fake (1 D)."""
    c = GANConfig.from_cfg(cfg)
    g = decoder_macs(c.image_shape, c.widths[::-1], c.latent)
    d = encoder_macs(c.image_shape, c.widths, 1)
    return float(2 * (3 * g + 7 * d))


@functools.partial(jax.jit, static_argnames="cfg")
def _sample(params, keys_N, *, cfg):
    c = GANConfig.from_cfg(cfg)
    z_NxZ = prior_noise(keys_N, c.latent)
    return _apply(Generator(c), params, params.get(MODEL_STATE), "generator", z_NxZ, False)[0]


def sample(params, keys_N, cfg):
    """One generated image per key, [N, H, W, C] in [0, 1]."""
    return _sample(params, keys_N, cfg=cfg)

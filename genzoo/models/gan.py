"""DCGAN-style GAN: a transposed-conv generator and a conv discriminator, two parameter groups.

`loss` returns `{"generator": ..., "discriminator": ...}`; the trainer moves each group
along its own loss only (simultaneous updates), with one optimizer per group
(`optim.groups`). DCGAN's BatchNorm is replaced by LayerNorm in the generator and no
norm in the discriminator, so the model stays a pure function of its parameters.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo.layers import ConvDecoder, ConvEncoder
from genzoo.models.base import FromConfig

KIND = "image_generator"


@dataclasses.dataclass(frozen=True)
class GANConfig(FromConfig):
    latent: int = 64
    widths: tuple = (32, 64)
    loss: str = "non_saturating"  # or "hinge"
    image_shape: tuple = (28, 28, 1)
    dtype: str = "float32"


class Generator(nn.Module):
    cfg: GANConfig

    @nn.compact
    def __call__(self, z_BxZ):
        """Images in [0, 1], [B, H, W, C]."""
        c = self.cfg
        logits = ConvDecoder(c.image_shape[-1], c.widths[::-1], True, jnp.dtype(c.dtype))(z_BxZ)
        return jax.nn.sigmoid(logits)


class Discriminator(nn.Module):
    cfg: GANConfig

    @nn.compact
    def __call__(self, image_BxHxWxC):
        """Real-vs-fake logit per image, [B]."""
        h = ConvEncoder(1, self.cfg.widths, jnp.dtype(self.cfg.dtype))(2.0 * image_BxHxWxC - 1.0)
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


def _logits(params, batch, rng, c: GANConfig):
    z_BxZ = jax.random.normal(rng, (batch["image"].shape[0], c.latent))
    fake = Generator(c).apply({"params": params["generator"]}, z_BxZ)
    disc = Discriminator(c)
    real_B = disc.apply({"params": params["discriminator"]}, batch["image"])
    fake_B = disc.apply({"params": params["discriminator"]}, fake)
    return real_B, fake_B


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = GANConfig.from_cfg(cfg)
    g_rng, d_rng = jax.random.split(rng)
    return {
        "generator": Generator(c).init(g_rng, jnp.zeros((1, c.latent)))["params"],
        "discriminator": Discriminator(c).init(d_rng, jnp.zeros((1, *c.image_shape)))["params"],
    }


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    c = GANConfig.from_cfg(cfg)
    real_B, fake_B = _logits(params, batch, rng, c)
    g, d = gan_losses(real_B, fake_B, c.loss, batch["mask"])
    accuracy = 0.5 * (jnp.mean(real_B > 0) + jnp.mean(fake_B < 0))
    return {"generator": g, "discriminator": d}, {"d_accuracy": accuracy}


def eval_sums(params, batch, rng, cfg):
    c = GANConfig.from_cfg(cfg)
    real_B, fake_B = _logits(params, batch, rng, c)
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


@functools.partial(jax.jit, static_argnames=("cfg", "num"))
def _sample(params, rng, *, cfg, num):
    c = GANConfig.from_cfg(cfg)
    return Generator(c).apply(
        {"params": params["generator"]}, jax.random.normal(rng, (num, c.latent))
    )


def sample(params, rng, cfg, *, num: int):
    """`num` generated images, [N, H, W, C] in [0, 1]."""
    return _sample(params, rng, cfg=cfg, num=num)

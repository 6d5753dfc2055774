"""VAE: convolutional encoder/decoder, Gaussian posterior, Bernoulli likelihood on binarised pixels.

Images in [0, 1] are binarised at 0.5 (a fixed threshold, so the data are deterministic
and the likelihood is a proper Bernoulli: figures are nats per image, comparable in kind
to the ~100 nats VAEs reach on binarised MNIST). The loss is the negative ELBO with an
optional beta and a linear KL warm-up.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo.layers import ConvDecoder, ConvEncoder
from genzoo.layers.conv import decoder_macs, encoder_macs, prior_noise
from genzoo.models.base import FromConfig, require_conv_decoder, require_positive

KIND = "image_generator"


@dataclasses.dataclass(frozen=True)
class VAEConfig(FromConfig):
    latent: int = 32
    widths: tuple = (32, 64)
    beta: float = 1.0
    kl_warmup_steps: int = 0
    iw_samples: int = 100  # importance samples for the nll_iw bound
    iw_examples: int = 1000  # ...computed on the first this-many examples of the split
    image_shape: tuple = (28, 28, 1)
    dtype: str = "float32"

    def validate(self) -> None:
        require_conv_decoder(self)
        require_positive(self, "iw_samples", "iw_examples")


class VAE(nn.Module):
    cfg: VAEConfig

    def setup(self):
        c = self.cfg
        self.encoder = ConvEncoder(2 * c.latent, c.widths, jnp.dtype(c.dtype))
        self.decoder = ConvDecoder(c.image_shape[-1], c.widths[::-1], "none", jnp.dtype(c.dtype))

    def encode(self, x_BxHxWxC):
        """Posterior mean and log-variance, [B, Z] each."""
        h_Bx2Z = self.encoder(x_BxHxWxC).astype(jnp.float32)
        return h_Bx2Z[:, : self.cfg.latent], h_Bx2Z[:, self.cfg.latent :]

    def decode(self, z_BxZ):
        """Bernoulli logits of every pixel, [B, H, W, C]."""
        return self.decoder(z_BxZ)

    def __call__(self, x_BxHxWxC, eps_BxZ):
        mean_BxZ, logvar_BxZ = self.encode(x_BxHxWxC)
        z_BxZ = mean_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps_BxZ
        return self.decode(z_BxZ), mean_BxZ, logvar_BxZ


def binarize(image_BxHxWxC):
    return (image_BxHxWxC > 0.5).astype(jnp.float32)


def bernoulli_log_prob(logits_BxHxWxC, x_BxHxWxC):
    """log p(x | z) per image, summed over pixels, in nats."""
    per_pixel = x_BxHxWxC * logits_BxHxWxC - jax.nn.softplus(logits_BxHxWxC)
    return per_pixel.reshape(per_pixel.shape[0], -1).sum(-1)


def gaussian_kl(mean_BxZ, logvar_BxZ):
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, in nats."""
    return 0.5 * jnp.sum(jnp.exp(logvar_BxZ) + mean_BxZ**2 - 1.0 - logvar_BxZ, axis=-1)


def _normal_log_prob(z, mean, logvar):
    return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar + (z - mean) ** 2 / jnp.exp(logvar), -1)


def elbo_terms(params, x_BxHxWxC, rng, cfg):
    """Reconstruction (-log p(x|z), one z sample) and analytic KL, [B] each."""
    c = VAEConfig.from_cfg(cfg)
    eps_BxZ = jax.random.normal(rng, (x_BxHxWxC.shape[0], c.latent))
    logits, mean_BxZ, logvar_BxZ = VAE(c).apply({"params": params}, x_BxHxWxC, eps_BxZ)
    return -bernoulli_log_prob(logits, x_BxHxWxC), gaussian_kl(mean_BxZ, logvar_BxZ)


def nll_importance_weighted(params, x_BxHxWxC, rng, cfg, num_samples: int):
    """-log of the k-sample importance-weighted estimate of p(x) (Burda et al.), [B] nats."""
    c = VAEConfig.from_cfg(cfg)
    model = VAE(c)
    mean_BxZ, logvar_BxZ = model.apply({"params": params}, x_BxHxWxC, method=VAE.encode)

    def log_weight(key):
        z_BxZ = mean_BxZ + jnp.exp(0.5 * logvar_BxZ) * jax.random.normal(key, mean_BxZ.shape)
        logits = model.apply({"params": params}, z_BxZ, method=VAE.decode)
        log_prior = _normal_log_prob(z_BxZ, 0.0, jnp.zeros_like(z_BxZ))
        log_q = _normal_log_prob(z_BxZ, mean_BxZ, logvar_BxZ)
        return bernoulli_log_prob(logits, x_BxHxWxC) + log_prior - log_q

    log_w_KxB = jax.lax.map(log_weight, jax.random.split(rng, num_samples))  # bounded memory
    return -(jax.nn.logsumexp(log_w_KxB, axis=0) - math.log(num_samples))


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = VAEConfig.from_cfg(cfg)
    x = jnp.zeros((1, *c.image_shape), jnp.float32)
    return VAE(c).init(rng, x, jnp.zeros((1, c.latent)))["params"]


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    """Negative ELBO per image (beta-weighted KL, linearly warmed up), averaged over the batch."""
    c = VAEConfig.from_cfg(cfg)
    recon_B, kl_B = elbo_terms(params, binarize(batch["image"]), rng, cfg)
    warm = jnp.minimum(1.0, (step + 1) / c.kl_warmup_steps) if c.kl_warmup_steps else 1.0
    mask_B = batch["mask"]
    n = jnp.maximum(mask_B.sum(), 1.0)
    value = jnp.sum((recon_B + c.beta * warm * kl_B) * mask_B) / n
    return value, {
        "reconstruction": jnp.sum(recon_B * mask_B) / n,
        "kl": jnp.sum(kl_B * mask_B) / n,
    }


def eval_sums(params, batch, rng, cfg):
    c = VAEConfig.from_cfg(cfg)
    x = binarize(batch["image"])
    elbo_rng, iw_rng = jax.random.split(rng)
    recon_B, kl_B = elbo_terms(params, x, elbo_rng, cfg)
    mask_B = batch["mask"]
    iw_mask_B = mask_B * (batch["index"] < c.iw_examples)
    # The bound is costly (k decoder passes): skip whole batches past the subset.
    nll_iw_B = jax.lax.cond(
        iw_mask_B.sum() > 0,
        lambda: nll_importance_weighted(params, x, iw_rng, cfg, c.iw_samples),
        lambda: jnp.zeros_like(recon_B),
    )
    return {
        "reconstruction": jnp.sum(recon_B * mask_B),
        "kl": jnp.sum(kl_B * mask_B),
        "num_examples": mask_B.sum(),
        "nll_iw": jnp.sum(nll_iw_B * iw_mask_B),
        "num_iw_examples": iw_mask_B.sum(),
    }


def eval_summary(totals, meta):
    n = max(float(totals["num_examples"]), 1.0)
    recon, kl = float(totals["reconstruction"]) / n, float(totals["kl"]) / n
    return {
        "elbo": recon + kl,  # the negative-ELBO bound, nats per image
        "reconstruction": recon,
        "kl": kl,
        "nll_iw": float(totals["nll_iw"]) / max(float(totals["num_iw_examples"]), 1.0),
        "num_examples": int(n),
        "num_iw_examples": int(totals["num_iw_examples"]),
    }


def flops_per_example(cfg, shapes) -> float:
    """6 per multiply-add (forward and backward) of the encoder and the decoder."""
    c = VAEConfig.from_cfg(cfg)
    encoder = encoder_macs(c.image_shape, c.widths, 2 * c.latent)
    return float(6 * (encoder + decoder_macs(c.image_shape, c.widths[::-1], c.latent)))


@functools.partial(jax.jit, static_argnames="cfg")
def _sample(params, keys_N, *, cfg):
    c = VAEConfig.from_cfg(cfg)
    z_NxZ = prior_noise(keys_N, c.latent)
    return jax.nn.sigmoid(VAE(c).apply({"params": params}, z_NxZ, method=VAE.decode))


def sample(params, keys_N, cfg):
    """Pixel means [N, H, W, C] in [0, 1] decoded from one prior sample per key."""
    return _sample(params, keys_N, cfg=cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def reconstruct(params, images_BxHxWxC, cfg):
    """Pixel means decoded from the posterior mean of each (binarised) input."""
    model = VAE(VAEConfig.from_cfg(cfg))
    mean_BxZ, _ = model.apply({"params": params}, binarize(images_BxHxWxC), method=VAE.encode)
    return jax.nn.sigmoid(model.apply({"params": params}, mean_BxZ, method=VAE.decode))

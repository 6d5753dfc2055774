"""A small conv classifier; its penultimate features are the embedding for sample-quality scores."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from genzoo.layers import ConvEncoder, partitioned
from genzoo.layers.conv import encoder_macs
from genzoo.models.base import FromConfig, require_positive, require_widths

KIND = "classifier"


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(FromConfig):
    num_classes: int = 10
    features: int = 128
    widths: tuple = (32, 64)
    image_shape: tuple = (28, 28, 1)
    dtype: str = "float32"

    def validate(self) -> None:
        require_positive(self, "num_classes", "features")
        require_widths(self)


class Classifier(nn.Module):
    cfg: ClassifierConfig

    @nn.compact
    def __call__(self, image_BxHxWxC):
        """(class logits [B, classes], features [B, F])."""
        c = self.cfg
        f_BxF = jax.nn.gelu(ConvEncoder(c.features, c.widths, jnp.dtype(c.dtype))(image_BxHxWxC))
        logits_BxK = nn.Dense(
            c.num_classes,
            kernel_init=partitioned(nn.initializers.lecun_normal(), (None, None)),
            bias_init=partitioned(nn.initializers.zeros, (None,)),
            name="head",
        )(f_BxF)
        return logits_BxK.astype(jnp.float32), f_BxF.astype(jnp.float32)


def _apply(params, images, cfg):
    return Classifier(ClassifierConfig.from_cfg(cfg)).apply({"params": params}, images)


def init(rng, cfg):
    c = ClassifierConfig.from_cfg(cfg)
    return Classifier(c).init(rng, jnp.zeros((1, *c.image_shape)))["params"]


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    logits_BxK, _ = _apply(params, batch["image"], cfg)
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, batch["label"])
    mask_B = batch["mask"]
    n = jnp.maximum(mask_B.sum(), 1.0)
    accuracy = jnp.sum((jnp.argmax(logits_BxK, -1) == batch["label"]) * mask_B) / n
    return jnp.sum(nll_B * mask_B) / n, {"accuracy": accuracy}


def eval_sums(params, batch, rng, cfg):
    logits_BxK, _ = _apply(params, batch["image"], cfg)
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, batch["label"])
    mask_B = batch["mask"]
    correct_B = jnp.argmax(logits_BxK, -1) == batch["label"]
    return {
        "nll": jnp.sum(nll_B * mask_B),
        "correct": jnp.sum(correct_B * mask_B),
        "n": mask_B.sum(),
    }


def eval_summary(totals, meta):
    n = max(float(totals["n"]), 1.0)
    return {"loss": float(totals["nll"]) / n, "accuracy": float(totals["correct"]) / n}


def flops_per_example(cfg, shapes) -> float:
    """6 per multiply-add (forward and backward) of the encoder and the head."""
    c = ClassifierConfig.from_cfg(cfg)
    head = c.features * c.num_classes
    return float(6 * (encoder_macs(c.image_shape, c.widths, c.features) + head))


@functools.partial(jax.jit, static_argnames=("cfg",))
def predict(params, images_BxHxWxC, cfg):
    """(class probabilities [B, K], penultimate features [B, F])."""
    logits_BxK, f_BxF = _apply(params, images_BxHxWxC, cfg)
    return jax.nn.softmax(logits_BxK, -1), f_BxF

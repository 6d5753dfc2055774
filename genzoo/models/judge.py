"""The shapes judge: a conv classifier of a scene's attributes, to score text-to-image models.

From a 32x32 scene it predicts, for the upper (or left) object and for the other one, the
shape, colour and size (each with an extra "absent" class), and the relation's axis
(vertical, horizontal, none): the labels of `shapes.canonical`, which an image determines
whatever order its caption names the objects in. Its penultimate features give FID for
generated scenes, as the Fashion-MNIST classifier's do for the VAE and GAN.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from genzoo.data import shapes
from genzoo.layers import ConvEncoder, partitioned
from genzoo.layers.conv import encoder_macs
from genzoo.models.base import FromConfig, require_positive, require_widths

KIND = "attribute_judge"
# Every head: name -> number of classes (attribute values + "absent"; axes + "none").
HEADS = {**{f"{a}_{i}": n + 1 for a, n in shapes.ATTRIBUTES.items() for i in (0, 1)},
         "axis": len(shapes.AXES) + 1}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class JudgeConfig(FromConfig):
    features: int = 256
    widths: tuple = (32, 64)
    image_shape: tuple = (32, 32, 3)
    dtype: str = "float32"

    def validate(self) -> None:
        require_positive(self, "features")
        require_widths(self)


class Judge(nn.Module):
    cfg: JudgeConfig

    @nn.compact
    def __call__(self, image_BxHxWxC):
        """({head: logits [B, classes]}, features [B, F])."""
        c = self.cfg
        f_BxF = jax.nn.gelu(ConvEncoder(c.features, c.widths, jnp.dtype(c.dtype))(image_BxHxWxC))
        init = partitioned(nn.initializers.lecun_normal(), (None, None))
        logits = {name: nn.Dense(n, kernel_init=init, name=name)(f_BxF).astype(jnp.float32)
                  for name, n in HEADS.items()}  # fmt: skip
        return logits, f_BxF.astype(jnp.float32)


def targets(batch, xp=jnp) -> dict:
    """{head: class ids [B]} of a batch's (or a parsed caption's) scene attributes."""
    canon = shapes.canonical(batch["shape"], batch["colour"], batch["size"], batch["relation"], xp)
    out = {f"{a}_{i}": canon[a][:, i] for a in shapes.ATTRIBUTES for i in (0, 1)}
    return {**out, "axis": canon["axis"]}


def _sums(params, batch, cfg):
    logits, _ = Judge(JudgeConfig.from_cfg(cfg)).apply({"params": params}, batch["image"])
    want, mask_B = targets(batch), batch["mask"]
    sums, all_right_B = {"n": mask_B.sum(), "nll": 0.0}, mask_B > 0
    for name, logits_BxK in logits.items():
        nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, want[name])
        right_B = jnp.argmax(logits_BxK, -1) == want[name]
        sums["nll"] += jnp.sum(nll_B * mask_B)
        sums[f"right_{name}"] = jnp.sum(right_B * mask_B)
        all_right_B &= right_B
    sums["right_scene"] = all_right_B.sum()
    return sums


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = JudgeConfig.from_cfg(cfg)
    return Judge(c).init(rng, jnp.zeros((1, *c.image_shape)))["params"]


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    """Summed cross-entropy of the seven heads, mean over the batch."""
    s = _sums(params, batch, cfg)
    n = jnp.maximum(s["n"], 1.0)
    return s["nll"] / n, {"scene_accuracy": s["right_scene"] / n}


def eval_sums(params, batch, rng, cfg):
    return _sums(params, batch, cfg)


def eval_summary(totals, meta):
    n = max(float(totals["n"]), 1.0)
    out = {"loss": float(totals["nll"]) / n, "scene_accuracy": float(totals["right_scene"]) / n}
    out.update({f"accuracy_{h}": float(totals[f"right_{h}"]) / n for h in HEADS})
    return out


def flops_per_example(cfg, shapes) -> float:
    """6 per multiply-add (forward and backward) of the encoder and the seven heads."""
    c = JudgeConfig.from_cfg(cfg)
    heads = c.features * sum(HEADS.values())
    return float(6 * (encoder_macs(c.image_shape, c.widths, c.features) + heads))


@functools.partial(jax.jit, static_argnames=("c",))
def _predict(params, images_BxHxWxC, *, c: JudgeConfig):
    logits, f_BxF = Judge(c).apply({"params": params}, images_BxHxWxC)
    return {name: jnp.argmax(x, -1) for name, x in logits.items()}, f_BxF


def predict(params, images_BxHxWxC, cfg):
    """({head: predicted class [B]}, penultimate features [B, F]) of images in [0, 1]."""
    images = jnp.asarray(images_BxHxWxC, jnp.float32)
    return _predict(params, images, c=JudgeConfig.from_cfg(cfg))

"""CLIP (Radford et al., 2021): a text transformer and a small ViT trained contrastively.

Both towers are pre-LN stacks of the shared `TransformerBlock`. The text tower reads the
caption (padding masked) and keeps the feature at its EOS; the image tower cuts the image
into `patch` x `patch` patches, prepends a [CLS] token and keeps its feature. Each feature
is projected to `embed_dim` and L2-normalised; a learned temperature (logit scale, clipped
at 100 as in the paper) scales their cosine similarities. The loss is the symmetric cross-
entropy over the batch: every other caption in the *global* batch is a negative, so on a
mesh the similarity matrix spans all devices and the sharded loss equals one device's.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genzoo.evaluation import lm
from genzoo.layers import Embed, LayerNorm, TransformerBlock, call_blocks, partitioned
from genzoo.layers.transformer import stack_macs
from genzoo.models.base import FromConfig, require, require_transformer_shape

KIND = "contrastive"


@dataclasses.dataclass(frozen=True)
class CLIPConfig(FromConfig):
    vocab_size: int
    max_caption_len: int = 12
    image_shape: tuple = (32, 32, 3)
    patch: int = 4
    width: int = 128
    num_heads: int = 4
    mlp_hidden: int = 512
    text_layers: int = 2
    image_layers: int = 2
    embed_dim: int = 64
    init_temperature: float = 0.07
    dropout: float = 0.0
    dtype: str = "float32"
    remat: str = "none"  # activation rematerialisation per block: none, full, dots
    scan_layers: bool = False  # one lax.scan over each tower: XLA compiles one block, not N

    def validate(self) -> None:
        require_transformer_shape(self, "width", "num_heads", "text_layers", "image_layers",
                                  "patch", "mlp_hidden", "embed_dim", "max_caption_len",
                                  "init_temperature")  # fmt: skip
        h, w, _ = self.image_shape
        require(h % self.patch == 0 and w % self.patch == 0,
                f"model.patch={self.patch} does not divide the image ({h}x{w})")  # fmt: skip

    @property
    def num_patches(self) -> int:
        return (self.image_shape[0] // self.patch) * (self.image_shape[1] // self.patch)


def _blocks(c: CLIPConfig, n: int, prefix: str):
    return [TransformerBlock(num_heads=c.num_heads, mlp_hidden=c.mlp_hidden, mode="bidirectional",
                             dropout_rate=c.dropout, dtype=jnp.dtype(c.dtype), name=f"{prefix}_{i}")
            for i in range(n)]  # fmt: skip


def _projection(features: int, name: str):
    init = partitioned(nn.initializers.normal(0.02), ("embed", None))
    return nn.Dense(features, use_bias=False, kernel_init=init, name=name)


class CLIP(nn.Module):
    cfg: CLIPConfig

    def setup(self):
        c, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        # Caption vocabularies are tens of words: the table is replicated over `tensor`, so
        # an odd vocabulary (Fashion-MNIST's 19 words) runs on any mesh.
        self.token = Embed(c.vocab_size, c.width, (None, "embed"), dtype, name="token")
        self.text_position = Embed(c.max_caption_len, c.width, ("pos", "embed"), dtype)
        self.text_blocks = _blocks(c, c.text_layers, "text")
        self.text_ln = LayerNorm(dtype=dtype)
        self.text_proj = _projection(c.embed_dim, "text_proj")
        self.patch_embed = nn.Conv(
            c.width, (c.patch, c.patch), strides=(c.patch, c.patch), dtype=dtype, name="patch",
            kernel_init=partitioned(nn.initializers.lecun_normal(), (None, None, None, "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        )  # fmt: skip
        self.cls = self.param("cls", partitioned(nn.initializers.normal(0.02), ("embed",)),
                              (c.width,))  # fmt: skip
        self.image_position = Embed(c.num_patches + 1, c.width, ("pos", "embed"), dtype)
        self.image_blocks = _blocks(c, c.image_layers, "image")
        self.image_ln = LayerNorm(dtype=dtype)
        self.image_proj = _projection(c.embed_dim, "image_proj")
        self.logit_scale = self.param(
            "logit_scale", lambda _: jnp.array(math.log(1.0 / c.init_temperature), jnp.float32)
        )

    def encode_text(self, caption_BxT, valid_BxT, deterministic=True):
        """Unit-norm caption embeddings [B, E]: the feature at each caption's EOS."""
        B, T = caption_BxT.shape
        x_BxTxD = self.token(caption_BxT) + self.text_position(
            jnp.broadcast_to(jnp.arange(T), (B, T))
        )
        x_BxTxD, _ = call_blocks(self.text_blocks, self.cfg, x_BxTxD, deterministic,
                                 key_valid_BxL=valid_BxT)  # fmt: skip
        eos_B = jnp.maximum(valid_BxT.sum(-1).astype(jnp.int32) - 1, 0)
        h_BxD = self.text_ln(jnp.take_along_axis(x_BxTxD, eos_B[:, None, None], axis=1)[:, 0])
        return _unit(self.text_proj(h_BxD))

    def encode_image(self, image_BxHxWxC, deterministic=True):
        """Unit-norm image embeddings [B, E]: the [CLS] feature."""
        p_BxhxwxD = self.patch_embed(2.0 * image_BxHxWxC - 1.0)
        B, D = p_BxhxwxD.shape[0], p_BxhxwxD.shape[-1]
        cls_Bx1xD = jnp.broadcast_to(self.cls.astype(p_BxhxwxD.dtype), (B, 1, D))
        x_BxNxD = jnp.concatenate([cls_Bx1xD, p_BxhxwxD.reshape(B, -1, D)], axis=1)
        N = x_BxNxD.shape[1]
        x_BxNxD = x_BxNxD + self.image_position(jnp.broadcast_to(jnp.arange(N), (B, N)))
        x_BxNxD, _ = call_blocks(self.image_blocks, self.cfg, x_BxNxD, deterministic)
        return _unit(self.image_proj(self.image_ln(x_BxNxD[:, 0])))

    def scale(self):
        return jnp.minimum(jnp.exp(self.logit_scale), 100.0)

    def __call__(self, image_BxHxWxC, caption_BxT, valid_BxT, deterministic=True):
        image_BxE = self.encode_image(image_BxHxWxC, deterministic)
        text_BxE = self.encode_text(caption_BxT, valid_BxT, deterministic)
        return image_BxE, text_BxE, self.scale()


def _unit(x_BxE):
    x_BxE = x_BxE.astype(jnp.float32)
    return x_BxE / jnp.maximum(jnp.linalg.norm(x_BxE, axis=-1, keepdims=True), 1e-6)


def contrastive_sums(image_BxE, text_BxE, scale, valid_B):
    """Summed symmetric cross-entropy (image->text and text->image, halves) and correct
    top-1 matches over the valid rows; padded rows are neither anchors nor negatives."""
    logits_BxB = scale * image_BxE @ text_BxE.T
    logits_BxB = jnp.where(valid_B[None, :] > 0, logits_BxB, -1e9)
    logits_T_BxB = jnp.where(valid_B[None, :] > 0, logits_BxB.T, -1e9)
    target_B = jnp.arange(logits_BxB.shape[0])
    i2t_B, t2i_B = lm.token_nll(logits_BxB, target_B), lm.token_nll(logits_T_BxB, target_B)
    right_B = (jnp.argmax(logits_BxB, -1) == target_B) & (jnp.argmax(logits_T_BxB, -1) == target_B)
    return {"nll": jnp.sum(0.5 * (i2t_B + t2i_B) * valid_B),
            "correct": jnp.sum(right_B * valid_B), "n": valid_B.sum()}  # fmt: skip


def _sums(params, batch, rng, c: CLIPConfig, train: bool):
    image_BxE, text_BxE, scale = CLIP(c).apply(
        {"params": params}, batch["image"], batch["caption"], batch["caption_mask"] > 0,
        deterministic=not train, rngs={"dropout": rng},
    )  # fmt: skip
    return {**contrastive_sums(image_BxE, text_BxE, scale, batch["mask"]), "scale": scale}


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = CLIPConfig.from_cfg(cfg)
    image = jnp.zeros((1, *c.image_shape))
    caption = jnp.zeros((1, c.max_caption_len), jnp.int32)
    return CLIP(c).init({"params": rng}, image, caption, caption > -1)["params"]


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    c = CLIPConfig.from_cfg(cfg)
    s = _sums(params, batch, rng, c, train)
    n = jnp.maximum(s["n"], 1.0)
    return s["nll"] / n, {"batch_accuracy": s["correct"] / n, "logit_scale": s["scale"]}


def eval_sums(params, batch, rng, cfg):
    """Within-batch figures (they depend on the eval batch size); retrieval over the whole
    split and zero-shot accuracy are the `clip_retrieval` evaluator's."""
    s = _sums(params, batch, rng, CLIPConfig.from_cfg(cfg), False)
    return {k: s[k] for k in ("nll", "correct", "n")}


def eval_summary(totals, meta):
    n = max(float(totals["n"]), 1.0)
    return {"loss": float(totals["nll"]) / n, "batch_accuracy": float(totals["correct"]) / n}


def flops_per_example(cfg, shapes) -> float:
    """6 per multiply-add (forward and backward) of both towers: per token and layer the
    weight matmuls (4 D^2 + 2 D F) and attention's two products (2 L D), the image's patch
    projection, the two embedding projections. The batch's similarity matrix (B x E per
    example) is left out, as a language model's softmax is."""
    c = CLIPConfig.from_cfg(cfg)
    D, P = c.width, c.num_patches
    text = stack_macs(c.text_layers, c.max_caption_len, D, c.mlp_hidden)
    image = stack_macs(c.image_layers, P + 1, D, c.mlp_hidden)
    patches = P * c.patch * c.patch * c.image_shape[-1] * D
    return float(6 * (text + image + patches + 2 * D * c.embed_dim))


@functools.partial(jax.jit, static_argnames=("c",))
def _images(params, image_BxHxWxC, *, c):
    return CLIP(c).apply({"params": params}, image_BxHxWxC, method=CLIP.encode_image)


@functools.partial(jax.jit, static_argnames=("c",))
def _texts(params, caption_BxT, *, c):
    return CLIP(c).apply({"params": params}, caption_BxT, caption_BxT > 0, method=CLIP.encode_text)


def encode_images(params, images_BxHxWxC, cfg):
    """Unit-norm embeddings [B, E] of images in [0, 1]."""
    return _images(params, jnp.asarray(images_BxHxWxC, jnp.float32), c=CLIPConfig.from_cfg(cfg))


def encode_texts(params, captions_BxT, cfg):
    """Unit-norm embeddings [B, E] of padded caption ids (0 = padding)."""
    return _texts(params, jnp.asarray(captions_BxT, jnp.int32), c=CLIPConfig.from_cfg(cfg))

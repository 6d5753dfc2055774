"""CLIP: the contrastive loss by hand, its symmetry, padded rows, and the towers' shapes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genzoo.models import clip

CFG = dict(vocab_size=30, max_caption_len=6, image_shape=(32, 32, 3), patch=8, width=32,
           num_heads=2, mlp_hidden=64, text_layers=1, image_layers=1, embed_dim=16)  # fmt: skip


def _xent(logits, target):
    return -(logits[target] - np.log(np.exp(logits).sum()))


def test_contrastive_loss_matches_a_hand_computation_and_is_symmetric():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 4))
    txt = rng.normal(size=(3, 4))
    img, txt = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (img, txt))
    scale = 10.0
    s = clip.contrastive_sums(jnp.asarray(img), jnp.asarray(txt), scale, jnp.ones(3))
    logits = scale * img @ txt.T
    hand = sum(0.5 * (_xent(logits[i], i) + _xent(logits[:, i], i)) for i in range(3))
    assert float(s["nll"]) == pytest.approx(hand, rel=1e-5)
    swapped = clip.contrastive_sums(jnp.asarray(txt), jnp.asarray(img), scale, jnp.ones(3))
    assert float(swapped["nll"]) == pytest.approx(float(s["nll"]), rel=1e-6)
    # A padded row is neither an anchor nor a negative: the loss of the other two alone.
    s2 = clip.contrastive_sums(
        jnp.asarray(img), jnp.asarray(txt), scale, jnp.array([1.0, 1.0, 0.0])
    )
    sub = scale * img[:2] @ txt[:2].T
    hand2 = sum(0.5 * (_xent(sub[i], i) + _xent(sub[:, i], i)) for i in range(2))
    assert float(s2["nll"]) == pytest.approx(hand2, rel=1e-5) and float(s2["n"]) == 2


def test_towers_give_unit_embeddings_and_text_ignores_padding():
    params = nn.unbox(clip.init(jax.random.PRNGKey(0), CFG))
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    e = np.asarray(clip.encode_images(params, images, CFG))
    assert e.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    captions = np.array([[5, 6, 7, 1, 0, 0], [5, 6, 7, 1, 9, 9]], np.int32)  # row 2: junk pads
    valid = np.arange(6)[None] < 4
    c = clip.CLIPConfig.from_cfg(CFG)
    t = np.asarray(clip.CLIP(c).apply({"params": params}, captions, np.repeat(valid, 2, 0),
                                      method=clip.CLIP.encode_text))  # fmt: skip
    np.testing.assert_allclose(t[0], t[1], rtol=1e-5)
    assert not np.allclose(t[0], np.asarray(clip.encode_texts(params, captions, CFG))[1])
    captions[1, 4:] = 0
    batch = {"image": images, "caption": captions, "caption_mask": (captions > 0) * 1.0,
             "mask": np.ones(2, np.float32)}  # fmt: skip
    value, metrics = clip.loss(params, batch, jax.random.PRNGKey(0), CFG)
    assert np.isfinite(float(value)) and float(metrics["logit_scale"]) == pytest.approx(1 / 0.07)

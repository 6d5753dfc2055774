"""BERT: masking proportions, loss at init, padding, the fill-mask and encode API."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from conftest import unbox

from genzoo.models import bert

CFG = dict(
    vocab_size=300,
    max_len=16,
    num_layers=2,
    num_heads=2,
    width=32,
    mlp_hidden=64,
    dropout=0.0,
    nsp=True,
)


def test_masking_proportions_on_a_large_sample():
    c = bert.BertConfig.from_cfg(CFG)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (512, 128), c.first_word_id, c.vocab_size)
    tokens = tokens.at[:, :2].set(5)  # special ids ([CLS]) are never picked
    valid = jnp.arange(128)[None] < 100  # nor is padding
    inputs, picked = bert.mask_tokens(jax.random.PRNGKey(1), tokens, valid, c)
    inputs, picked, tokens = map(np.asarray, (inputs, picked, tokens))
    assert not picked[:, :2].any() and not picked[:, 100:].any()
    rate = picked.sum() / (512 * 98)
    assert abs(rate - 0.15) < 0.005
    masked = (inputs == c.mask_id)[picked].mean()
    kept = (inputs == tokens)[picked].mean()  # includes random draws of the same id (~0.03%)
    random = 1 - masked - kept
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(random - 0.1) < 0.01
    assert (inputs[~picked] == tokens[~picked]).all()


def _batch(B=4, L=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(7, 300, (B, L)).astype(np.int32)
    tokens[:, 0] = 5
    lengths = np.array([16, 10, 7, 12])[:B]
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.float32)
    return {
        "tokens": tokens * mask.astype(np.int32),
        "tokens_mask": mask,
        "segments": np.zeros((B, L), np.int32),
        "segments_mask": mask,
        "mask": np.ones(B, np.float32),
        "next": np.array([1, 0, 1, 0])[:B],
    }


def test_initial_mlm_loss_is_about_log_vocab():
    params = unbox(bert.init(jax.random.PRNGKey(0), CFG))
    _, metrics = bert.loss(params, _batch(), jax.random.PRNGKey(1), CFG, train=False)
    assert abs(float(metrics["mlm_loss"]) - math.log(300)) < 0.5


def test_padding_changes_no_hidden_state():
    params = unbox(bert.init(jax.random.PRNGKey(0), CFG))
    b = _batch()
    h, _ = bert.encode(params, CFG, b["tokens"], b["segments"], b["tokens_mask"] > 0)
    noisy = b["tokens"].copy()
    noisy[2, 7:] = 42  # row 2 has 7 real tokens
    h2, _ = bert.encode(params, CFG, noisy, b["segments"], b["tokens_mask"] > 0)
    np.testing.assert_allclose(np.asarray(h)[2, :7], np.asarray(h2)[2, :7], atol=1e-5)

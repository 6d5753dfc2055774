"""DALL·E: sequence layout, the text/image loss split, cached decoding, guidance, reranking."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genzoo.evaluation import lm
from genzoo.kinds.text_to_image import rerank
from genzoo.models import dalle

T, GRID, K, V = 5, (3, 4), 16, 9
CFG = dict(vocab_size=V, max_caption_len=T, image_vocab_size=K, image_grid=GRID, num_layers=2,
           num_heads=2, width=32, caption_dropout=0.0)  # fmt: skip
C = dalle.DalleConfig.from_cfg(CFG)


@pytest.fixture(scope="module")
def params():
    p = nn.unbox(dalle.init(jax.random.PRNGKey(0), CFG))
    # Larger embeddings than the init's 0.02 so the caption visibly moves the image logits.
    return jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, p)


def _batch(B=3, seed=0):
    rng = np.random.default_rng(seed)
    caption = np.zeros((B, T), np.int32)
    for b in range(B):
        n = rng.integers(1, T)
        caption[b, :n] = rng.integers(2, V, n)
        caption[b, n] = dalle.EOS
    return {"caption": caption, "caption_mask": (caption > 0).astype(np.float32),
            "codes": rng.integers(0, K, (B, *GRID)).astype(np.int32),
            "mask": np.ones(B, np.float32)}  # fmt: skip


def test_sequence_puts_bos_caption_then_codes_and_positions_follow_the_slots():
    b = _batch()
    codes = b["codes"].reshape(3, -1)
    seq = np.asarray(dalle.sequence(jnp.asarray(b["caption"]), jnp.asarray(codes), C))
    assert seq.shape == (3, T + 12)
    assert (seq[:, 0] == V).all()  # BOS is the id after the caption words
    np.testing.assert_array_equal(seq[:, 1 : T + 1], b["caption"])
    np.testing.assert_array_equal(seq[:, T + 1 :], codes[:, :-1])  # the last code: target only


@pytest.mark.parametrize("table,index,first_code", [("row", 1, 4), ("column", 2, 2)])
def test_image_code_positions_are_rows_and_columns(params, table, index, first_code):
    """Code j is read at slot T + 1 + j with row j // w and column j % w (w = 4): moving one
    row's (column's) embedding changes the outputs from the first code in it onwards."""
    b = _batch()
    seq = dalle.sequence(jnp.asarray(b["caption"]), jnp.asarray(b["codes"].reshape(3, -1)), C)
    base = dalle.logits_recomputed(params, seq, CFG)
    bumped_table = np.asarray(params[table]["embedding"]).copy()
    bumped_table[index] += 1.0
    bumped = {**params, table: {"embedding": jnp.asarray(bumped_table)}}
    moved_L = np.abs(np.asarray(dalle.logits_recomputed(bumped, seq, CFG) - base)).max((0, 2))
    slot = T + 1 + first_code
    assert moved_L[:slot].max() == 0.0 and moved_L[slot] > 1e-7


def test_loss_weights_text_and_image_as_the_paper(params):
    b = _batch()
    value, metrics = dalle.loss(params, b, jax.random.PRNGKey(0), CFG, train=False)
    codes = jnp.asarray(b["codes"].reshape(3, -1))
    text, image = dalle.DALLE(C).apply(
        {"params": params}, dalle.sequence(jnp.asarray(b["caption"]), codes, C),
        method=dalle.DALLE.forward,
    )  # fmt: skip
    assert text.shape == (3, T, V) and image.shape == (3, 12, K)
    mask = b["caption_mask"]
    text_nll = float(np.sum(lm.token_nll(text, b["caption"]) * mask) / mask.sum())
    image_nll = float(jnp.mean(lm.token_nll(image, codes)))
    assert float(metrics["text_loss"]) == pytest.approx(text_nll, rel=1e-5)
    assert float(metrics["image_loss"]) == pytest.approx(image_nll, rel=1e-5)
    assert float(value) == pytest.approx(text_nll / 8 + 7 * image_nll / 8, rel=1e-5)
    # Text weight 0: the image codes alone.
    only_image, _ = dalle.loss(params, b, jax.random.PRNGKey(0), {**CFG, "text_loss_weight": 0.0},
                               train=False)  # fmt: skip
    assert float(only_image) == pytest.approx(image_nll, rel=1e-5)


def test_caption_dropout_drops_the_text_loss_of_dropped_rows(params):
    b = _batch(B=64)
    _, kept = dalle.loss(params, b, jax.random.PRNGKey(3), {**CFG, "caption_dropout": 0.0})
    _, dropped = dalle.loss(params, b, jax.random.PRNGKey(3), {**CFG, "caption_dropout": 0.999})
    assert float(kept["text_loss"]) > 0 and float(dropped["text_loss"]) == 0.0


def test_cached_decoding_equals_recomputation(params):
    """Greedy codes drawn with the KV cache are the argmax of one uncached pass over them."""
    caption = jnp.asarray(_batch()["caption"])
    codes = dalle.generate_codes(params, caption, jax.random.PRNGKey(0), CFG, temperature=0.0)
    assert codes.shape == (3, *GRID)
    flat = codes.reshape(3, -1)
    logits = dalle.logits_recomputed(params, dalle.sequence(caption, flat, C), CFG)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits[:, T:]), -1), np.asarray(flat))


def test_guidance_one_equals_unguided_and_other_scales_follow_the_formula(params):
    caption = jnp.asarray(_batch()["caption"])
    rng = jax.random.PRNGKey(7)
    plain = dalle.generate_codes(params, caption, rng, CFG)
    both = dalle.generate_codes(params, caption, rng, CFG, guidance=1.0, two_branches=True)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(both))
    # Greedy: the first code is argmax of cond + (scale - 1) (cond - uncond) at slot T; scale
    # 0 is the empty caption's choice alone.
    bos = jnp.full((3, 1), V, jnp.int32)
    cond = dalle.logits_recomputed(params, jnp.concatenate([bos, caption], 1), CFG)[:, -1]
    empty = dalle.empty_captions(3, C)
    uncond = dalle.logits_recomputed(params, jnp.concatenate([bos, empty], 1), CFG)[:, -1]
    chosen = set()
    for scale in (0.0, 4.0, 16.0):
        guided = dalle.generate_codes(params, caption, rng, CFG, guidance=scale, temperature=0.0)
        want = np.argmax(np.asarray(cond + (scale - 1) * (cond - uncond)), -1)
        np.testing.assert_array_equal(np.asarray(guided)[:, 0, 0], want, err_msg=f"scale {scale}")
        chosen.add(tuple(want))
    assert len(chosen) == 3  # each scale picks other codes: the check has teeth


def test_reranking_keeps_the_top_k_by_score_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [3.0, -1.0, 2.0, 2.5]])
    np.testing.assert_array_equal(rerank(scores, 2), [[1, 3], [0, 3]])
    rng = np.random.default_rng(0)
    many = rng.normal(size=(5, 16))
    top = rerank(many, 4)
    for row, picked in zip(many, top, strict=True):
        assert set(picked) == set(np.argsort(row)[-4:])
        assert list(row[picked]) == sorted(row[picked], reverse=True)

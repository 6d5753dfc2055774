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


def test_the_head_on_scored_positions_gives_the_full_heads_loss():
    # The MLM head runs on the picked positions only; the loss must be the one that the
    # head over every position gives at those positions, and no picked token is dropped.
    c = bert.BertConfig.from_cfg({**CFG, "mask_rate": 0.4})
    params = unbox(bert.init(jax.random.PRNGKey(0), CFG))
    b, rng = _batch(), jax.random.PRNGKey(3)
    sums = bert._sums(params, b, rng, c, train=False)
    inputs, picked = bert.mask_tokens(
        jax.random.split(rng)[0], b["tokens"], b["tokens_mask"] > 0, c
    )
    mlm_BxLxV, _ = bert.Bert(c).apply({"params": params}, inputs, b["segments"],
                                      b["tokens_mask"] > 0)  # fmt: skip
    logp = jax.nn.log_softmax(mlm_BxLxV)
    nll = -jnp.take_along_axis(logp, b["tokens"][..., None], -1)[..., 0]
    assert int(sums["num_masked"]) == int(picked.sum()) > 8
    np.testing.assert_allclose(float(sums["mlm_nll"]), float((nll * picked).sum()), rtol=1e-5)
    assert c.predictions(16) == 14 and c.predictions(128) < 128


def _english_mlm():
    import ml_collections

    from genzoo import data

    return data.load(ml_collections.ConfigDict(
        {"name": "english_mlm", "vocab_size": 512, "max_len": 32, "seed": 0, "tokenizer_dir": ""}
    ))  # fmt: skip


def test_pretraining_pairs_are_cls_a_sep_b_sep_with_the_true_successor_half_the_time():
    """Next-sentence prediction's data: segment 0 is [CLS] A [SEP], segment 1 is B [SEP];
    where `next` is 1, B is the sentence that follows A (cut to fit), else a random one."""
    d = _english_mlm()
    tok, sentences = d.tokenizers["tokens"], d.texts["train"]["tokens"]
    cls, sep = tok.piece_id("[CLS]"), tok.piece_id("[SEP]")
    next_N = d.labels["train"]["next"]
    assert len(next_N) == len(sentences) > 200 and 0.4 < next_N.mean() < 0.6
    successors = 0
    for i, (tokens, segments) in enumerate(zip(*d.splits["train"].values(), strict=True)):
        tokens, segments = list(tokens), list(segments)
        a_end = tokens.index(sep)
        assert tokens[0] == cls and tokens[-1] == sep and tokens.count(sep) == 2
        assert segments == [0] * (a_end + 1) + [1] * (len(tokens) - a_end - 1)
        b = tokens[a_end + 1 : -1]
        if next_N[i] and i + 1 < len(sentences):
            assert b and b == tok.encode(sentences[i + 1])[: len(b)], i
            successors += 1
    assert successors > 100


def test_a_verse_references_book_is_all_but_its_last_word():
    import pytest

    from genzoo.data import sentences
    from genzoo.errors import UserError

    genre = lambda ref: list(sentences.GENRES)[sentences.genre_of(ref)]
    assert genre("Genesis 1:1") == "law" and genre("I Samuel 3:4") == "history"
    assert genre("Song of Solomon 2:1") == "wisdom/poetry"
    assert genre("Revelation of John 22:21") == "apocalyptic"
    with pytest.raises(UserError, match="unknown Bible book 'Samuel'"):
        sentences.genre_of("Samuel 3:4")


def test_tokens_per_example_counts_tokens_not_segment_ids():
    d = _english_mlm()
    real = np.mean([min(len(t), 32) for t in d.splits["train"]["tokens"]])
    assert d.tokens_per_example == real <= 32


def test_flops_per_example_matches_xlas_count_for_pretraining_and_classifying():
    """MFU's numerator: the formula against XLA's cost analysis of the gradient (within 3%;
    XLA also counts norms and softmax). A classifier scores one MLM slot, not the 1.5 x 15%
    of the positions pretraining does (counting those overstated its MFU by ~15%)."""
    B, L = 4, 32
    rs = np.random.RandomState(0)
    batch = dict(tokens=jnp.asarray(rs.randint(7, 1000, (B, L)), jnp.int32),
                 tokens_mask=jnp.ones((B, L), jnp.int32), segments=jnp.zeros((B, L), jnp.int32),
                 mask=jnp.ones((B,), jnp.float32), next=jnp.zeros((B,), jnp.int32),
                 label=jnp.zeros((B,), jnp.int32))  # fmt: skip
    for head in ({"nsp": True}, {"num_classes": 7}):
        cfg = dict(vocab_size=1000, max_len=L, num_layers=2, num_heads=2, width=128,
                   mlp_hidden=512, dropout=0.0, **head)  # fmt: skip
        params = unbox(bert.init(jax.random.key(0), cfg))
        grad = jax.jit(jax.grad(lambda p, c=cfg: bert.loss(p, batch, jax.random.key(1), c)[0]))
        analysis = grad.lower(params).compile().cost_analysis()
        counted = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
        assert 0.97 < bert.flops_per_example(cfg, {"tokens": (L,)}) * B / counted < 1.03, head


def test_the_bag_of_words_baseline_reads_words_and_ignores_specials():
    """Two classes told apart once by a word (ids >= first_word_id), once only by a special
    piece (a [SEP]-like id below it): the baseline must read the first and be blind to the
    second, or it would score what no bag of *words* sees."""
    from types import SimpleNamespace

    from genzoo.evaluation.baselines_text import bow_logistic_regression

    rng = np.random.default_rng(0)

    def data(cue):  # rows of 12 random words; the label sets one position to cue[label]
        splits, labels = {}, {}
        for split, n in (("train", 200), ("validation", 100)):
            y = rng.integers(0, 2, n)
            rows = rng.integers(10, 40, (n, 12))
            rows[:, 5] = np.where(y == 1, cue[1], cue[0])
            splits[split] = {"tokens": list(rows.astype(np.int32))}
            labels[split] = {"label": y.astype(np.int32)}
        fields = {"vocab_size": 40, "num_classes": 2}
        return SimpleNamespace(splits=splits, labels=labels, lengths={"tokens": 16},
                               model_fields=fields)  # fmt: skip

    by_word = bow_logistic_regression(data((8, 9)), "validation", first_word_id=7)
    by_special = bow_logistic_regression(data((5, 6)), "validation", first_word_id=7)
    assert by_word > 0.95 and by_special < 0.7


def test_classify_gives_the_probabilities_the_fine_tuning_loss_scores():
    """`classify`'s p_k is exp(-loss) of the same text labelled k (one example per batch)."""
    cfg = dict(CFG, nsp=False, num_classes=7)
    params = unbox(bert.init(jax.random.key(0), cfg))
    rs = np.random.RandomState(0)
    tokens = rs.randint(7, 300, (1, 16)).astype(np.int32)
    valid = np.arange(16)[None] < 11
    probs = np.asarray(bert.classify(params, cfg, tokens, np.zeros_like(tokens), valid))[0]
    assert probs.shape == (7,) and abs(probs.sum() - 1) < 1e-5 and probs.std() > 1e-4
    sums = jax.jit(lambda label: bert.eval_sums(params, dict(
        tokens=tokens, tokens_mask=valid.astype(np.int32), segments=np.zeros_like(tokens),
        mask=np.ones(1, np.float32), label=label), jax.random.key(1), cfg))  # fmt: skip
    nll = [float(sums(np.array([k], np.int32))["cls_nll"]) for k in range(7)]
    np.testing.assert_allclose(probs, np.exp(-np.array(nll)), rtol=1e-4)

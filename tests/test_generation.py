"""Generation: ragged batches, beams, repetition penalty, EOS, stop strings; the Python API."""

import logging
import math

import absl.logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import genzoo
from genzoo import sampling
from genzoo.errors import UserError
from genzoo.models import gpt


@pytest.fixture(scope="module")
def model(make_config, char_data):
    cfg = make_config()
    params = nn.unbox(gpt.init(jax.random.PRNGKey(0), cfg.model))
    prompts = [char_data.splits["validation"][i : i + n] for i, n in ((0, 3), (50, 7), (90, 5))]
    return cfg, params, prompts


def _greedy(params, cfg, prompt_BxP, **kw):
    return np.asarray(gpt.sample(params, jax.random.PRNGKey(0), cfg.model, prompt_BxP=prompt_BxP,
                                 max_new_tokens=10, temperature=0.0, **kw))  # fmt: skip


def test_left_padded_batch_equals_one_by_one(model):
    cfg, params, prompts = model
    longest = max(map(len, prompts))
    pad_B = np.array([longest - len(p) for p in prompts])
    batch = np.zeros((len(prompts), longest), np.int32)
    for row, p in enumerate(prompts):
        batch[row, pad_B[row] :] = p
    together = _greedy(params, cfg, batch, pad_B=pad_B)
    for row, p in enumerate(prompts):
        np.testing.assert_array_equal(together[row], _greedy(params, cfg, np.asarray([p]))[0])


def test_left_padded_prompts_give_each_prompts_own_logits(model):
    """Greedy tokens of an untrained model hardly depend on the context (the test above
    passed with the padding attended to): the logits of the prompt's last position and of
    the next step, left-padded in a batch and alone, must agree to float rounding."""
    cfg, params, prompts = model
    c = gpt.GPTConfig.from_cfg(cfg.model)
    longest = max(map(len, prompts))

    @jax.jit
    def last_two_logits(params, tokens_BxP, pad_B):
        cache = gpt.init_cache(c, len(tokens_BxP), longest + 1, pad_B)
        logits_BxPxV, cache = gpt.GPT(c).apply({"params": params}, tokens_BxP, cache=cache)
        next_Bx1 = jnp.argmax(logits_BxPxV[:, -1:], -1)
        step_Bx1xV, _ = gpt.GPT(c).apply({"params": params}, next_Bx1, cache=cache)
        return logits_BxPxV[:, -1], step_Bx1xV[:, 0]

    pad_B = np.array([longest - len(p) for p in prompts])
    batch = np.zeros((len(prompts), longest), np.int32)
    for row, p in enumerate(prompts):
        batch[row, pad_B[row] :] = p
    together = last_two_logits(params, batch, pad_B)
    for row, p in enumerate(prompts):
        alone = last_two_logits(params, np.asarray([p]), None)
        for got, want in zip(map(np.asarray, together), map(np.asarray, alone), strict=True):
            spread = want[0].max() - want[0].min()
            assert np.abs(got[row] - want[0]).max() < 1e-4 * spread, row


def test_beam_search_of_one_beam_is_greedy_and_wider_beams_score_higher(model):
    cfg, params, prompts = model
    prompt = np.asarray([prompts[1]])
    greedy = _greedy(params, cfg, prompt)
    one = _greedy(params, cfg, prompt, num_beams=1)
    np.testing.assert_array_equal(one, greedy)
    beams = gpt.sample(params, jax.random.PRNGKey(0), cfg.model, prompt_BxP=prompt,
                       max_new_tokens=10, num_beams=4, length_penalty=0.0)  # fmt: skip

    def total(new):
        seq = np.concatenate([prompt, np.asarray(new)], axis=1)
        return float(gpt.token_log_probs(params, seq, cfg.model)[0, prompt.shape[1] - 1 :].sum())

    assert total(beams) >= total(greedy) - 1e-5


def test_beam_search_ranks_by_length_normalised_score_with_eos():
    """A toy step where token 2 is EOS: the short finished beam wins without a length penalty."""
    table = jnp.log(jnp.array([[0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.0001, 0.0001, 0.9998]]))

    def step(tokens_BxL, cache):
        return table[tokens_BxL], cache  # next-token log-probs depend on the last token only

    prompt = np.zeros((1, 1), np.int32)
    out = sampling.beam_search(step, {}, prompt, beam_size=3, max_new_tokens=4, length_penalty=0.0,
                               eos_id=2)  # fmt: skip
    assert np.asarray(out).tolist() == [[2, 2, 2, 2]]  # EOS first: log 0.6, then free


M, V, EOS = 97, 5, 4  # the history-hash toy: M hash buckets, V tokens, the last one EOS


def _hash(h, token):
    return (h * 7 + token + 1) % M


def _reference_beams(table, prompt, W, N, alpha):
    """Beam search written out over sequences (float32 sums, as the jitted one adds)."""
    h = 0
    for t in prompt:
        h = _hash(h, t)
    beams = [((), np.float32(0.0), False, 0, h)]  # tokens, score, finished, length, history
    for _ in range(N):
        grown = []
        for tokens, score, done, length, h in beams:
            if done:  # only EOS, at no cost; the length stays
                grown.append((tokens + (EOS,), score, True, length, h))
                continue
            for v in range(V):
                grown.append((tokens + (v,), np.float32(score + table[h, v]), v == EOS,
                              length + 1, _hash(h, v)))  # fmt: skip
        beams = sorted(grown, key=lambda b: -b[1])[:W]
    return max(beams, key=lambda b: b[1] / np.float32(b[3]) ** alpha)[0]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_equals_a_reference_over_a_history_dependent_toy(alpha):
    """Next-token log-probs depend on the whole history through the cache (a hash of it), so
    a beam that kept another beam's cache, or a finished beam whose length still grew, would
    choose differently from the reference on some of these tables."""

    def step(tokens_BxL, cache):
        h_B = cache["h"]
        for i in range(tokens_BxL.shape[1]):
            h_B = _hash(h_B, tokens_BxL[:, i])
        return jnp.asarray(table)[h_B][:, None], {"h": h_B}

    prompts = np.array([[1, 2], [3, 0]], np.int32)
    for seed in range(12):
        logits = np.random.default_rng(seed).normal(size=(M, V)) * 2.0
        logits[:, EOS] += 1.0  # EOS common enough that beams finish at different lengths
        table = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))
        out = sampling.beam_search(step, {"h": jnp.zeros(2, jnp.int32)}, prompts, beam_size=3,
                                   max_new_tokens=6, length_penalty=alpha, eos_id=EOS)  # fmt: skip
        for row, prompt in enumerate(prompts):
            expected = _reference_beams(table, prompt.tolist(), 3, 6, alpha)
            assert tuple(np.asarray(out[row]).tolist()) == expected, (seed, row)


def test_repetition_penalty_and_eos(model):
    cfg, params, prompts = model
    prompt = np.asarray([prompts[0]])
    plain = _greedy(params, cfg, prompt)
    np.testing.assert_array_equal(_greedy(params, cfg, prompt, repetition_penalty=1.0), plain)
    penalized = _greedy(params, cfg, prompt, repetition_penalty=50.0)
    seen = set(prompt[0].tolist())
    for token in penalized[0]:  # a huge penalty never repeats while unseen tokens remain
        assert token not in seen
        seen.add(int(token))
    eos = int(plain[0, 2])
    stopped = _greedy(params, cfg, prompt, eos_id=eos)
    first = list(stopped[0]).index(eos)
    assert np.all(stopped[0, first:] == eos)


def test_python_api_generate_and_score(char_run, capsys, caplog):
    wd = char_run
    verbosity = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.WARNING)  # as a script importing genzoo has it
    try:
        with caplog.at_level(logging.WARNING):
            lm = genzoo.load(wd)
    finally:
        absl.logging.set_verbosity(verbosity)  # what `cli.main` set
    # Opening a run read-only says nothing (orbax warns that it is read-only, as asked).
    assert caplog.records == [] and capsys.readouterr() == ("", "")
    assert lm.generate([], max_new_tokens=3) == [] and lm.score([]) == []
    for bad, message in ((dict(max_new_tokens=0), "max_new_tokens must be at least 1, got 0"),
                         (dict(temperature=float("nan")), "temperature must be >= 0, got nan"),
                         (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
                         # Types too: 2.5 new tokens was an XLA shape error, a 70-bit seed an
                         # OverflowError, 1000 beams over 65 characters top_k's ValueError.
                         (dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
                         (dict(temperature="hot"), "temperature must be a number, got 'hot'"),
                         (dict(seed=2**70), "seed must be a 64-bit integer"),
                         (dict(num_beams=True), "num_beams must be a whole number, got True"),
                         (dict(num_beams=2, length_penalty=float("nan")), "must be finite"),
                         (dict(num_beams=1000), r"beams \(1000\) must be at most the "
                                                "vocabulary's 65 tokens")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            lm.generate("KING:", **{"max_new_tokens": 3, **bad})
    for prompts, message in ((123, "prompts must be a string or a list of strings, got 123"),
                             (["KING:", None], "prompts must be strings, got None")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            lm.generate(prompts, max_new_tokens=3)  # None was read as an empty prompt
    with pytest.raises(UserError, match="texts must be strings, got 1"):
        lm.score([1])
    a = lm.generate(["KING:", "my lord and"], max_new_tokens=12, temperature=0.0)
    b = [lm.generate(p, max_new_tokens=12, temperature=0.0)[0] for p in ("KING:", "my lord and")]
    assert a == b and all(len(t) == 12 for t in a)
    stop, later = a[0][3:5], a[0][-2:]
    cut = lm.generate("KING:", max_new_tokens=12, temperature=0.0, stop=[later, stop])[0]
    assert cut == a[0][: a[0].index(stop)] and len(cut) <= 3  # at the first stop string found
    # One string is one stop string (it was read as its characters, each a stop).
    whole = lm.generate("KING:", max_new_tokens=12, temperature=0.0, stop=stop + "\0")
    assert whole == [a[0]]  # the text never holds `stop` + NUL, only `stop`'s characters
    eos = a[0][4]  # a token the greedy text holds: the text ends before it
    ended = lm.generate("KING:", max_new_tokens=12, temperature=0.0, eos=eos)[0]
    assert ended == a[0][: a[0].index(eos)] and eos not in ended
    _check_sliding_window(lm)
    text = "KING:\nGood lord."
    ids = lm.encode(text)
    # One forward: by causality (test_layers) position i-1 sees exactly the prefix ids[:i]
    # (a forward per prefix, run eagerly, took 32 of this test's 50 s).
    logp = jax.nn.log_softmax(gpt.logits(lm.params, np.asarray([ids]), lm.run.cfg.model)[0])
    manual = sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids)))
    (score,) = lm.score([text])
    assert score == pytest.approx(manual, abs=1e-3) and score < 0
    scores = lm.score(["KING:", text])
    assert scores[1] == pytest.approx(score, abs=1e-4) and math.isfinite(scores[0])


def _check_sliding_window(lm):
    """Past the context (32 here) each window keeps the last 24 tokens and adds 8: greedy text
    past the context is the greedy text of those windows, one call each."""
    greedy = lambda prompts, n: lm.generate(prompts, max_new_tokens=n, temperature=0.0)
    assert lm.context == 32
    (long,) = greedy("KING:", 60)
    assert len(long) == 60
    (first,) = greedy("KING:", 27)  # the first window: what fits after the prompt
    (second,) = greedy(("KING:" + first)[-24:], 8)
    assert long[:27] == first and long[27:35] == second
    # Ragged rows: the short one is left-padded in later windows too (19 - 5 > 8 tokens).
    prompts = ["KING:", "my lord and my king"]
    assert greedy(prompts, 40) == [greedy(p, 40)[0] for p in prompts]
    # Batches of two: each prompt's greedy text as alone; sampling repeats with its seed.
    three = lm.generate(prompts + ["GLOUCESTER:"], max_new_tokens=40, temperature=0.0,
                        batch_size=2)  # fmt: skip
    assert three == greedy(prompts, 40) + greedy("GLOUCESTER:", 40)
    again = lambda n: lm.generate(["KING:"] * 4, max_new_tokens=8, seed=1, batch_size=n)  # noqa: E731
    assert again(2) == again(2) and len(set(again(2))) == 4  # no batch repeats another's draws
    assert again(4) == again(2)  # prompt j samples with its own key, whatever its batch
    prompt = "my lord and my king, the duke of york"  # longer than the context: cropped
    assert greedy(prompt, 8) == greedy(prompt[-24:], 8)
    sampled = lm.generate("KING:", max_new_tokens=50, seed=3)
    assert sampled == lm.generate("KING:", max_new_tokens=50, seed=3) and len(sampled[0]) == 50
    with pytest.raises(UserError, match="beam search: prompt \\+ max_new_tokens exceeds"):
        lm.generate("KING:", max_new_tokens=28, num_beams=2)
    # Scoring reads the same windows: 60 characters are scored as [0, 32) from position 1,
    # then [8, 40) from 32, [16, 48) from 40, [24, 56) from 48 and [28, 60) from 56; by
    # causality a window's later tokens score as that window minus its prefix.
    text = (long * 2)[:60]
    pieces = [lm.score(text[:32])[0]] + [
        lm.score(text[start:end])[0] - lm.score(text[start:first])[0]
        for start, first, end in ((8, 32, 40), (16, 40, 48), (24, 48, 56), (28, 56, 60))
    ]
    (whole,) = lm.score(text, batch_size=2)  # five windows in three batches
    assert whole == pytest.approx(sum(pieces), abs=2e-3)
    assert lm.score([text, "KING:"]) == pytest.approx([whole, lm.score("KING:")[0]], abs=1e-4)


def test_next_token_skips_only_what_the_knobs_switch_off():
    """Greedy is the argmax; k=0, p=1 samples the scaled logits as they are (no filter)."""
    rng = jax.random.PRNGKey(3)
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 300)) * 3
    greedy = sampling.next_token(rng, logits, 0.0, 0, 1.0)
    np.testing.assert_array_equal(greedy, np.argmax(logits, axis=-1))
    sampled = sampling.next_token(rng, logits, 0.7, 0, 1.0)
    rows = [jax.random.categorical(jax.random.fold_in(rng, b), logits[b] / 0.7) for b in range(4)]
    np.testing.assert_array_equal(sampled, rows)  # row b with the key folded with b
    keys_B = jax.random.split(rng, 4)  # or with the keys it is given, one per row
    one = sampling.next_token(keys_B[2:3], logits[2:3], 0.7, 0, 1.0)
    np.testing.assert_array_equal(one, sampling.next_token(keys_B, logits, 0.7, 0, 1.0)[2:3])
    with pytest.raises(UserError, match="3 keys for 4 rows: give one key, or one per row"):
        sampling.next_token(keys_B[:3], logits, 0.7, 0, 1.0)
    top1 = sampling.next_token(rng, logits, 0.7, 1, 1.0)  # a filter that leaves one token
    np.testing.assert_array_equal(top1, greedy)

"""HMM: forward and Viterbi against brute-force enumeration; prompt-conditioned sampling."""

import itertools

import flax.linen as nn
import jax
import numpy as np
import pytest
from scipy.special import logsumexp

from genzoo.evaluation import baselines
from genzoo.models import hmm


@pytest.fixture(scope="module")
def tiny():
    params = nn.unbox(hmm.init(jax.random.PRNGKey(0), {"vocab_size": 4, "num_states": 3}))
    tokens = np.array([0, 3, 1, 1, 2], np.int32)
    log_pi, log_A, log_E = (np.asarray(a, np.float64) for a in hmm.log_probs(params))
    paths = list(itertools.product(range(3), repeat=len(tokens)))
    joint = [
        log_pi[p[0]]
        + sum(log_A[a, b] for a, b in itertools.pairwise(p))
        + sum(log_E[s, x] for s, x in zip(p, tokens, strict=True))
        for p in paths
    ]
    return params, tokens, paths, np.array(joint)


def test_forward_equals_brute_force_enumeration(tiny):
    params, tokens, _, joint = tiny
    c_1xT, _ = hmm.forward(params, tokens[None])
    assert float(np.sum(c_1xT)) == pytest.approx(logsumexp(joint), abs=1e-5)
    # Each c_t is log p(x_t | x_<t): prefix sums are prefix likelihoods.
    for t in range(1, len(tokens) + 1):
        c, _ = hmm.forward(params, tokens[None, :t])
        assert float(np.sum(c)) == pytest.approx(float(np.sum(c_1xT[0, :t])), abs=1e-5)


def test_viterbi_equals_brute_force_argmax(tiny):
    params, tokens, paths, joint = tiny
    path, score = hmm.viterbi(params, tokens)
    assert tuple(int(s) for s in path) == paths[int(np.argmax(joint))]
    assert float(score) == pytest.approx(float(np.max(joint)), abs=1e-5)


def _cycle_hmm():
    """Three states in a deterministic cycle 0 -> 1 -> 2 -> 0, state s emitting token s."""
    big = 30.0
    eye = np.eye(3, dtype=np.float32) * big
    return {"initial_S": np.zeros(3, np.float32), "transition_SxS": np.roll(eye, 1, axis=1),
            "emission_SxV": eye}  # fmt: skip


def test_sampling_continues_the_prompt_through_the_filtered_state():
    params = _cycle_hmm()
    out = hmm.sample(params, jax.random.PRNGKey(0), {}, prompt_BxP=np.array([[0, 1], [2, 0]]),
                     max_new_tokens=5, temperature=1.0)  # fmt: skip
    np.testing.assert_array_equal(out, [[2, 0, 1, 2, 0], [1, 2, 0, 1, 2]])


def test_count_baselines_on_a_cycle():
    train = np.array([0, 1, 2] * 200)
    valid = np.array([0, 1, 2] * 20)
    unigram = baselines.ngram_bits_per_char(train, valid, order=1, vocab_size=3)
    bigram = baselines.ngram_bits_per_char(train, valid, order=2, vocab_size=3)
    assert unigram == pytest.approx(np.log2(3), abs=0.01)
    assert bigram < 0.05  # the cycle is deterministic given the previous character

"""Discrete-emission hidden Markov model over characters, trained by gradient ascent on log p(x).

Parameters are unconstrained logits (initial [S], transition [S, S], emission [S, V]);
the log-space forward algorithm (`lax.scan`) gives log p(x_t | x_<t) for every t, so the
loss and the bits-per-char are computed exactly as for the GPT: every token of a window
but the first is predicted. Trained by Adam, or by Baum-Welch EM (`optim.name=em` with
`model.expected_counts=True`): with the softmax normalisers held constant in the
gradient, d log p(x) / d logit is the expected count of that initial state, transition
or emission (the forward-backward E-step, by autodiff), which `genzoo.em` turns into
the M-step.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from genzoo import sampling
from genzoo.errors import UserError
from genzoo.evaluation import lm
from genzoo.layers import partitioned
from genzoo.models.base import FromConfig, require, require_positive

KIND = "language_model"
RAGGED_PROMPTS = False  # one prompt length per call: rows are sampled one by one


@dataclasses.dataclass(frozen=True)
class HMMConfig(FromConfig):
    vocab_size: int
    num_states: int = 128
    init_scale: float = 1.0  # std of the initial logits: breaks the symmetry between states
    expected_counts: bool = False  # loss gradients = expected counts (for optim.name=em)

    def validate(self) -> None:
        require_positive(self, "vocab_size", "num_states")
        require(self.init_scale >= 0, f"model.init_scale must be >= 0, got {self.init_scale}")


def log_probs(params, counts: bool = False):
    """Normalised log initial [S], transition [S, S] and emission [S, V] probabilities.
    `counts`: the same values, with the normalisers outside the gradient."""

    def norm(logits, axis=-1):
        lse = jax.nn.logsumexp(logits, axis=axis, keepdims=True)
        return logits - (jax.lax.stop_gradient(lse) if counts else lse)

    return norm(params["initial_S"]), norm(params["transition_SxS"]), norm(params["emission_SxV"])


def forward(params, tokens_BxT, counts: bool = False):
    """log p(x_t | x_<t) for every t, [B, T], and the final filtered log posterior [B, S]."""
    log_pi_S, log_A_SxS, log_E_SxV = log_probs(params, counts)
    log_e_TxBxS = log_E_SxV.T[tokens_BxT.T]  # log p(x_t | state) for every t, row and state
    alpha_BxS = log_pi_S[None] + log_e_TxBxS[0]
    c0_B = jax.nn.logsumexp(alpha_BxS, axis=-1)

    def step(alpha_BxS, log_e_BxS):
        # Normalised alphas keep the recursion in range; c_t is the predictive log-prob.
        alpha_BxS = jax.nn.logsumexp(alpha_BxS[:, :, None] + log_A_SxS[None], axis=1) + log_e_BxS
        c_B = jax.nn.logsumexp(alpha_BxS, axis=-1)
        return alpha_BxS - c_B[:, None], c_B

    alpha_BxS, c_TxB = jax.lax.scan(step, alpha_BxS - c0_B[:, None], log_e_TxBxS[1:])
    return jnp.concatenate([c0_B[None], c_TxB]).T, alpha_BxS


def viterbi(params, tokens_T):
    """Most likely state path [T] and its joint log-probability log p(x, path)."""
    log_pi_S, log_A_SxS, log_E_SxV = log_probs(params)
    delta_S = log_pi_S + log_E_SxV[:, tokens_T[0]]

    def step(delta_S, token):
        scores_SxS = delta_S[:, None] + log_A_SxS
        return jnp.max(scores_SxS, 0) + log_E_SxV[:, token], jnp.argmax(scores_SxS, 0)

    delta_S, back_TxS = jax.lax.scan(step, delta_S, tokens_T[1:])
    last = jnp.argmax(delta_S)

    def trace(state, back_S):
        prev = back_S[state]
        return prev, prev

    _, path = jax.lax.scan(trace, last, back_TxS, reverse=True)
    return jnp.concatenate([path, last[None]]), delta_S[last]


def _windows(batch):
    """The whole window x_0..x_L from an LM batch (inputs shifted against targets)."""
    return jnp.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1)


# ---- family protocol -------------------------------------------------------------------


def init(rng, cfg):
    c = HMMConfig.from_cfg(cfg)
    k1, k2, k3 = jax.random.split(rng, 3)
    normal = lambda key, shape: c.init_scale * jax.random.normal(key, shape)
    return {
        "initial_S": partitioned(lambda k, s: normal(k, s), ("states",))(k1, (c.num_states,)),
        "transition_SxS": partitioned(lambda k, s: normal(k, s), ("states", None))(
            k2, (c.num_states, c.num_states)
        ),
        "emission_SxV": partitioned(lambda k, s: normal(k, s), ("states", None))(
            k3, (c.num_states, c.vocab_size)
        ),
    }


def loss(params, batch, rng, cfg, *, train: bool = True, step=0):
    counts = HMMConfig.from_cfg(cfg).expected_counts
    c_BxT, _ = forward(params, _windows(batch), counts=counts)
    mask_BxL = batch["mask"]
    nll = -jnp.sum(c_BxT[:, 1:] * mask_BxL)
    if counts:  # the whole log p(x), first token too: its gradients are the E-step's counts
        nll = nll - jnp.sum(c_BxT[:, 0] * mask_BxL[:, 0])
    return nll / jnp.maximum(mask_BxL.sum(), 1.0), {}


def eval_sums(params, batch, rng, cfg):
    c_BxT, _ = forward(params, _windows(batch))
    mask_BxL = batch["mask"]
    return {"nll": -jnp.sum(c_BxT[:, 1:] * mask_BxL), "num_tokens": mask_BxL.sum()}


def eval_summary(totals, meta):
    return lm.summary(totals, meta)


def token_log_probs(params, tokens_BxT, cfg):
    """log p(x_t | x_<t) for t = 1..T-1, [B, T-1] nats."""
    c_BxT, _ = forward(params, jnp.asarray(tokens_BxT, jnp.int32))
    return c_BxT[:, 1:]


def context_length(cfg) -> int:
    return 1 << 30  # a Markov chain has no context limit


@functools.partial(jax.jit, static_argnames=("max_new_tokens",))
def _generate(params, prompt_BxP, rng, temperature, top_k, top_p, *, max_new_tokens):
    _, log_A_SxS, log_E_SxV = log_probs(params)
    _, alpha_BxS = forward(params, prompt_BxP)  # p(state at the prompt's end | prompt)
    keys_B = sampling.row_keys(rng, prompt_BxP.shape[0])
    draw = jax.vmap(jax.random.categorical)
    state_B = draw(sampling.fold_rows(keys_B, 0), alpha_BxS)

    def step(state_B, t):
        keys_t = sampling.fold_rows(keys_B, t)
        state_B = draw(sampling.fold_rows(keys_t, 0), log_A_SxS[state_B])
        token_B = sampling.next_token(sampling.fold_rows(keys_t, 1), log_E_SxV[state_B],
                                      temperature, top_k, top_p)  # fmt: skip
        return state_B, token_B

    _, tokens_NxB = jax.lax.scan(step, state_B, jnp.arange(1, max_new_tokens + 1))
    return tokens_NxB.T


def sample(
    params, rng, cfg, *, prompt_BxP, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
    num_beams=1, repetition_penalty=1.0,
):  # fmt: skip
    """Continues each prompt: the hidden state is drawn from its filtered posterior, then the
    chain runs forward; temperature/top-k/top-p shape each emission. `rng`: one key, or one
    per row (`sampling.row_keys`)."""
    if num_beams != 1 or repetition_penalty != 1.0:
        raise UserError("the HMM samples ancestrally: beams and repetition penalty do not apply")
    return _generate(
        params,
        jnp.asarray(prompt_BxP, jnp.int32),
        rng,
        *sampling.knobs(temperature, top_k, top_p),
        max_new_tokens=max_new_tokens,
    )

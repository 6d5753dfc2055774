"""A bigram language model kept outside genzoo: how a user's own family plugs in.

Nothing in genzoo lists it. Its experiment (`bigram_char.py`, beside it) names it by import
path, `model.family = "bigram"`, and genzoo imports it from the current folder and checks it
against the protocols (`genzoo/models/protocols.py`) before training:

    cd docs/examples && genzoo train bigram_char.py --workdir /tmp/bigram
    genzoo sample --workdir /tmp/bigram --prompt "ROMEO:"     # from this folder too

A trained run is loaded the same way (`genzoo.load`, `eval`, `sample`) wherever this module is
importable. Its one table of next-character logits learns what the bigram counts give.
"""

import jax
import jax.numpy as jnp

from genzoo import sampling
from genzoo.errors import UserError
from genzoo.evaluation import lm
from genzoo.layers import partitioned

KIND = "language_model"  # what a trained run can do: generate, score (genzoo/kinds/)
RAGGED_PROMPTS = False  # `sample` gets one prompt length per call


def init(rng, cfg):
    """Parameters with logical axis names, which the config's rules map to the mesh."""
    init_VxV = partitioned(jax.nn.initializers.normal(0.02), ("vocab", None))
    return {"logits_VxV": init_VxV(rng, (cfg.vocab_size, cfg.vocab_size))}


def _token_nll(params, batch):
    log_probs_BxLxV = jax.nn.log_softmax(params["logits_VxV"][batch["inputs"]])
    return -jnp.take_along_axis(log_probs_BxLxV, batch["targets"][..., None], axis=-1)[..., 0]


def loss(params, batch, rng, cfg, *, train, step):
    return lm.masked_mean(_token_nll(params, batch), batch["mask"])


def eval_sums(params, batch, rng, cfg):
    return lm.masked_sums(_token_nll(params, batch), batch["mask"])


def eval_summary(totals, meta):
    return lm.summary(totals, meta)  # loss, perplexity, bits per token and per char


def token_log_probs(params, tokens_BxT, cfg):
    log_probs_BxTxV = jax.nn.log_softmax(params["logits_VxV"][tokens_BxT[:, :-1]])
    return jnp.take_along_axis(log_probs_BxTxV, tokens_BxT[:, 1:, None], axis=-1)[..., 0]


def context_length(cfg) -> int:
    return 1 << 30  # only the last token matters


@jax.jit
def _generate(params, last_B, rng, temperature, top_k, top_p, steps_N):
    def step(token_B, key):
        token_B = sampling.next_token(key, params["logits_VxV"][token_B], temperature, top_k, top_p)
        return token_B, token_B

    return jax.lax.scan(step, last_B, jax.random.split(rng, steps_N.shape[0]))[1].T


def sample(params, rng, cfg, *, prompt_BxP, max_new_tokens, temperature=1.0, top_k=0,
           top_p=1.0, num_beams=1, repetition_penalty=1.0):  # fmt: skip
    if num_beams != 1 or repetition_penalty != 1.0:
        raise UserError("the bigram model samples ancestrally: no beams or repetition penalty")
    last_B = jnp.asarray(prompt_BxP, jnp.int32)[:, -1]
    knobs = sampling.knobs(temperature, top_k, top_p)
    return _generate(params, last_B, rng, *knobs, jnp.zeros(max_new_tokens))

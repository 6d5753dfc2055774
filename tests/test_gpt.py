"""GPT: shapes, initial loss, causality, KV cache, sampling, overfitting, a golden step."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genzoo import sampling
from genzoo.models import gpt


@pytest.fixture(scope="module")
def setup(make_config, char_data):
    cfg = make_config()
    params = nn.unbox(gpt.init(jax.random.PRNGKey(0), cfg.model))
    batch = next(char_data.train_iterator(8, seed=0))
    return cfg, params, batch


def test_shapes_and_finite(setup):
    cfg, params, batch = setup
    logits_BxLxV = gpt.logits(params, batch["inputs"], cfg.model)
    assert logits_BxLxV.shape == (8, 32, cfg.model.vocab_size)
    assert logits_BxLxV.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits_BxLxV)))


def test_initial_loss_is_log_vocab(setup):
    cfg, params, batch = setup
    loss, _ = gpt.loss(params, batch, jax.random.PRNGKey(1), cfg.model, train=False)
    assert abs(float(loss) - math.log(cfg.model.vocab_size)) < 0.05


def test_causality_by_gradients(setup):
    """d logits[t] / d position-embedding[s] is zero exactly when s > t."""
    cfg, params, batch = setup
    tokens_1xL = batch["inputs"][:1]
    L, t = tokens_1xL.shape[1], 10

    def logit_sum_at_t(wpe):
        p = {**params, "wpe": {"embedding": wpe}}
        return jnp.sum(gpt.logits(p, tokens_1xL, cfg.model)[0, t])

    grad_LxD = jax.grad(logit_sum_at_t)(params["wpe"]["embedding"])[:L]
    per_position = np.abs(np.asarray(grad_LxD)).sum(axis=1)
    assert np.all(per_position[t + 1 :] == 0.0)
    assert np.all(per_position[: t + 1] > 0.0)


def test_kv_cache_decoding_equals_full_recomputation(setup):
    cfg, params, batch = setup
    c = gpt.GPTConfig.from_cfg(cfg.model)
    tokens_BxL = batch["inputs"][:2]
    full_BxLxV = gpt.logits(params, tokens_BxL, cfg.model)
    model = gpt.GPT(c)
    cache = gpt.init_cache(c, 2, c.block_size)
    prefill_BxPxV, cache = model.apply({"params": params}, tokens_BxL[:, :5], cache=cache)
    decode = jax.jit(lambda tok_Bx1, cache: model.apply({"params": params}, tok_Bx1, cache=cache))
    steps = [prefill_BxPxV]
    for i in range(5, tokens_BxL.shape[1]):  # one compile for every step
        logits_Bx1xV, cache = decode(tokens_BxL[:, i : i + 1], cache)
        steps.append(logits_Bx1xV)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full_BxLxV, atol=1e-5, rtol=1e-5)


def test_greedy_decode_equals_argmax_of_recomputation(setup):
    cfg, params, batch = setup
    prompt_BxP = batch["inputs"][:3, :4]
    new_BxN = gpt.sample(
        params,
        jax.random.PRNGKey(0),
        cfg.model,
        prompt_BxP=prompt_BxP,
        max_new_tokens=8,
        temperature=0.0,
    )
    # Recomputed over a fixed 12-token buffer (one compile; by causality the zeros after
    # position t do not reach its logits): eager forwards of 8 lengths took 17 s.
    logits = jax.jit(lambda tokens_BxL: gpt.logits(params, tokens_BxL, cfg.model))
    tokens = np.zeros((3, 12), np.int32)
    tokens[:, :4] = prompt_BxP
    for t in range(4, 12):
        tokens[:, t] = np.argmax(logits(tokens)[:, t - 1], axis=-1)
    np.testing.assert_array_equal(new_BxN, tokens[:, 4:])


def test_sampling_is_seeded_and_top_k_one_is_greedy(setup):
    cfg, params, batch = setup
    prompt = batch["inputs"][:4, :3]
    draw = lambda seed, **kw: np.asarray(
        gpt.sample(
            params, jax.random.PRNGKey(seed), cfg.model, prompt_BxP=prompt, max_new_tokens=12, **kw
        )
    )
    np.testing.assert_array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))
    np.testing.assert_array_equal(draw(3, top_k=1), draw(0, temperature=0.0))


def test_filter_logits_top_k_and_top_p():
    logits_1x5 = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.07, 0.03]]))
    kept = lambda out: np.isfinite(np.asarray(out)) & (np.asarray(out) > -1e30)
    assert kept(sampling.filter_logits(logits_1x5, 2, 1.0)).tolist() == [[1, 1, 0, 0, 0]]
    assert kept(sampling.filter_logits(logits_1x5, 0, 0.7)).tolist() == [[1, 1, 0, 0, 0]]
    assert kept(sampling.filter_logits(logits_1x5, 0, 0.8)).tolist() == [[1, 1, 1, 0, 0]]
    assert kept(sampling.filter_logits(logits_1x5, 0, 1.0)).tolist() == [[1, 1, 1, 1, 1]]
    assert kept(sampling.filter_logits(logits_1x5, 0, 0.01)).tolist() == [[1, 0, 0, 0, 0]]


def test_init_is_gpt2s_with_residual_projections_scaled_by_depth():
    """Weights ~ N(0, 0.02), the two projections into the residual stream ~ N(0, 0.02 /
    sqrt(2 x layers)) (GPT-2: the stream's variance stays flat with depth), LayerNorm scales
    one, biases zero."""
    from flax import traverse_util

    cfg = {"vocab_size": 65, "block_size": 64, "num_layers": 4, "num_heads": 4, "width": 128}
    params = nn.unbox(gpt.init(jax.random.PRNGKey(0), cfg))
    for name, w in traverse_util.flatten_dict(params, sep="/").items():
        w = np.asarray(w)
        if name.endswith("scale"):
            assert (w == 1).all(), name
        elif name.endswith("bias"):
            assert (w == 0).all(), name
        else:
            residual = name.endswith(("attn/out_kernel", "mlp/proj/kernel"))
            want = 0.02 / 8**0.5 if residual else 0.02
            assert abs(w.std() / want - 1) < 0.05, (name, w.std())


def test_flops_per_example_counts_matmuls():
    cfg = {"vocab_size": 65, "block_size": 256, "num_layers": 6, "num_heads": 6, "width": 384}
    # 6 N T + 12 layers D T^2 with N = 12 layers D^2 + padded vocab D (nanoGPT's estimate_mfu).
    expected = (6 * (12 * 6 * 384**2 + 128 * 384) + 12 * 6 * 384 * 256) * 256
    assert gpt.flops_per_example(cfg, {"inputs": (256,)}) == expected


@pytest.mark.parametrize("chunk", [0, 16])
def test_a_bf16_step_multiplies_in_bf16_over_float32_master_weights(chunk):
    """`model.dtype=bfloat16`: every matmul of the train step (forward, backward, the tied head
    and its cross-entropy, chunked or not) takes bf16 operands, while the parameters and
    optimizer state the step carries stay float32. Read from the lowered program."""
    import re

    from genzoo import experiment
    from genzoo.trainer import Trainer

    overrides = ["model.dtype=bfloat16", "model.dropout=0.1", f"model.loss_chunk={chunk}"]
    cfg = experiment.load("gpt_shakespeare_char", "smoke", overrides)
    cfg.model.vocab_size = 65
    trainer = Trainer(cfg, devices=jax.devices()[:1])
    B, L = cfg.train.batch_size, cfg.data.seq_len
    batch = {"inputs": np.zeros((B, L), np.int32), "targets": np.zeros((B, L), np.int32),
             "mask": np.ones((B, L), np.float32)}  # fmt: skip
    state = trainer.abstract_state
    carried = jax.tree.leaves((state.params, state.opt_state))
    floats = {x.dtype for x in carried if jnp.issubdtype(x.dtype, jnp.floating)}
    assert floats == {np.dtype("float32")}
    text = trainer.train_step.trace(state, batch, {}).lower().as_text()
    dots = re.findall(r"stablehlo\.dot_general .*: \(tensor<(\S+)>, tensor<(\S+)>\)", text)
    operands = [(a.split("x")[-1], b.split("x")[-1]) for a, b in dots]
    assert len(operands) >= 6 * cfg.model.num_layers  # each block's products, both passes
    assert set(operands) == {("bf16", "bf16")}

"""Discrete image tokenizers: shapes, Gumbel relaxation, straight-through, EMA codebook."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genzoo.models import dvae

CFG = dict(
    quantizer="gumbel", codebook_size=16, code_dim=8, widths=(8, 16), image_shape=(32, 32, 3)
)
VQ = {**CFG, "quantizer": "vq"}


def _batch(B=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(0, 1, (B, 32, 32, 3)).astype(np.float32),
            "mask": np.ones(B, np.float32)}  # fmt: skip


@pytest.mark.parametrize("cfg", [CFG, VQ], ids=["gumbel", "vq"])
def test_encode_decode_shapes_and_codes_in_range(cfg):
    params = nn.unbox(dvae.init(jax.random.PRNGKey(0), cfg))
    codes = np.asarray(dvae.encode(params, _batch()["image"], cfg))
    assert codes.shape == (4, 8, 8) and 0 <= codes.min() and codes.max() < 16
    images = np.asarray(dvae.decode(params, codes, cfg))
    assert images.shape == (4, 32, 32, 3) and 0 <= images.min() and images.max() <= 1
    value, *_ = dvae.loss(params, _batch(), jax.random.PRNGKey(1), cfg)
    assert np.isfinite(float(value))


def test_gumbel_relaxation_tends_to_one_hot_as_the_temperature_falls():
    logits = jax.random.normal(jax.random.PRNGKey(0), (256, 16))
    rng = jax.random.PRNGKey(1)
    peak = lambda tau: float(jnp.mean(jnp.max(dvae.gumbel_softmax(rng, logits, tau), -1)))
    assert peak(5.0) < 0.3 < peak(1.0) < peak(0.1) < peak(0.01) and peak(0.01) > 0.99
    # ...and its argmax is a sample of softmax(logits) (the Gumbel-max trick)
    big = jax.random.normal(jax.random.PRNGKey(2), (1, 4))
    draws = jax.vmap(lambda k: jnp.argmax(dvae.gumbel_softmax(k, big, 1.0), -1))(
        jax.random.split(rng, 20000))[:, 0]  # fmt: skip
    freq = np.bincount(np.asarray(draws), minlength=4) / 20000
    np.testing.assert_allclose(freq, np.asarray(jax.nn.softmax(big[0])), atol=0.015)
    c = dvae.DVAEConfig.from_cfg({**CFG, "tau_anneal_steps": 100})
    assert float(dvae.temperature(c, 0)) == 1.0
    assert (
        float(dvae.temperature(c, 100)) == pytest.approx(1 / 16) == float(dvae.temperature(c, 500))
    )


def test_gumbel_code_penalty_is_the_kl_to_a_uniform_prior():
    """Summed over the 8x8 cells: sum_k q log(q K) >= 0, as the ELBO's prior term."""
    params = nn.unbox(dvae.init(jax.random.PRNGKey(0), CFG))
    c, batch = dvae.DVAEConfig.from_cfg(CFG), _batch()
    logits = dvae.DVAE(c).apply({"params": params["model"]}, batch["image"],
                                method=dvae.DVAE.encode)  # fmt: skip
    q = np.asarray(jax.nn.softmax(logits), np.float64)
    want = np.sum(q * np.log(q * c.codebook_size), axis=(1, 2, 3))
    _, _, penalty, _, _ = dvae._forward(params, batch, jax.random.PRNGKey(1), c, 0, False)
    assert float(want.min()) > 0.05  # the encoder's codes are not uniform: the check has teeth
    np.testing.assert_allclose(np.asarray(penalty), want, rtol=1e-4)


def test_vq_gradients_pass_straight_through_to_the_encoder():
    params = nn.unbox(dvae.init(jax.random.PRNGKey(0), VQ))
    grads = jax.grad(lambda p: dvae.loss(p, _batch(), jax.random.PRNGKey(1), VQ)[0])(params)
    encoder = jax.tree.leaves(grads["model"]["encoder"])
    assert all(float(jnp.abs(g).max()) > 0 for g in encoder)
    # Without the commitment term the encoder still learns, from the reconstruction alone.
    no_commit = {**VQ, "commitment": 0.0}
    grads = jax.grad(lambda p: dvae.loss(p, _batch(), jax.random.PRNGKey(1), no_commit)[0])(params)
    assert float(jnp.abs(grads["model"]["encoder"]["stem"]["kernel"]).max()) > 0
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["vq"]))


def test_ema_codebook_update_matches_a_hand_computation():
    c = dvae.DVAEConfig.from_cfg({**VQ, "codebook_size": 3, "code_dim": 2, "ema_decay": 0.9,
                                  "restart_below": 0.0})  # fmt: skip
    state = {"codebook": jnp.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]),
             "count": jnp.array([1.0, 2.0, 1.0]),
             "sum": jnp.array([[0.0, 0.0], [2.0, 2.0], [5.0, 5.0]])}  # fmt: skip
    z = jnp.array([[0.2, 0.0], [1.2, 0.8], [0.8, 1.4], [9.0, 9.0]])
    codes = dvae.nearest_codes(z, state["codebook"])
    np.testing.assert_array_equal(codes, [0, 1, 1, 2])
    new = dvae.vq_ema_update(
        state, z, codes, jnp.array([1.0, 1.0, 1.0, 0.0]), jax.random.PRNGKey(0), c
    )  # fmt: skip (the last row is padding)
    count = np.array([0.9 * 1 + 0.1 * 1, 0.9 * 2 + 0.1 * 2, 0.9 * 1 + 0.1 * 0])
    total = np.array([[0.1 * 0.2, 0.0], [1.8 + 0.1 * 2.0, 1.8 + 0.1 * 2.2], [4.5, 4.5]])
    np.testing.assert_allclose(new["count"], count, rtol=1e-6)
    np.testing.assert_allclose(new["sum"], total, rtol=1e-6)
    np.testing.assert_allclose(new["codebook"], total / count[:, None], rtol=1e-6)


def test_dead_codes_restart_at_encoder_outputs():
    c = dvae.DVAEConfig.from_cfg({**VQ, "codebook_size": 3, "code_dim": 2, "restart_below": 0.5})
    state = {"codebook": jnp.array([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0]]),
             "count": jnp.array([1.0, 1.0, 0.1]),
             "sum": jnp.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])}  # fmt: skip
    z = jnp.array([[0.1, 0.1], [0.9, 0.9]])
    new = dvae.vq_ema_update(state, z, dvae.nearest_codes(z, state["codebook"]), jnp.ones(2),
                             jax.random.PRNGKey(0), c)  # fmt: skip
    assert any(np.allclose(new["codebook"][2], v) for v in np.asarray(z))  # restarted
    assert float(new["count"][2]) == 1.0
    # Code 0 (count 1, decay 0.99) moves 1% of the way to its one vector (0.1, 0.1).
    np.testing.assert_allclose(new["codebook"][0], [0.001, 0.001], rtol=1e-5)


def test_eval_summary_reports_perplexity_and_dead_codes():
    usage = np.array([10.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0])
    out = dvae.eval_summary({"nll": 0.0, "sq": 8.0, "n": 2.0, "subpixels": 8.0, "usage": usage}, {})
    assert out["perplexity"] == pytest.approx(4.0) and out["dead_codes"] == 4
    # 20 cells per image under a uniform prior of 8 codes: 20 log2(8) bits over 4 subpixels.
    assert out["bits_per_dim"] == pytest.approx(20 * math.log2(8) / 4)
    assert out["mse"] == pytest.approx(1.0)


def test_vq_codebook_state_resumes_bit_exactly_and_the_kind_round_trips(tmp_path, capsys):
    from conftest import tiny_config

    from genzoo import cli, data, executables, kinds
    from genzoo.trainer import Trainer

    over = ("model.quantizer=vq", "checkpoint.every_steps=2", "eval.every_steps=0",
            "optim.decay_steps=9", "log.progress=false")  # fmt: skip

    def make(steps):  # the same config twice: the second Trainer loads the first's programs
        cfg = tiny_config(*over, f"train.steps={steps}", name="dvae_shapes")
        return Trainer(cfg, devices=jax.devices()[:1], executables=executables.in_memory(cfg))

    d = data.load(make(4).cfg.data)
    a = make(4).fit(tmp_path / "a", d)
    make(2).fit(tmp_path / "b", d)
    b = make(4).fit(tmp_path / "b", d)
    assert float(jnp.abs(a.params["vq"]["count"] - 1.0).max()) > 0  # the state moved
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The image_tokenizer kind: sample writes inputs beside reconstructions; the API agrees.
    wd = tmp_path / "cli"
    assert cli.main(["train", "dvae_shapes", "--variant", "smoke", "--workdir", str(wd)]) == 0
    assert cli.main(["sample", "--workdir", str(wd), "--num", "4"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.endswith("reconstructions.png") and (wd / "reconstructions.png").stat().st_size > 200
    tok = kinds.load(wd)
    images = d.real_images("validation", 5)
    codes = tok.encode(images)
    assert codes.shape == (5, *tok.grid_shape) and codes.max() < tok.codebook_size
    np.testing.assert_allclose(tok.reconstruct(images), tok.decode(codes), atol=1e-6)
    assert cli.main(["sample", "--workdir", str(wd), "--temperature", "1"]) == 2

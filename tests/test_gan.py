"""GAN: hand-computed losses, two optimizers, seeded sample pictures; sample-quality scores."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import tiny_config

from genzoo import optim
from genzoo.evaluation import sample_quality
from genzoo.models import gan
from genzoo.trainer import Trainer

softplus = lambda v: math.log1p(math.exp(v))


def test_non_saturating_and_hinge_losses_match_hand_values():
    real, fake = np.array([2.0, -1.0]), np.array([0.5, -3.0])
    g, d = gan.gan_losses(real, fake, "non_saturating")
    assert float(d) == pytest.approx(
        ((softplus(-2) + softplus(0.5)) + (softplus(1) + softplus(-3))) / 2, rel=1e-6
    )
    assert float(g) == pytest.approx((softplus(-0.5) + softplus(3)) / 2, rel=1e-6)
    g, d = gan.gan_losses(real, fake, "hinge")
    assert float(d) == pytest.approx((0 + 1.5 + 2 + 0) / 2)
    assert float(g) == pytest.approx(1.25)


def test_each_player_has_its_own_optimizer(image_data):
    cfg = tiny_config(
        "optim.groups.generator.lr=0.0", "optim.warmup_steps=0", name="dcgan_fashion_mnist"
    )
    assert optim.group_config(cfg.optim, "generator").lr == 0.0
    t = Trainer(cfg, devices=jax.devices()[:1])
    state = t.init_state()
    before = jax.device_get(state.params)
    state, m = t.step(state, next(image_data.train_iterator(16, 0)))
    # Each player's rate is logged, not one base rate that neither of them has.
    assert "lr" not in m and float(m["lr/generator"]) == 0.0
    assert float(m["lr/discriminator"]) == pytest.approx(cfg.optim.lr)
    after = jax.device_get(state.params)
    same = lambda a, b: all(
        np.array_equal(x, y) for x, y in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    )
    assert same(before["generator"], after["generator"])  # lr 0: frozen
    assert not same(before["discriminator"], after["discriminator"])


def test_a_generator_step_moves_the_generator(image_data):
    # With the discriminator frozen, only the generator's own gradient (through the fake
    # images) can move it: a stop_gradient on the fakes would leave it unchanged.
    cfg = tiny_config(
        "optim.groups.discriminator.lr=0.0", "optim.warmup_steps=0", name="dcgan_fashion_mnist"
    )
    t = Trainer(cfg, devices=jax.devices()[:1])
    state = t.init_state()
    before = jax.device_get(state.params)
    state, _ = t.step(state, next(image_data.train_iterator(16, 0)))
    after = jax.device_get(state.params)
    pairs = lambda group: zip(*map(jax.tree.leaves, (before[group], after[group])), strict=True)
    assert all(not np.array_equal(x, y) for x, y in pairs("generator"))
    assert all(np.array_equal(x, y) for x, y in pairs("discriminator"))


def test_samples_are_images_and_seeded(image_data):
    cfg = tiny_config(name="dcgan_fashion_mnist")
    params = nn.unbox(gan.init(jax.random.PRNGKey(0), cfg.model))
    a = np.asarray(gan.sample(params, jax.random.split(jax.random.PRNGKey(1), 6), cfg.model))
    b = np.asarray(gan.sample(params, jax.random.split(jax.random.PRNGKey(1), 6), cfg.model))
    assert a.shape == (6, 28, 28, 1) and 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, b)


def test_frechet_distance_hand_values():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4000, 3))
    assert sample_quality.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by (1, 2, 0): the distance is the squared shift.
    assert sample_quality.frechet_distance(f, f + [1.0, 2.0, 0.0]) == pytest.approx(5.0, rel=1e-6)
    # Scaled by 2: trace term = 3 * (1 + 4 - 2*2) = 3 for identity covariance (up to sampling).
    assert sample_quality.frechet_distance(f, 2 * f) == pytest.approx(3.0, rel=0.1)


def test_a_missing_classifier_run_names_the_key_that_points_elsewhere(tmp_path):
    from genzoo import errors, experiment

    with pytest.raises(errors.UserError, match="no classifier run") as caught:
        sample_quality.score(np.zeros((2, 28, 28, 1)), np.zeros((2, 28, 28, 1)), tmp_path / "no")
    key = sample_quality.WORKDIR_KEY
    assert key in str(caught.value)
    # The key is one `--set` takes: overriding it reaches the evaluator's config.
    cfg = experiment.load("vae_fashion_mnist", overrides=[f"{key}=elsewhere"])
    assert cfg.eval.evaluators.sample_quality.classifier_workdir == "elsewhere"


def test_classifier_score_bounds():
    uniform = np.full((10, 4), 0.25)
    assert sample_quality.classifier_score(uniform) == pytest.approx(1.0)
    confident_and_diverse = np.eye(4)[np.arange(12) % 4]
    assert sample_quality.classifier_score(confident_and_diverse) == pytest.approx(4.0, rel=1e-6)


def test_batchnorm_statistics_are_model_state_that_sampling_uses(image_data):
    cfg = tiny_config("optim.warmup_steps=0", name="dcgan_fashion_mnist")
    assert cfg.model.norm == "batch"
    t = Trainer(cfg, devices=jax.devices()[:1])
    state = t.init_state()
    before = jax.device_get(state.params)
    state, _ = t.step(state, next(image_data.train_iterator(16, 0)))
    after = jax.device_get(state.params)
    stats = lambda p, g: jax.tree.leaves(p["batch_stats"][g])
    for group in ("generator", "discriminator"):  # means moved from 0, variances from 1
        pairs = zip(stats(before, group), stats(after, group), strict=True)
        assert all(not np.array_equal(x, y) for x, y in pairs)
    trained = sum(x.size for g in ("generator", "discriminator") for x in jax.tree.leaves(after[g]))
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert moments == 2 * trained  # Adam keeps nothing for the statistics
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    a = np.asarray(gan.sample(after, keys, cfg.model))
    b = np.asarray(gan.sample({**after, "batch_stats": before["batch_stats"]}, keys, cfg.model))
    assert np.abs(a - b).max() > 1e-4  # samples normalise with the running statistics

"""VAE: shapes, the ELBO against an independent Monte-Carlo estimate, the IW bound, sampling."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import tiny_config
from scipy import stats

from genzoo.models import vae


@pytest.fixture(scope="module")
def setup(image_data):
    cfg = tiny_config(name="vae_fashion_mnist")
    params = nn.unbox(vae.init(jax.random.PRNGKey(0), cfg.model))
    images = image_data.real_images("test", 4)
    return cfg, params, images


def test_sample_and_reconstruct_shapes(setup):
    cfg, params, images = setup
    samples = np.asarray(vae.sample(params, jax.random.split(jax.random.PRNGKey(1), 5), cfg.model))
    assert samples.shape == (5, 28, 28, 1) and 0 <= samples.min() and samples.max() <= 1
    recon = np.asarray(vae.reconstruct(params, images, cfg.model))
    assert recon.shape == images.shape and np.all(np.isfinite(recon))


def _encoder_head(params, latent: int) -> str:
    """The name of the encoder's output layer (mean and log-variance, 2 x latent wide)."""
    (name,) = [k for k, v in params["encoder"].items() if "kernel" in v
               and v["kernel"].ndim == 2 and v["kernel"].shape[-1] == 2 * latent]  # fmt: skip
    return name


def _shift_logvar(params, latent: int, shift: float):
    """The encoder's output layer moved so every posterior log-variance is ~`shift`: at init
    they are ~0, where std = exp(logvar / 2) and a wrong exp(logvar) cannot be told apart."""
    enc, name = params["encoder"], _encoder_head(params, latent)
    bias = np.asarray(enc[name]["bias"]).copy()
    bias[latent:] += shift
    kernel = np.asarray(enc[name]["kernel"]).copy()
    kernel[:, latent:] *= 0.01
    return {**params, "encoder": {**enc, name: {"kernel": kernel, "bias": bias}}}


@pytest.mark.parametrize("logvar_shift", [0.0, 2.5])
def test_elbo_matches_an_independent_monte_carlo_estimate(setup, logvar_shift):
    """-ELBO = E_q[-log p(x|z) - log p(z) + log q(z|x)], estimated here with scipy densities."""
    cfg, params, images = setup
    if logvar_shift:
        params = _shift_logvar(params, cfg.model.latent, logvar_shift)
    c = vae.VAEConfig.from_cfg(cfg.model)
    model = vae.VAE(c)
    x = np.asarray(vae.binarize(images[:1]))
    mean, logvar = (
        np.asarray(a)[0] for a in model.apply({"params": params}, x, method=vae.VAE.encode)
    )
    std = np.exp(0.5 * logvar)
    z = np.random.default_rng(0).normal(mean, std, (20000, c.latent))
    logits = np.asarray(model.apply({"params": params}, z, method=vae.VAE.decode)).reshape(
        len(z), -1
    )
    logits = logits.astype(np.float64)
    log_lik = np.sum(x.reshape(1, -1) * logits - np.logaddexp(0.0, logits), axis=1)
    log_prior = stats.norm.logpdf(z).sum(1)
    log_q = stats.norm.logpdf(z, mean, std).sum(1)
    mc_neg_elbo = -np.mean(log_lik + log_prior - log_q)
    mc_stderr = np.std(log_lik + log_prior - log_q) / math.sqrt(len(z))

    keys = jax.random.split(jax.random.PRNGKey(3), 4000)
    recon, kl = jax.vmap(lambda k: vae.elbo_terms(params, x, k, cfg.model))(keys)
    model_samples = np.asarray(recon + kl, np.float64)[:, 0]
    model_stderr = np.std(model_samples) / math.sqrt(len(model_samples))
    # Both sides are Monte-Carlo estimates of the same number: compare within 4 joint sigmas.
    assert abs(model_samples.mean() - mc_neg_elbo) < 4 * math.hypot(mc_stderr, model_stderr)
    assert float(np.mean(kl)) == pytest.approx(np.mean(log_q - log_prior), abs=6 * mc_stderr + 0.05)


def test_importance_weighted_bound_is_tighter_than_the_elbo(setup):
    cfg, params, images = setup
    x = vae.binarize(images)
    recon, kl = vae.elbo_terms(params, x, jax.random.PRNGKey(0), cfg.model)
    nll_k1 = vae.nll_importance_weighted(params, x, jax.random.PRNGKey(5), cfg.model, 1)
    nll_k64 = vae.nll_importance_weighted(params, x, jax.random.PRNGKey(5), cfg.model, 64)
    assert np.all(np.isfinite(nll_k64))
    assert float(nll_k64.mean()) <= float(nll_k1.mean()) + 1e-3
    assert float(nll_k64.mean()) <= float((recon + kl).mean()) + 0.5


def test_importance_weighted_bound_is_the_same_for_any_k_when_every_weight_is_equal(setup):
    """With the posterior equal to the prior and a decoder that ignores z, every importance
    weight is the same number, so -log of their mean cannot depend on k."""
    cfg, params, images = setup
    zero = lambda layer: jax.tree.map(np.zeros_like, layer)  # noqa: E731
    enc, dec = params["encoder"], params["decoder"]
    out = _encoder_head(params, cfg.model.latent)
    blind_in = {**dec["in"], "kernel": zero(dec["in"]["kernel"])}
    flat = {**params, "encoder": {**enc, out: zero(enc[out])}, "decoder": {**dec, "in": blind_in}}
    x = vae.binarize(images[:4])
    nll = [vae.nll_importance_weighted(flat, x, jax.random.PRNGKey(5), cfg.model, k)
           for k in (1, 16)]  # fmt: skip
    assert np.all(np.isfinite(nll[0])) and float(np.min(nll[0])) > 0
    np.testing.assert_allclose(nll[1], nll[0], rtol=1e-5)


def test_bernoulli_log_prob_and_kl_hand_values():
    logits = np.zeros((1, 2, 1, 1), np.float32)
    x = np.array([[[[1.0]], [[0.0]]]], np.float32)
    assert float(vae.bernoulli_log_prob(logits, x)[0]) == pytest.approx(2 * math.log(0.5))
    kl = vae.gaussian_kl(np.array([[1.0, 0.0]]), np.array([[0.0, math.log(4.0)]]))
    assert float(kl[0]) == pytest.approx(0.5 * (1.0 + (4.0 - 1.0 - math.log(4.0))))


def test_a_trained_vae_samples_where_its_data_set_is_missing(tmp_path, monkeypatch, capsys):
    """A workdir moved to a machine without Fashion-MNIST: sampling needs no data (the data
    set loads when first read), evaluation says which file is missing."""
    import genzoo
    from genzoo import cli

    path = tmp_path / "run"
    argv = ["train", "vae_fashion_mnist", "--variant", "smoke", "--set", "log.progress=false"]
    assert cli.main([*argv, "--set", "train.steps=4", "--workdir", str(path)]) == 0
    here = genzoo.load(path).sample(num=3, seed=0)
    monkeypatch.setenv("GENZOO_DATA_DIR", str(tmp_path / "no_data"))
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path / "no_cache"))
    np.testing.assert_array_equal(genzoo.load(path).sample(num=3, seed=0), here)
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(path)]) == 2
    assert "fashion-mnist/train-images-idx3-ubyte.gz not found" in capsys.readouterr().err

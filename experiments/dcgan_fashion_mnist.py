"""DCGAN-style GAN on Fashion-MNIST: non-saturating loss, one Adam per player.

    genzoo train dcgan_fashion_mnist
    genzoo eval --workdir runs/dcgan_fashion_mnist --json   # fid, classifier_score
    genzoo sample --workdir runs/dcgan_fashion_mnist --num 64 --seed 0

Expect: an FID-style distance on the in-tree classifier's features (not Inception FID,
so not comparable with published numbers). BatchNorm as published (model state) is the
default; a two-time-scale update is `--set optim.groups.discriminator.lr=4e-4 --set
optim.groups.generator.lr=1e-4`. Measured after 5000 steps with BatchNorm: fid 57.8,
classifier_score 5.89 (real test images: 8.67; the VAE: 80.8 and 5.57; the earlier LayerNorm
generator, `--set model.norm=layer`: 121.2 and 4.52). Two time-scales (D 4e-4, G 1e-4): fid
69.9, classifier_score 5.61 after 5000 steps (2026-12-07), worse than equal rates here.
"""

from genzoo.experiment import base_config

VARIANTS = ("smoke",)


def get_config(variant=None):
    c = base_config()
    c.model = dict(family="gan", latent=64, widths=(64, 128), loss="non_saturating", norm="batch",
                   image_shape=(28, 28, 1))  # fmt: skip
    c.data = dict(name="fashion_mnist")
    c.train.update(steps=5000, batch_size=64, seed=0)
    # DCGAN's Adam (lr 2e-4, beta1 0.5), constant rate, no decay or clipping, for both players.
    c.optim.update(lr=2e-4, min_lr=2e-4, warmup_steps=0, b1=0.5, b2=0.999, weight_decay=0.0)
    c.optim.clip_norm = 0.0
    c.optim.groups = dict(generator=dict(lr=2e-4), discriminator=dict(lr=2e-4))
    c.eval.update(split="test", every_steps=1000, batch_size=500)
    if variant != "smoke":  # sample quality needs a trained classifier run
        c.eval.evaluators.sample_quality = dict(
            classifier_workdir="runs/classifier_fashion_mnist", num_samples=1000
        )
    c.checkpoint.update(every_steps=1000, keep=2)
    c.log.every_steps = 50
    if variant == "smoke":
        c.model.update(latent=8, widths=(8, 16))
        c.train.update(steps=10, batch_size=16)
        c.eval.update(every_steps=10, batch_size=16, max_batches=2)
        c.checkpoint.update(every_steps=10)
        c.log.every_steps = 5
    return c

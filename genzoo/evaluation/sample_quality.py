"""Sample quality of image generators, scored by an in-tree classifier (not Inception).

`fid`: Fréchet distance between Gaussians fitted to the classifier's penultimate features
of real and generated images (Heusel et al.'s FID, on a Fashion-MNIST classifier).
`classifier_score`: exp(E_x KL(p(y|x) || p(y))), the Inception Score's formula with the
same classifier. Both are comparable across families only with the same classifier run
and the same number of samples.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import scipy.linalg

from genzoo.errors import UserError
from genzoo.models import classifier

WORKDIR_KEY = "eval.evaluators.sample_quality.classifier_workdir"  # the key its error names


def frechet_distance(f1_NxF: np.ndarray, f2_MxF: np.ndarray) -> float:
    mu1, mu2 = f1_NxF.mean(0), f2_MxF.mean(0)
    s1, s2 = np.cov(f1_NxF, rowvar=False), np.cov(f2_MxF, rowvar=False)
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real  # sqrtm of a product of PSD matrices: imaginary parts are round-off
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * covmean))


def classifier_score(probs_NxK: np.ndarray) -> float:
    p_y = probs_NxK.mean(0, keepdims=True)
    kl = np.sum(probs_NxK * (np.log(probs_NxK + 1e-12) - np.log(p_y + 1e-12)), axis=1)
    return float(np.exp(kl.mean()))


def _predict_all(params, images, cfg, batch: int = 500):
    probs, feats = zip(
        *(
            classifier.predict(params, images[i : i + batch], cfg)
            for i in range(0, len(images), batch)
        ),
        strict=True,
    )
    return np.concatenate(jax.device_get(probs)), np.concatenate(jax.device_get(feats))


def score(images_NxHxWxC: np.ndarray, real_NxHxWxC: np.ndarray, classifier_workdir: Path) -> dict:
    """fid and classifier_score of generated images against real ones."""
    from genzoo import workdir  # late: workdir imports the trainer

    if not Path(classifier_workdir).is_dir():
        raise UserError(
            f"no classifier run at {classifier_workdir}: train it with "
            f"`genzoo train classifier_fashion_mnist` or set {WORKDIR_KEY}"
        )
    run = workdir.open_run(Path(classifier_workdir))
    params, cfg = run.params, run.cfg.model
    fake_probs, fake_feats = _predict_all(params, np.asarray(images_NxHxWxC), cfg)
    real_probs, real_feats = _predict_all(params, np.asarray(real_NxHxWxC), cfg)
    return {
        "fid": frechet_distance(real_feats, fake_feats),
        "classifier_score": classifier_score(fake_probs),
        "classifier_score_real": classifier_score(real_probs),
        "num_samples": len(images_NxHxWxC),
    }


def evaluate(run, split: str, *, classifier_workdir: str, num_samples: int = 1000) -> dict:
    """The `sample_quality` evaluator: `num_samples` generated images against as many real
    test images, scored by the classifier run in `classifier_workdir`."""
    from genzoo import kinds, models

    if not classifier_workdir:
        return {}
    generator = kinds.of_family(models.get(run.cfg.model.family)).api(run)
    fake = generator.sample(num_samples, seed=int(run.cfg.eval.seed))
    real = run.data.real_images(split, num_samples)
    return score(fake, real, Path(classifier_workdir))

"""Classifiers: predict class probabilities (they also score the image generators)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from genzoo import models
from genzoo.kinds import Kind, register


@runtime_checkable
class ClassifierFamily(Protocol):
    def predict(self, params, images_BxHxWxC, cfg): ...


class Classifier:
    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)
        self.class_names = run.data.meta(run.cfg.eval.split).get("class_names")

    def predict(self, images_BxHxWxC) -> np.ndarray:
        """Class probabilities [B, classes] of images in [0, 1]."""
        probs, _ = self.family.predict(self.run.params, images_BxHxWxC, self.run.cfg.model)
        return np.asarray(probs)


register(Kind("classifier", ClassifierFamily, Classifier))

"""Classifiers: predict class probabilities (they also score the image generators)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from genzoo import models
from genzoo.kinds import Kind, images_for, in_batches, register


@runtime_checkable
class ClassifierFamily(Protocol):
    def predict(self, params, images_BxHxWxC, cfg): ...


class Classifier:
    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)
        self.class_names = run.class_names or None  # without the data set: classes.json

    def predict(self, images_BxHxWxC, batch_size: int = 256) -> np.ndarray:
        """Class probabilities [B, classes] of images in [0, 1] (or uint8), `batch_size` at a
        time; `class_names` names the columns."""
        probs = lambda x: self.family.predict(self.run.params, x, self.run.cfg.model)[0]  # noqa: E731
        return in_batches(probs, images_for(self.run, images_BxHxWxC), batch_size)


register(Kind("classifier", ClassifierFamily, Classifier))

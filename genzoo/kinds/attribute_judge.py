"""Attribute judges: what a scene shows (shapes, colours, sizes, relation), to score
text-to-image models against the caption they were asked for.

`genzoo.load(DIR)` gives `.predict(images)` ({head: class ids}), `.features(images)` (for
FID) and `.judge(images, captions)` ({attribute: right or wrong per image}).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from genzoo import kinds, models
from genzoo.data import shapes
from genzoo.errors import UserError
from genzoo.kinds import Kind, images_for, in_batches, register


@runtime_checkable
class JudgeFamily(Protocol):
    def predict(self, params, images_BxHxWxC, cfg):
        """({head: class ids [B]}, features [B, F]) of images in [0, 1]."""


def _per_attribute(right: dict) -> dict:
    """Head-wise hits -> per attribute (both objects must be right) and whole scenes."""
    out = {a: right[f"{a}_0"] & right[f"{a}_1"] for a in shapes.ATTRIBUTES}
    out["relation"] = right["axis"]
    out["scene"] = np.logical_and.reduce([right[h] for h in right])
    return out


class AttributeJudge:
    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)

    def _apply(self, images_BxHxWxC, batch_size: int = 500):
        """({head: class ids [B]}, features [B, F]), `batch_size` images at a time."""
        predict = lambda x: self.family.predict(self.run.params, x, self.run.cfg.model)  # noqa: E731
        return in_batches(predict, images_for(self.run, images_BxHxWxC), batch_size)

    def predict(self, images_BxHxWxC) -> dict:
        return self._apply(images_BxHxWxC)[0]

    def features(self, images_BxHxWxC) -> np.ndarray:
        return self._apply(images_BxHxWxC)[1]

    def judge(self, images_BxHxWxC, captions) -> dict:
        """{shape, colour, size, relation, scene: bool [B]}: does image b show caption b?"""
        captions = kinds.texts(captions, "captions")
        images = images_for(self.run, images_BxHxWxC)
        if len(captions) != len(images):
            raise UserError(f"judge needs one caption per image, got {len(captions)} captions "
                            f"for {len(images)} images")  # fmt: skip
        if not captions:
            return {a: np.zeros(0, bool) for a in (*shapes.ATTRIBUTES, "relation", "scene")}
        parsed = [shapes.parse(t) for t in captions]
        stacked = {k: np.stack([p[k] for p in parsed]) for k in parsed[0]}
        from genzoo.models.judge import targets

        want = targets(stacked, np)
        got = self.predict(images)
        return _per_attribute({h: got[h] == want[h] for h in want})


register(Kind("attribute_judge", JudgeFamily, AttributeJudge))

"""Captioned scenes generated in-tree: one or two coloured shapes on a dark 32x32 canvas.

    "a small red circle"
    "a small red circle above a large green square"

Every scene is drawn from a seed (no download). Shapes, colours, sizes and (for two
objects) relations are sampled uniformly; each object is rendered 4x larger and averaged
down (anti-aliased). Some shape-colour pairs (`HELD_OUT`, one per shape and one per colour)
never appear in `train` or `validation`: the `heldout` split has scenes with at least one
of them, to measure compositional generalisation. Records keep the attributes, not text:
captions are spelled from them (`caption`), so the one-line grammar lives in one place.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from genzoo.data import sources
from genzoo.errors import UserError

SIZE = 32
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
    "yellow": (240, 220, 40), "purple": (170, 60, 220), "white": (235, 235, 235),
}  # fmt: skip
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
RADIUS = {"small": 4.5, "large": 7.0}  # pixels of the 32x32 canvas
RELATIONS = ("above", "below", "left of", "right of")
INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
# One held-out colour per shape and one shape per colour (a Latin diagonal).
HELD_OUT = frozenset((s, COLOUR_NAMES[(i + 1) % 6]) for i, s in enumerate(SHAPES))
# `any` draws from every combination, held-out pairs included: for the judge, which must read
# scenes the text-to-image model never saw (it scores them), never for the models under test.
SPLITS = {"train": 20_000, "validation": 1_000, "heldout": 1_000, "any": 10_000}
# Tests (and quick tries) shrink the splits: GENZOO_SHAPES_SPLITS="train=512,validation=64,...".
SPLITS_ENV = "GENZOO_SHAPES_SPLITS"
SEEDS = {"train": 0, "validation": 1, "heldout": 2, "any": 3}
NO_OBJECT = -1  # the second object's attributes in a one-object scene


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside-the-shape test on offsets from the centre (y grows downwards)."""
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.82 * r) & (np.abs(dy) <= 0.82 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.1 * r
    if shape == "cross":
        arm = 0.33 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "triangle":  # apex up
        top, bottom = -r, 0.8 * r
        half_width = (dy - top) / (bottom - top) * r
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)
    if shape == "star":  # five points: radius between 0.45 r and r by angle
        angle = np.arctan2(dx, -dy)
        phase = np.abs(((angle / (2 * np.pi / 5)) % 1.0) - 0.5) * 2  # 1 at points, 0 between
        return np.hypot(dx, dy) <= r * (0.45 + 0.55 * phase**2)
    raise ValueError(shape)


def render(objects) -> np.ndarray:
    """uint8 [32, 32, 3] of objects [(shape, colour, size, cx, cy)], anti-aliased: drawn
    at 4x (only inside each object's box) and averaged down."""
    k = 4
    canvas = np.full((SIZE * k, SIZE * k, 3), 18.0, np.float32)
    for shape, colour, size, cx, cy in objects:
        r = RADIUS[size]
        x0, x1 = (int(np.clip(v * k, 0, SIZE * k)) for v in (cx - r - 1, cx + r + 2))
        y0, y1 = (int(np.clip(v * k, 0, SIZE * k)) for v in (cy - r - 1, cy + r + 2))
        x, y = np.meshgrid((np.arange(x0, x1) + 0.5) / k, (np.arange(y0, y1) + 0.5) / k)
        box = canvas[y0:y1, x0:x1]
        box[_mask(shape, x - cx, y - cy, r)] = COLOURS[colour]
    small = canvas.reshape(SIZE, k, SIZE, k, 3).mean(axis=(1, 3))
    return np.round(small).astype(np.uint8)


def _place_two(rng, relation: str, r1: float, r2: float):
    """Centres (first, second) such that `first <relation> second`, inside the canvas and
    apart: along the relation's axis by the two radii plus a gap at least, across it by at
    most a third of that (so the relation is the obvious reading)."""
    if relation in ("below", "right of"):  # `first below second` is `second above first`
        second, first = _place_two(rng, INVERSE[relation], r2, r1)
        return first, second
    for _ in range(1000):
        along = rng.uniform(r1 + r2 + 2, SIZE - r1 - r2)
        a_y = rng.uniform(r1, SIZE - r2 - along)  # `a` above `b`: smaller y
        a_x = rng.uniform(r1, SIZE - r1)
        b_x = a_x + rng.uniform(-1, 1) * along / 3
        if r2 <= b_x <= SIZE - r2:
            a, b = np.array([a_x, a_y]), np.array([b_x, a_y + along])
            return (a[::-1], b[::-1]) if relation == "left of" else (a, b)
    raise RuntimeError("could not place two objects")  # never at these sizes


def sample_scene(rng, held_out: bool | None):
    """Attribute ids of one scene: shape [2], colour [2], size [2], relation (-1 for one
    object), and its objects to render. `held_out`: at least one held-out pair, else none
    (None: any)."""
    while True:
        n = int(rng.integers(1, 3))
        shape, colour, size = (rng.integers(0, len(v), 2) for v in (SHAPES, COLOUR_NAMES, SIZES))
        pairs = [(SHAPES[shape[i]], COLOUR_NAMES[colour[i]]) for i in range(n)]
        if held_out is None or any(p in HELD_OUT for p in pairs) == held_out:
            break
    relation = int(rng.integers(0, len(RELATIONS))) if n == 2 else NO_OBJECT
    radii = [RADIUS[SIZES[s]] for s in size]
    if n == 1:
        centres = [rng.uniform(radii[0] + 1, SIZE - radii[0] - 1, 2)]
    else:
        centres = list(_place_two(rng, RELATIONS[relation], *radii))
    objects = [(SHAPES[shape[i]], COLOUR_NAMES[colour[i]], SIZES[size[i]], *centres[i])
               for i in range(n)]  # fmt: skip
    if n == 1:
        shape[1] = colour[1] = size[1] = NO_OBJECT
    return {"shape": shape.astype(np.int32), "colour": colour.astype(np.int32),
            "size": size.astype(np.int32), "relation": np.int32(relation)}, objects  # fmt: skip


def caption(attrs, swap: bool = False) -> str:
    """English for a scene's attributes; `swap` names the second object first, with the
    inverse relation (the same scene, said the other way round)."""
    name = lambda i: " ".join(
        (SIZES[attrs["size"][i]], COLOUR_NAMES[attrs["colour"][i]], SHAPES[attrs["shape"][i]])
    )
    words = [name(i) for i in range(2) if attrs["shape"][i] >= 0]
    if len(words) == 1:
        return f"a {words[0]}"
    relation = RELATIONS[int(attrs["relation"])]
    if swap:
        words, relation = words[::-1], INVERSE[relation]
    return f"a {words[0]} {relation} a {words[1]}"


VOCABULARY = sorted({w for text in ("a", *SHAPES, *COLOUR_NAMES, *SIZES, *RELATIONS)
                     for w in text.split()})  # fmt: skip


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Procedural captioned scenes: 20,000 train, 1,000 validation, 1,000 held-out, 10,000 any."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return sources.tensor_dataset_info(
            self,
            __doc__,
            "https://github.com/genzoo",
            {"image": ((SIZE, SIZE, 3), np.uint8), "shape": ((2,), np.int32),
             "colour": ((2,), np.int32), "size": ((2,), np.int32), "relation": ((), np.int32),
             "index": ((), np.int32)},
        )  # fmt: skip

    def _split_generators(self, dl_manager):
        del dl_manager
        self.info.metadata["source_sha256"] = source_digest()
        return {split: self._generate_examples(split, n) for split, n in split_sizes().items()}

    def _generate_examples(self, split: str, num: int):
        rng = np.random.default_rng(SEEDS[split])
        for i in range(num):
            attrs, objects = sample_scene(rng, {"heldout": True, "any": None}.get(split, False))
            yield i, {"image": render(objects), "index": np.int32(i), **attrs}


def split_sizes() -> dict:
    sizes = dict(SPLITS)
    for item in filter(None, os.environ.get(SPLITS_ENV, "").split(",")):
        name, _, num = item.partition("=")
        if name not in SPLITS or not num.isdigit() or int(num) < 1:
            raise UserError(f"{SPLITS_ENV}: {item!r} is not SPLIT=COUNT ({', '.join(SPLITS)})")
        sizes[name] = int(num)
    return sizes


def source_digest() -> str:
    """What the records depend on: the generator's settings (a change rebuilds the cache)."""
    import hashlib

    settings = (SIZE, SHAPES, COLOURS, RADIUS, RELATIONS, sorted(HELD_OUT), split_sizes(), SEEDS)
    settings = repr(settings)
    return hashlib.sha256(settings.encode()).hexdigest()


ATTRIBUTES = {"shape": len(SHAPES), "colour": len(COLOUR_NAMES), "size": len(SIZES)}
AXES = ("vertical", "horizontal")  # a canonical relation: object 0 above / left of object 1


def canonical(shape_Bx2, colour_Bx2, size_Bx2, relation_B, xp=np) -> dict:
    """Labels that an image alone determines: "A below B" and "B above A" are one picture,
    so object 0 becomes the upper (or left) one and the relation its axis. Absent values
    (the second object of a one-object scene) become one extra class per attribute, and
    `axis` is 0 vertical, 1 horizontal, 2 no relation. `xp` is numpy or jax.numpy."""
    swap_B = (relation_B == RELATIONS.index("below")) | (relation_B == RELATIONS.index("right of"))
    out = {}
    for name, values_Bx2 in (("shape", shape_Bx2), ("colour", colour_Bx2), ("size", size_Bx2)):
        ordered_Bx2 = xp.where(swap_B[:, None], values_Bx2[:, ::-1], values_Bx2)
        out[name] = xp.where(ordered_Bx2 < 0, ATTRIBUTES[name], ordered_Bx2)
    out["axis"] = xp.where(relation_B < 0, len(AXES), relation_B // 2)
    return out


def parse(text: str) -> dict:
    """Attribute ids of a caption spelled by `caption` (either order); UserError otherwise."""
    words = text.lower().split()
    objects, relation = [], NO_OBJECT
    try:
        first, rest = _object(words[1:]), words[4:]
        objects.append(first)
        if rest:
            rel = " ".join(rest[:-4])
            relation = RELATIONS.index(rel)
            if rest[-4] != "a":
                raise ValueError
            objects.append(_object(rest[-3:]))
        if words[0] != "a":
            raise ValueError
    except (ValueError, IndexError):
        raise UserError(f"cannot read {text!r} as a scene: 'a SIZE COLOUR SHAPE "
                        f"[RELATION a SIZE COLOUR SHAPE]'") from None  # fmt: skip
    objects += [(NO_OBJECT,) * 3] * (2 - len(objects))
    size, colour, shape = (np.array(v, np.int32) for v in zip(*objects, strict=True))
    return {"shape": shape, "colour": colour, "size": size, "relation": np.int32(relation)}


def _object(words) -> tuple[int, int, int]:
    size, colour, shape = words[:3]
    return SIZES.index(size), COLOUR_NAMES.index(colour), SHAPES.index(shape)

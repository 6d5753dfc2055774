"""Kinds of model: what a trained run can do, how `genzoo sample` drives it, its Python API.

Each kind (language model, translator, masked LM, image generator, classifier) is one
module here that registers a `Kind`: the `typing.Protocol` its families satisfy (beyond
the training protocol in `genzoo.models.protocols`), its `sample` command-line options
and the API class that `genzoo.load(workdir)` returns. The CLI and `load` dispatch
through this registry, so a new kind never adds a branch elsewhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
from collections.abc import Callable
from pathlib import Path

from genzoo.errors import UserError


@dataclasses.dataclass(frozen=True)
class Option:
    """One `genzoo sample` flag: argparse keywords, without `default` (the kind's is used)."""

    flag: str
    default: object
    kwargs: dict = dataclasses.field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    protocol: type  # what a family of this kind offers beyond training
    api: type  # built from a `workdir.Run`
    options: tuple[Option, ...] = ()
    sample: Callable | None = None  # sample(api, args) -> None, prints/writes the samples


_MODULES = ("language_model", "translator", "masked_lm", "image_generator", "classifier",
            "image_tokenizer", "contrastive", "attribute_judge", "text_to_image")  # fmt: skip
REGISTRY: dict[str, Kind] = {}


# The sampling settings, for `genzoo sample`'s flags and the Python API alike: each one's
# type (whole numbers for counts and seeds: 2.5 new tokens was an XLA shape error) and range.
_WHOLE, _REAL = (numbers.Integral, "a whole number"), (numbers.Real, "a number")
SAMPLING_RANGES = {
    "num": (_WHOLE, lambda v: v >= 1, "at least 1"),
    "max_new_tokens": (_WHOLE, lambda v: v >= 1, "at least 1"),
    "top_p": (_REAL, lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "temperature": (_REAL, lambda v: v >= 0, ">= 0"),
    "top_k": (_WHOLE, lambda v: v >= 0, ">= 0"),
    "beams": (_WHOLE, lambda v: v >= 1, ">= 1"),
    "num_beams": (_WHOLE, lambda v: v >= 1, ">= 1"),
    "length_penalty": (_REAL, math.isfinite, "finite"),
    "repetition_penalty": (_REAL, lambda v: v > 0, "> 0"),
    "candidates": (_WHOLE, lambda v: v >= 1, ">= 1"),
    "keep": (_WHOLE, lambda v: v >= 1, ">= 1"),
    # Classifier-free guidance (text to image): NaN would still draw (noise), < 0 steers away.
    "guidance": (_REAL, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (1: off)"),
    "seed": (_WHOLE, lambda v: -(2**63) <= v < 2**63, "a 64-bit integer"),
    "batch_size": (_WHOLE, lambda v: v >= 1, "at least 1"),
}


def check_sampling(values: dict, flags: bool = False) -> None:
    """UserError for the first setting of the wrong type or out of its range (NaN is out of
    every range), named as its flag (`--max-new-tokens`) or as the API's keyword
    (`max_new_tokens`); None: not given."""
    for name, ((kind, what), ok, must) in SAMPLING_RANGES.items():
        value = values.get(name)
        if value is None:
            continue
        shown = "--" + name.replace("_", "-") if flags else name
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"{shown} must be {what}, got {value!r}")
        if value != value or not ok(value):
            raise UserError(f"{shown} must be {must}, got {value}")


def texts(value, what: str = "texts") -> list[str]:
    """One string or an iterable of strings as a list; UserError for anything else (None was
    read as an empty prompt, a number as a TypeError from inside)."""
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise UserError(f"{what} must be a string or a list of strings, got {value!r}") from None
    bad = [item for item in items if not isinstance(item, str)]
    if bad:
        raise UserError(f"{what} must be strings, got {bad[0]!r}")
    return items


def register(kind: Kind) -> Kind:
    REGISTRY[kind.name] = kind
    return kind


def all_kinds() -> dict[str, Kind]:
    for name in _MODULES:
        importlib.import_module(f"genzoo.kinds.{name}")
    return REGISTRY


def get(name: str) -> Kind:
    kinds = all_kinds()
    if name not in kinds:
        raise UserError(f"unknown model kind {name!r} (known: {', '.join(kinds)})")
    return kinds[name]


def of_family(family) -> Kind:
    return get(getattr(family, "KIND", ""))


def even_batches(count: int, batch_size: int) -> list:
    """Row indices of the fewest batches of at most `batch_size` rows that cover `count` rows,
    all of one size, so one program compiles (1,600 rows at 512 were 512, 512, 512 and 64: two
    programs); the last batch repeats the last row, fewer times than there are batches."""
    import numpy as np

    batches = -(-count // batch_size)
    size = -(-count // batches)
    return [np.minimum(np.arange(b * size, (b + 1) * size), count - 1) for b in range(batches)]


def in_batches(fn, rows, batch_size: int):
    """`fn` over `even_batches` of `rows` (bounded device memory, one shape), outputs joined
    as numpy (leaf by leaf where `fn` returns a pytree: the judge's heads and features); `rows`
    may be a tuple of arrays with one row each per input, sliced alike and passed as `fn`'s
    arguments. `fn` must treat rows independently. No rows give no outputs, shaped as `fn`
    would shape them (traced, not run: a conv stack cannot run on an empty batch)."""
    import jax
    import numpy as np

    check_sampling(dict(batch_size=batch_size))
    args = rows if isinstance(rows, tuple) else (rows,)
    count = len(args[0])
    if not count:
        out = jax.eval_shape(fn, *[jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype) for a in args])
        return jax.tree.map(lambda s: np.zeros((0, *s.shape[1:]), s.dtype), out)
    parts = [fn(*(a[index] for a in args)) for index in even_batches(count, batch_size)]
    return jax.tree.map(lambda *x: np.concatenate([np.asarray(y) for y in x])[:count], *parts)


def images_for(run, images):
    """`images` as float32 [N, H, W, C] of the run's `model.image_shape`, values in [0, 1]
    (uint8 pixels are divided by 255, as the data sets do; floats within 0.1 of the range are
    clipped to it); UserError otherwise (a wrong shape failed in the first layer naming a
    kernel, a 0..255 float image scored silently)."""
    import numpy as np

    images, shape = np.asarray(images), tuple(run.cfg.model.image_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise UserError(f"images must be [N, {', '.join(map(str, shape))}] for this model, "
                        f"got {list(images.shape)}")  # fmt: skip
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not (np.issubdtype(images.dtype, np.floating) or images.dtype == bool):
        raise UserError(f"images must be floats in [0, 1] or uint8, got {images.dtype}")
    images = images.astype(np.float32)
    # A resize's overshoot (bicubic: a few %) is clipped; another scale (0..255, -1..1) is
    # refused. NaN fails the comparison too.
    if images.size and not (images.min() >= -0.1 and images.max() <= 1.1):
        raise UserError(f"images must hold values in [0, 1] (or be uint8 0..255), got "
                        f"{images.min():g}..{images.max():g}")  # fmt: skip
    return np.clip(images, 0.0, 1.0)


def api_of(run):
    """The API object of an opened `workdir.Run`: its kind decides the class."""
    from genzoo import models

    return of_family(models.get(run.cfg.model.family)).api(run)


def load(run_dir: str | Path, checkpoint: str | int = "latest"):
    """The API object of a trained (or imported) run at `checkpoint` (latest, best, a step)."""
    from genzoo import workdir

    which = workdir.parse_checkpoint(checkpoint)
    return api_of(workdir.open_run(Path(run_dir), checkpoint=which))

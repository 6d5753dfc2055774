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


# Ranges of the sampling settings, for `genzoo sample`'s flags and the Python API alike.
SAMPLING_RANGES = {
    "num": (lambda v: v >= 1, "at least 1"),
    "max_new_tokens": (lambda v: v >= 1, "at least 1"),
    "top_p": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "temperature": (lambda v: v >= 0, ">= 0"),
    "top_k": (lambda v: v >= 0, ">= 0"),
    "beams": (lambda v: v >= 1, ">= 1"),
    "num_beams": (lambda v: v >= 1, ">= 1"),
    "repetition_penalty": (lambda v: v > 0, "> 0"),
}


def check_sampling(values: dict, flags: bool = False) -> None:
    """UserError for the first setting out of its range (NaN is out of every range), named as
    its flag (`--max-new-tokens`) or as the API's keyword (`max_new_tokens`); None: not given."""
    for name, (ok, must) in SAMPLING_RANGES.items():
        value = values.get(name)
        if value is not None and (value != value or not ok(value)):
            shown = "--" + name.replace("_", "-") if flags else name
            raise UserError(f"{shown} must be {must}, got {value}")


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


def in_batches(fn, rows, batch_size: int):
    """`fn` over consecutive slices of `rows` (bounded device memory), outputs joined as numpy;
    no rows give no outputs, shaped as `fn` would shape them (traced, not run)."""
    import jax
    import numpy as np

    if not len(rows):
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *rows.shape[1:]), rows.dtype))
        return np.zeros((0, *out.shape[1:]), out.dtype)
    return np.concatenate([np.asarray(fn(rows[i : i + batch_size]))
                           for i in range(0, len(rows), batch_size)])  # fmt: skip


def images_for(run, images):
    """`images` as float32 [N, H, W, C] of the run's `model.image_shape`; UserError otherwise
    (the first layer would fail with a parameter-shape error naming a kernel)."""
    import numpy as np

    images, shape = np.asarray(images, np.float32), tuple(run.cfg.model.image_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise UserError(f"images must be [N, {', '.join(map(str, shape))}] for this model, "
                        f"got {list(images.shape)}")  # fmt: skip
    return images


def api_of(run):
    """The API object of an opened `workdir.Run`: its kind decides the class."""
    from genzoo import models

    return of_family(models.get(run.cfg.model.family)).api(run)


def load(run_dir: str | Path, checkpoint: str | int = "latest"):
    """The API object of a trained (or imported) run at `checkpoint` (latest, best, a step)."""
    from genzoo import workdir

    return api_of(workdir.open_run(Path(run_dir), checkpoint=checkpoint))

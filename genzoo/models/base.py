"""What model families share: building their frozen dataclass configs from a config section."""

from __future__ import annotations

import dataclasses

from genzoo.errors import UserError
from genzoo.layers.transformer import REMAT_POLICIES

# Compute dtypes a family may take (float64 would need jax_enable_x64 and run as float32).
DTYPES = ("float32", "bfloat16", "float16")
# Keys of a `model` section that belong to the spine, not to the family's dataclass.
SPINE_KEYS = ("family", "requires")  # requires: trained runs it needs (genzoo.requires)


class FromConfig:
    """Mixin for a frozen dataclass config.

    `from_cfg` refuses keys the family does not know (a typo must not silently train the
    default) and runs `validate`, so impossible shapes fail before anything is written.
    """

    @classmethod
    def from_cfg(cls, cfg):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in cfg.keys() if k not in names and k not in SPINE_KEYS)
        if unknown:
            raise UserError(
                f"model keys not known to {cls.__name__}: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(names))})"
            )
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
        config = cls(**kw)
        dtype = getattr(config, "dtype", "float32")  # every family's compute dtype
        require(dtype in DTYPES, f"model.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        config.validate()
        return config

    def validate(self) -> None:
        """Raise UserError for settings no model can have; families extend this."""


def config_fields(module) -> dict:
    """{field: default} of the frozen dataclass config a family module defines (a `FromConfig`
    subclass of its own), {} for a family without one: every field a user may set on the
    command line, whether or not the experiment names it."""
    for value in vars(module).values():
        own = isinstance(value, type) and value.__module__ == module.__name__
        if own and issubclass(value, FromConfig) and dataclasses.is_dataclass(value):
            return {f.name: f.default for f in dataclasses.fields(value)
                    if f.default is not dataclasses.MISSING}  # fmt: skip
    return {}


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def require_positive(config, *sizes: str) -> None:
    """The named settings (sizes, scales) are > 0: zero of them fails deep in a layer."""
    for name in sizes:
        value = getattr(config, name)
        require(value > 0, f"model.{name} must be positive, got {value}")


def require_widths(config, count: int | None = None, why: str = "") -> None:
    """`model.widths`: positive channel counts, exactly `count` of them where the layers are
    built for that many (`why` says so in the message)."""
    widths = tuple(config.widths)
    ok = bool(widths) and all(isinstance(w, int) and w > 0 for w in widths)
    require(ok and (count is None or len(widths) == count),
            f"model.widths must be {count or 'one or more'} positive channel counts{why}, "
            f"got {widths}")  # fmt: skip


def require_conv_decoder(config) -> None:
    """`layers.ConvDecoder` draws 28x28 images from a 7x7 map through two transposed
    convolutions (the VAE's and the GAN's decoder)."""
    require_positive(config, "latent")
    require_widths(config, 2, " (the decoder doubles 7x7 twice)")
    shape = tuple(config.image_shape)
    require(shape[:2] == (28, 28), f"model.image_shape must be 28x28 (the decoder's), got {shape}")


def require_transformer_shape(config, *sizes: str) -> None:
    """The named sizes are positive and `width` splits evenly into `num_heads` heads."""
    require_positive(config, *sizes)
    require(
        config.width % config.num_heads == 0,
        f"model.width={config.width} is not divisible by num_heads={config.num_heads}",
    )
    require(0.0 <= config.dropout < 1.0, f"model.dropout must be in [0, 1), got {config.dropout}")
    remat = getattr(config, "remat", "none")
    require(remat in REMAT_POLICIES, f"model.remat={remat!r}: one of {', '.join(REMAT_POLICIES)}")


def padded(size: int, multiple: int = 64) -> int:
    """`size` rounded up: embedding tables and output heads then split evenly over any
    `tensor` axis; the extra rows are never looked up and the extra logits are sliced off."""
    return -(-size // multiple) * multiple

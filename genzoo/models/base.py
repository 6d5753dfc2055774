"""What model families share: building their frozen dataclass configs from a config section."""

from __future__ import annotations

import dataclasses

from genzoo.errors import UserError
from genzoo.layers.transformer import REMAT_POLICIES

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
        config.validate()
        return config

    def validate(self) -> None:
        """Raise UserError for settings no model can have; families extend this."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def require_transformer_shape(config, *sizes: str) -> None:
    """The named sizes are positive and `width` splits evenly into `num_heads` heads."""
    require(min(getattr(config, s) for s in sizes) > 0,
            f"model.{', '.join(sizes)} must be positive")  # fmt: skip
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

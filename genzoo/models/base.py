"""What model families share: building their frozen dataclass configs from a config section."""

from __future__ import annotations

import dataclasses


class FromConfig:
    """Mixin for a frozen dataclass: `from_cfg` keeps the fields it knows (lists become tuples)."""

    @classmethod
    def from_cfg(cls, cfg):
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
        return cls(**kw)

"""Batches of example ids, cut to the rows this process feeds.

Every process walks the same seeded stream of global batches of ids (cheap: only
integers), then reads data for its own rows only. The global batch, and so the
training trajectory and the iterator state a checkpoint holds, are the same for
any number of processes: a run resumes exactly on another process count.
"""

from __future__ import annotations

import grain
import jax


class TakeRows:
    """Keeps rows `rows` of every array in a batch (a grain map)."""

    def __init__(self, rows: slice | None):
        self.rows = rows or slice(None)

    def __call__(self, batch):
        return jax.tree.map(lambda x: x[self.rows], batch)


def id_batches(ids: grain.MapDataset, batch_size: int, rows: slice | None) -> grain.MapDataset:
    """`ids` in global batches of `batch_size`, of which this process keeps `rows`."""
    return ids.batch(batch_size, drop_remainder=True).map(TakeRows(rows))

"""Orbax CheckpointManager wrapper: train state and data-iterator position, async, keep-last-K."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import orbax.checkpoint as ocp


def _fields(state) -> dict:
    """A train state's fields by name, without the absent (None) ones: a state that gained
    an optional field (the EMA) still reads checkpoints written before it existed."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if getattr(state, f.name) is not None}  # fmt: skip


class Checkpointer:
    """Saves `{"state": pytree, "data": json}` per step under `directory`."""

    def __init__(self, directory: Path, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_fields(state)), data=ocp.args.JsonSave(data_state)
            ),
        )

    def restore(self, step: int, abstract_state, shardings):
        """State placed with `shardings`, and the saved data-iterator state."""
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            shardings,
        )
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_fields(target)), data=ocp.args.JsonRestore()
            ),
        )
        return abstract_state.replace(**out.state), out.data

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def saved_steps(workdir: Path) -> list[int]:
    """The checkpoint steps a workdir holds (none without a checkpoints folder), read-only."""
    if not (Path(workdir) / "checkpoints").is_dir():
        return []
    ckpt = Checkpointer(Path(workdir) / "checkpoints", async_save=False)
    try:
        return sorted(ckpt.manager.all_steps())
    finally:
        ckpt.close()

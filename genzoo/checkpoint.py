"""Checkpoints: orbax saves (asynchronous), integrity manifests, restores that fall back past
damage, and pruning that keeps the newest K steps plus the best-scoring one.

Every finished step gets a manifest (size and CRC-32 of each of its files) written after
orbax has committed it; a restore checks it first, so flipped bytes inside a compressed
data file count as damage like a truncated or missing file. Pruning is ours rather than
orbax's `max_to_keep`, so that the best step survives beside the newest `keep`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import zlib
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from genzoo import errors
from genzoo.errors import UserError

MANIFEST = "genzoo_integrity.json"
BEST = "best.json"


class _ReadOnlyNotices(logging.Filter):
    """Drops orbax's warnings that a read-only manager is read-only: `eval`, `sample` and
    `genzoo.load` ask for exactly that, and the Python API has no CLI to quiet absl."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("read_only=True" in message or "directory is read only" in message)


logging.getLogger("absl").addFilter(_ReadOnlyNotices())


def _fields(state) -> dict:
    """A train state's fields by name, without the absent (None) ones: a state that gained
    an optional field (the EMA) still reads checkpoints written before it existed."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if getattr(state, f.name) is not None}  # fmt: skip


def _file_table(step_dir: Path) -> dict[str, list[int]]:
    """{relative path: [bytes, crc32]} of every file of one step but the manifest."""
    table = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            crc = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    crc = zlib.crc32(chunk, crc)
            table[str(path.relative_to(step_dir))] = [path.stat().st_size, crc]
    return table


def verify(step_dir: Path) -> str | None:
    """What is wrong with a step's files, or None. A step without a manifest (the process
    died between orbax's commit and the manifest) is left for the restore itself to judge."""
    manifest = step_dir / MANIFEST
    if not manifest.is_file():
        return None
    try:
        expected = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its integrity manifest is unreadable"
    actual = _file_table(step_dir)
    for name, (size, crc) in expected.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name][0] != size:
            return f"{name} has {actual[name][0]} bytes where {size} were written"
        if actual[name][1] != crc:
            return f"{name} fails its checksum"
    return None


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _write_json(path: Path, payload) -> None:
    from genzoo.data import sources

    text = json.dumps(payload).encode()
    sources.write_atomic(path, lambda f: f.write(text))


class Checkpointer:
    """Saves `{"state": pytree, "data": json}` per step under `directory`.

    `keep_best`: a metric name (`val/loss`) whose best step (`best_mode` min or max) is kept
    besides the newest `keep`. `read_only` for `eval` and `sample`: they never create,
    prune or clean anything a training process may be writing.
    """

    def __init__(self, directory: Path, keep: int = 3, async_save: bool = True,
                 keep_best: str = "", best_mode: str = "min", read_only: bool = False):  # fmt: skip
        self.directory = Path(directory).absolute()
        self.keep, self.keep_best, self.best_mode = keep, keep_best, best_mode
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # pruned here, see _prune
            enable_async_checkpointing=async_save and not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        errors.quiet_closed_loop_reports()
        self._unsealed: list[int] = []  # saved steps whose manifest is not written yet
        self._pending_best: dict | None = None
        self.best = self._read_best()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _read_best(self) -> dict | None:
        try:
            best = json.loads((self.directory / BEST).read_text())
            return best if isinstance(best.get("step"), int) else None
        except (OSError, ValueError, AttributeError):
            return None  # none yet, or torn: the next evaluation writes it again

    def improves(self, value: float) -> bool:
        """Whether `value` of the `keep_best` metric beats the best step so far."""
        if not self.keep_best or value != value:  # NaN never wins
            return False
        best = self._pending_best or self.best
        if best is None:
            return True
        return value < best["value"] if self.best_mode == "min" else value > best["value"]

    def save(self, step: int, state, data_state: dict, best_value: float | None = None) -> None:
        """Starts an asynchronous save of `step`; `best_value` marks it the new best."""
        self._seal()
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_fields(state)), data=ocp.args.JsonSave(data_state)
            ),
        )
        self._unsealed.append(step)
        if best_value is not None:
            self._pending_best = {"metric": self.keep_best, "step": step, "value": best_value}

    def _seal(self) -> None:
        """Once orbax has committed the saves in flight: their manifests, then pruning."""
        if not self._unsealed:
            return
        self.manager.wait_until_finished()
        main = jax.process_index() == 0  # every process's files are committed: one writer
        for step in self._unsealed:
            step_dir = self.directory / str(step)
            if main and step_dir.is_dir():
                _write_json(step_dir / MANIFEST, {"step": step, "files": _file_table(step_dir)})
        if self._pending_best is not None and self._pending_best["step"] in self._unsealed:
            self.best, self._pending_best = self._pending_best, None
            if main:
                _write_json(self.directory / BEST, self.best)
        self._unsealed = []
        self._prune()

    def _prune(self) -> None:
        steps = self.steps()
        protected = set(steps[-self.keep :])
        if self.best is not None:
            protected.add(self.best["step"])
        for step in steps:
            if step not in protected:
                self.manager.delete(step)

    def choose(self, which: str | int = "latest") -> list[int]:
        """The steps to try, newest first: every step for `latest` (falling back past damage),
        exactly one for `best` or a step number."""
        steps = self.steps()
        if not steps:
            raise UserError(f"no checkpoint in {self.directory.parent}: train it first")
        if which == "latest":
            return steps[::-1]
        if which == "best":
            if self.best is None or self.best["step"] not in steps:
                raise UserError(
                    f"no best checkpoint in {self.directory.parent} (train with "
                    "checkpoint.keep_best=METRIC to keep one)"
                )
            return [self.best["step"]]
        if which not in steps:
            raise UserError(f"no checkpoint at step {which} in {self.directory.parent} "
                            f"(has {', '.join(map(str, steps))})")  # fmt: skip
        return [which]

    def restore(self, which, abstract_state, shardings):
        """(state placed with `shardings`, saved data-iterator state, step, damaged steps).

        A damaged step is reported on stderr and skipped for an older one when `which` is
        `latest`; nothing is deleted here."""
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            shardings,
        )
        damaged = []
        for step in self.choose(which):
            problem = verify(self.directory / str(step))
            if problem is None:
                try:
                    out = self.manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(_fields(target)),
                            data=ocp.args.JsonRestore(),
                        ),
                    )
                except Exception as e:  # noqa: BLE001 - orbax raises bare Exception on bad files
                    problem = _one_line(e)
                else:
                    if damaged:
                        print(f"genzoo: using checkpoint {step} instead", file=sys.stderr)
                    return abstract_state.replace(**out.state), out.data, step, damaged
            damaged.append(step)
            print(f"genzoo: checkpoint {step} cannot be read: {problem}", file=sys.stderr)
        raise UserError(
            f"no readable checkpoint in {self.directory.parent} (damaged: "
            f"{', '.join(map(str, damaged))}); delete those step folders to start over"
        )

    def set_aside(self, step: int) -> Path:
        """Moves a damaged step out of orbax's sight (never deleted: a user may want it)."""
        target = self.directory.parent / "damaged_checkpoints" / str(step)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            target = target.with_name(f"{step}.{len(list(target.parent.iterdir()))}")
        (self.directory / str(step)).rename(target)
        self.manager.reload()
        print(f"genzoo: moved damaged checkpoint {step} to {target}", file=sys.stderr)
        return target

    def close(self) -> None:
        self._seal()
        self.manager.wait_until_finished()
        self.manager.close()


def saved_steps(workdir: Path) -> list[int]:
    """The checkpoint steps a workdir holds (none without a checkpoints folder), read-only."""
    if not (Path(workdir) / "checkpoints").is_dir():
        return []
    ckpt = Checkpointer(Path(workdir) / "checkpoints", read_only=True)
    try:
        return ckpt.steps()
    finally:
        ckpt.close()

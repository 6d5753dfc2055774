"""A workdir: `config.json` (the resolved config), `checkpoints/`, `metrics.jsonl`, `plots/`.

`prepare_training` validates everything a user can get wrong before the workdir is
touched; `open_run` loads a trained run for `eval` and `sample`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import numbers
import os
from pathlib import Path

import ml_collections

from genzoo import config_checks, experiment, models, quantize, requires
from genzoo import data as data_lib
from genzoo.checkpoint import Checkpointer, saved_steps
from genzoo.data import sources
from genzoo.errors import UserError

CONFIG = "config.json"


def resolve(cfg: ml_collections.ConfigDict, data) -> ml_collections.FrozenConfigDict:
    """Fills the fields left to the data or to other fields (marked -1 or 0) and freezes.

    Shape-like fields (tuples) cannot be left as -1 (ml_collections keeps field types), so
    experiments spell them out and this checks them against the data instead.
    """
    for key, value in data.model_fields.items():
        current = cfg.model.get(key, None)
        if current == -1:
            cfg.model[key] = value
        elif isinstance(current, (list, tuple)) and tuple(current) != tuple(value):
            raise UserError(f"model.{key}={tuple(current)} does not match the data ({value})")
    if cfg.optim.decay_steps == -1:
        cfg.optim.decay_steps = cfg.train.steps
    if cfg.optim.get("prune_sparsity", 0.0) > 0 and cfg.optim.prune_end == -1:
        cfg.optim.prune_end = max(cfg.optim.prune_begin + 1, int(0.75 * cfg.train.steps))
    if cfg.eval.batch_size == 0:
        cfg.eval.batch_size = cfg.train.batch_size // cfg.train.grad_accum
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise UserError("train.batch_size must be a multiple of train.grad_accum")
    check = getattr(models.get(cfg.model.family), "check_config", None)
    if check is not None:  # cross-field checks only the family knows (context vs sequence)
        check(cfg.model, data.example_shapes)
    return ml_collections.FrozenConfigDict(cfg)


def write_atomic(path: Path, content: str | bytes) -> None:
    payload = content.encode("utf-8") if isinstance(content, str) else content
    sources.write_atomic(path, lambda f: f.write(payload))


def load_config(workdir: Path) -> ml_collections.ConfigDict:
    path = Path(workdir) / CONFIG
    if not path.is_file():
        raise UserError(f"{workdir} is not a genzoo workdir (no {CONFIG}); train into it first")
    try:
        cfg = experiment.from_json(path.read_text())
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is corrupt: {e}") from None
    config_checks.check(cfg, where=str(path))
    return cfg


def with_deps(family, data, deps: dict):
    """The data as the family needs it given its dependencies (DALL·E's image codes)."""
    prepare = getattr(family, "prepare_data", None)
    return prepare(data, deps) if prepare is not None else data


# Settings whose default is decided at a run's first launch and kept by every resume that leaves
# them at it: the schedule's lengths (a longer run keeps them, as nanoGPT does) and whether the
# loss is scaled (the checkpoints hold a scale or do not).
FIXED_AT_FIRST_LAUNCH = (("optim", "decay_steps", -1), ("optim", "prune_end", -1),
                         ("train", "loss_scale", "auto"))  # fmt: skip


def prepare_training(cfg: ml_collections.ConfigDict, workdir: Path):
    """Resolved frozen config, data and opened dependencies ({name: Run}); refuses a resume
    whose settings conflict."""
    from genzoo.evaluation import evaluators

    evaluators.check(cfg.eval.evaluators)
    data = data_lib.load(cfg.data, workdir)
    if cfg.eval.split not in data.splits:  # else found at the first evaluation, files written
        raise UserError(f"eval.split: unknown split {cfg.eval.split!r} "
                        f"(have: {', '.join(data.splits)})")  # fmt: skip
    saved = load_config(workdir) if (Path(workdir) / CONFIG).is_file() else None
    family = models.get(cfg.model.family)
    if requires.declared(family) or cfg.model.get("requires"):
        saved_pins = saved.model.get("requires") if saved is not None else None
        name, variant = cfg.experiment.name, cfg.experiment.variant
        chain = ""  # only for experiments `genzoo chain` finds by name
        if name and (experiment.experiments_dir() / f"{name}.py").is_file():
            chain = f"genzoo chain {name}" + (f" --variant {variant}" if variant else "")
        cfg.model.requires = requires.pin(family, cfg.model.get("requires"), saved_pins, chain)
    deps = requires.open_all(cfg.model.get("requires"))
    data = with_deps(family, data, deps)
    for section, key, default in FIXED_AT_FIRST_LAUNCH:
        if saved is not None and cfg[section].get(key) == default and key in saved[section]:
            cfg[section][key] = saved[section][key]
    frozen = resolve(cfg, data)
    if saved is not None:
        conflicts = experiment.resume_conflicts(saved, ml_collections.ConfigDict(frozen))
        if conflicts:
            # A first launch that died before its first save (out of memory, say) left only
            # its config: starting afresh is then what the user wants, but its tokenizer and
            # metrics would stay beside the new settings, so the choice is theirs.
            fresh = "" if saved_steps(workdir) else (
                f" (it holds no checkpoint: remove {workdir} or choose another --workdir "
                "to start afresh with them)")  # fmt: skip
            raise UserError(
                f"cannot resume {workdir}: these settings differ from the saved run: "
                + ", ".join(conflicts)
                + fresh
            )
    return frozen, data, deps


def save_config(cfg, workdir: Path, data=None) -> None:
    """Writes config.json and the data's artifacts (a trained tokenizer) into the workdir."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    for name, payload in getattr(data, "artifacts", {}).items():
        if not (Path(workdir) / name).is_file():  # never replaced: a resume keeps its tokenizer
            write_atomic(Path(workdir) / name, payload)
    write_atomic(Path(workdir) / CONFIG, experiment.to_json(ml_collections.ConfigDict(cfg)))


class Deferred:
    """A saved run's data set, loaded when first used: a VAE or GAN samples without it, so
    a workdir moved to a machine that lacks the data set still samples there."""

    def __init__(self, load):
        self.load = load


@dataclasses.dataclass
class Run:
    """A trained run loaded from its workdir: config, data, trainer and restored state."""

    cfg: ml_collections.FrozenConfigDict
    _data: object  # the data set, or `Deferred` until `data` is first read
    trainer: object
    state: object
    step: int
    path: Path | None = None  # the workdir (None for a run still in training)
    deps: dict = dataclasses.field(default_factory=dict)  # {name: Run} of model.requires
    # Sampling's parameters where they differ from `params`: a quantized copy's int8 weights.
    sampling_params: object = None

    @property
    def data(self):
        if isinstance(self._data, Deferred):
            self._data = self._data.load()
        return self._data

    @functools.cached_property
    def tokenizers(self) -> dict:
        """{field: tokenizer}, from the workdir's files where it keeps them (no data set needed:
        `data_lib.tokenizers.saved`), else the data's; {} for a model that reads no text."""
        lowercase = self.cfg.data.get("lowercase", True)
        saved = self.path and data_lib.tokenizers.saved(self.path, lowercase)
        if saved:
            return saved
        one = getattr(self.data, "tokenizer", None)
        kept = getattr(self.data, "tokenizers", None)
        return dict(kept or (data_lib.tokenizers.every_field(one) if one else {}))

    @functools.cached_property
    def class_names(self) -> list[str]:
        """A classifier's class names, from the workdir's classes.json where it keeps one, else
        the data's; [] for data without classes."""
        tokenizers = data_lib.tokenizers
        if self.path and (Path(self.path) / tokenizers.CLASSES).is_file():
            return tokenizers.read_names(Path(self.path) / tokenizers.CLASSES, "class names")
        return list(getattr(self.data, "class_names", None) or [])

    @property
    def params(self):
        """The parameters evaluation and sampling use: the average when the run keeps one."""
        return self.state.eval_params()


def fit_mesh(cfg) -> None:
    """A run trained on a pod slice opens on a laptop: a saved mesh that does not fit the
    devices present becomes pure data parallelism over them (orbax restores onto it)."""
    import jax

    from genzoo import sharding

    if not sharding.fits(cfg.mesh, jax.device_count()):
        cfg.mesh.update(data=-1, fsdp=1, tensor=1)


def parse_checkpoint(which) -> str | int:
    """`--checkpoint` or the API's `checkpoint=`: latest, best, or a step number (an int, or
    digits as text: `genzoo.load(d, checkpoint="500")` is step 500, as on the command line)."""
    if which in ("latest", "best"):
        return which
    if isinstance(which, str) and which.isdigit():
        return int(which)
    if isinstance(which, numbers.Integral) and not isinstance(which, bool) and which >= 0:
        return int(which)
    raise UserError(f"checkpoint must be latest, best or a step number, got {which!r}")


def open_run(workdir: Path, overrides=(), checkpoint: str | int = "latest") -> Run:
    """The run in `workdir` at `checkpoint` (latest: the newest readable step; best; or a step
    number), with its dependencies. Read-only: safe while the run is still training."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        what = "is a file, not a folder" if workdir.exists() else "does not exist"
        raise UserError(f"workdir {workdir} {what}")
    cfg = load_config(workdir)
    experiment.apply_overrides(cfg, overrides)
    config_checks.check(cfg)
    if not any(o.startswith("mesh.") for o in overrides):
        fit_mesh(cfg)
    if quantize.is_quantized(workdir):
        return _open_quantized(workdir, cfg, checkpoint)
    checkpoints = workdir / "checkpoints"
    if not checkpoints.is_dir():
        raise UserError(f"no checkpoint in {workdir}: train it first")
    ckpt = Checkpointer(checkpoints, keep_best=cfg.checkpoint.keep_best, read_only=True)
    try:
        ckpt.choose(checkpoint)  # a missing step or best is refused before the data loads
        frozen, data, trainer, deps = _assemble(workdir, cfg)
        state, _, step, _ = trainer.restore(ckpt, checkpoint)
    finally:
        ckpt.close()
    return Run(frozen, data, trainer, state, step, workdir, deps)


def _assemble(workdir: Path, cfg):
    """(frozen config, data, trainer, opened dependencies) of a saved run, before its state."""
    from genzoo.trainer import Trainer  # jax-heavy; keep `genzoo list` fast

    frozen = ml_collections.FrozenConfigDict(cfg)
    deps = requires.open_all(cfg.model.get("requires"))
    family = models.get(cfg.model.family)
    data = Deferred(lambda: with_deps(family, data_lib.load(cfg.data, workdir), deps))
    return frozen, data, Trainer(frozen, deps=deps), deps


def _open_quantized(workdir: Path, cfg, checkpoint) -> Run:
    """A `genzoo quantize` copy: one set of int8 weights, dequantised onto the devices."""
    import jax

    from genzoo.train_step import TrainState

    if checkpoint != "latest":
        raise UserError(f"{workdir} is a quantized copy with one set of weights: "
                        "--checkpoint does not apply")  # fmt: skip
    frozen, data, trainer, deps = _assemble(workdir, cfg)
    int8 = getattr(models.get(cfg.model.family), "INT8_MATMULS", False)
    params, step, int8_params = quantize.load(workdir, trainer.abstract_state.params, int8)
    params = jax.device_put(params, trainer.state_shardings.params)
    state = TrainState(step, params, None, None)
    int8_params = None if int8_params is None else jax.device_put(int8_params)
    return Run(frozen, data, trainer, state, step, workdir, deps, sampling_params=int8_params)


class WriterLock:
    """One `train` per workdir: an advisory lock on `workdir/.lock`, released at exit (also
    when the process dies). `acquire` creates the workdir, so call it once checks passed."""

    NAME = ".lock"

    def __init__(self, workdir: Path, enabled: bool = True):
        """`enabled=False`: a non-zero process of a multi-process run (process 0 locks)."""
        self.workdir, self._fd, self.enabled = Path(workdir), None, enabled
        if self.workdir.exists() and not self.workdir.is_dir():
            raise UserError(f"--workdir {workdir} is a file, not a folder")
        parent = self.workdir if self.workdir.is_dir() else self._existing_parent()
        if not os.access(parent, os.W_OK):
            raise UserError(f"cannot write into {parent}: permission denied")

    def _existing_parent(self) -> Path:
        parent = self.workdir.parent.absolute()
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(f"--workdir {self.workdir}: {parent} is a file, not a folder")
        return parent

    def acquire(self) -> WriterLock:
        if self._fd is not None or not self.enabled:
            return self
        path = self.workdir / self.NAME
        if not path.is_file():
            self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.workdir} is being trained by another process; wait for it "
                            "or train into another --workdir") from None  # fmt: skip
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

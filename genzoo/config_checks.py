"""Range and type checks of the shared config sections, run before anything is written.

Family settings (`model.*`, `data.*`) are the family's to check (`check_config` in the
family module, called by `workdir.resolve` once the data has filled its fields).
"""

from __future__ import annotations

import math

import ml_collections

from genzoo.errors import UserError


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


OPTIMIZERS = ("adamw", "lion", "adafactor", "sgd", "em")  # genzoo.optim builds each

# key: (predicate, what it must be). Every value in these sections has its type checked
# against base_config() first, so the predicates see numbers where numbers are expected.
RANGES = {
    "train.steps": (lambda v: v >= 0, "at least 0"),
    "train.max_seconds": (lambda v: _finite(v) and v >= 0, "a finite number >= 0 (0: no limit)"),
    "train.batch_size": (lambda v: v >= 1, "at least 1"),
    "train.grad_accum": (lambda v: v >= 1, "at least 1"),
    "train.seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),  # grain's shuffle seed
    "eval.seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    "train.peak_flops": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "train.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.skip_nonfinite": (lambda v: v >= 0, "at least 0"),
    "train.loss_scale": (lambda v: v in ("auto", "dynamic", "none"), "auto, dynamic or none"),
    "train.rng_impl": (
        lambda v: v in ("threefry", "rbg", "unsafe_rbg"),
        "threefry, rbg or unsafe_rbg",
    ),
    "optim.lr": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "optim.min_lr": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "optim.warmup_steps": (lambda v: v >= 0, "at least 0"),
    "optim.decay_steps": (lambda v: v >= -1, "-1 (the run's length) or at least 0"),
    "optim.b1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.eps": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "optim.weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "optim.clip_norm": (lambda v: _finite(v) and v >= 0, "a finite number >= 0 (0: off)"),
    "optim.prune_sparsity": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.prune_scope": (lambda v: v in ("layer", "global"), "layer or global"),
    "optim.name": (lambda v: v in OPTIMIZERS, ", ".join(OPTIMIZERS[:-1]) + " or em"),
    "optim.prune_begin": (lambda v: v >= 0, "at least 0"),
    "optim.prune_end": (lambda v: v >= -1, "-1 (3/4 of train.steps) or a step"),
    "optim.prune_every": (lambda v: v >= 1, "at least 1"),
    "mesh.data": (lambda v: v == -1 or v >= 1, "-1 (all devices left) or at least 1"),
    "mesh.fsdp": (lambda v: v == -1 or v >= 1, "-1 (all devices left) or at least 1"),
    "mesh.tensor": (lambda v: v == -1 or v >= 1, "-1 (all devices left) or at least 1"),
    "eval.every_steps": (lambda v: v >= 0, "at least 0 (0: no evaluation while training)"),
    "eval.batch_size": (lambda v: v >= 0, "at least 0 (0: the training micro-batch)"),
    "eval.max_batches": (lambda v: v == -1 or v >= 1, "-1 (the whole split) or at least 1"),
    "eval.split": (lambda v: bool(v), "a split name"),
    "checkpoint.every_steps": (lambda v: v >= 1, "at least 1"),
    "checkpoint.every_seconds": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "checkpoint.keep": (lambda v: v >= 1, "at least 1 (the newest checkpoint is always kept)"),
    "checkpoint.best_mode": (lambda v: v in ("min", "max"), "min or max"),
    "checkpoint.keep_best": (lambda v: v == "" or v.startswith("val/"), 'a "val/..." figure'),
    "log.every_steps": (lambda v: v >= 1, "at least 1"),
    # Lengths and vocabularies the data sets share (where a data set has the key).
    "data.seq_len": (lambda v: v >= 1, "at least 1"),
    "data.max_len": (lambda v: v >= 1, "at least 1"),
    "data.max_src_len": (lambda v: v >= 1, "at least 1"),
    "data.max_tgt_len": (lambda v: v >= 2, "at least 2 (the decoder reads one token less)"),
    "data.vocab_size": (lambda v: v >= 1, "at least 1"),
}
SECTIONS = ("train", "optim", "eval", "checkpoint", "log")
# Evaluator options that count something (`eval.evaluators.NAME.OPTION`): zero of them would
# leave an evaluator with nothing to score (an IndexError deep in it, found after training).
EVALUATOR_COUNTS = ("num_captions", "candidates", "num_samples", "beams", "batch_size")


def _type_ok(value, default) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return default is None or isinstance(value, type(default))


def check(cfg: ml_collections.ConfigDict, where: str = "") -> None:
    """UserError on the first shared setting of the wrong type or out of range; `where`
    names a saved config.json in the message."""
    from genzoo.experiment import base_config

    defaults = base_config()
    suffix = f" (in {where})" if where else ""
    for section in (*SECTIONS, "mesh"):
        for key, default in defaults[section].items():
            if key not in cfg[section] or isinstance(default, ml_collections.ConfigDict):
                continue
            value = cfg[section][key]
            if key != "rules" and not _type_ok(value, default):
                raise UserError(f"{section}.{key} must be a {type(default).__name__}, "
                                f"got {value!r}{suffix}")  # fmt: skip
    for key, (ok, must) in RANGES.items():
        section, field = key.split(".")
        if field in cfg[section] and not ok(cfg[section][field]):
            raise UserError(f"{key} must be {must}, got {cfg[section][field]!r}{suffix}")
    for name, options in (cfg.eval.get("evaluators") or {}).items():
        for key, value in dict(options).items():
            if key in EVALUATOR_COUNTS and not (type(value) is int and value >= 1):
                raise UserError(f"eval.evaluators.{name}.{key} must be an integer >= 1, "
                                f"got {value!r}{suffix}")  # fmt: skip
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise UserError("train.batch_size must be a multiple of train.grad_accum" + suffix)
    if [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor].count(-1) > 1:
        raise UserError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1" + suffix)

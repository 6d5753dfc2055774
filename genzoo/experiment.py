"""What an experiment is: a file with `get_config(variant)`; loading, overrides, resume checks.

Every experiment starts from `base_config()` so that the keys scripts rely on
(`train.steps`, `train.batch_size`, `train.seed`, `checkpoint.every_steps`,
`mesh.data|fsdp|tensor`) exist everywhere with the same meaning.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import ml_collections

from genzoo import config_checks
from genzoo.errors import UserError

# Keys that may differ between a run and its resume: run length, mesh layout, logging,
# evaluation and checkpoint cadence. Everything else (model, data, optimizer) must match.
# How a step is computed (rematerialisation, loss chunks) may change too: same values.
RESUMABLE_PREFIXES = ("train.steps", "train.max_seconds", "mesh.", "log.", "eval.", "checkpoint.",
                      "experiment.", "model.remat", "model.loss_chunk",
                      "model.scan_layers")  # fmt: skip

DEFAULT_RULES = (
    # Parameters: FSDP shards the model width, tensor parallelism the wide dimensions.
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("pos", None),
    ("states", None),
    # Activations: batch over every data-parallel axis, features over `tensor`.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_vocab", "tensor"),
)


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment; an experiment overrides what it changes."""
    c = ml_collections.ConfigDict()
    c.experiment = dict(name="", variant="", description="")
    c.model = ml_collections.ConfigDict(dict(family=""))
    c.data = ml_collections.ConfigDict(dict(name=""))
    c.train = dict(
        steps=1000,
        max_seconds=0.0,  # > 0: also stop (evaluate, save) at the first step past this wall time
        batch_size=32,
        grad_accum=1,
        seed=0,
        peak_flops=0.0,
        init_from="",  # a workdir (trained or imported) whose latest params start this run
        trainable="",  # comma-separated globs over parameter paths; "" trains everything
        init_fresh="",  # globs of parameters init_from does not provide (a new head)
        ema_decay=0.0,  # > 0: keep an average of the parameters; eval and sample use it
        skip_nonfinite=0,  # steps with a NaN/Inf loss or gradient to skip before stopping
        loss_scale="auto",  # "auto": dynamic loss scaling under float16 compute; "dynamic", "none"
        rng_impl="threefry",  # or "rbg": XLA's RngBitGenerator for dropout (faster on GPU)
    )
    c.optim = dict(
        name="adamw",
        schedule="cosine",  # or "inverse_sqrt" (the 2017 Transformer's)
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=100,
        decay_steps=-1,  # -1: decay over train.steps, fixed at first launch
        b1=0.9,
        b2=0.99,
        eps=1e-8,
        weight_decay=0.1,
        clip_norm=1.0,
        # Magnitude pruning of the kernels (genzoo/pruning.py): 0 = dense; the sparsity rises
        # from prune_begin to prune_end (-1: 3/4 of train.steps), masks renewed every prune_every.
        prune_sparsity=0.0,
        prune_scope="layer",  # or "global": one magnitude threshold over all kernels
        prune_begin=0,
        prune_end=-1,
        prune_every=50,
        # Per parameter group overrides of the fields above, e.g. {"generator": {"lr": 2e-4}}:
        # each top-level group of the params gets its own optimizer (a GAN's two players).
        groups=ml_collections.ConfigDict(),
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1, rules=DEFAULT_RULES)
    c.eval = dict(
        every_steps=500,
        batch_size=0,
        max_batches=-1,
        split="validation",
        seed=0,
        # Host-side evaluators by name with their options (genzoo.evaluation.evaluators).
        evaluators=ml_collections.ConfigDict(),
    )
    c.checkpoint = dict(
        every_steps=500,
        every_seconds=0.0,  # > 0: also save when this long has passed since the last save
        keep=3,
        keep_best="",  # an evaluation figure (val/loss): its best step is kept besides `keep`
        best_mode="min",  # or "max" (accuracy, BLEU)
        async_save=True,
    )
    c.log = dict(every_steps=10, tensorboard=True, progress=True)
    return c


def experiments_dir() -> Path:
    env = os.environ.get("GENZOO_EXPERIMENTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "experiments"


def _import_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"genzoo_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"{path} is not an experiment: it has no get_config(variant)")
    return module


def find(name_or_path: str) -> Path:
    """Resolves an experiment name (a file in experiments/) or a path to such a file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".py" or os.sep in name_or_path:
        if not candidate.is_file():
            raise UserError(f"no experiment file at {name_or_path}")
        return candidate
    path = experiments_dir() / f"{name_or_path}.py"
    if not path.is_file():
        import difflib

        names = sorted(p.stem for p in experiments_dir().glob("*.py") if p.name[0] != "_")
        close = difflib.get_close_matches(name_or_path, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown experiment {name_or_path!r} ({hint}`genzoo list` shows all)")
    return path


def list_experiments() -> list[tuple[str, str, str, str]]:
    """(name, family, data set, one-line description) for every file in experiments/."""
    rows = []
    for path in sorted(experiments_dir().glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = _import_file(path)
        cfg = module.get_config(None)
        description = cfg.experiment.description or summary(module.__doc__)
        rows.append((path.stem, cfg.model.family, cfg.data.name, description))
    return rows


def summary(doc: str | None) -> str:
    """A docstring's first sentence, its lines joined (its first line alone may stop mid-way:
    "a Transformer over [caption; 8x8 image codes], with")."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def variants(name_or_path: str) -> tuple[str, ...]:
    return tuple(getattr(_import_file(find(name_or_path)), "VARIANTS", ()))


def load(name_or_path: str, variant: str | None = None, overrides=()) -> ml_collections.ConfigDict:
    """Experiment config with the variant and `key=value` overrides applied (still mutable)."""
    path = find(name_or_path)
    module = _import_file(path)
    variants = tuple(getattr(module, "VARIANTS", ()))
    if variant and variant not in variants:
        raise UserError(
            f"experiment {path.stem} has no variant {variant!r} (has: "
            f"{', '.join(variants) or 'none'})"
        )
    cfg = module.get_config(variant)
    cfg.experiment.name = path.stem
    cfg.experiment.variant = variant or ""
    if not cfg.experiment.description:
        cfg.experiment.description = summary(module.__doc__)
    apply_overrides(cfg, overrides)
    config_checks.check(cfg)
    return cfg


def _parse_value(text: str, current):
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"cannot parse {text!r}") from e
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if type(value) is not type(current) and current is not None:
        raise ValueError(f"expected {type(current).__name__}, got {type(value).__name__}")
    return value


def _family_fields(cfg: ml_collections.ConfigDict) -> dict:
    """The model family's settable fields with their defaults ({} when it has none)."""
    from genzoo import models  # late: the models import jax and flax
    from genzoo.models.base import config_fields

    family = cfg.get("model", {}).get("family")
    return config_fields(models.get(family)) if isinstance(family, str) else {}


def apply_overrides(cfg: ml_collections.ConfigDict, overrides) -> None:
    """Applies `a.b=value` strings; unknown keys and ill-typed values raise UserError.
    `model.X` may also name a field of the family's config that the experiment leaves at its
    default (BERT's `mask_rate`, the VQ tokenizer's `ema_decay`): typed by that default."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key=value")
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise UserError(f"unknown config key {key!r}")
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict):
            raise UserError(f"unknown config key {key!r}")
        if leaf in node:
            current = node[leaf]
        elif parents == ["model"] and leaf in (fields := _family_fields(cfg)):
            current = fields[leaf]
        else:
            raise UserError(f"unknown config key {key!r}")
        if isinstance(current, ml_collections.ConfigDict):
            raise UserError(f"config key {key!r} is a section; set one of its fields")
        try:
            node[leaf] = _parse_value(text, current)
        except (ValueError, TypeError) as e:
            raise UserError(f"bad value for {key}: {e}") from None


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
    """A saved config, laid over today's defaults so workdirs from older versions still load
    (settings added since then take their default values)."""
    data = json.loads(text)
    data["mesh"]["rules"] = tuple(
        (name, tuple(axis) if isinstance(axis, list) else axis)
        for name, axis in data["mesh"]["rules"]
    )
    merged = base_config().to_dict()
    _upgrade(data)
    for section, values in data.items():
        if section in ("model", "data") or not isinstance(merged.get(section), dict):
            merged[section] = values  # free-form per experiment: taken whole
        else:
            merged[section].update(values)
    return ml_collections.ConfigDict(merged)


def _upgrade(data: dict) -> None:
    """Saved configs from before host-side evaluators name their classifier run directly;
    from before loss scaling, their checkpoints hold no scale (today's default would add one)."""
    data.setdefault("train", {}).setdefault("loss_scale", "none")
    ev = data.get("eval", {})
    if "classifier_workdir" in ev:
        classifier, num = ev.pop("classifier_workdir"), ev.pop("num_samples", 1000)
        if classifier and "evaluators" not in ev:
            ev["evaluators"] = {
                "sample_quality": {"classifier_workdir": classifier, "num_samples": num}
            }


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Keys added to every experiment after runs were saved without them, with the value that
# behaves as the code did before: such a run resumes when its new config has that value.
ADDED_KEYS = {"optim.prune_sparsity": 0.0, "optim.prune_scope": "layer", "optim.prune_begin": 0,
              "optim.prune_end": -1, "optim.prune_every": 50, "optim.em_power": 0.7,
              "optim.em_smoothing": 1e-3, "model.expected_counts": False}  # fmt: skip


def resume_conflicts(saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> list[str]:
    """Keys whose values differ and may not change on resume (model, data, optimizer...)."""
    a = _flatten(json.loads(to_json(saved)))
    b = _flatten(json.loads(to_json(new)))
    a.update({k: v for k, v in ADDED_KEYS.items() if k not in a and k in b})
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_PREFIXES)]

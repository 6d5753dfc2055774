"""Host-side evaluators, declared in an experiment's config (big_vision's `config.evals`).

    c.eval.evaluators = {"translation": dict(beams=4, every_steps=500, train_max_examples=200)}

Each name maps to a function `(run, split, **options) -> {figure: value}` that computes
its figures from decoded outputs over a whole split on the host: sampled images scored by
a classifier, translations scored against references. `genzoo eval` runs every declared
evaluator; the trainer also runs those with `every_steps > 0` on that cadence (their
figures logged as `val/*`), on the first `train_max_examples` examples where that is set
(a cheaper curve; `genzoo eval` always scores the whole split). `run` is a
`genzoo.workdir.Run` (config, data, parameters).
"""

from __future__ import annotations

import importlib

from genzoo.errors import UserError

# name -> "module:function", imported on use (each pulls its own libraries).
EVALUATORS = {
    "sample_quality": "genzoo.evaluation.sample_quality:evaluate",
    "translation": "genzoo.evaluation.translation:evaluate",
    "classifier_baselines": "genzoo.evaluation.baselines_text:evaluate",
    "text_to_image": "genzoo.evaluation.text_to_image:evaluate",
    "clip_retrieval": "genzoo.evaluation.retrieval:evaluate",
}
RUNNER_OPTIONS = ("every_steps", "train_max_examples")  # handled here, not by the evaluator


def get(name: str):
    if name not in EVALUATORS:
        raise UserError(f"unknown evaluator {name!r} (known: {', '.join(EVALUATORS)})")
    module, fn = EVALUATORS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def check(evaluators_cfg) -> None:
    """UserError for an unknown evaluator name, before anything is written."""
    for name in evaluators_cfg or {}:
        get(name)


def run_all(run, split: str, step: int | None = None) -> dict:
    """Figures of every declared evaluator; with `step`, only those due at that step."""
    figures = {}
    for name, options in (run.cfg.eval.get("evaluators") or {}).items():
        options = dict(options)
        runner = {key: options.pop(key, 0) for key in RUNNER_OPTIONS}
        if step is not None:
            every = runner["every_steps"]
            if not (every > 0 and step % every == 0):
                continue
            if runner["train_max_examples"] > 0:
                options["max_examples"] = runner["train_max_examples"]
        figures.update(get(name)(run, split, **options))
    return figures

"""Runs that depend on runs: `model.requires = {"image_tokenizer": "runs/dvae_shapes"}`.

A family that needs trained runs declares them by name with the kind each must be
(`REQUIRES = {"image_tokenizer": "image_tokenizer"}`). At first launch each is pinned to its
latest checkpoint step: the config keeps `"runs/dvae_shapes@3000"`, so a resume (or an
`eval` a month later) uses the same parameters even if that run trained on. The trainer
loads them once, places them on its own mesh, never gives them to the optimizer, and passes
their evaluation parameters to the family's `loss` and `eval_sums` as `deps={name: params}`;
`Run.deps` gives the opened runs to sampling and evaluators.
"""

from __future__ import annotations

from pathlib import Path

from genzoo.errors import UserError


def declared(family) -> dict:
    return dict(getattr(family, "REQUIRES", {}) or {})


def split(spec: str) -> tuple[str, int | None]:
    """("runs/x", 3000) for "runs/x@3000"; ("runs/x", None) when no step is pinned."""
    path, at, step = str(spec).rpartition("@")
    if not at:
        return str(spec), None
    if not step.isdigit():
        raise UserError(f"model.requires entry {spec!r}: the step after '@' must be a number")
    return path, int(step)


def pin(family, requires, saved=None, chain_hint="") -> dict:
    """{name: "workdir@step"}, checked against what the family declares: every name given,
    each a trained run of the declared kind with that checkpoint. `saved` (a resumed run's
    pins) wins for the workdirs it names, so a resume never moves to a newer step.
    `chain_hint` (the `genzoo chain` command for this experiment) ends the error for a
    dependency not trained yet."""
    from genzoo import models, workdir
    from genzoo.checkpoint import saved_steps

    want, given = declared(family), dict(requires or {})
    if set(given) != set(want):
        missing, extra = sorted(set(want) - set(given)), sorted(set(given) - set(want))
        raise UserError(
            f"model.requires must name {sorted(want) or 'nothing'} for this family"
            + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else "")
        )  # fmt: skip
    pinned = {}
    for name, spec in given.items():
        path, step = split(spec)
        old_path, old_step = split(saved[name]) if saved and name in saved else (None, None)
        if step is None and old_path == path:
            step = old_step
        if not (Path(path) / workdir.CONFIG).is_file():
            hint = f", or every missing link in order: {chain_hint}" if chain_hint else ""
            raise UserError(f"model.requires.{name}: {path} is no trained run; "
                            f"train it first{hint}")  # fmt: skip
        cfg = workdir.load_config(Path(path))  # UserError when it is no workdir
        kind = getattr(models.get(cfg.model.family), "KIND", "")
        if kind != want[name]:
            raise UserError(f"model.requires.{name}: {path} is of kind {kind}, not {want[name]}")
        steps = saved_steps(Path(path))
        if not steps:
            raise UserError(f"model.requires.{name}: {path} has no checkpoint; train it first")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise UserError(f"model.requires.{name}: {path} has no step {step} (has {steps})")
        pinned[name] = f"{path}@{step}"
    return pinned


def open_all(requires) -> dict:
    """{name: workdir.Run} of the pinned dependencies."""
    from genzoo import workdir

    runs = {}
    for name, spec in dict(requires or {}).items():
        path, step = split(spec)
        runs[name] = workdir.open_run(Path(path), checkpoint="latest" if step is None else step)
    return runs

"""`genzoo chain EXPERIMENT`: train an experiment after every run it depends on.

The links are the workdirs its config names: `model.requires` (runs it needs to train),
`train.init_from` (the run a fine-tune starts from) and the evaluators' `*_workdir`
options (runs that score it, such as the shapes judge).
A workdir `runs/NAME` is trained by experiment NAME, or by NAME without a trailing
`_VARIANT` (`runs/dvae_shapes_smoke` by `dvae_shapes --variant smoke`), with the chain's
variant where the experiment has it. Links whose latest checkpoint has reached their
experiment's `train.steps` are skipped; a half-trained one resumes; a workdir holding another
experiment or variant is refused. Dependencies come first, each once.
"""

from __future__ import annotations

from pathlib import Path

from genzoo import experiment, requires
from genzoo.errors import UserError


def _links(cfg) -> list[str]:
    paths = [requires.split(spec)[0] for spec in (cfg.model.get("requires") or {}).values()]
    for options in (cfg.eval.get("evaluators") or {}).values():
        paths += [v for k, v in dict(options).items() if k.endswith("_workdir") and v]
    return paths


def _links_with_experiments(cfg, variant: str | None) -> list[tuple[str, str]]:
    """[(workdir, the experiment that trains it)]: every link, and the run a fine-tune starts
    from (`train.init_from`) where an experiment of that name trains it (`runs/demo`, made by
    `make demo`, is left to `train`'s own check)."""
    pairs = [(path, _experiment_of(path, variant)) for path in _links(cfg)]
    path = requires.split(cfg.train.get("init_from") or "")[0]
    if path:
        try:
            pairs.append((path, _experiment_of(path, variant)))
        except UserError:
            pass
    return pairs


def _experiment_of(path: str, variant: str | None) -> str:
    name = Path(path).name
    known = {row[0] for row in experiment.list_experiments()}
    if variant and name.endswith(f"_{variant}") and name not in known:
        name = name[: -len(variant) - 1]
    if name not in known:
        raise UserError(f"no experiment trains {path} (expected one named {name!r})")
    return name


def _variant_for(name: str, variant: str | None) -> str | None:
    return variant if variant in experiment.variants(name) else None


def plan(name: str, variant: str | None, workdir: str | None = None) -> list[tuple]:
    """[(experiment, variant, workdir)] in training order, the target last, each once."""
    order, seen = [], set()

    def visit(exp: str, var: str | None, path: str, stack: tuple) -> None:
        if path in stack:
            raise UserError(f"dependency cycle: {' -> '.join((*stack, path))}")
        if path in seen:
            return
        cfg = experiment.load(exp, var)
        for link, dep in _links_with_experiments(cfg, variant):
            visit(dep, _variant_for(dep, variant), link, (*stack, path))
        seen.add(path)
        order.append((exp, var, path))

    visit(name, variant, workdir or str(Path("runs") / name), ())
    return order


def trained(path: str, name: str, variant: str | None) -> bool:
    """Whether the workdir holds a run of `name --variant variant` whose latest checkpoint has
    reached that experiment's `train.steps` (more steps, set by hand, count too). A workdir
    holding another experiment or variant is refused: skipping it would hand its (say, smoke)
    model to the next link and to evaluation without a word."""
    from genzoo import workdir
    from genzoo.checkpoint import saved_steps

    steps = saved_steps(Path(path))
    if not (Path(path) / workdir.CONFIG).is_file() or not steps:
        return False
    want = experiment.load(name, variant)
    saved = workdir.load_config(Path(path)).get("experiment") or {}
    held, wanted = [(e.get("name"), e.get("variant") or "") for e in (saved, want.experiment)]
    if held != wanted:
        said = lambda n, v: n + (f" --variant {v}" if v else "")  # noqa: E731
        raise UserError(f"{path} holds a run of {said(*held)}, not {said(*wanted)}: "
                        "move it or give the chain another --workdir")  # fmt: skip
    return steps[-1] >= want.train.steps

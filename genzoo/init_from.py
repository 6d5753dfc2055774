"""`train.init_from`: start a run from trained parameters, whole or sub-tree by sub-tree.

    train.init_from = "runs/gpt"                                   # the whole model
    train.init_from = "text=runs/bert_mlm_english, image=runs/vit:encoder"
    train.init_from = "runs/gpt@best"                              # or @latest, @1750

An item `DEST=WORKDIR[:SRC]` fills this model's sub-tree `DEST` with the source run's
sub-tree `SRC` (its whole parameters when omitted); parameters outside every `DEST` keep
their random init. Each part is checked on its own: every parameter under `DEST` must come
from the source with its shape (except the `train.init_fresh` globs), and the source's
extra parameters (BERT's MLM head when it fills a text tower) are dropped. The whole-model
form stays strict: a source parameter the model lacks is an error unless `init_fresh` is set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from genzoo import optim
from genzoo.errors import UserError


@dataclasses.dataclass
class Part:
    dest: str  # "" for the whole model, else a "/"-separated sub-tree path of this model
    params: Any  # the source's (sub-)tree
    source: str  # what the user named, for messages


def parse(spec: str) -> list[tuple[str, str, str]]:
    """[(dest, workdir, src)] of a `train.init_from` string."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if len(items) == 1 and "=" not in items[0]:
        return [("", items[0], "")]
    parsed = []
    for item in items:
        dest, eq, rest = item.partition("=")
        workdir, _, src = rest.partition(":")
        if not eq or not dest.strip() or not workdir.strip():
            raise UserError(f"train.init_from item {item!r} is not DEST=WORKDIR[:SRC]")
        parsed.append((dest.strip().strip("/"), workdir.strip(), src.strip().strip("/")))
    dests = [d for d, _, _ in parsed]
    for a in dests:
        for b in dests:
            if a != b and (b + "/").startswith(a + "/") or dests.count(a) > 1:
                raise UserError(f"train.init_from sub-trees overlap: {a!r} and {b!r}")
    return parsed


def subtree(params, path: str, where: str):
    for key in filter(None, path.split("/")):
        if not isinstance(params, dict) or key not in params:
            top = sorted(params) if isinstance(params, dict) else []
            raise UserError(f"{where} has no parameter sub-tree {path!r} (top level: {top})")
        params = params[key]
    return params


def load(spec: str, tokenizer=None) -> list[Part]:
    """Opens each named run (its evaluation parameters: the EMA when it keeps one). A whole
    model must read text in the same tokens as this run (`tokenizer`, this run's data's)."""
    from genzoo import workdir

    parts = []
    for dest, run_dir, src in parse(spec):
        path, at, which = run_dir.rpartition("@")
        path, which = (path, workdir.parse_checkpoint(which)) if at else (run_dir, "latest")
        run = workdir.open_run(Path(path), checkpoint=which)
        if not dest and tokenizer is not None:
            _check_tokens(run.tokenizers.get("tokens"), tokenizer, path)
        params = jax.device_get(run.params)
        parts.append(
            Part(dest, subtree(params, src, run_dir), f"{run_dir}:{src}" if src else run_dir)
        )
    return parts


def _check_tokens(theirs, mine, path: str) -> None:
    """UserError when both runs' tokenizers are of one kind and map ids differently: the
    vocabulary is padded to 128 rows, so an 11-character alphabet loaded the demo's 65-character
    embeddings without a shape error, each id now another character."""
    said = lambda tok: getattr(tok, "vocab", None) or getattr(tok, "model_proto", None)  # noqa: E731
    if type(theirs) is not type(mine) or said(theirs) is None or said(theirs) == said(mine):
        return
    hint = f" (a text file: --set data.alphabet_from={path})" if hasattr(mine, "vocab") else ""
    raise UserError(f"init_from {path} reads text in other tokens than this run: its ids would "
                    f"mean other characters or pieces{hint}")  # fmt: skip


def _flat(tree, prefix: str = "") -> dict:
    return {prefix + optim.param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def merge(abstract_params, parts: list[Part], fresh_globs: str = "") -> tuple[dict, bool]:
    """({path: source array} for every parameter the parts provide, whether any parameter
    keeps its random init). UserError, naming the part, for anything that does not fit."""
    want = {k: x.shape for k, x in _flat(abstract_params).items()}
    is_fresh = optim.matcher(fresh_globs)
    provided: dict[str, Any] = {}
    for part in parts:
        prefix = part.dest + "/" if part.dest else ""
        got = _flat(part.params, prefix)
        under = {k: s for k, s in want.items() if k.startswith(prefix) and not is_fresh(k)}
        if part.dest and not any(k.startswith(prefix) for k in want):
            raise UserError(f"train.init_from: this model has no sub-tree {part.dest!r}")
        if part.dest or fresh_globs:  # a sub-tree's (or a fine-tune's) extras are dropped
            got = {k: v for k, v in got.items() if k in under}
        for key in sorted(set(got) | set(under)):
            have = tuple(got[key].shape) if key in got else None
            need = under.get(key)
            if have != need:
                why = (f"is missing there, the model needs {need}" if have is None
                       else f"is {have} there and not in this model" if need is None
                       else f"is {have} there, the model needs {need}")  # fmt: skip
                raise UserError(
                    f"init_from parameters from {part.source} do not fit this model: {key} {why}"
                )
        provided.update(got)
    return provided, len(provided) < len(want)

"""The family protocol as types: what the trainer and CLI call on every model family.

A family is a module; `typing.Protocol`s describe modules as well as classes, and the
conformance test checks every family in `genzoo.models.FAMILIES` against `Family` and
against its kind's protocol (`genzoo.kinds`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from genzoo.errors import UserError


@runtime_checkable
class Family(Protocol):
    KIND: str  # a name in genzoo.kinds: what a trained run can do

    def init(self, rng, cfg):
        """Parameters, boxed with logical axis names (`genzoo.layers.partitioned`)."""

    def loss(self, params, batch, rng, cfg, *, train: bool, step):
        """(loss, metrics): `loss` a scalar, or {group: scalar} when the parameters are a
        dict of groups each trained on its own objective (a GAN); `metrics` a dict of
        scalars to log. `rng` differs at every step; `step` is the optimizer step."""

    def eval_sums(self, params, batch, rng, cfg):
        """Arrays that add up across batches (sums, counts) over the batch's valid rows."""

    def eval_summary(self, totals, meta):
        """Whole-split figures from the summed `eval_sums`; the first is the headline."""


@runtime_checkable
class CountsFlops(Protocol):
    """Optional: enables MFU reporting."""

    def flops_per_example(self, cfg, shapes) -> float:
        """Training FLOPs (forward + backward) of one example, given the per-example shapes
        of the batch's fields (`{"inputs": (L,), ...}`)."""


@runtime_checkable
class HasModelState(Protocol):
    """Optional: variables the loss updates and the optimizer never touches (BatchNorm
    statistics, a VQ codebook moved by moving averages).

    They live in `params[MODEL_STATE]`, so evaluation and sampling see them like any
    parameter and checkpoints keep them; the optimizer gets no gradient for them, keeps no
    moments and applies no weight decay. When `init` puts that key in the params (a config
    may have no state: a GAN with LayerNorm), `loss` returns a third value, the new state."""

    MODEL_STATE: str  # the top-level key of the params that holds the state

    def loss(self, params, batch, rng, cfg, *, train: bool, step):
        """(loss, metrics, new `params[MODEL_STATE]`), or (loss, metrics) without it."""


def problems(family) -> list[str]:
    """What `family` (a module) lacks of `Family` and of its kind's protocol, each as
    `name(its required parameters)`; [] when it conforms. The same check for genzoo's families
    (tests/test_protocols.py) and for a user's, when `model.family` first names it."""
    import inspect

    from genzoo import kinds

    if not isinstance(getattr(family, "KIND", None), str):
        return ["KIND (the name of a kind in genzoo.kinds)"]
    try:
        protocols, missing = (Family, kinds.of_family(family).protocol), []
    except UserError as e:
        return [str(e)]
    for proto in protocols:
        for member, spec in vars(proto).items():
            if member.startswith("_") or not callable(spec):
                continue
            sig = inspect.signature(spec)
            required = [p for p, v in list(sig.parameters.items())[1:]  # without `self`
                        if v.default is inspect.Parameter.empty]  # fmt: skip
            if not _accepts(getattr(family, member, None), required):
                missing.append(f"{member}({', '.join(required)})")
        missing += [name for name in getattr(proto, "__annotations__", {})
                    if not hasattr(family, name)]  # attributes: RAGGED_PROMPTS  # fmt: skip
    return missing


def _accepts(fn, names) -> bool:
    import inspect

    if not callable(fn):
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): trust it
        return True
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return takes_any or set(names) <= set(params)

"""Magnitude pruning as an optax transformation (Zhu & Gupta, 2017, "To prune, or not to prune").

Sparsity rises from 0 at step `begin` to `sparsity` at step `end` along the cubic
s(t) = s_f * (1 - (1 - (t - begin) / (end - begin))^3): fast while the network has
slack, slowly near the target. Every `every` steps in that window the masks are
recomputed from the weights' magnitudes, per array (`scope="layer"`) or with one
threshold over all of them (`"global"`); in between and afterwards the masks hold.
Pruned weights are set to exactly zero by the update (update = -param), so a saved
checkpoint is as sparse as its masks. Only kernels (parameters named `*kernel`) are
pruned: embeddings, biases and norms stay dense.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from genzoo.errors import UserError


class PruneState(NamedTuple):
    count: jax.Array
    masks: Any  # bool per prunable parameter (True = kept); a scalar for the others


def schedule(sparsity: float, begin: int, end: int):
    def target(step):
        progress = jnp.clip((step - begin) / max(end - begin, 1), 0.0, 1.0)
        return sparsity * (1.0 - (1.0 - progress) ** 3)

    return target


def _kth_magnitude(w, fraction):
    """The magnitude below which `fraction` of the entries of `w` lie (0 for fraction 0)."""
    flat = jnp.sort(jnp.abs(w).ravel())
    k = jnp.floor(fraction * flat.size).astype(jnp.int32)
    return jnp.where(k > 0, flat[jnp.maximum(k - 1, 0)], -1.0)


def _masks(params, prunable, fraction, scope: str):
    leaves = [p for p, ok in zip(jax.tree.leaves(params), jax.tree.leaves(prunable), strict=True)
              if ok]  # fmt: skip
    if scope == "global":
        cut = _kth_magnitude(jnp.concatenate([jnp.abs(p).ravel() for p in leaves]), fraction)
        keep = lambda p: jnp.abs(p) > cut  # noqa: E731
    else:
        keep = lambda p: jnp.abs(p) > _kth_magnitude(p, fraction)  # noqa: E731
    return jax.tree.map(lambda p, ok: keep(p) if ok else jnp.ones((), bool), params, prunable)


def magnitude_pruning(sparsity: float, begin: int, end: int, every: int, scope: str,
                      prunable) -> optax.GradientTransformation:  # fmt: skip
    """Chain after the optimizer; `prunable` is a bool tree over the params (or a function)."""
    if scope not in ("layer", "global"):
        raise UserError(f"optim.prune_scope must be layer or global, got {scope!r}")
    target = schedule(sparsity, begin, end)

    def init(params):
        ok = prunable(params) if callable(prunable) else prunable
        masks = jax.tree.map(lambda p, o: jnp.ones(p.shape if o else (), bool), params, ok)
        return PruneState(jnp.zeros((), jnp.int32), masks)

    def update(updates, state, params):
        if params is None:
            raise ValueError("magnitude_pruning needs the params")
        ok = prunable(params) if callable(prunable) else prunable
        step = state.count
        due = (step >= begin) & (step <= end) & ((step - begin) % every == 0)
        new_params = optax.apply_updates(params, updates)
        masks = jax.lax.cond(due, lambda: _masks(new_params, ok, target(step), scope),
                             lambda: state.masks)  # fmt: skip
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
        return updates, PruneState(step + 1, masks)

    return optax.GradientTransformation(init, update)


def kernels(params):
    """The default prunable set: parameters whose name ends in `kernel`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: str(getattr(path[-1], "key", path[-1])).endswith("kernel"), params
    )


def sparsity(params) -> float:
    """Fraction of zeros over the prunable parameters."""
    chosen = [p for p, ok in zip(jax.tree.leaves(params), jax.tree.leaves(kernels(params)),
                                 strict=True) if ok]  # fmt: skip
    return float(sum(jnp.sum(p == 0) for p in chosen) / max(sum(p.size for p in chosen), 1))

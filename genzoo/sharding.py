"""One mesh (`data`, `fsdp`, `tensor`) for every family, and logical-axis rules from the config."""

from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from genzoo.errors import UserError

AXES = ("data", "fsdp", "tensor")


def mesh_sizes(mesh_cfg, num_devices: int) -> list[int]:
    """(data, fsdp, tensor) sizes for `num_devices`, the -1 filled; UserError if they do not fit."""
    sizes = [int(mesh_cfg[a]) for a in AXES]
    shown = dict(zip(AXES, sizes, strict=True))
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh sizes {shown}: use positive sizes and at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise UserError(
                f"{num_devices} devices cannot be split into a mesh with {known} per slot"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        # A mesh that leaves devices idle is almost always a typo; say so rather than waste them.
        raise UserError(
            f"mesh {dict(zip(AXES, sizes, strict=True))} uses {math.prod(sizes)} devices, "
            f"have {num_devices}"
        )
    return sizes


def fits(mesh_cfg, num_devices: int) -> bool:
    try:
        mesh_sizes(mesh_cfg, num_devices)
    except UserError:
        return False
    return True


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Mesh of shape (data, fsdp, tensor); one size may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    grid = np.array(devices).reshape(mesh_sizes(mesh_cfg, len(devices)))
    return Mesh(grid, AXES)


def rules(mesh_cfg) -> tuple:
    return tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in mesh_cfg.rules)


@contextlib.contextmanager
def activate(mesh: Mesh, axis_rules):
    """Context in which `nn.with_logical_constraint` resolves names against this mesh."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
        yield


def logical_shardings(boxed_tree, mesh: Mesh, axis_rules):
    """NamedShardings for a tree of (abstract) `nn.Partitioned` leaves; plain leaves replicate."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, axis_rules)


def _path_keys(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)


def like_params(abstract_tree, abstract_params, param_shardings, default: NamedSharding):
    """Shardings for a tree that holds copies of the parameters (an optimizer state).

    A leaf whose key path ends with a parameter's path and has its shape takes that
    parameter's sharding (Adam's mu/nu, also inside `multi_transform`'s masked states);
    everything else (step counts) takes `default`.
    """
    shapes = {
        _path_keys(p): leaf.shape
        for p, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)
    }
    by_path = {_path_keys(p): s for p, s in jax.tree_util.tree_leaves_with_path(param_shardings)}

    def pick(path, leaf):
        keys = _path_keys(path)
        for start in range(len(keys)):
            suffix = keys[start:]
            if suffix in by_path and shapes[suffix] == leaf.shape:
                return by_path[suffix]
        return default

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def axis_names(axes) -> tuple:
    """A PartitionSpec entry (None, one mesh axis or several) as a tuple of axis names."""
    return (axes,) if isinstance(axes, str) else (axes or ())


def shard_count(mesh, axes) -> int:
    """How many shards a PartitionSpec entry splits a dimension into on `mesh`."""
    return math.prod(mesh.shape[a] for a in axis_names(axes))


def check_divisible(abstract_params, shardings, path_name) -> None:
    """UserError naming the first parameter whose dimension does not divide its mesh axes."""
    leaves = jax.tree_util.tree_leaves_with_path(abstract_params)
    for (path, leaf), s in zip(leaves, jax.tree.leaves(shardings), strict=True):
        for dim, axes in zip(leaf.shape, s.spec, strict=False):
            shards = shard_count(s.mesh, axes)
            if dim % shards:
                raise UserError(
                    f"parameter {path_name(path)} {tuple(leaf.shape)}: dimension {dim} does not "
                    f"divide over mesh axes {'x'.join(axis_names(axes))} ({shards} shards); "
                    "change the model size or the mesh"
                )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis_rules) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes the rules name."""
    return nn.logical_to_mesh_sharding(P("batch"), mesh, axis_rules)


def check_batch(batch_size: int, mesh: Mesh, axis_rules) -> None:
    spec = batch_sharding(mesh, axis_rules).spec[0] or ()
    axes = (spec,) if isinstance(spec, str) else spec
    shards = math.prod(mesh.shape[a] for a in axes)
    if batch_size % shards:
        raise UserError(f"batch size {batch_size} is not divisible by the {shards} batch shards")


def process_rows(sharding: NamedSharding, batch_size: int) -> slice:
    """The rows of a global batch of `batch_size` that this process's devices hold: all of
    them in one process, a contiguous 1/P of them per process when the batch is split."""
    index_map = sharding.addressable_devices_indices_map((batch_size,))
    spans = {s[0].indices(batch_size)[:2] for s in index_map.values()}
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != hi - lo:
        raise UserError(f"this process's batch rows {sorted(spans)} are not contiguous")
    return slice(lo, hi)


def put_batch(batch: dict, sharding: NamedSharding, batch_size: int) -> dict:
    """This process's rows of a batch -> global jax arrays of `batch_size` rows laid out by
    `sharding` (see process_rows)."""
    put = lambda x: jax.make_array_from_process_local_data(sharding, x, (batch_size, *x.shape[1:]))
    return jax.tree.map(put, batch)

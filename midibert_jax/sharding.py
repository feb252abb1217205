"""Device mesh, logical-axis rules and the shardings they give.

Modules name the axes of their parameters and main activations logically ('batch', 'embed', 'heads',
'mlp', ...); the model config's `logical_axis_rules` map those names to the mesh axes below. Parameters
are born sharded: the trainers trace the init with `jax.eval_shape` to read the logical names
(train/sharded_state.abstract_train_state), `shardings_of` turns them into NamedShardings, and the real
init runs under `jax.jit(out_shardings=...)`, so each device only ever materializes its own shards.

    mesh = make_mesh(config.mesh)                      # {'data': -1, 'fsdp': 2, 'tensor': 1}
    rules = logical_rules(config.model)
    with activate(mesh, rules):                        # activation constraints use the same rules
        tokens = jax.make_array_from_process_local_data(batch_sharding(mesh, rules, 3), local_tokens)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, Any], ...]


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Axis sizes in MESH_AXES order; at most one -1, which takes the remaining devices."""
    sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive with at most one -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not split into a mesh with fixed part {known}")
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {num_devices}")
    return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all), with Auto axes (GSPMD propagation)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_rules(config) -> Rules:
    """The config's logical_axis_rules as hashable tuples (JSON round trips turn them into lists)."""

    def target(t):
        return tuple(t) if isinstance(t, (list, tuple)) else t

    return tuple((str(name), target(t)) for name, t in config.logical_axis_rules)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Mesh and logical rules in context, so logical activation constraints take effect when tracing."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def logical_specs(boxed_tree: Any) -> Any:
    """Tree of logical PartitionSpecs (one name per dimension) of a boxed (abstract) parameter tree."""

    def spec(x):
        if _is_box(x):
            return PartitionSpec(*x.names)
        return PartitionSpec(*([None] * len(getattr(x, "shape", ()))))  # unnamed: replicated

    return jax.tree_util.tree_map(spec, boxed_tree, is_leaf=_is_box)


def shardings_of(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """Tree of NamedShardings (same structure as the unboxed tree) from logical names and rules."""
    specs = logical_specs(boxed_tree)
    return jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(s), rules)),
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    """Sharding of an [batch, ...] array: the leading axis as the rules place 'batch', the rest replicated."""
    axes = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, axes)

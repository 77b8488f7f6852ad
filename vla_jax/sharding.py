"""Device mesh, logical-axis rules and parameter shardings.

Parameters and activations name their axes logically (``embed``, ``mlp``,
``heads``, ``batch``...); a rules table maps each logical name to mesh axes.
On top of the rules, the FSDP rule shards every parameter of at least
``fsdp_min_bytes`` over ``fsdp`` on its largest free divisible axis; smaller
tensors stay replicated (cheap, and gathers of tiny tensors cost more than
they save).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from vla_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (or tuple of axes, or None for replicated)
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("patch", None),
    ("expert", "expert"),
)

_active_rules: list[tuple] = [DEFAULT_RULES]


def mesh_sizes(shape: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Axis sizes in ``MESH_AXES`` order; one axis may be -1 to take the remaining devices."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"config key 'mesh' has unknown axes {sorted(unknown)}; the axes are {MESH_AXES}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ConfigError(f"config key 'mesh': at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"config key 'mesh' {dict(zip(MESH_AXES, sizes))} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config key 'mesh' {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, found {num_devices}"
        )
    return tuple(sizes)


def make_mesh(shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ``MESH_AXES`` (see :func:`mesh_sizes`).

    Every axis is ``AxisType.Auto`` so that ordinary code (indexing, gathers)
    keeps working under the compiler's sharding propagation.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_sizes(shape, len(devices))
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def abstract_mesh(shape: dict[str, int], num_devices: int | None = None) -> AbstractMesh:
    """A mesh that need not exist here: for shardings and memory estimates only.

    Without ``num_devices``, a mesh with a -1 axis spans this machine's
    devices and a fully given one is taken as written.
    """
    if num_devices is None:
        num_devices = jax.device_count() if -1 in shape.values() else math.prod(shape.values())
    sizes = mesh_sizes(shape, num_devices)
    return AbstractMesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def logical_rules(rules):
    """Sets the rules that :func:`constrain` uses for activations."""
    _active_rules.append(tuple(tuple(r) for r in rules))
    try:
        yield
    finally:
        _active_rules.pop()


def logical_to_spec(logical_axes: Sequence[str | None], rules=None) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
    table = dict(rules if rules is not None else _active_rules[-1])
    used: set[str] = set()
    out = []
    for name in logical_axes:
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def _fit(shape: Sequence[int], spec: Sequence, mesh_shape) -> list:
    """Drops (replicates) each spec entry whose mesh axes do not divide its dimension."""
    out = []
    for dim, entry in zip(shape, spec):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        out.append(entry if dim % math.prod(mesh_shape[a] for a in axes) == 0 else None)
    return out


def param_sharding(
    shape: Sequence[int], dtype, logical_axes: Sequence[str | None] | None, mesh: Mesh, rules, fsdp_min_bytes: int
) -> NamedSharding:
    """The sharding of one parameter: logical rules, then the FSDP rule.

    A mesh axis that does not divide its dimension is dropped (replicated)
    rather than failing at placement.
    """
    logical_axes = tuple(logical_axes) if logical_axes else (None,) * len(shape)
    spec = _fit(shape, logical_to_spec(logical_axes, rules), mesh.shape)
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    used = {a for e in spec if e for a in ((e,) if isinstance(e, str) else e)}
    fsdp = mesh.shape["fsdp"]
    if fsdp > 1 and "fsdp" not in used and nbytes >= fsdp_min_bytes:
        free = [i for i, (d, e) in enumerate(zip(shape, spec)) if e is None and d % fsdp == 0]
        if free:
            spec[max(free, key=lambda i: shape[i])] = "fsdp"
    return NamedSharding(mesh, PartitionSpec(*spec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over ``data`` and ``fsdp``; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def bytes_per_device(abstract_tree, shardings) -> int:
    """Bytes of the largest shard of every array in the tree, summed (what one device holds)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
        total += math.prod(sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


def replicated_fraction(abstract_params, shardings) -> float:
    """Fraction of parameter bytes that every device holds in full."""
    total = replicated_bytes = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract_params), jax.tree.leaves(shardings)):
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        total += nbytes
        if sharding.is_fully_replicated:
            replicated_bytes += nbytes
    return replicated_bytes / max(total, 1)


def batch_devices() -> int:
    """How many devices the batch axes of the current mesh hold (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_groups(batch_size: int) -> int:
    """How many devices the batch axis is split over in the current mesh (1 outside a mesh).

    Per-device work such as MoE capacity dispatch is grouped by this number.
    """
    return math.gcd(batch_size, batch_devices())


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding by logical names; a no-op outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = _fit(x.shape, logical_to_spec(logical_axes), mesh.shape)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))

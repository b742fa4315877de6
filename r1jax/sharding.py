"""The only place that builds a device mesh and maps logical axis names to mesh axes.

Every parameter and every main activation of the model carries a tuple of logical axis names
(`("embed", "mlp")`, `("act_batch", "act_seq", "act_embed")`). One rule table maps each name to
mesh axes; config may override single rules. Mesh axes:

- `data`:   pure data parallelism (parameters replicated),
- `fsdp`:   data parallelism with parameters and optimizer state sharded (ZeRO-3 style),
- `tensor`: tensor (model) parallelism over heads, MLP width and vocabulary.

The mesh uses `AxisType.Auto` on purpose: the model states its intent with
`constrain(x, names)` and leaves the rest to XLA's sharding propagation (the pjit model). The
Pallas kernels, which XLA cannot partition, run inside `jax.shard_map`.

A mesh axis that does not divide a dimension is dropped for that array (e.g. 2 KV heads on a
tensor axis of 4 stay replicated) rather than failing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = Optional[tuple[str, ...]]

# Logical name -> mesh axes. Parameters use plain names; activations use "act_*" names so
# that, e.g., a parameter's embed dim can be FSDP-sharded while activations keep it whole.
DEFAULT_RULES: Mapping[str, MeshAxes] = {
    # parameters
    "layers": None,
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "norm": None,
    # activations
    "act_batch": ("data", "fsdp"),
    "act_seq": None,
    "act_embed": None,
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
    # KV cache [layers, batch, seq, kv_heads, head_dim]
    "cache_batch": ("data", "fsdp"),
    "cache_seq": None,
}


@dataclasses.dataclass(frozen=True)
class Sharding:
    """A mesh plus the logical-name rules that place arrays on it."""

    mesh: Mesh
    rules: Mapping[str, MeshAxes] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_RULES))

    def spec(self, names: Sequence[Optional[str]], shape: Sequence[int]) -> P:
        """PartitionSpec for an array of `shape` whose dims carry logical `names`."""
        return logical_to_spec(names, shape, self.mesh, self.rules)

    def named(self, names: Sequence[Optional[str]], shape: Sequence[int]) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(names, shape))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_axes(self) -> tuple[str, ...]:
        """Mesh axes the batch dimension is split over."""
        return tuple(self.rules["act_batch"] or ())

    @property
    def batch_parallelism(self) -> int:
        return math.prod(self.mesh.shape[a] for a in self.batch_axes)


def logical_to_spec(names: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, MeshAxes]) -> P:
    """Resolves logical axis names to a PartitionSpec, dropping axes that do not divide.

    Args:
      names: one logical name (or None) per array dim.
      shape: the array shape, used to drop mesh axes that do not divide a dim.
      mesh: the device mesh.
      rules: logical name -> tuple of mesh axes (or None for replicated).
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise ValueError(f"no sharding rule for logical axis '{name}' "
                             f"(known: {', '.join(sorted(rules))})")
        axes = []
        size = 1
        for axis in rules[name] or ():
            n = mesh.shape.get(axis, 1)
            if axis in used or n == 1 or dim % (size * n):
                continue
            axes.append(axis)
            size *= n
        used.update(axes)
        out.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return P(*out)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one size may be -1 (the rest).

    Raises:
      ValueError: when the sizes do not multiply to the number of devices.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh size may be -1, got data={data}, fsdp={fsdp}, "
                         f"tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh data={data} fsdp={fsdp} tensor={tensor} does not divide "
                             f"{len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
                         f"{math.prod(sizes)} devices, but {len(devices)} are available")
    types = (jax.sharding.AxisType.Auto,) * 3
    if len(devices) == len(jax.devices()) and devices == list(jax.devices()):
        return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=types)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=types)


def single_device() -> Sharding:
    """A trivial 1x1x1 mesh on the first device: the default when no mesh is given."""
    return Sharding(make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def constrain(x: jax.Array, names: Sequence[Optional[str]],
              sharding: Optional[Sharding]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op without a multi-device mesh."""
    if sharding is None or sharding.mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, sharding.named(names, x.shape))


def merge_rules(overrides: Mapping[str, Optional[Sequence[str]]]) -> dict[str, MeshAxes]:
    """DEFAULT_RULES with some names remapped (from config); unknown names raise."""
    rules = dict(DEFAULT_RULES)
    for name, axes in overrides.items():
        if name not in rules:
            raise ValueError(f"sharding rule override for unknown logical axis '{name}' "
                             f"(known: {', '.join(sorted(rules))})")
        bad = [a for a in (axes or ()) if a not in MESH_AXES]
        if bad:
            raise ValueError(f"sharding rule '{name}' names unknown mesh axis '{bad[0]}' "
                             f"(mesh axes: {MESH_AXES})")
        rules[name] = tuple(axes) if axes else None
    return rules

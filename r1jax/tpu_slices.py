"""TPU slices by name: gcloud accelerator types and libtpu topologies, with HBM per chip.

    parse_slice("v5p-128")     -> TpuSlice("v5p", (4, 4, 4)): 64 chips, 95 GiB each
    parse_slice("v5litepod-256") -> TpuSlice("v5e", (16, 16))
    parse_slice("v5p:2x4x4")   -> TpuSlice("v5p", (2, 4, 4)), named v5p-64

A gcloud type counts TensorCores on v4 / v5p (2 per chip: v5p-128 is 64 chips) and chips on
v5e / v6e (v6e-64 is 64 chips). JAX sees one device per chip (megacore on v4 / v5p).
`TpuSlice.devices()` gives compile-only devices of the slice through libtpu, for AOT
compilation on any host with libtpu installed; no TPU is touched.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Optional

GIB = 1 << 30

# Per generation: HBM per chip, TensorCores per chip as the gcloud type counts them,
# the topology's dimensions, libtpu's chip configuration, and the gcloud type's prefix.
GENERATIONS = {
    "v4": dict(hbm_gib=32, cores=2, dims=3, chip_config="megacore", gcloud="v4"),
    "v5p": dict(hbm_gib=95, cores=2, dims=3, chip_config="megacore", gcloud="v5p"),
    "v5e": dict(hbm_gib=16, cores=1, dims=2, chip_config="default", gcloud="v5litepod"),
    "v6e": dict(hbm_gib=32, cores=1, dims=2, chip_config="default", gcloud="v6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e"}
# The 2-D slices of v5e / v6e: chips -> layout.
LAYOUTS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}
# v4 / v5p slices below a 4x4x4 cube.
SMALL_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}


class SliceError(ValueError):
    """A slice name that is not a TPU slice; the message says what is accepted."""


class LibtpuMissingError(RuntimeError):
    """Compiling for a TPU topology needs libtpu (`pip install 'jax[tpu]'`)."""


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """A TPU slice: a generation ("v5p") and its chip layout ((4, 4, 4))."""

    generation: str
    dims: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.dims)

    @property
    def name(self) -> str:
        """The gcloud accelerator type: v5p-128, v5litepod-256."""
        g = GENERATIONS[self.generation]
        return f"{g['gcloud']}-{self.chips * g['cores']}"

    @property
    def topology(self) -> str:
        """libtpu's topology name: v5p:4x4x4, v5e:16x16."""
        return f"{self.generation}:{'x'.join(map(str, self.dims))}"

    @property
    def hbm_bytes(self) -> int:
        return GENERATIONS[self.generation]["hbm_gib"] * GIB

    def devices(self) -> list:
        """Compile-only devices of the slice, one per chip (needs libtpu, not a TPU).

        Raises:
          LibtpuMissingError: libtpu is not installed.
        """
        from jax.experimental import topologies
        if importlib.util.find_spec("libtpu") is None:
            raise LibtpuMissingError(
                "compiling for a TPU topology needs libtpu: pip install 'jax[tpu]' (it works "
                "on any host, no TPU needed)")
        # Compile-only devices touch no chip: share libtpu with other processes that use it
        # (libtpu's per-host lock file refuses a second process otherwise).
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        dims = tuple(self.dims) + (1,) * (3 - len(self.dims))
        if len(self.dims) == 3:  # a torus once every side is a multiple of 4
            wrap = (all(d % 4 == 0 for d in dims),) * 3
        else:  # v5e / v6e wrap around their 16-chip sides
            wrap = (dims[0] == 16, dims[1] == 16, False)
        return list(topologies.get_topology_desc(
            topology_name=self.topology, platform="tpu",
            chip_config_name=GENERATIONS[self.generation]["chip_config"],
            chips_per_host_bounds=(min(dims[0], 2), min(dims[1], 2), 1),
            wrap=wrap).devices)


def layout_3d(chips: int) -> Optional[tuple[int, int, int]]:
    """The layout of a v4 / v5p slice of `chips` chips: below 64 the gcloud shapes, from 64
    the most cubic a <= b <= c of multiples of 4 (v5p-128: 4x4x4, v5p-768: 4x8x12)."""
    if chips in SMALL_3D:
        return SMALL_3D[chips]
    best = None
    for a in range(4, round(chips ** (1 / 3)) + 1, 4):
        for b in range(a, math.isqrt(chips // a) + 1, 4):
            c, rem = divmod(chips, a * b)
            if rem == 0 and c % 4 == 0 and (best is None or c - a < best[2] - best[0]):
                best = (a, b, c)
    return best


def parse_slice(text: str) -> TpuSlice:
    """A slice from a gcloud accelerator type (v5p-128, v5litepod-256, v6e-64, v4-64) or a
    libtpu topology name (v5p:4x4x4, v5e:16x16).

    Raises:
      SliceError: an unknown generation, or a size the generation does not come in.
    """
    known = ", ".join(sorted(GENERATIONS))
    if ":" in text:
        gen, _, layout = text.partition(":")
        gen = ALIASES.get(gen, gen)
        if gen not in GENERATIONS:
            raise SliceError(f"unknown TPU generation '{gen}' in '{text}' (known: {known})")
        parts = layout.split("x")
        if not all(p.isdigit() and int(p) > 0 for p in parts) \
                or len(parts) != GENERATIONS[gen]["dims"]:
            raise SliceError(f"bad topology '{text}': a {gen} topology is "
                             f"{'AxBxC' if GENERATIONS[gen]['dims'] == 3 else 'AxB'} chips")
        return TpuSlice(gen, tuple(int(p) for p in parts))
    gen, _, count = text.rpartition("-")
    gen = ALIASES.get(gen, gen)
    if gen not in GENERATIONS or not count.isdigit():
        raise SliceError(f"unknown TPU slice '{text}': give a gcloud accelerator type "
                         "(v5p-128, v5litepod-256, v6e-64, v4-64) or a topology (v5p:4x4x4)")
    g = GENERATIONS[gen]
    chips, rem = divmod(int(count), g["cores"])
    dims = None if rem else (layout_3d(chips) if g["dims"] == 3 else LAYOUTS_2D.get(chips))
    if dims is None:
        unit = "TensorCores, 2 per chip" if g["cores"] == 2 else "chips"
        raise SliceError(f"'{text}' is not a {gen} slice size (its number counts {unit})")
    return TpuSlice(gen, dims)

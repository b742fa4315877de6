"""What the TPU and GPU flash kernels share: block sizes, shape checks, sequence padding.

Glossary: B batch, S sequence, H query heads, K KV heads (G = H // K query heads per KV head),
D head dim.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

# Added to masked scores instead of -inf: a block whose scores are all masked then gives
# finite values that the online softmax later scales by exp(MASK - m) == 0, never NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

PLATFORMS = ("tpu", "gpu")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the flash kernels; numerics do not depend on them, speed does.

    Interpret mode takes any multiple of 8. Compiled, Mosaic (TPU) wants multiples of 128
    (or the whole padded sequence) and Triton (GPU) powers of two >= 16.

    Attributes:
      block_q, block_k: query / key rows per tile of the forward kernel.
      block_q_dkv, block_k_dkv: tiles of the backward kernel that accumulates dK and dV.
      block_q_dq, block_k_dq: tiles of the backward kernel that accumulates dQ.
    """

    block_q: int
    block_k: int
    block_q_dkv: int
    block_k_dkv: int
    block_q_dq: int
    block_k_dq: int

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value <= 0 or value % 8:
                raise ValueError(f"BlockSizes.{field.name} must be a positive multiple of 8, "
                                 f"got {value!r}")

    @classmethod
    def get_default(cls, platform: str, *, seq_len: int, num_groups: int,
                    head_dim: int) -> "BlockSizes":
        """Defaults per backend and shape, already fitted to `seq_len`.

        TPU: the forward tile holds all G query heads of a KV head, so block_q shrinks as G
        grows to keep G * block_q * block_k scores within VMEM; tiles stay multiples of 128
        (the lane width). GPU (Triton): powers of two, FlashAttention-2 tile shapes.
        """
        if platform == "tpu":
            block_q = max(128, min(512, _pow2_floor(1024 // max(num_groups, 1))))
            sizes = cls(block_q=block_q, block_k=512, block_q_dkv=block_q,
                        block_k_dkv=512, block_q_dq=block_q, block_k_dq=512)
        elif platform == "gpu":
            wide = head_dim <= 64
            sizes = cls(block_q=128, block_k=128 if wide else 64, block_q_dkv=64,
                        block_k_dkv=128, block_q_dq=128, block_k_dq=64)
        else:
            raise ValueError(f"no flash-attention block sizes for platform '{platform}'; "
                             f"choose one of {PLATFORMS}")
        if platform == "tpu":
            return sizes.fit(seq_len, granule=128)
        return sizes.fit(seq_len, granule=16, power_of_two=True)

    def fit(self, seq_len: int, granule: int = 8, power_of_two: bool = False) -> "BlockSizes":
        """Each block shrunk to at most `seq_len` rounded up to `granule` (or to a power of
        two, at least `granule`)."""
        if power_of_two:
            cap = max(granule, 1 << (max(seq_len, 1) - 1).bit_length())
        else:
            cap = _round_up(seq_len, granule)
        return BlockSizes(**{f.name: min(getattr(self, f.name), cap)
                             for f in dataclasses.fields(self)})

    @property
    def padded_multiple(self) -> int:
        """The padded sequence length must be a multiple of this (every block divides it)."""
        return math.lcm(*(getattr(self, f.name) for f in dataclasses.fields(self)))


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pow2_floor(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


def check_inputs(q: jax.Array, k: jax.Array, v: jax.Array,
                 segment_ids: Optional[jax.Array]) -> tuple[int, int, int, int, int]:
    """Validates shapes and dtypes; returns (B, S, H, K, D).

    Raises:
      ValueError: naming the dimension or argument that is wrong.
    """
    if q.ndim != 4:
        raise ValueError(f"q must be [B, S, H, D], got shape {q.shape}")
    if k.ndim != 4:
        raise ValueError(f"k must be [B, S, K, D], got shape {k.shape}")
    if v.shape != k.shape:
        raise ValueError(f"v shape {v.shape} must equal k shape {k.shape}")
    b, s, h, d = q.shape
    names = ("batch B", "sequence S", None, "head dim D")
    for axis, name in enumerate(names):
        if name is not None and k.shape[axis] != q.shape[axis]:
            raise ValueError(f"{name} differs: q has {q.shape[axis]}, k and v have "
                             f"{k.shape[axis]}")
    kh = k.shape[2]
    if h % kh:
        raise ValueError(f"query heads H={h} must be a multiple of KV heads K={kh}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if segment_ids is not None:
        if segment_ids.shape != (b, s):
            raise ValueError(f"segment_ids must be [B, S] = {(b, s)}, got {segment_ids.shape}")
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f"segment_ids must be integers, got {segment_ids.dtype}")
    return b, s, h, kh, d


def resolve_segment_ids(segment_ids: Optional[jax.Array], b: int, s: int) -> jax.Array:
    """[B, S] int32 segment ids; None means one segment per row."""
    if segment_ids is None:
        return jnp.zeros((b, s), jnp.int32)
    return segment_ids.astype(jnp.int32)


def pad_seq(x: jax.Array, padded: int, axis: int) -> jax.Array:
    """Zero-pads `axis` at the end to length `padded`."""
    extra = padded - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def pad_segment_ids(segment_ids: jax.Array, padded: int) -> jax.Array:
    """[B, S] -> [B, padded]; the padding gets an id no real token has (max + 1).

    Real queries then never attend padded keys (causal or not), and padded queries attend
    each other only, so they stay finite and contribute nothing to the gradients.
    """
    b, s = segment_ids.shape
    if padded == s:
        return segment_ids
    fill = jnp.max(segment_ids) + 1
    return jnp.concatenate(
        [segment_ids, jnp.broadcast_to(fill, (b, padded - s)).astype(segment_ids.dtype)], 1)

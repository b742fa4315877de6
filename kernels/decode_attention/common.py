"""What the TPU and GPU decode kernels share: block sizes and shape checks.

Glossary: B batch, H query heads, K KV heads (G = H // K), S cache slots, D head dim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

PLATFORMS = ("tpu", "gpu")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the decode kernels.

    Attributes:
      block_kv: cache slots read per step (TPU: per grid step; GPU: per loop iteration).
      num_splits: GPU only: the cache of each (row, KV head) is cut into this many chunks
        that run in parallel and are merged afterwards (split-K), so that short batches
        still fill the GPU.
    """

    block_kv: int
    num_splits: int = 1

    def __post_init__(self):
        if not isinstance(self.block_kv, int) or self.block_kv <= 0 or self.block_kv % 8:
            raise ValueError(f"BlockSizes.block_kv must be a positive multiple of 8, "
                             f"got {self.block_kv!r}")
        if not isinstance(self.num_splits, int) or self.num_splits <= 0:
            raise ValueError(f"BlockSizes.num_splits must be a positive int, "
                             f"got {self.num_splits!r}")

    @classmethod
    def get_default(cls, platform: str, *, batch: int, kv_heads: int,
                    cache_len: int) -> "BlockSizes":
        """Defaults per backend and shape.

        TPU: large tiles (the step is a DMA of block_kv x D per KV head; 512 slots amortise
        the per-step overhead). GPU: 64-slot tiles and enough splits for about two programs
        per streaming multiprocessor (132 on an H100 / H200).
        """
        if platform == "tpu":
            return cls(block_kv=min(512, -(-cache_len // 8) * 8))
        if platform == "gpu":
            block = min(64, max(16, 1 << (max(cache_len, 1) - 1).bit_length()))
            max_splits = max(1, -(-cache_len // block))
            want = -(-264 // max(batch * kv_heads, 1))
            return cls(block_kv=block, num_splits=int(min(max_splits, max(1, want))))
        raise ValueError(f"no decode-attention block sizes for platform '{platform}'; "
                         f"choose one of {PLATFORMS}")


def check_inputs(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                 lengths: jax.Array) -> tuple[int, int, int, int, int]:
    """Validates shapes and dtypes; returns (B, H, K, S, D).

    Raises:
      ValueError: naming the dimension or argument that is wrong.
    """
    if q.ndim != 3:
        raise ValueError(f"q must be [B, H, D], got shape {q.shape}")
    if k_cache.ndim != 4:
        raise ValueError(f"k_cache must be [B, K, S, D], got shape {k_cache.shape}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {v_cache.shape} must equal k_cache shape "
                         f"{k_cache.shape}")
    b, h, d = q.shape
    _, kh, s, _ = k_cache.shape
    if k_cache.shape[0] != b:
        raise ValueError(f"batch B differs: q has {b}, the caches have {k_cache.shape[0]}")
    if k_cache.shape[3] != d:
        raise ValueError(f"head dim D differs: q has {d}, the caches have {k_cache.shape[3]}")
    if h % kh:
        raise ValueError(f"query heads H={h} must be a multiple of KV heads K={kh}")
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [B] = ({b},), got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be integers, got {lengths.dtype}")
    if not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(f"q must be floating point, got {q.dtype}")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"q, k_cache, v_cache dtypes differ: {q.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    return b, h, kh, s, d

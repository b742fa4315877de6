"""The model's one attention switch: every attention call of the decoder goes through here.

`impl` selects the implementation:
- "xla": the pure-jnp references in `r1jax.kernels` (any backend; the CPU default).
"""

from __future__ import annotations

from typing import Optional

import jax

from r1jax.kernels.decode_attention import decode_attention_reference
from r1jax.kernels.flash_attention import flash_attention_reference
from r1jax.sharding import Sharding

IMPLS = ("xla",)


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"attention impl '{impl}' is not available; choose one of {IMPLS}")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
              sm_scale: float, impl: str = "xla",
              sharding: Optional[Sharding] = None) -> jax.Array:
    """Causal grouped-query self-attention within segments (training and prefill).

    Args:
      q: [B, S, H, Dh]; k, v: [B, S, K, Dh].
      segment_ids: [B, S] int; tokens attend earlier tokens of the same segment only.
      sm_scale: softmax scale.
      impl: implementation, see module docstring.
      sharding: the mesh and rules, for implementations that need shard_map.
    Returns:
      [B, S, H, Dh].
    """
    del sharding
    _check_impl(impl)
    return flash_attention_reference(q, k, v, segment_ids, causal=True, sm_scale=sm_scale)


def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     lengths: jax.Array, *, sm_scale: float, impl: str = "xla",
                     sharding: Optional[Sharding] = None) -> jax.Array:
    """One new token per row against the valid prefix of its KV cache (decode).

    Args:
      q: [B, H, Dh].
      k_cache, v_cache: [B, K, S, Dh]; slots [0, lengths[b]) of row b are valid.
      lengths: [B] int32.
    Returns:
      [B, H, Dh].
    """
    del sharding
    _check_impl(impl)
    return decode_attention_reference(q, k_cache, v_cache, lengths, sm_scale=sm_scale)

"""Pure-jnp decode attention: the reference for the ragged decode kernels.

Glossary: B batch, H query heads, K KV heads (H % K == 0, G = H // K), S cache slots, D head dim.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def decode_attention_reference(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                               lengths: jax.Array, *,
                               sm_scale: Optional[float] = None) -> jax.Array:
    """One query token per row against the first `lengths[b]` slots of its KV cache.

    Args:
      q: [B, H, D] queries (the newest token of each row).
      k_cache: [B, K, S, D] keys; slots [0, lengths[b]) of row b are valid.
      v_cache: [B, K, S, D] values.
      lengths: [B] int32 valid lengths, 0 <= lengths[b] <= S. A row with length 0 attends to
        nothing and returns zeros.
      sm_scale: softmax scale; default D ** -0.5.

    Returns:
      [B, H, D] in q's dtype; scores, softmax and accumulation in float32.
    """
    b, h, d = q.shape
    kh = k_cache.shape[1]
    if sm_scale is None:
        sm_scale = d ** -0.5
    qg = q.reshape(b, kh, h // kh, d)
    scores = jnp.einsum("bkgd,bksd->bkgs", qg, k_cache,
                        preferred_element_type=jnp.float32) * sm_scale
    return attend_values(scores, v_cache, lengths).reshape(b, h, d).astype(q.dtype)


def attend_values(scores: jax.Array, v_cache: jax.Array, lengths: jax.Array) -> jax.Array:
    """Softmax over the valid slots of float32 scores [B, K, G, S], applied to v_cache
    [B, K, S, D]: [B, K, G, D] float32 (zeros for a row of length 0)."""
    s = scores.shape[-1]
    valid = jnp.arange(s)[None, :] < lengths[:, None]
    scores = jnp.where(valid[:, None, None, :], scores, -jnp.inf)
    peak = jnp.max(scores, axis=-1, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    weights = jnp.exp(scores - peak)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    out = jnp.einsum("bkgs,bksd->bkgd", weights.astype(v_cache.dtype), v_cache,
                     preferred_element_type=jnp.float32)
    return out / jnp.where(denom > 0, denom, 1.0)

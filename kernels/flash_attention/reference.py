"""Pure-jnp causal attention with segment ids: the reference for the flash kernels.

Glossary: B batch, S sequence, H query heads, K KV heads (H % K == 0, G = H // K), D head dim.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def flash_attention_reference(q: jax.Array, k: jax.Array, v: jax.Array,
                              segment_ids: Optional[jax.Array] = None, *,
                              causal: bool = True,
                              sm_scale: Optional[float] = None) -> jax.Array:
    """Softmax attention, grouped-query, masked by causality and segment equality.

    Query i attends key j iff (not causal or j <= i) and segment_ids[i] == segment_ids[j].
    Padding is a segment of its own (id 0 by convention), so pads attend only pads and every
    query has at least itself to attend to: no row is ever fully masked.

    Args:
      q: [B, S, H, D] queries.
      k: [B, S, K, D] keys.
      v: [B, S, K, D] values.
      segment_ids: [B, S] int segment ids, or None for one segment per row.
      causal: mask keys after the query.
      sm_scale: softmax scale; default D ** -0.5.

    Returns:
      [B, S, H, D] in q's dtype; scores, softmax and accumulation in float32.
    """
    b, s, h, d = q.shape
    kh = k.shape[2]
    if sm_scale is None:
        sm_scale = d ** -0.5
    qg = q.reshape(b, s, kh, h // kh, d)
    scores = jnp.einsum("bskgd,btkd->bkgst", qg, k,
                        preferred_element_type=jnp.float32) * sm_scale
    mask = jnp.ones((b, s, s), dtype=bool)
    if causal:
        mask &= jnp.tril(jnp.ones((s, s), dtype=bool))[None]
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgst,btkd->bskgd", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return out.reshape(b, s, h, d).astype(q.dtype)

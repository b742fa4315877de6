"""Plain-XLA causal attention with a flash-style backward: the CPU training implementation.

Same maths as `reference.flash_attention_reference` (whose autodiff it replaces), but the
backward pass is written by hand the way the Pallas kernels do it: the forward saves only
q, k, v, the output and the per-row log-sum-exp, and the backward recomputes the probabilities
from them. Autodiff of the reference instead keeps the [B, H, S, S] probabilities of every
layer alive from forward to backward (on the CPU step benchmark, 600 MB for an 8-layer model
at S = 272, plus the time to write and read them back).

Glossary: B batch, S sequence, H query heads, K KV heads (G = H // K), D head dim.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.kernels.flash_attention.reference import flash_attention_reference


def _mask(s: int, segment_ids: Optional[jax.Array], causal: bool, batch: int) -> jax.Array:
    """[B, 1, 1, S, S] bool: query i may attend key j."""
    mask = jnp.ones((batch, s, s), dtype=bool)
    if causal:
        mask &= jnp.tril(jnp.ones((s, s), dtype=bool))[None]
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    return mask[:, None, None]


def _scores(q, k, segment_ids, causal, sm_scale):
    """Masked scores [B, K, G, S, S] in float32 (masked entries -inf), q grouped by KV head."""
    b, s, h, d = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, s, kh, h // kh, d)
    scores = jnp.einsum("bskgd,btkd->bkgst", qg, k,
                        preferred_element_type=jnp.float32) * sm_scale
    return jnp.where(_mask(s, segment_ids, causal, b), scores, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, segment_ids, causal, sm_scale):
    return flash_attention_reference(q, k, v, segment_ids, causal=causal, sm_scale=sm_scale)


def _attention_fwd(q, k, v, segment_ids, causal, sm_scale):
    b, s, h, d = q.shape
    scores = _scores(q, k, segment_ids, causal, sm_scale)
    m = jnp.max(scores, axis=-1, keepdims=True)  # finite: every query attends itself
    p = jnp.exp(scores - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkgst,btkd->bskgd", (p / denom).astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    out = out.reshape(b, s, h, d).astype(q.dtype)
    lse = (m + jnp.log(denom))[..., 0]  # [B, K, G, S]
    return out, (q, k, v, segment_ids, out, lse)


def _attention_bwd(causal, sm_scale, res, d_out):
    q, k, v, segment_ids, out, lse = res
    b, s, h, d = q.shape
    kh = k.shape[2]
    g = h // kh
    p = jnp.exp(_scores(q, k, segment_ids, causal, sm_scale) - lse[..., None])
    do = d_out.reshape(b, s, kh, g, d)
    # delta_i = sum_j p_ij dp_ij = do_i . o_i: the softmax backward without a pass over S x S.
    delta = jnp.einsum("bskgd,bskgd->bkgs", do.astype(jnp.float32),
                       out.reshape(b, s, kh, g, d).astype(jnp.float32))
    d_v = jnp.einsum("bkgst,bskgd->btkd", p.astype(v.dtype), do,
                     preferred_element_type=jnp.float32)
    dp = jnp.einsum("bskgd,btkd->bkgst", do, v, preferred_element_type=jnp.float32)
    ds = (p * (dp - delta[..., None]) * sm_scale).astype(q.dtype)
    d_q = jnp.einsum("bkgst,btkd->bskgd", ds, k, preferred_element_type=jnp.float32)
    d_k = jnp.einsum("bkgst,bskgd->btkd", ds, q.reshape(b, s, kh, g, d),
                     preferred_element_type=jnp.float32)
    # Integer segment ids take a float0 cotangent.
    d_seg = None if segment_ids is None else np.zeros(segment_ids.shape, jax.dtypes.float0)
    return (d_q.reshape(b, s, h, d).astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype),
            d_seg)


_attention.defvjp(_attention_fwd, _attention_bwd)


def flash_attention_xla(q: jax.Array, k: jax.Array, v: jax.Array,
                        segment_ids: Optional[jax.Array] = None, *, causal: bool = True,
                        sm_scale: Optional[float] = None) -> jax.Array:
    """`flash_attention_reference`'s values, with a backward that recomputes the softmax.

    Args:
      q: [B, S, H, D]; k, v: [B, S, K, D]; segment_ids: [B, S] int or None.
      causal: mask keys after the query.
      sm_scale: softmax scale; default D ** -0.5.
    Returns:
      [B, S, H, D] in q's dtype.
    """
    if sm_scale is None:
        sm_scale = q.shape[-1] ** -0.5
    return _attention(q, k, v, segment_ids, causal, float(sm_scale))

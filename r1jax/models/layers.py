"""Pure functions of the decoder: RMSNorm, rotary embeddings, the gated MLP, positions.

Glossary: B batch, S sequence, D model dim, F MLP dim, H query heads, K KV heads, Dh head dim.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from r1jax.config import RopeScaling


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm as Llama / Qwen compute it: statistics in float32, scale in x's dtype.

    Args:
      x: [..., D].
      weight: [D].
    """
    xf = x.astype(jnp.float32)
    xf = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * xf.astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float,
                  scaling: Optional[RopeScaling] = None) -> np.ndarray:
    """Inverse frequencies [Dh / 2] (float32), with linear or Llama-3 scaling."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32)
                           / head_dim))
    inv = inv.astype(np.float32)
    if scaling is None:
        return inv
    if scaling.kind == "linear":
        return (inv / scaling.factor).astype(np.float32)
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate between.
    old = scaling.original_max_position_embeddings
    low_wavelen = old / scaling.low_freq_factor
    high_wavelen = old / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (old / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_angles(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, S, Dh / 2] float32 of positions [B, S] x inv_freq [Dh / 2], for
    `rotate`. XLA may fuse them into each rotation that reads them and evaluate them there
    again; the decode loop therefore gathers them from a table built outside the loop
    (r1jax/sampling/sampler.py `_rope_table`)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(freqs), jnp.sin(freqs)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates the two halves of each head (the Hugging Face "rotate_half" layout).

    Args:
      x: [B, S, N, Dh] queries or keys.
      cos, sin: [B, S, Dh / 2] from `rope_angles`.
    """
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@jax.custom_vjp
def gated_mlp(x: jax.Array, w_gate: jax.Array, w_up: jax.Array,
              w_down: jax.Array) -> jax.Array:
    """down(silu(x @ gate) * (x @ up)), with a hand-written backward pass.

    The backward saves only x and the two projections, recomputes the activation, and hands
    the weight-gradient matmuls their operands in plain [tokens, features] layout; autodiff's
    version made XLA:CPU transpose the [B, S, F] activation gradients with strided copies
    (a quarter of the update's time on the CPU benchmark) and saved more activations.

    Args:
      x: [B, S, D]; w_gate, w_up: [D, F]; w_down: [F, D].
    Returns:
      [B, S, D].
    """
    return _gated_mlp_fwd(x, w_gate, w_up, w_down)[0]


def _gated_mlp_fwd(x, w_gate, w_up, w_down):
    gate = jnp.einsum("bsd,df->bsf", x, w_gate)
    up = jnp.einsum("bsd,df->bsf", x, w_up)
    out = jnp.einsum("bsf,fd->bsd", jax.nn.silu(gate) * up, w_down)
    return out, (x, gate, up, w_gate, w_up, w_down)


def _gated_mlp_bwd(res, g):
    x, gate, up, w_gate, w_up, w_down = res
    sig = jax.nn.sigmoid(gate)
    act = gate * sig  # silu(gate)
    # [D, F] then a transpose of the small result: XLA:CPU's dot wants the contracted token
    # axis of its lhs minor, and transposing g [T, D] costs F / D times less than act * up.
    d_w_down = jnp.einsum("bsd,bsf->df", g, act * up).T
    d_hidden = jnp.einsum("bsd,fd->bsf", g, w_down)
    d_up = d_hidden * act
    d_gate = d_hidden * up * sig * (1 + gate * (1 - sig))  # silu'(z) = s(z) (1 + z (1 - s(z)))
    # Materialize both gradients before the matmuls that read them twice each, so XLA does
    # not fuse the elementwise maths into (and transpose it for) every consumer.
    d_gate, d_up = jax.lax.optimization_barrier((d_gate, d_up))
    d_x = (jnp.einsum("bsf,df->bsd", d_gate, w_gate)
           + jnp.einsum("bsf,df->bsd", d_up, w_up))
    d_w_gate = jnp.einsum("bsd,bsf->df", x, d_gate)
    d_w_up = jnp.einsum("bsd,bsf->df", x, d_up)
    return d_x, d_w_gate, d_w_up, d_w_down


gated_mlp.defvjp(_gated_mlp_fwd, _gated_mlp_bwd)


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Position of each token within its segment: 0, 1, 2, ... restarting at each change.

    For a left-padded row with segment ids [0, 0, 1, 1, 1] this gives [0, 1, 0, 1, 2], so the
    real tokens sit at 0, 1, 2 exactly as in the unpadded sequence.

    Args:
      segment_ids: [B, S] int.
    Returns:
      [B, S] int32.
    """
    s = segment_ids.shape[1]
    idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), segment_ids.shape)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], dtype=bool),
         segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    first = lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - first

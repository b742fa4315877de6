"""Ragged decode attention for TPU (Pallas Mosaic).

One new query token per row against the first `lengths[b]` slots of its KV cache. The grid
walks (row, KV head, cache tile); the row lengths are prefetched into SMEM, so tiles at or past
a row's length are neither computed nor fetched (the index map repeats the row's last needed
tile, and the pipeline skips a DMA whose source has not changed). Each step holds the G query
heads of one KV head, so every cache tile is read once per group.

Glossary: B batch, H query heads, K KV heads (G = H // K), S cache slots, D head dim.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from r1jax.kernels.decode_attention import common
from r1jax.kernels.decode_attention.common import MASK_VALUE, BlockSizes

NT = (((1,), (1,)), ((), ()))  # a @ b.T
LANES = 128
F32 = jnp.float32


@functools.partial(jax.jit, static_argnames=("sm_scale", "block_sizes", "interpret"))
def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     lengths: jax.Array, *, sm_scale: Optional[float] = None,
                     block_sizes: Optional[BlockSizes] = None,
                     interpret: bool = False) -> jax.Array:
    """Decode attention over ragged caches, as `decode_attention_reference`.

    Args:
      q: [B, H, D] queries (the newest token of each row).
      k_cache, v_cache: [B, K, S, D], same dtype as q; slots [0, lengths[b]) are valid.
      lengths: [B] int valid lengths; 0 gives zeros, values past S count as S.
      sm_scale: softmax scale; default D ** -0.5.
      block_sizes: tiling; default `BlockSizes.get_default("tpu", ...)` (num_splits unused).
      interpret: run in Pallas TPU interpret mode (CPU).

    Returns:
      [B, H, D] in q's dtype.

    Raises:
      ValueError: on inconsistent shapes, naming the dimension.
    """
    b, h, kh, s, d = common.check_inputs(q, k_cache, v_cache, lengths)
    g = h // kh
    sm_scale = d ** -0.5 if sm_scale is None else float(sm_scale)
    if block_sizes is None:
        block_sizes = BlockSizes.get_default("tpu", batch=b, kv_heads=kh, cache_len=s)
    block = min(block_sizes.block_kv, -(-s // 8) * 8)
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, s)
    out = _decode(q.reshape(b, kh, g, d), k_cache, v_cache, lengths, sm_scale, block,
                  interpret)
    return out.reshape(b, h, d)


def _kernel(len_ref, q_ref, k_ref, v_ref, o_ref, m_sc, l_sc, acc_sc, *, sm_scale, num_blocks):
    bi, ti = pl.program_id(0), pl.program_id(2)
    block = k_ref.shape[0]
    length = len_ref[bi]

    @pl.when(ti == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, F32)
        l_sc[...] = jnp.zeros(l_sc.shape, F32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, F32)

    @pl.when(ti * block < length)
    def _step():
        s = lax.dot_general(q_ref[...], k_ref[...], NT, preferred_element_type=F32)
        s = s * sm_scale  # [G, block]
        pos = ti * block + lax.broadcasted_iota(jnp.int32, s.shape, 1)
        s = jnp.where(pos < length, s, MASK_VALUE)
        m_prev = m_sc[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
        alpha = jnp.exp(m_prev - m_next)
        p = jnp.exp(s - m_next[:, :1])
        l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=-1, keepdims=True)
        m_sc[...] = m_next
        # Slots past the length may hold anything (the tail of a partial last tile is
        # uninitialised memory): zero them so that 0 * NaN never reaches the sum.
        v = v_ref[...]
        slot = ti * block + lax.broadcasted_iota(jnp.int32, v.shape, 0)
        v = jnp.where(slot < length, v, jnp.zeros_like(v))
        pv = lax.dot(p.astype(v.dtype), v, preferred_element_type=F32)
        acc_sc[...] = acc_sc[...] * alpha[:, :1] + pv

    @pl.when(ti == num_blocks - 1)
    def _finish():
        l = l_sc[...][:, :1]
        safe = jnp.where(l > 0, l, 1.0)
        o_ref[...] = jnp.where(l > 0, acc_sc[...] / safe, 0.0).astype(o_ref.dtype)


def _decode(q, k_cache, v_cache, lengths, sm_scale, block, interpret):
    """q [B, K, G, D], caches [B, K, S, D], lengths [B] in [0, S] -> [B, K, G, D]."""
    b, kh, g, d = q.shape
    s = k_cache.shape[2]
    nb = -(-s // block)

    def kv_index(bi, hi, ti, len_ref):
        last = jnp.maximum(lax.div(len_ref[bi] + block - 1, block) - 1, 0)
        return bi, hi, jnp.minimum(ti, last), 0

    def q_index(bi, hi, ti, len_ref):
        return bi, hi, 0, 0

    kernel = functools.partial(_kernel, sm_scale=sm_scale, num_blocks=nb)
    itemsize = k_cache.dtype.itemsize
    cost = pl.CostEstimate(flops=4 * b * kh * g * s * d, transcendentals=b * kh * g * s,
                           bytes_accessed=2 * k_cache.size * itemsize + 2 * q.size * itemsize)
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, kh, nb),
            in_specs=[
                pl.BlockSpec((None, None, g, d), q_index),
                pl.BlockSpec((None, None, block, d), kv_index),
                pl.BlockSpec((None, None, block, d), kv_index),
            ],
            out_specs=pl.BlockSpec((None, None, g, d), q_index),
            scratch_shapes=[pltpu.VMEM((g, LANES), F32), pltpu.VMEM((g, LANES), F32),
                            pltpu.VMEM((g, d), F32)],
        ),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False,
        cost_estimate=cost,
        name="decode_attention",
    )(lengths, q, k_cache, v_cache)

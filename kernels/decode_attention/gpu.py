"""Ragged decode attention for GPU (Pallas on Triton), split-K ("flash decoding").

The grid is (split, row, KV head). Each program takes one contiguous chunk of a row's cache and
loops over its tiles only up to the row's length, with masked loads, so slots past the length
are never read; the G query heads of the KV head (padded to 16, the smallest tl.dot tile) share
every K/V tile. Programs write an unnormalised partial output with its running max and sum;
a few jnp ops merge the splits.

Glossary: B batch, H query heads, K KV heads (G = H // K), S cache slots, D head dim.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from r1jax.kernels.decode_attention import common
from r1jax.kernels.decode_attention.common import MASK_VALUE, BlockSizes

NT = (((1,), (1,)), ((), ()))  # a @ b.T
LOG2E = math.log2(math.e)
F32 = jnp.float32


@functools.partial(jax.jit, static_argnames=("sm_scale", "block_sizes", "interpret",
                                             "num_warps", "num_stages"))
def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     lengths: jax.Array, *, sm_scale: Optional[float] = None,
                     block_sizes: Optional[BlockSizes] = None, interpret: bool = False,
                     num_warps: Optional[int] = None, num_stages: int = 2) -> jax.Array:
    """Decode attention over ragged caches, as `decode_attention_reference`.

    Args:
      q: [B, H, D] queries (the newest token of each row), D a power of two >= 16.
      k_cache, v_cache: [B, K, S, D], same dtype as q; slots [0, lengths[b]) are valid.
      lengths: [B] int valid lengths; 0 gives zeros, values past S count as S.
      sm_scale: softmax scale; default D ** -0.5.
      block_sizes: tiling (block_kv a power of two >= 16); default
        `BlockSizes.get_default("gpu", ...)`.
      interpret: run in Pallas interpret mode (CPU).
      num_warps, num_stages: Triton launch parameters.

    Returns:
      [B, H, D] in q's dtype.

    Raises:
      ValueError: on inconsistent shapes or block sizes, naming the dimension.
    """
    b, h, kh, s, d = common.check_inputs(q, k_cache, v_cache, lengths)
    if d < 16 or d & (d - 1):
        raise ValueError(f"head dim D={d} must be a power of two >= 16 for the Triton kernel")
    if block_sizes is None:
        block_sizes = BlockSizes.get_default("gpu", batch=b, kv_heads=kh, cache_len=s)
    block = block_sizes.block_kv
    if block < 16 or block & (block - 1):
        raise ValueError(f"BlockSizes.block_kv={block} must be a power of two >= 16 for the "
                         f"Triton kernel")
    sm_scale = d ** -0.5 if sm_scale is None else float(sm_scale)
    g = h // kh
    gp = max(16, 1 << (g - 1).bit_length())
    chunk = -(-s // (block_sizes.num_splits * block)) * block  # slots per split
    splits = -(-s // chunk)
    qg = jnp.pad(q.reshape(b, kh, g, d), ((0, 0), (0, 0), (0, gp - g), (0, 0)))
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, s)
    kernel = functools.partial(_kernel, sm_scale=sm_scale, block=block, chunk=chunk)
    kv_spec = pl.BlockSpec((None, None, s, d), lambda j, bi, hi: (bi, hi, 0, 0))
    o, m, l = pl.pallas_call(
        kernel,
        grid=(splits, b, kh),
        in_specs=[pl.BlockSpec((None,), lambda j, bi, hi: (bi,)),
                  pl.BlockSpec((None, None, gp, d), lambda j, bi, hi: (bi, hi, 0, 0)),
                  kv_spec, kv_spec],
        out_specs=[pl.BlockSpec((None, None, None, gp, d), lambda j, bi, hi: (bi, hi, j, 0, 0)),
                   pl.BlockSpec((None, None, None, gp), lambda j, bi, hi: (bi, hi, j, 0)),
                   pl.BlockSpec((None, None, None, gp), lambda j, bi, hi: (bi, hi, j, 0))],
        out_shape=[jax.ShapeDtypeStruct((b, kh, splits, gp, d), F32),
                   jax.ShapeDtypeStruct((b, kh, splits, gp), F32),
                   jax.ShapeDtypeStruct((b, kh, splits, gp), F32)],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps or 4, num_stages=num_stages),
        interpret=interpret,
        name="decode_attention",
    )(lengths, qg, k_cache, v_cache)
    out = _merge_splits(o, m, l)[:, :, :g]
    return out.reshape(b, h, d).astype(q.dtype)


def _kernel(len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, sm_scale, block, chunk):
    gp, d = q_ref.shape
    start = pl.program_id(0) * chunk
    length = len_ref[...]
    q = q_ref[...]
    scale = sm_scale * LOG2E

    def body(t, carry):
        acc, m, l = carry
        first = start + t * block
        valid = first + jnp.arange(block) < length
        rows = pl.ds(first, block)
        k = plgpu.load(k_ref.at[rows, :], mask=valid[:, None], other=0.0)
        s = lax.dot_general(q, k, NT, preferred_element_type=F32) * scale  # [gp, block]
        s = jnp.where(valid[None, :], s, MASK_VALUE)
        m_next = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_next)
        p = jnp.exp2(s - m_next[:, None])
        l = alpha * l + jnp.sum(p, axis=1)
        v = plgpu.load(v_ref.at[rows, :], mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + lax.dot(p.astype(v.dtype), v, preferred_element_type=F32)
        return acc, m_next, l

    n = jnp.clip(lax.div(length - start + block - 1, block), 0, chunk // block)
    init = (jnp.zeros((gp, d), F32), jnp.full((gp,), -jnp.inf, F32), jnp.zeros((gp,), F32))
    acc, m, l = lax.fori_loop(0, n, body, init)
    o_ref[...] = acc
    m_ref[...] = m
    l_ref[...] = l


def _merge_splits(o: jax.Array, m: jax.Array, l: jax.Array) -> jax.Array:
    """Partials o [B, K, P, G, D], base-2 max m and sum l [B, K, P, G] -> [B, K, G, D].

    Splits that saw no valid slot have l == 0 and weigh nothing; rows with no valid slot at
    all come out as zeros.
    """
    peak = jnp.max(jnp.where(l > 0, m, -jnp.inf), axis=2, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    w = jnp.where(l > 0, jnp.exp2(m - peak), 0.0)
    total = jnp.sum(w * l, axis=2)
    out = jnp.sum(w[..., None] * o, axis=2)
    return jnp.where(total[..., None] > 0, out / jnp.where(total > 0, total, 1.0)[..., None], 0.0)

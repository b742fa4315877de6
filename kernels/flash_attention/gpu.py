"""Flash attention for GPU (Pallas on Triton): causal, grouped-query, segment ids, custom VJP.

FlashAttention-2 on the [B, S, H, D] layout the model uses, so no transposes: each program of
the forward and dQ kernels owns one query tile of one head and loops over the key tiles up to
the diagonal; each program of the dK/dV kernel owns one key tile of one KV head and loops over
the G query heads of its group and their query tiles, so K and V are never repeated per query
head. Softmax runs in base 2 (exp2 is one instruction), the saved log-sum-exp in base e.

Glossary: B batch, S sequence, H query heads, K KV heads, G = H // K, D head dim.
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

from r1jax.kernels.flash_attention import common
from r1jax.kernels.flash_attention.common import MASK_VALUE, BlockSizes

NT = (((1,), (1,)), ((), ()))  # a @ b.T
LOG2E = math.log2(math.e)
F32 = jnp.float32


@functools.partial(jax.jit, static_argnames=("causal", "sm_scale", "block_sizes", "interpret",
                                             "num_warps", "num_stages"))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    segment_ids: Optional[jax.Array] = None, *, causal: bool = True,
                    sm_scale: Optional[float] = None,
                    block_sizes: Optional[BlockSizes] = None, interpret: bool = False,
                    num_warps: Optional[int] = None, num_stages: int = 2) -> jax.Array:
    """Causal grouped-query attention within segments, as `flash_attention_reference`.

    Args:
      q: [B, S, H, D] queries (float32, float16 or bfloat16; softmax in float32), D a power
        of two >= 16.
      k, v: [B, S, K, D] keys and values, H % K == 0.
      segment_ids: [B, S] int; query i attends key j iff ids are equal (and j <= i if
        causal). None: one segment per row.
      causal: mask keys after the query.
      sm_scale: softmax scale; default D ** -0.5.
      block_sizes: tiles (powers of two >= 16); default `BlockSizes.get_default("gpu", ...)`.
        Any S works: the sequence is padded to a multiple of the blocks.
      interpret: run in Pallas interpret mode (CPU).
      num_warps, num_stages: Triton launch parameters; default 4 warps for D <= 64, else 8.

    Returns:
      [B, S, H, D] in q's dtype.

    Raises:
      ValueError: on inconsistent shapes or block sizes, naming the dimension.
    """
    b, s, h, kh, d = common.check_inputs(q, k, v, segment_ids)
    if d < 16 or d & (d - 1):
        raise ValueError(f"head dim D={d} must be a power of two >= 16 for the Triton kernel")
    sm_scale = d ** -0.5 if sm_scale is None else float(sm_scale)
    if block_sizes is None:
        block_sizes = BlockSizes.get_default("gpu", seq_len=s, num_groups=h // kh, head_dim=d)
    else:
        block_sizes = block_sizes.fit(s, granule=16, power_of_two=True)
    _check_blocks(block_sizes)
    sp = -(-s // block_sizes.padded_multiple) * block_sizes.padded_multiple
    seg = common.pad_segment_ids(common.resolve_segment_ids(segment_ids, b, s), sp)
    q, k, v = (common.pad_seq(x, sp, 1) for x in (q, k, v))
    launch = (interpret, num_warps or (4 if d <= 64 else 8), num_stages)
    return _flash(q, k, v, seg, causal, sm_scale, block_sizes, launch)[:, :s]


def _check_blocks(blocks: BlockSizes) -> None:
    for name, value in vars(blocks).items():
        if value < 16 or value & (value - 1):
            raise ValueError(f"BlockSizes.{name}={value} must be a power of two >= 16 for the "
                             f"Triton kernels (tl.dot needs 16 x 16 tiles)")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, seg, causal, sm_scale, blocks, launch):
    return _forward(q, k, v, seg, causal, sm_scale, blocks, launch)[0]


def _flash_fwd(q, k, v, seg, causal, sm_scale, blocks, launch):
    o, lse = _forward(q, k, v, seg, causal, sm_scale, blocks, launch)
    return o, (q, k, v, seg, o, lse)


def _flash_bwd(causal, sm_scale, blocks, launch, residuals, do):
    q, k, v, seg, o, lse = residuals
    di = jnp.sum(o.astype(F32) * do.astype(F32), axis=-1).transpose(0, 2, 1)  # [B, H, S]
    dk, dv = _backward_dkv(q, k, v, seg, do, lse, di, causal, sm_scale, blocks, launch)
    dq = _backward_dq(q, k, v, seg, do, lse, di, causal, sm_scale, blocks, launch)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _call(kernel, launch, name, **kwargs):
    interpret, num_warps, num_stages = launch
    return pl.pallas_call(
        kernel, interpret=interpret, name=name,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        **kwargs)


def _mask(seg_rows, seg_cols, rows, cols, causal, rows_are_queries):
    """[rows, cols] bool: same segment, and key position <= query position if causal."""
    mask = seg_rows[:, None] == seg_cols[None, :]
    if causal:
        r, c = rows[:, None], cols[None, :]
        mask = mask & ((c <= r) if rows_are_queries else (r <= c))
    return mask


def _num_key_blocks(qi, block_q, block_k, seq_len, causal):
    """Key tiles a query tile needs: up to its last query if causal, else all."""
    if causal:
        return lax.div((qi + 1) * block_q + block_k - 1, block_k)
    return seq_len // block_k


# --------------------------------------------------------------------------------------------
# Forward: grid (query tiles, B, H).


def _fwd_kernel(q_ref, k_ref, v_ref, segq_ref, segk_ref, o_ref, lse_ref, *, causal, sm_scale,
                block_k):
    bq, d = q_ref.shape
    qi = pl.program_id(0)
    q = q_ref[...]
    seg_q = segq_ref[...]
    rows = qi * bq + jnp.arange(bq)
    scale = sm_scale * LOG2E

    def body(j, carry):
        acc, m, l = carry
        ks = pl.ds(j * block_k, block_k)
        s = lax.dot_general(q, k_ref[ks, :], NT, preferred_element_type=F32) * scale
        mask = _mask(seg_q, segk_ref[ks], rows, j * block_k + jnp.arange(block_k), causal,
                     rows_are_queries=True)
        s = jnp.where(mask, s, MASK_VALUE)
        m_next = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_next)
        p = jnp.exp2(s - m_next[:, None])
        l = alpha * l + jnp.sum(p, axis=1)
        v = v_ref[ks, :]
        acc = acc * alpha[:, None] + lax.dot(p.astype(v.dtype), v, preferred_element_type=F32)
        return acc, m_next, l

    init = (jnp.zeros((bq, d), F32), jnp.full((bq,), -jnp.inf, F32), jnp.zeros((bq,), F32))
    n = _num_key_blocks(qi, bq, block_k, k_ref.shape[0], causal)
    acc, m, l = lax.fori_loop(0, n, body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = (m + jnp.log2(l)) / LOG2E


def _forward(q, k, v, seg, causal, sm_scale, blocks, launch):
    """q [B, S, H, D], k, v [B, S, K, D], seg [B, S] -> o like q, lse [B, H, S]."""
    b, s, h, d = q.shape
    g = h // k.shape[2]
    bq = blocks.block_q
    kernel = functools.partial(_fwd_kernel, causal=causal, sm_scale=sm_scale,
                               block_k=blocks.block_k)
    q_spec = pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0))
    kv_spec = pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, lax.div(hi, g), 0))
    return _call(
        kernel, launch, "flash_attention_fwd",
        grid=(s // bq, b, h),
        in_specs=[q_spec, kv_spec, kv_spec,
                  pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, i)),
                  pl.BlockSpec((None, s), lambda i, bi, hi: (bi, 0))],
        out_specs=[q_spec, pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, h, s), F32)],
    )(q, k, v, seg, seg)


# --------------------------------------------------------------------------------------------
# Backward dK, dV: grid (key tiles, B, K); scores transposed, keys down the rows.


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, segq_ref, segk_ref,
                dk_ref, dv_ref, *, causal, sm_scale, block_q):
    bk, d = k_ref.shape
    s, g, _ = q_ref.shape
    j = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]
    seg_k = segk_ref[...]
    cols = j * bk + jnp.arange(bk)
    first = lax.div(j * bk, block_q) if causal else 0
    scale = sm_scale * LOG2E

    def body(i, carry, head):
        dk, dv = carry
        qs = pl.ds(i * block_q, block_q)
        q, do = q_ref[qs, head, :], do_ref[qs, head, :]
        st = lax.dot_general(k, q, NT, preferred_element_type=F32) * scale  # [bk, bq]
        mask = _mask(seg_k, segq_ref[qs], cols, i * block_q + jnp.arange(block_q), causal,
                     rows_are_queries=False)
        st = jnp.where(mask, st, MASK_VALUE)
        pt = jnp.exp2(st - lse_ref[head, qs][None, :] * LOG2E)
        dv = dv + lax.dot(pt.astype(do.dtype), do, preferred_element_type=F32)
        dpt = lax.dot_general(v, do, NT, preferred_element_type=F32)
        dst = pt * (dpt - di_ref[head, qs][None, :]) * sm_scale
        dk = dk + lax.dot(dst.astype(q.dtype), q, preferred_element_type=F32)
        return dk, dv

    carry = (jnp.zeros((bk, d), F32), jnp.zeros((bk, d), F32))
    for head in range(g):  # the G query heads that share this KV head
        carry = lax.fori_loop(first, s // block_q, functools.partial(body, head=head), carry)
    dk_ref[...] = carry[0].astype(dk_ref.dtype)
    dv_ref[...] = carry[1].astype(dv_ref.dtype)


def _backward_dkv(q, k, v, seg, do, lse, di, causal, sm_scale, blocks, launch):
    b, s, h, d = q.shape
    kh = k.shape[2]
    g = h // kh
    bk = blocks.block_k_dkv
    kernel = functools.partial(_dkv_kernel, causal=causal, sm_scale=sm_scale,
                               block_q=blocks.block_q_dkv)
    group_spec = pl.BlockSpec((None, s, g, d), lambda j, bi, hi: (bi, 0, hi, 0))
    row_spec = pl.BlockSpec((None, g, s), lambda j, bi, hi: (bi, hi, 0))
    k_spec = pl.BlockSpec((None, bk, None, d), lambda j, bi, hi: (bi, j, hi, 0))
    return _call(
        kernel, launch, "flash_attention_bwd_dkv",
        grid=(s // bk, b, kh),
        in_specs=[group_spec, k_spec, k_spec, group_spec, row_spec, row_spec,
                  pl.BlockSpec((None, s), lambda j, bi, hi: (bi, 0)),
                  pl.BlockSpec((None, bk), lambda j, bi, hi: (bi, j))],
        out_specs=[k_spec, k_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)],
    )(q, k, v, do, lse, di, seg, seg)


# --------------------------------------------------------------------------------------------
# Backward dQ: grid (query tiles, B, H).


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, segq_ref, segk_ref, dq_ref, *,
               causal, sm_scale, block_k):
    bq, d = q_ref.shape
    qi = pl.program_id(0)
    q, do = q_ref[...], do_ref[...]
    seg_q = segq_ref[...]
    lse = lse_ref[...] * LOG2E
    di = di_ref[...]
    rows = qi * bq + jnp.arange(bq)
    scale = sm_scale * LOG2E

    def body(j, dq):
        ks = pl.ds(j * block_k, block_k)
        k, v = k_ref[ks, :], v_ref[ks, :]
        s = lax.dot_general(q, k, NT, preferred_element_type=F32) * scale
        mask = _mask(seg_q, segk_ref[ks], rows, j * block_k + jnp.arange(block_k), causal,
                     rows_are_queries=True)
        p = jnp.exp2(jnp.where(mask, s, MASK_VALUE) - lse[:, None])
        dp = lax.dot_general(do, v, NT, preferred_element_type=F32)
        ds = p * (dp - di[:, None]) * sm_scale
        return dq + lax.dot(ds.astype(k.dtype), k, preferred_element_type=F32)

    n = _num_key_blocks(qi, bq, block_k, k_ref.shape[0], causal)
    dq = lax.fori_loop(0, n, body, jnp.zeros((bq, d), F32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _backward_dq(q, k, v, seg, do, lse, di, causal, sm_scale, blocks, launch):
    b, s, h, d = q.shape
    g = h // k.shape[2]
    bq = blocks.block_q_dq
    kernel = functools.partial(_dq_kernel, causal=causal, sm_scale=sm_scale,
                               block_k=blocks.block_k_dq)
    q_spec = pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, i, hi, 0))
    kv_spec = pl.BlockSpec((None, s, None, d), lambda i, bi, hi: (bi, 0, lax.div(hi, g), 0))
    row_spec = pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, i))
    return _call(
        kernel, launch, "flash_attention_bwd_dq",
        grid=(s // bq, b, h),
        in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec,
                  pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, i)),
                  pl.BlockSpec((None, s), lambda i, bi, hi: (bi, 0))],
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    )(q, k, v, do, lse, di, seg, seg)

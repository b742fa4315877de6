"""Flash attention for TPU (Pallas Mosaic): causal, grouped-query, segment ids, custom VJP.

The kernels never build the [S, S] score matrix: the forward pass keeps a running max and sum
per query row (online softmax) and saves only the log-sum-exp [B, K, G, S]; the backward pass
recomputes the probabilities tile by tile, in one kernel that accumulates dK, dV over query
tiles and one that accumulates dQ over key tiles.

Inside, queries are laid out [B, K, G, S, D] so that one grid step holds all G query heads of a
KV head: K and V tiles are read once per group and never repeated per query head.

Glossary: B batch, S sequence, H query heads, K KV heads, G = H // K, D head dim.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from r1jax.kernels.flash_attention import common
from r1jax.kernels.flash_attention.common import MASK_VALUE, BlockSizes

NT = (((1,), (1,)), ((), ()))  # a @ b.T
LANES = 128
SUBLANES = 8
F32 = jnp.float32


@functools.partial(jax.jit, static_argnames=("causal", "sm_scale", "block_sizes", "interpret"))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    segment_ids: Optional[jax.Array] = None, *, causal: bool = True,
                    sm_scale: Optional[float] = None,
                    block_sizes: Optional[BlockSizes] = None,
                    interpret: bool = False) -> jax.Array:
    """Causal grouped-query attention within segments, as `flash_attention_reference`.

    Args:
      q: [B, S, H, D] queries (float32 or bfloat16; scores and softmax are float32).
      k, v: [B, S, K, D] keys and values, H % K == 0.
      segment_ids: [B, S] int; query i attends key j iff ids are equal (and j <= i if
        causal). None: one segment per row.
      causal: mask keys after the query.
      sm_scale: softmax scale; default D ** -0.5.
      block_sizes: tiles; default `BlockSizes.get_default("tpu", ...)`. Any S works: the
        sequence is padded to a multiple of the blocks.
      interpret: run in Pallas TPU interpret mode (CPU); `pltpu.force_tpu_interpret_mode()`
        has the same effect.

    Returns:
      [B, S, H, D] in q's dtype.

    Raises:
      ValueError: on inconsistent shapes, naming the dimension.
    """
    b, s, h, kh, d = common.check_inputs(q, k, v, segment_ids)
    g = h // kh
    sm_scale = d ** -0.5 if sm_scale is None else float(sm_scale)
    if block_sizes is None:
        block_sizes = BlockSizes.get_default("tpu", seq_len=s, num_groups=g, head_dim=d)
    else:
        block_sizes = block_sizes.fit(s, granule=128)
    sp = -(-s // block_sizes.padded_multiple) * block_sizes.padded_multiple
    seg = common.pad_segment_ids(common.resolve_segment_ids(segment_ids, b, s), sp)
    q5 = common.pad_seq(q, sp, 1).reshape(b, sp, kh, g, d).transpose(0, 2, 3, 1, 4)
    k4 = common.pad_seq(k, sp, 1).transpose(0, 2, 1, 3)
    v4 = common.pad_seq(v, sp, 1).transpose(0, 2, 1, 3)
    o5 = _flash(q5, k4, v4, seg, causal, sm_scale, block_sizes, interpret)
    return o5.transpose(0, 3, 1, 2, 4).reshape(b, sp, h, d)[:, :s]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, seg, causal, sm_scale, blocks, interpret):
    return _forward(q, k, v, seg, causal, sm_scale, blocks, interpret)[0]


def _flash_fwd(q, k, v, seg, causal, sm_scale, blocks, interpret):
    o, lse = _forward(q, k, v, seg, causal, sm_scale, blocks, interpret)
    return o, (q, k, v, seg, o, lse)


def _flash_bwd(causal, sm_scale, blocks, interpret, residuals, do):
    q, k, v, seg, o, lse = residuals
    di = jnp.sum(o.astype(F32) * do.astype(F32), axis=-1)  # [B, K, G, S]
    dk, dv = _backward_dkv(q, k, v, seg, do, lse, di, causal, sm_scale, blocks, interpret)
    dq = _backward_dq(q, k, v, seg, do, lse, di, causal, sm_scale, blocks, interpret)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# --------------------------------------------------------------------------------------------
# Helpers shared by the three kernels.


def _segment_layouts(seg: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, S] -> ids down sublanes [B, S, 128] and ids along lanes [B, 8, S].

    A score tile compares a column of row ids with a row of column ids; giving Mosaic both
    orientations ready-made avoids transposing ids inside the kernels.
    """
    b, s = seg.shape
    return (lax.broadcast_in_dim(seg, (b, s, LANES), (0, 1)),
            lax.broadcast_in_dim(seg, (b, SUBLANES, s), (0, 2)))


def _visible(q_block, block_q, k_block, block_k):
    """Whether a (query tile, key tile) pair has any key at or before any of its queries."""
    return k_block * block_k <= q_block * block_q + block_q - 1


def _mask(seg_rows, seg_cols, row0, col0, shape, causal, rows_are_queries):
    """Boolean tile mask: same segment, and key position <= query position if causal."""
    mask = seg_rows == seg_cols
    if causal:
        rows = row0 + lax.broadcasted_iota(jnp.int32, shape, 0)
        cols = col0 + lax.broadcasted_iota(jnp.int32, shape, 1)
        mask = mask & ((cols <= rows) if rows_are_queries else (rows <= cols))
    return mask


def _column(ref, i):
    """Row i of a [G, bq] ref as a [bq, 1] column.

    Through an aligned [8, bq] transpose: older TPUs (v4) cannot move lanes to sublanes
    directly ("sublane gather").
    """
    row = ref[i:i + 1, :]
    return jnp.broadcast_to(row, (SUBLANES, row.shape[1])).T[:, :1]


def _when(condition, fn):
    if condition is True:
        fn()
    else:
        pl.when(condition)(fn)


def _params(interpret: bool) -> dict:
    return {"interpret": pltpu.InterpretParams() if interpret else False,
            "compiler_params": pltpu.CompilerParams(
                dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))}


def _cost(q, k, causal, passes, extra_bytes):
    b, kh, g, s, d = q.shape
    pairs = b * kh * g * s * s // (2 if causal else 1)
    nbytes = 2 * q.size * q.dtype.itemsize + 2 * k.size * k.dtype.itemsize + extra_bytes
    return pl.CostEstimate(flops=2 * passes * pairs * d, transcendentals=pairs,
                           bytes_accessed=nbytes)


# --------------------------------------------------------------------------------------------
# Forward.


def _fwd_kernel(q_ref, k_ref, v_ref, segc_ref, segr_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc,
                *, causal, sm_scale, num_k_blocks):
    g, bq, d = q_ref.shape
    bk = k_ref.shape[0]
    qi, ki = pl.program_id(2), pl.program_id(3)

    @pl.when(ki == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, F32)
        l_sc[...] = jnp.zeros(l_sc.shape, F32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, F32)

    def step():
        # All G heads in one matmul: [G * bq, D] x [bk, D]^T.
        q = q_ref[...].reshape(g * bq, d)
        s = lax.dot_general(q, k_ref[...], NT, preferred_element_type=F32)
        s = s.reshape(g, bq, bk) * sm_scale
        mask = _mask(segc_ref[:, :1], segr_ref[:1, :], qi * bq, ki * bk, (bq, bk), causal,
                     rows_are_queries=True)
        s = jnp.where(mask[None], s, MASK_VALUE)
        m_prev = m_sc[...]  # [G, bq, 128], the lanes hold copies
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
        alpha = jnp.exp(m_prev - m_next)
        p = jnp.exp(s - m_next[..., :1])
        l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=-1, keepdims=True)
        m_sc[...] = m_next
        pv = lax.dot(p.reshape(g * bq, bk).astype(v_ref.dtype), v_ref[...],
                     preferred_element_type=F32)
        acc_sc[...] = acc_sc[...] * alpha[..., :1] + pv.reshape(g, bq, d)

    _when(_visible(qi, bq, ki, bk) if causal else True, step)

    @pl.when(ki == num_k_blocks - 1)
    def _finish():
        l = l_sc[...]
        o_ref[...] = (acc_sc[...] / l[..., :1]).astype(o_ref.dtype)
        lse = m_sc[...] + jnp.log(l)  # [G, bq, 128], lanes hold copies
        for i in range(g):
            lse_ref[i:i + 1, :] = lse[i].T[:1, :]


def _forward(q, k, v, seg, causal, sm_scale, blocks, interpret):
    """q [B, K, G, S, D], k, v [B, K, S, D], seg [B, S] -> o like q, lse [B, K, G, S]."""
    b, kh, g, s, d = q.shape
    bq, bk = blocks.block_q, blocks.block_k
    nk = s // bk
    segc, segr = _segment_layouts(seg)

    def k_index(bi, hi, qi, ki):
        if causal:  # past the diagonal, repeat the last visible tile: no new DMA
            ki = jnp.minimum(ki, lax.div(qi * bq + bq - 1, bk))
        return bi, hi, ki, 0

    def segr_index(bi, hi, qi, ki):
        return bi, 0, k_index(bi, hi, qi, ki)[2]

    kernel = functools.partial(_fwd_kernel, causal=causal, sm_scale=sm_scale, num_k_blocks=nk)
    return pl.pallas_call(
        kernel,
        grid=(b, kh, s // bq, nk),
        in_specs=[
            pl.BlockSpec((None, None, g, bq, d), lambda bi, hi, qi, ki: (bi, hi, 0, qi, 0)),
            pl.BlockSpec((None, None, bk, d), k_index),
            pl.BlockSpec((None, None, bk, d), k_index),
            pl.BlockSpec((None, bq, LANES), lambda bi, hi, qi, ki: (bi, qi, 0)),
            pl.BlockSpec((None, SUBLANES, bk), segr_index),
        ],
        out_specs=[
            pl.BlockSpec((None, None, g, bq, d), lambda bi, hi, qi, ki: (bi, hi, 0, qi, 0)),
            pl.BlockSpec((None, None, g, bq), lambda bi, hi, qi, ki: (bi, hi, 0, qi)),
        ],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, kh, g, s), F32)],
        scratch_shapes=[pltpu.VMEM((g, bq, LANES), F32), pltpu.VMEM((g, bq, LANES), F32),
                        pltpu.VMEM((g, bq, d), F32)],
        cost_estimate=_cost(q, k, causal, 2, b * kh * g * s * 4),
        name="flash_attention_fwd",
        **_params(interpret),
    )(q, k, v, segc, segr)


# --------------------------------------------------------------------------------------------
# Backward: dK and dV (scores transposed, keys down the sublanes).


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, segc_ref, segr_ref,
                dk_ref, dv_ref, dk_sc, dv_sc, *, causal, sm_scale, num_q_blocks):
    g, bq, _ = q_ref.shape
    bk = k_ref.shape[0]
    ki, qi = pl.program_id(2), pl.program_id(3)

    @pl.when(qi == 0)
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, F32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, F32)

    def step():
        k, v = k_ref[...], v_ref[...]
        mask = _mask(segc_ref[:, :1], segr_ref[:1, :], ki * bk, qi * bq, (bk, bq), causal,
                     rows_are_queries=False)
        dk, dv = dk_sc[...], dv_sc[...]
        for i in range(g):  # the G query heads that share this KV head
            q, do = q_ref[i], do_ref[i]
            st = lax.dot_general(k, q, NT, preferred_element_type=F32) * sm_scale  # [bk, bq]
            st = jnp.where(mask, st, MASK_VALUE)
            pt = jnp.exp(st - lse_ref[i:i + 1, :])
            dv = dv + lax.dot(pt.astype(do.dtype), do, preferred_element_type=F32)
            dpt = lax.dot_general(v, do, NT, preferred_element_type=F32)
            dst = pt * (dpt - di_ref[i:i + 1, :]) * sm_scale
            dk = dk + lax.dot(dst.astype(q.dtype), q, preferred_element_type=F32)
        dk_sc[...] = dk
        dv_sc[...] = dv

    _when(_visible(qi, bq, ki, bk) if causal else True, step)

    @pl.when(qi == num_q_blocks - 1)
    def _finish():
        dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _backward_dkv(q, k, v, seg, do, lse, di, causal, sm_scale, blocks, interpret):
    b, kh, g, s, d = q.shape
    bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
    nq = s // bq
    segc, segr = _segment_layouts(seg)

    def q_block(ki, qi):
        # Tiles wholly before the diagonal are skipped: fetch the first needed one early.
        return jnp.maximum(qi, lax.div(ki * bk, bq)) if causal else qi

    q_spec = pl.BlockSpec((None, None, g, bq, d),
                          lambda bi, hi, ki, qi: (bi, hi, 0, q_block(ki, qi), 0))
    row_spec = pl.BlockSpec((None, None, g, bq),
                            lambda bi, hi, ki, qi: (bi, hi, 0, q_block(ki, qi)))
    k_spec = pl.BlockSpec((None, None, bk, d), lambda bi, hi, ki, qi: (bi, hi, ki, 0))
    kernel = functools.partial(_dkv_kernel, causal=causal, sm_scale=sm_scale,
                               num_q_blocks=nq)
    return pl.pallas_call(
        kernel,
        grid=(b, kh, s // bk, nq),
        in_specs=[
            q_spec, k_spec, k_spec, q_spec, row_spec, row_spec,
            pl.BlockSpec((None, bk, LANES), lambda bi, hi, ki, qi: (bi, ki, 0)),
            pl.BlockSpec((None, SUBLANES, bq),
                         lambda bi, hi, ki, qi: (bi, 0, q_block(ki, qi))),
        ],
        out_specs=[k_spec, k_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)],
        scratch_shapes=[pltpu.VMEM((bk, d), F32), pltpu.VMEM((bk, d), F32)],
        cost_estimate=_cost(q, k, causal, 4, 2 * lse.size * 4),
        name="flash_attention_bwd_dkv",
        **_params(interpret),
    )(q, k, v, do, lse, di, segc, segr)


# --------------------------------------------------------------------------------------------
# Backward: dQ.


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, segc_ref, segr_ref,
               dq_ref, dq_sc, *, causal, sm_scale, num_k_blocks):
    g, bq, _ = q_ref.shape
    bk = k_ref.shape[0]
    qi, ki = pl.program_id(2), pl.program_id(3)

    @pl.when(ki == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, F32)

    def step():
        k, v = k_ref[...], v_ref[...]
        mask = _mask(segc_ref[:, :1], segr_ref[:1, :], qi * bq, ki * bk, (bq, bk), causal,
                     rows_are_queries=True)
        for i in range(g):
            q, do = q_ref[i], do_ref[i]
            s = lax.dot_general(q, k, NT, preferred_element_type=F32) * sm_scale  # [bq, bk]
            s = jnp.where(mask, s, MASK_VALUE)
            p = jnp.exp(s - _column(lse_ref, i))
            dp = lax.dot_general(do, v, NT, preferred_element_type=F32)
            ds = p * (dp - _column(di_ref, i)) * sm_scale
            dq_sc[i] = dq_sc[i] + lax.dot(ds.astype(k.dtype), k, preferred_element_type=F32)

    _when(_visible(qi, bq, ki, bk) if causal else True, step)

    @pl.when(ki == num_k_blocks - 1)
    def _finish():
        dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _backward_dq(q, k, v, seg, do, lse, di, causal, sm_scale, blocks, interpret):
    b, kh, g, s, d = q.shape
    bq, bk = blocks.block_q_dq, blocks.block_k_dq
    nk = s // bk
    segc, segr = _segment_layouts(seg)

    def k_block(qi, ki):
        return jnp.minimum(ki, lax.div(qi * bq + bq - 1, bk)) if causal else ki

    q_spec = pl.BlockSpec((None, None, g, bq, d), lambda bi, hi, qi, ki: (bi, hi, 0, qi, 0))
    row_spec = pl.BlockSpec((None, None, g, bq), lambda bi, hi, qi, ki: (bi, hi, 0, qi))
    k_spec = pl.BlockSpec((None, None, bk, d),
                          lambda bi, hi, qi, ki: (bi, hi, k_block(qi, ki), 0))
    kernel = functools.partial(_dq_kernel, causal=causal, sm_scale=sm_scale, num_k_blocks=nk)
    return pl.pallas_call(
        kernel,
        grid=(b, kh, s // bq, nk),
        in_specs=[
            q_spec, k_spec, k_spec, q_spec, row_spec, row_spec,
            pl.BlockSpec((None, bq, LANES), lambda bi, hi, qi, ki: (bi, qi, 0)),
            pl.BlockSpec((None, SUBLANES, bk),
                         lambda bi, hi, qi, ki: (bi, 0, k_block(qi, ki))),
        ],
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        scratch_shapes=[pltpu.VMEM((g, bq, d), F32)],
        cost_estimate=_cost(q, k, causal, 3, 2 * lse.size * 4),
        name="flash_attention_bwd_dq",
        **_params(interpret),
    )(q, k, v, do, lse, di, segc, segr)

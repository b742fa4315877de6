"""Bad shapes and block sizes fail with a ValueError that names the offending dimension."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from r1jax.kernels import decode_attention as dec
from r1jax.kernels import flash_attention as fa

FLASH = [fa.tpu.flash_attention, fa.gpu.flash_attention]
DECODE = [dec.tpu.decode_attention, dec.gpu.decode_attention]


def _z(*shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


@pytest.mark.parametrize("kernel", FLASH)
@pytest.mark.parametrize("q,k,seg,match", [
    (_z(2, 8, 6, 16), _z(2, 8, 4, 16), None, "H=6 must be a multiple of KV heads K=4"),
    (_z(2, 8, 4, 16), _z(3, 8, 2, 16), None, "batch B differs: q has 2, k and v have 3"),
    (_z(2, 8, 4, 16), _z(2, 9, 2, 16), None, "sequence S differs: q has 8, k and v have 9"),
    (_z(2, 8, 4, 16), _z(2, 8, 2, 32), None, "head dim D differs: q has 16, k and v have 32"),
    (_z(8, 4, 16), _z(2, 8, 2, 16), None, r"q must be \[B, S, H, D\]"),
    (_z(2, 8, 4, 16), _z(2, 8, 2, 16), _z(2, 9, dtype=jnp.int32),
     r"segment_ids must be \[B, S\] = \(2, 8\), got \(2, 9\)"),
    (_z(2, 8, 4, 16), _z(2, 8, 2, 16), _z(2, 8), "segment_ids must be integers"),
])
def test_flash_shape_errors_name_the_dimension(kernel, q, k, seg, match):
    with pytest.raises(ValueError, match=match):
        kernel(q, k, k, seg)


@pytest.mark.parametrize("kernel", DECODE)
@pytest.mark.parametrize("q,cache,lengths,match", [
    (_z(2, 6, 16), _z(2, 4, 8, 16), _z(2, dtype=jnp.int32),
     "H=6 must be a multiple of KV heads K=4"),
    (_z(2, 4, 16), _z(3, 2, 8, 16), _z(2, dtype=jnp.int32), "batch B differs: q has 2"),
    (_z(2, 4, 16), _z(2, 2, 8, 32), _z(2, dtype=jnp.int32), "head dim D differs: q has 16"),
    (_z(2, 4, 16), _z(2, 2, 8, 16), _z(3, dtype=jnp.int32), r"lengths must be \[B\] = \(2,\)"),
    (_z(2, 4, 16), _z(2, 8, 16), _z(2, dtype=jnp.int32), r"k_cache must be \[B, K, S, D\]"),
    (_z(2, 4, 16), _z(2, 2, 8, 16, dtype=jnp.bfloat16), _z(2, dtype=jnp.int32),
     "dtypes differ"),
])
def test_decode_shape_errors_name_the_dimension(kernel, q, cache, lengths, match):
    with pytest.raises(ValueError, match=match):
        kernel(q, cache, cache, lengths)


def test_block_sizes_are_validated():
    with pytest.raises(ValueError, match="BlockSizes.block_k must be a positive multiple of 8"):
        fa.BlockSizes(16, 12, 16, 16, 16, 16)
    with pytest.raises(ValueError, match="BlockSizes.block_kv must be a positive multiple"):
        dec.BlockSizes(0)
    with pytest.raises(ValueError, match="BlockSizes.block_q_dq=24 must be a power of two"):
        fa.gpu.flash_attention(_z(1, 64, 2, 16), _z(1, 64, 2, 16), _z(1, 64, 2, 16),
                               block_sizes=fa.BlockSizes(16, 16, 16, 16, 24, 16))
    with pytest.raises(ValueError, match="head dim D=48 must be a power of two"):
        fa.gpu.flash_attention(_z(1, 8, 2, 48), _z(1, 8, 2, 48), _z(1, 8, 2, 48))


def test_default_block_sizes_follow_backend_and_shape():
    # TPU: the tile holds all G heads of a KV head, so block_q shrinks as G grows; short
    # sequences shrink every tile to the sequence rounded up to the 128-lane width.
    assert fa.BlockSizes.get_default("tpu", seq_len=8192, num_groups=1, head_dim=128).block_q == 512
    assert fa.BlockSizes.get_default("tpu", seq_len=8192, num_groups=7, head_dim=128).block_q == 128
    short = fa.BlockSizes.get_default("tpu", seq_len=200, num_groups=1, head_dim=128)
    assert (short.block_q, short.block_k, short.padded_multiple) == (256, 256, 256)
    gpu = fa.BlockSizes.get_default("gpu", seq_len=8192, num_groups=7, head_dim=128)
    assert (gpu.block_q, gpu.block_k) == (128, 64)
    # GPU tiles stay powers of two when shrunk to a short sequence (S = 40 -> 64).
    gpu = fa.BlockSizes.get_default("gpu", seq_len=40, num_groups=7, head_dim=64)
    assert set(vars(gpu).values()) == {64}
    # GPU decode: about two programs per SM, never more splits than tiles.
    assert dec.BlockSizes.get_default("gpu", batch=8, kv_heads=4, cache_len=8192) == \
        dec.BlockSizes(64, num_splits=9)
    assert dec.BlockSizes.get_default("gpu", batch=1, kv_heads=1, cache_len=100).num_splits == 2
    with pytest.raises(ValueError, match="platform 'cpu'"):
        fa.BlockSizes.get_default("cpu", seq_len=8, num_groups=1, head_dim=8)

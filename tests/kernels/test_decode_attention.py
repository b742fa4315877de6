"""Ragged decode-attention kernels (TPU Mosaic, GPU Triton, run in interpret mode on CPU) and
the XLA implementation over transposed keys, against the pure-jnp reference, and the
reference against torch's scaled_dot_product_attention. Every batch holds the lengths 0
(defined: zeros), 1, the full cache and one in between."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.kernels.decode_attention import (BlockSizes, decode_attention_reference,
                                            decode_attention_xla, gpu, tpu)
from tests.kernels.parity import assert_close, normal, torch_decode

KERNELS = {"tpu": tpu.decode_attention, "gpu": gpu.decode_attention}
PLATFORMS = ["tpu", "gpu", "xla"]


def _run(platform, q, k, v, lengths):
    """The implementation under test on [B, K, S, D] caches (transposed keys for "xla")."""
    if platform == "xla":
        return decode_attention_xla(q, jnp.swapaxes(k, 2, 3), v, lengths)
    return KERNELS[platform](q, k, v, lengths, block_sizes=BlockSizes(16, num_splits=2),
                             interpret=True)

# (dtype, G = H // K, D, S): each dtype, GQA ratio and head dim, with S a multiple of the
# 16-slot tile (48) or not (44: the TPU kernel reads a partial last tile).
CASES = [
    ("float32", 1, 64, 48),
    ("float32", 7, 128, 44),
    ("float32", 4, 128, 48),
    ("bfloat16", 4, 64, 44),
    ("bfloat16", 7, 64, 48),
    ("bfloat16", 1, 128, 44),
]


@pytest.mark.parametrize("groups,head_dim,slots", sorted({c[1:] for c in CASES}))
def test_reference_matches_torch(groups, head_dim, slots):
    kv_heads, b = 2, 4
    keys = jax.random.split(jax.random.key(slots + groups + head_dim), 3)
    q = normal(keys[0], (b, groups * kv_heads, head_dim), "float32")
    k, v = (normal(x, (b, kv_heads, slots, head_dim), "float32") for x in keys[1:])
    lengths = jnp.array([0, 1, slots, slots // 2 + 3], jnp.int32)
    for scale in (None, 0.3):  # None: the default 1 / sqrt(D)
        out = decode_attention_reference(q, k, v, lengths, sm_scale=scale)
        assert_close(out, torch_decode(q, k, v, lengths, scale or head_dim ** -0.5),
                     "float32", f"output, sm_scale={scale}")


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("dtype,groups,head_dim,slots", CASES)
def test_matches_reference_on_ragged_lengths(platform, dtype, groups, head_dim, slots):
    kv_heads = 2
    b, h = 4, groups * kv_heads
    keys = jax.random.split(jax.random.key(slots * 13 + groups + head_dim), 3)
    q = normal(keys[0], (b, h, head_dim), dtype)
    k = normal(keys[1], (b, kv_heads, slots, head_dim), dtype)
    v = normal(keys[2], (b, kv_heads, slots, head_dim), dtype)
    lengths = jnp.array([0, 1, slots, slots // 2 + 3], jnp.int32)
    # Two splits on GPU: one row's second chunk is empty, another's is partly filled.
    out = _run(platform, q, k, v, lengths)
    ref = decode_attention_reference(*(x.astype(jnp.float32) for x in (q, k, v)), lengths)
    assert out.dtype == q.dtype
    np.testing.assert_array_equal(np.asarray(out[0], np.float32), 0.0)
    assert_close(out, ref, dtype, "output")


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_slots_past_the_length_are_never_used(platform):
    # NaN in every slot past each row's length: a kernel that reads them into the sum (even
    # with a zero weight) returns NaN. (The XLA implementation, like the reference, multiplies
    # masked slots by a zero weight: finite values there are all it needs, and the sampler's
    # cache holds zeros past each row's length.)
    b, kv_heads, h, slots, d = 3, 1, 4, 40, 64
    keys = jax.random.split(jax.random.key(5), 3)
    q = normal(keys[0], (b, h, d), "float32")
    lengths = jnp.array([3, 17, 33], jnp.int32)
    valid = (jnp.arange(slots)[None, :] < lengths[:, None])[:, None, :, None]
    k = jnp.where(valid, normal(keys[1], (b, kv_heads, slots, d), "float32"), jnp.nan)
    v = jnp.where(valid, normal(keys[2], (b, kv_heads, slots, d), "float32"), jnp.nan)
    out = _run(platform, q, k, v, lengths)
    ref = decode_attention_reference(q, jnp.nan_to_num(k), jnp.nan_to_num(v), lengths)
    assert_close(out, ref, "float32", "output")


def test_xla_rejects_untransposed_keys():
    q = jnp.zeros((1, 2, 8))
    with pytest.raises(ValueError, match=r"keys \[B, K, D, S\]"):
        decode_attention_xla(q, jnp.zeros((1, 1, 5, 8)), jnp.zeros((1, 1, 5, 8)),
                             jnp.array([3], jnp.int32))

"""Flash-attention kernels (TPU Mosaic, GPU Triton, run in interpret mode on CPU) and the XLA
implementation with its hand-written backward, against the pure-jnp reference: outputs, and
dq, dk, dv against the autodiff gradients of the reference (float32, on the same rounded
inputs). The reference itself, on the same cases, against torch's
scaled_dot_product_attention and autograd."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from r1jax.kernels.flash_attention import (BlockSizes, flash_attention_reference,
                                           flash_attention_xla, gpu, tpu)
from tests.kernels.parity import assert_close, normal, packed_segments, torch_attention

KERNELS = {"tpu": tpu.flash_attention, "gpu": gpu.flash_attention}
# 16-row tiles: several query and key tiles, and causal tile skipping, even at S = 32.
SMALL = BlockSizes(16, 16, 16, 16, 16, 16)

# (dtype, G = H // K, D, S): each dtype, GQA ratio and head dim, with S a multiple of the
# tiles (32) or not (40, padded inside the kernels). float32 with G = 4 is the non-causal test.
CASES = [
    ("float32", 1, 64, 32),
    ("float32", 7, 128, 40),
    ("bfloat16", 4, 128, 40),
    ("bfloat16", 7, 64, 32),
    ("bfloat16", 1, 128, 40),
]


def _check(platform, dtype, groups, head_dim, seq, *, causal=True, sm_scale=None):
    kv_heads = 2 if groups == 1 else 1
    b, h = 2, groups * kv_heads
    keys = jax.random.split(jax.random.key(seq * 31 + groups * 7 + head_dim), 4)
    q = normal(keys[0], (b, seq, h, head_dim), dtype)
    k = normal(keys[1], (b, seq, kv_heads, head_dim), dtype)
    v = normal(keys[2], (b, seq, kv_heads, head_dim), dtype)
    do = normal(keys[3], (b, seq, h, head_dim), dtype)
    seg = packed_segments(b, seq)

    def kernel(q, k, v):
        if platform == "xla":
            return flash_attention_xla(q, k, v, seg, causal=causal, sm_scale=sm_scale)
        return KERNELS[platform](q, k, v, seg, causal=causal, sm_scale=sm_scale,
                                 block_sizes=SMALL, interpret=True)

    def reference(q, k, v):
        return flash_attention_reference(q, k, v, seg, causal=causal, sm_scale=sm_scale)

    out, vjp = jax.vjp(kernel, q, k, v)
    grads = vjp(do)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref_out, ref_vjp = jax.vjp(reference, *f32)
    ref_grads = ref_vjp(do.astype(jnp.float32))
    assert out.dtype == q.dtype
    assert_close(out, ref_out, dtype, "output")
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.dtype == q.dtype
        assert_close(g, ref_g, dtype, name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("groups,head_dim,seq", sorted({c[1:] for c in CASES}))
def test_reference_and_its_gradients_match_torch(groups, head_dim, seq, causal):
    """The reference the kernels are held to, in float32, against PyTorch."""
    kv_heads = 2 if groups == 1 else 1
    b, h = 2, groups * kv_heads
    rng = np.random.default_rng(seq + groups + head_dim)
    q, do = (rng.normal(size=(b, seq, h, head_dim)).astype(np.float32) for _ in range(2))
    k, v = (rng.normal(size=(b, seq, kv_heads, head_dim)).astype(np.float32) for _ in range(2))
    seg = packed_segments(b, seq)
    out, vjp = jax.vjp(lambda q, k, v: flash_attention_reference(
        q, k, v, seg, causal=causal, sm_scale=0.3), q, k, v)
    grads = vjp(jnp.asarray(do))
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    ref = torch_attention(tq, tk, tv, seg, 0.3, causal=causal)
    ref.backward(torch.tensor(do))
    assert_close(out, ref.detach().numpy(), "float32", "output")
    for name, g, t in zip(("dq", "dk", "dv"), grads, (tq, tk, tv)):
        assert_close(g, t.grad.numpy(), "float32", name)


@pytest.mark.parametrize("platform", ["tpu", "gpu", "xla"])
@pytest.mark.parametrize("dtype,groups,head_dim,seq", CASES)
def test_matches_reference_and_its_gradients(platform, dtype, groups, head_dim, seq):
    _check(platform, dtype, groups, head_dim, seq)


@pytest.mark.parametrize("platform", ["tpu", "gpu", "xla"])
def test_non_causal_ignores_sequence_padding(platform):
    # Not causal, S = 40 padded to 48: real queries must not see the 8 padded keys.
    _check(platform, "float32", 4, 64, 40, causal=False, sm_scale=0.3)


def test_xla_backward_keeps_no_score_sized_residual():
    # The point of flash_attention_xla: what the forward saves for the backward is O(S), not
    # the O(S^2) probabilities that autodiff of the reference keeps.
    b, s, h, d = 2, 64, 4, 16
    q = k = v = jnp.ones((b, s, h, d))
    seg = jnp.ones((b, s), jnp.int32)
    for fn, has_scores in ((flash_attention_reference, True), (flash_attention_xla, False)):
        _, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, seg), q, k, v)
        sizes = [x.size for x in jax.tree.leaves(vjp) if hasattr(x, "size")]
        assert (max(sizes) >= b * h * s * s) == has_scores, (fn.__name__, sizes)

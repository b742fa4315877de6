"""Helpers of the kernel parity tests: random inputs, segment layouts, tolerances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Max abs error allowed, relative to the largest magnitude of the float32 reference. bf16
# inputs make the kernels round the probabilities and the gradient tiles to bf16 before each
# matmul (8 significant bits, ~4e-3 relative per rounding, a few roundings per entry).
TOLERANCE = {"float32": 2e-5, "bfloat16": 1e-2}


def normal(key: jax.Array, shape: tuple[int, ...], dtype: str) -> jax.Array:
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def packed_segments(batch: int, seq: int) -> jax.Array:
    """[B, S] ids: even rows are left padding (id 0) then three documents, odd rows one."""
    rows = []
    for b in range(batch):
        if b % 2 == 0:
            pad, first, second = seq // 8 + 1, seq // 3, seq // 4
            ids = np.full(seq, 3)
            ids[:pad] = 0
            ids[pad:pad + first] = 1
            ids[pad + first:pad + first + second] = 2
        else:
            ids = np.full(seq, 7)
        rows.append(ids)
    return jnp.asarray(np.stack(rows), jnp.int32)


def assert_close(actual: jax.Array, expected: jax.Array, dtype: str, what: str) -> None:
    """max |actual - expected| <= TOLERANCE[dtype] * max |expected|."""
    actual = np.asarray(actual, np.float32)
    expected = np.asarray(expected, np.float32)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    err = float(np.max(np.abs(actual - expected)))
    assert err <= TOLERANCE[dtype] * scale, (
        f"{what}: max abs error {err:.3g} > {TOLERANCE[dtype]} x max |ref| {scale:.3g}")


def torch_attention(q, k, v, segment_ids, sm_scale, causal=True):
    """Attention by torch's scaled_dot_product_attention, the outside reference: torch
    tensors [B, S, H, Dh] (autograd flows through), K heads repeated to H (query head h
    reads KV head h // G), key j visible to query i iff same segment (and j <= i)."""
    import torch

    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    seg = torch.tensor(np.asarray(segment_ids))
    s = seg.shape[1]
    mask = seg[:, :, None] == seg[:, None, :]
    if causal:
        mask = mask & torch.tril(torch.ones(s, s, dtype=torch.bool))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None],
                                                           scale=sm_scale)
    return out.transpose(1, 2)


def torch_attention_np(q, k, v, segment_ids, sm_scale, causal=True) -> np.ndarray:
    """`torch_attention` of JAX / numpy arrays (upcast to float32), as numpy."""
    import torch

    q, k, v = (torch.tensor(np.asarray(x, np.float32)) for x in (q, k, v))
    return torch_attention(q, k, v, segment_ids, sm_scale, causal).numpy()


def torch_decode(q, k_cache, v_cache, lengths, sm_scale) -> np.ndarray:
    """q [B, H, Dh] against slots [0, lengths[b]) of caches [B, K, S, Dh] by torch's
    scaled_dot_product_attention (float32); zeros for a row of length 0."""
    import torch

    q, k, v = (torch.tensor(np.asarray(x, np.float32)) for x in (q, k_cache, v_cache))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    lengths = torch.tensor(np.asarray(lengths))
    valid = torch.arange(k.shape[2])[None, :] < lengths[:, None]  # [B, S]
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], k, v, attn_mask=valid[:, None, None], scale=sm_scale)[:, :, 0]
    return torch.where((lengths > 0)[:, None, None], out, 0.0).numpy()

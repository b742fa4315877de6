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

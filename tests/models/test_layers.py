"""Pure layer functions against their textbook definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.models.layers import gated_mlp


def naive_mlp(x, wg, wu, wd):
    gate = x @ wg
    return (gate / (1 + jnp.exp(-gate)) * (x @ wu)) @ wd


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_gated_mlp_value_and_hand_written_gradient_match_autodiff(dtype, tol):
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (2, 5, 16)).astype(dtype)
    wg, wu = [(0.3 * jax.random.normal(k, (16, 24))).astype(dtype) for k in keys[1:3]]
    wd = (0.3 * jax.random.normal(keys[3], (24, 16))).astype(dtype)
    g = jax.random.normal(keys[4], (2, 5, 16)).astype(dtype)
    f32 = lambda *a: [t.astype(jnp.float32) for t in a]
    np.testing.assert_allclose(np.asarray(gated_mlp(x, wg, wu, wd), np.float32),
                               np.asarray(naive_mlp(*f32(x, wg, wu, wd))), rtol=tol, atol=tol)
    ours = jax.vjp(gated_mlp, x, wg, wu, wd)[1](g)
    ref = jax.vjp(naive_mlp, *f32(x, wg, wu, wd))[1](g.astype(jnp.float32))
    for a, b in zip(ours, ref):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), atol=tol * scale,
                                   rtol=tol)

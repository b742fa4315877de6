"""The decode loop's per-row randomness, bit for bit JAX's threefry keys, without a loop.

A completion row's token at position t is drawn from `uniform(fold_in(row_key, t))`
(r1jax/sampling/sampler.py). JAX computes both with the Threefry-2x32 hash, which XLA:CPU
lowers as a rolled loop of five iterations (jax/_src/random/threefry2x32.py, chosen there
for compile time): every decode step then ran two nested while loops of a few [B]-sized
operations each, a fixed cost per step that a small model's step is mostly made of. Here
the hash's 20 rounds are written out as uint32 element-wise operations, which XLA fuses
into one pass over the rows; the results are JAX's own, bit for bit (tests/sampling/
test_threefry.py checks them against `jax.random.fold_in` and `jax.random.uniform`).

Keys of other PRNG implementations (`jax_default_prng_impl`) go through `jax.random`.

Glossary: R rows; raw key data [R, 2] uint32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def hash2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array,
             x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011, as JAX implements it).

    Args:
      k1, k2: the key's two words, uint32 [...].
      x1, x2: the counter's two words, uint32 [...] (broadcastable with the key).
    Returns:
      The two output words, uint32 [...].
    """
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = lax.shift_left(x2, np.uint32(r)) | lax.shift_right_logical(
                x2, np.uint32(32 - r))
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _is_threefry(keys: jax.Array) -> bool:
    return str(jax.random.key_impl(keys)) == "threefry2x32"


def fold_in(keys: jax.Array, data: jax.Array) -> jax.Array:
    """[R] keys fold_in(keys[r], data[r]): `jax.random.fold_in` row by row.

    Args:
      keys: [R] typed PRNG keys.
      data: [R] (or scalar) non-negative int32 / uint32.
    """
    data = jnp.broadcast_to(jnp.asarray(data).astype(jnp.uint32), keys.shape)
    if not _is_threefry(keys):
        return jax.vmap(jax.random.fold_in)(keys, data)
    raw = jax.random.key_data(keys)
    y1, y2 = hash2x32(raw[:, 0], raw[:, 1], jnp.zeros_like(data), data)
    return jax.random.wrap_key_data(jnp.stack([y1, y2], axis=-1),
                                    impl=jax.random.key_impl(keys))


def uniforms(keys: jax.Array) -> jax.Array:
    """[R] float32 in [0, 1): `jax.random.uniform(keys[r], ())` row by row.

    Args:
      keys: [R] typed PRNG keys.
    """
    if not _is_threefry(keys):
        return jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    raw = jax.random.key_data(keys)
    zero = jnp.zeros_like(raw[:, 0])
    y1, y2 = hash2x32(raw[:, 0], raw[:, 1], zero, zero)
    mantissa = lax.shift_right_logical(y1 ^ y2, np.uint32(32 - 23))
    one = np.array(1.0, np.float32).view(np.uint32)
    return jnp.maximum(lax.bitcast_convert_type(mantissa | one, jnp.float32) - 1.0, 0.0)

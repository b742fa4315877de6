"""The decode loop's unrolled Threefry against JAX's own `jax.random`, bit for bit, and the
published Threefry-2x32 known-answer vectors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.sampling import threefry

# Random123's known-answer test vectors for threefry2x32_20 (kat_vectors): key, counter,
# expected output words.
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("key,counter,expected", KAT)
def test_hash_matches_the_published_known_answers(key, counter, expected):
    words = [jnp.asarray([w], jnp.uint32) for w in (*key, *counter)]
    out = jax.jit(threefry.hash2x32)(*words)
    assert [int(o[0]) for o in out] == list(expected)


def _keys(n: int, seed: int = 7) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))


def test_fold_in_and_uniforms_equal_jax_random_bit_for_bit():
    keys = _keys(4096)
    data = jnp.asarray(np.random.default_rng(0).integers(0, 2 ** 31 - 1, 4096), jnp.int32)
    ours = jax.jit(threefry.fold_in)(keys, data)
    theirs = jax.vmap(jax.random.fold_in)(keys, data)
    np.testing.assert_array_equal(jax.random.key_data(ours), jax.random.key_data(theirs))
    u = np.asarray(jax.jit(threefry.uniforms)(ours))
    np.testing.assert_array_equal(
        u, np.asarray(jax.vmap(lambda k: jax.random.uniform(k, ()))(theirs)))
    assert u.min() >= 0.0 and u.max() < 1.0
    # A scalar position broadcasts over the rows, as the static decode loop passes it.
    np.testing.assert_array_equal(
        jax.random.key_data(threefry.fold_in(keys, jnp.int32(5))),
        jax.random.key_data(jax.vmap(lambda k: jax.random.fold_in(k, 5))(keys)))


def test_other_prng_implementations_go_through_jax_random():
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3, impl="rbg"), i))(
        jnp.arange(8))
    ours = threefry.fold_in(keys, jnp.arange(8))
    theirs = jax.vmap(jax.random.fold_in)(keys, jnp.arange(8))
    np.testing.assert_array_equal(jax.random.key_data(ours), jax.random.key_data(theirs))
    np.testing.assert_array_equal(
        threefry.uniforms(ours), jax.vmap(lambda k: jax.random.uniform(k, ()))(theirs))

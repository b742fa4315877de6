"""token_logprobs against the plain full-logits log_softmax gather: values, gradients, memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import logprobs

B, T, D, V = 3, 10, 8, 50


def _inputs(dtype=jnp.float32, b=B, t=T, d=D, v=V, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    h = jax.random.normal(k[0], (b, t, d)).astype(dtype)
    w = jax.random.normal(k[1], (d, v)).astype(dtype)
    targets = jax.random.randint(k[2], (b, t), 0, v)
    g_logp = jax.random.normal(k[3], (b, t))
    g_ent = jax.random.normal(k[4], (b, t))
    return h, w, targets, g_logp, g_ent


def _naive(h, w, targets, temperature):
    """log_softmax over full float32 logits, then a gather: nothing shared with the code."""
    z = jnp.einsum("btd,dv->btv", h.astype(jnp.float32), w.astype(jnp.float32)) / temperature
    logp_all = z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True)
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def _objective(fn, targets, g_logp, g_ent):
    def f(h, w):
        logp, ent = fn(h, w, targets)
        return jnp.sum(logp * g_logp) + (0.0 if g_ent is None else jnp.sum(ent * g_ent))
    return f


# (chunk_size, vocab_chunk_size): default, T padded, V remainder chunk, both, one position
# per chunk and two vocab chunks
CHUNKS = [(None, None), (3, 50), (10, 16), (4, 7), (1, 25)]


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_naive_fp32(chunks, temperature):
    h, w, targets, g_logp, g_ent = _inputs()
    cs, vcs = chunks
    fn = jax.jit(lambda h, w, x: logprobs.token_logprobs(
        h, w, x, temperature=temperature, chunk_size=cs, vocab_chunk_size=vcs))

    def ref(h, w, x):
        return _naive(h, w, x, temperature)

    logp, ent = fn(h, w, targets)
    r_logp, r_ent = ref(h, w, targets)
    np.testing.assert_allclose(logp, r_logp, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ent, r_ent, atol=1e-5, rtol=1e-5)
    for ge in (g_ent, None):  # entropy differentiated, and entropy unused by the loss
        got = jax.grad(_objective(fn, targets, g_logp, ge), (0, 1))(h, w)
        want = jax.grad(_objective(ref, targets, g_logp, ge), (0, 1))(h, w)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()), rtol=1e-5)


def test_without_entropy():
    h, w, targets, g_logp, _ = _inputs()

    def fn(h, w, x):
        return logprobs.token_logprobs(h, w, x, chunk_size=4, return_entropy=False)

    logp, ent = fn(h, w, targets)
    assert ent is None
    np.testing.assert_allclose(logp, _naive(h, w, targets, 1.0)[0], atol=1e-5, rtol=1e-5)
    got = jax.grad(lambda h, w: jnp.sum(fn(h, w, targets)[0] * g_logp), (0, 1))(h, w)
    want = jax.grad(_objective(lambda *a: _naive(*a, 1.0), targets, g_logp, None), (0, 1))(h, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()), rtol=1e-5)


@pytest.mark.parametrize("chunks", [(8, 128), (5, 300), (16, 300)])
def test_bf16_inputs_accumulate_in_fp32(chunks):
    # T padded + vocab remainder; one vocab chunk; one token chunk (dw kept in bf16)
    h, w, targets, g_logp, g_ent = _inputs(jnp.bfloat16, t=16, v=300, d=32)

    def fn(h, w, x):
        return logprobs.token_logprobs(h, w, x, chunk_size=chunks[0],
                                       vocab_chunk_size=chunks[1])

    logp, ent = fn(h, w, targets)
    assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
    # the same bf16 values, upcast: float32 accumulation leaves only summation-order error
    r_logp, r_ent = _naive(h, w, targets, 1.0)
    np.testing.assert_allclose(logp, r_logp, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(ent, r_ent, atol=2e-4, rtol=1e-4)
    got = jax.grad(_objective(fn, targets, g_logp, g_ent), (0, 1))(h, w)
    want = jax.grad(_objective(lambda *a: _naive(*a, 1.0), targets, g_logp, g_ent),
                    (0, 1))(h.astype(jnp.float32), w.astype(jnp.float32))
    for a, b in zip(got, want):
        assert a.dtype == jnp.bfloat16
        # dz is rounded to bf16 before the backward matmuls (as autodiff of a bf16 matmul does)
        err = float(jnp.abs(a.astype(jnp.float32) - b).max())
        assert err < 2e-2 * float(jnp.abs(b).max()), err


def test_never_materializes_full_logits():
    b, t, d, v = 8, 64, 32, 4096
    h, w, targets, g_logp, _ = _inputs(b=b, t=t, d=d, v=v)

    def fn(h, w, x):
        return logprobs.token_logprobs(h, w, x, chunk_size=16, vocab_chunk_size=512)

    def step(f):
        return jax.jit(jax.grad(_objective(f, targets, g_logp, None), (0, 1)))

    chunked = step(fn).lower(h, w).compile().memory_analysis().temp_size_in_bytes
    naive = step(lambda *a: _naive(*a, 1.0)).lower(h, w).compile().memory_analysis()
    full_logits = b * t * v * 4  # 8 MiB
    # tiles are 8 x 16 x 512 floats (256 KiB); dw [D, V] and w's chunked copy add 1 MiB
    assert chunked < full_logits / 4, (chunked, full_logits)
    assert naive.temp_size_in_bytes >= full_logits


def test_bad_inputs_raise():
    h, w, targets, _, _ = _inputs()
    with pytest.raises(ValueError, match="need h"):
        logprobs.token_logprobs(h[0], w, targets)
    with pytest.raises(ValueError, match="targets"):
        logprobs.token_logprobs(h, w, targets[:, :3])
    with pytest.raises(ValueError, match="integer"):
        logprobs.token_logprobs(h, w, targets.astype(jnp.float32))
    with pytest.raises(ValueError, match="share a dtype"):
        logprobs.token_logprobs(h.astype(jnp.bfloat16), w, targets)
    with pytest.raises(ValueError, match="temperature"):
        logprobs.token_logprobs(h, w, targets, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        logprobs.token_logprobs(h, w, targets, chunk_size=0)


def test_default_chunk_sizes():
    # small vocab: one vocab chunk, >= 1024 rows per token chunk
    assert logprobs.default_chunk_sizes(32, 256, 4096) == (32, 4096)
    # Qwen's vocab: all 512 rows, tiles of 8,192 = 2^22 / 512 vocab entries
    assert logprobs.default_chunk_sizes(4, 128, 151936) == (128, 8192)
    # chunks balanced over T: 300 positions, >= 32 per chunk -> 10 chunks of 30
    assert logprobs.default_chunk_sizes(32, 300, 151936)[0] == 30

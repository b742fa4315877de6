"""The model's attention switch: impl="pallas" (kernels interpreted on CPU) gives the logits
and gradients of impl="xla"; under a mesh the kernels run inside shard_map; the backend
decides what "auto" means and which impls exist."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import r1jax
from r1jax.models import attention as attn
from r1jax.sharding import Sharding, make_mesh
from tests.kernels.parity import assert_close, normal, packed_segments

CFG = r1jax.ModelConfig(family="qwen2", vocab_size=128, hidden_size=64, intermediate_size=128,
                        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True,
                        attention_impl="xla")


def _loss_and_logits(params, tokens, seg, cfg):
    def loss(p):
        logits = r1jax.models.forward(p, tokens, cfg, segment_ids=seg)
        # Weighted by position so that every attention output matters to the loss.
        return jnp.mean(logits * jnp.cos(jnp.arange(logits.shape[-1]))), logits
    return jax.value_and_grad(loss, has_aux=True)(params)


def test_model_with_pallas_kernels_matches_reference_logits_and_gradients():
    params = r1jax.models.init_params(CFG, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, CFG.vocab_size)
    seg = packed_segments(2, 20)  # left padding and three documents in row 0
    (_, ref_logits), ref_grads = _loss_and_logits(params, tokens, seg, CFG)
    with attn.interpret("tpu"):
        (_, logits), grads = _loss_and_logits(
            params, tokens, seg, dataclasses.replace(CFG, attention_impl="pallas"))
    assert_close(logits, ref_logits, "float32", "logits")
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    for (path, g), ref_g in zip(flat, jax.tree.leaves(ref_grads)):
        assert_close(g, ref_g, "float32", f"grad {jax.tree_util.keystr(path)}")


def test_kernels_run_in_shard_map_under_a_mesh():
    sharding = Sharding(make_mesh(data=2, fsdp=2, tensor=2))
    b, s, h, kh, d = 4, 24, 4, 2, 16
    keys = jax.random.split(jax.random.key(2), 5)
    q = normal(keys[0], (b, s, h, d), "float32")
    k, v = (normal(x, (b, s, kh, d), "float32") for x in keys[1:3])
    seg = packed_segments(b, s)

    def loss(q, k, v, impl):
        o = attn.attention(q, k, v, seg, sm_scale=0.25, impl=impl, sharding=sharding)
        return jnp.sum(o * jnp.sin(o)), o

    ref = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, "xla")
    with attn.interpret("gpu"):
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True),
                     static_argnums=3)
        assert "shard_map" in str(jax.make_jaxpr(fn, static_argnums=3)(q, k, v, "pallas"))
        got = fn(q, k, v, "pallas")
    assert_close(got[0][1], ref[0][1], "float32", "output")
    for name, g, ref_g in zip(("dq", "dk", "dv"), got[1], ref[1]):
        assert_close(g, ref_g, "float32", name)

    caches = [normal(x, (b, kh, s, d), "bfloat16") for x in keys[3:5]]
    lengths = jnp.array([0, 1, s, 9], jnp.int32)
    with attn.interpret("gpu"):
        out = attn.decode_attention(q[:, 3], *caches, lengths, sm_scale=0.25, impl="pallas",
                                    sharding=sharding)
    # The kernel computes in the cache dtype (bf16) and returns q's dtype.
    ref_out = attn.decode_attention(q[:, 3].astype(jnp.bfloat16).astype(jnp.float32),
                                    *(c.astype(jnp.float32) for c in caches), lengths,
                                    sm_scale=0.25)
    assert out.dtype == jnp.float32
    assert_close(out, ref_out, "bfloat16", "decode output")


def test_impl_follows_the_backend():
    keys = jax.random.split(jax.random.key(3), 3)
    q = normal(keys[0], (1, 8, 2, 16), "float32")
    k, v = (normal(x, (1, 8, 1, 16), "float32") for x in keys[1:])
    seg = jnp.ones((1, 8), jnp.int32)
    # On CPU, "auto" is the reference itself.
    np.testing.assert_array_equal(attn.attention(q, k, v, seg, sm_scale=0.3, impl="auto"),
                                  attn.attention(q, k, v, seg, sm_scale=0.3, impl="xla"))
    assert attn.resolve("auto") == ("xla", "cpu", False)
    with attn.interpret("gpu"):
        assert attn.resolve("auto") == ("pallas", "gpu", True)
    with pytest.raises(ValueError, match="'pallas' has kernels for .* not for the 'cpu'"):
        attn.attention(q, k, v, seg, sm_scale=0.3, impl="pallas")
    with pytest.raises(ValueError, match="'cudnn' needs a GPU backend, got 'cpu'"):
        attn.attention(q, k, v, seg, sm_scale=0.3, impl="cudnn")
    # Decode: the XLA impl takes keys [B, K, Dh, S] when asked to, the kernels refuse them.
    assert attn.transposed_key_cache("auto")
    lengths = jnp.array([5], jnp.int32)
    kc, vc = (jnp.swapaxes(x, 1, 2) for x in (k, v))  # [B, K, S, Dh]
    np.testing.assert_allclose(
        attn.decode_attention(q[:, 4], jnp.swapaxes(kc, 2, 3), vc, lengths, sm_scale=0.3,
                              keys_transposed=True),
        attn.decode_attention(q[:, 4], kc, vc, lengths, sm_scale=0.3), rtol=1e-6)
    with attn.interpret("gpu"):
        assert not attn.transposed_key_cache("auto")
        with pytest.raises(ValueError, match="takes keys \\[B, K, S, Dh\\]"):
            attn.decode_attention(q[:, 4], kc, vc, lengths, sm_scale=0.3, impl="auto",
                                  keys_transposed=True)
    with pytest.raises(ValueError, match="impl 'flash' is not available"):
        attn.attention(q, k, v, seg, sm_scale=0.3, impl="flash")
    with pytest.raises(ValueError, match="interpret platform 'cpu'"):
        with attn.interpret("cpu"):
            pass
    mesh = Sharding(make_mesh(data=2, fsdp=4, tensor=1))
    with attn.interpret("tpu"), pytest.raises(ValueError, match="multi-device mesh"):
        attn.attention(q, k, v, seg, sm_scale=0.3, impl="pallas", sharding=mesh)

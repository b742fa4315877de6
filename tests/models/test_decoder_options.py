"""Remat policies, scanned vs unrolled layers and compute dtypes change speed, not maths."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.config import ModelConfig
from r1jax.models.decoder import forward, init_params

CFG = ModelConfig(family="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)


def loss_and_grads(cfg, params, tokens):
    def loss(p):
        logits = forward(p, tokens, cfg)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat,scan", [("full", True), ("dots", True), ("dots_no_batch", False),
                                        ("save_attention_out", True), ("none", False)])
def test_remat_and_layer_loop_give_the_same_loss_and_gradients(remat, scan):
    params = init_params(CFG, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 64)
    ref_loss, ref_grads = loss_and_grads(CFG, params, tokens)
    cfg = dataclasses.replace(CFG, remat=remat, scan_layers=scan)
    got_loss, got_grads = loss_and_grads(cfg, params, tokens)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compute_over_fp32_params_tracks_fp32():
    params = init_params(CFG, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 64)
    ref = np.asarray(forward(params, tokens, CFG))
    bf16 = forward(params, tokens, dataclasses.replace(CFG, dtype="bfloat16"))
    assert bf16.dtype == jnp.float32  # logits accumulate in fp32 whatever the compute dtype
    err = np.abs(np.asarray(bf16) - ref)
    assert 0 < err.max() < 2e-2  # bf16 really is used, and stays close
    assert jax.tree.leaves(params)[0].dtype == jnp.float32

"""Whole batch = 4 microbatches (summed) = 8-device mesh, for every aggregation mode.

The "policy" is a tiny differentiable model, h = tanh(x @ p), logits = h @ w, so that the
gradient is taken w.r.t. real parameters through `token_logprobs` and `policy_loss`.
Tolerance: rtol 2e-5, atol 1e-6 (float32; only the summation order differs).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.rl import advantages, logprobs, losses
from r1jax.sharding import make_mesh

B, G, T, D, V = 16, 4, 6, 8, 16
RTOL, ATOL = 2e-5, 1e-6


def _logp(params, x, targets):
    h = jnp.tanh(jnp.einsum("btd,de->bte", x, params["p"]))
    return logprobs.token_logprobs(h, params["w"], targets, chunk_size=4, vocab_chunk_size=8)


@functools.lru_cache(maxsize=None)
def _problem():
    k = jax.random.split(jax.random.PRNGKey(42), 8)
    params = {"p": jax.random.normal(k[0], (D, D)) / D ** 0.5,
              "w": jax.random.normal(k[1], (D, V))}
    x = jax.random.normal(k[2], (B, T, D))
    targets = jax.random.randint(k[3], (B, T), 0, V)

    def shift(scale, key):
        return jax.tree.map(lambda a: a + scale * jax.random.normal(key, a.shape), params)

    old_logp, _ = _logp(shift(0.15, k[4]), x, targets)
    ref_logp, _ = _logp(shift(0.3, k[5]), x, targets)
    lengths = jax.random.randint(k[6], (B,), 1, T + 1).at[5].set(0).at[12].set(0)
    mask = (jnp.arange(T)[None] < lengths[:, None]).astype(jnp.float32)
    rewards = jax.random.bernoulli(k[7], 0.5, (B,)).astype(jnp.float32)
    adv = advantages.group_advantages(rewards, G)
    batch = {"x": x, "targets": targets, "old_logp": old_logp, "ref_logp": ref_logp,
             "mask": mask, "adv": adv}
    return params, batch


def _loss(params, batch, agg, level, denominator=None):
    logp, ent = _logp(params, batch["x"], batch["targets"])
    return losses.policy_loss(
        logp, batch["old_logp"], batch["adv"], batch["mask"], eps_low=0.1, eps_high=0.15,
        clip_c=2.0, agg=agg, max_response_len=T, denominator=denominator,
        ratio_level=level, ref_logp=batch["ref_logp"], beta=0.05, kl_kind="k3",
        entropy=ent, entropy_coef=0.01)


def _rows(batch, start, stop):
    return jax.tree.map(lambda a: a[start:stop], batch)


def _close(a, b):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=RTOL, atol=ATOL), a, b)


@pytest.mark.parametrize("level", losses.RATIO_LEVELS)
@pytest.mark.parametrize("agg", losses.AGG_MODES)
def test_whole_vs_microbatches_vs_mesh(agg, level):
    params, batch = _problem()
    grad_fn = jax.value_and_grad(_loss, has_aux=True)

    (loss, metrics), grads = jax.jit(grad_fn, static_argnums=(2, 3))(params, batch, agg, level)
    assert metrics["clip_low"] + metrics["clip_high"] > 0  # the clip is exercised
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))

    # 4 microbatches with the whole batch's denominator; losses, grads, metrics summed
    denom = losses.loss_denominator(batch["mask"], agg, T)
    micro = jax.jit(lambda p, b: grad_fn(p, b, agg, level, denom))
    parts = [micro(params, _rows(batch, i, i + 4)) for i in range(0, B, 4)]
    summed = jax.tree.map(lambda *a: sum(a), *parts)
    (m_loss, m_metrics), m_grads = summed
    _close((m_loss, m_grads), (loss, grads))
    _close(losses.summarize_metrics(m_metrics), losses.summarize_metrics(metrics))
    # negative control: each microbatch dividing by its own denominator is NOT the same
    local = jax.jit(lambda p, b: grad_fn(p, b, agg, level))
    local_loss = sum(local(params, _rows(batch, i, i + 4))[0][0] for i in range(0, B, 4))
    assert abs(float(local_loss) - float(loss)) > 1e-3

    mesh = make_mesh(data=8, fsdp=1, tensor=1)
    # (a) jit over a batch sharded on the mesh's data axis: global sums, no override
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    replicated = jax.device_put(params, NamedSharding(mesh, P()))
    (s_loss, _), s_grads = jax.jit(grad_fn, static_argnums=(2, 3))(replicated, sharded, agg,
                                                                    level)
    _close((s_loss, s_grads), (loss, grads))

    # (b) explicit SPMD: each device's 2 rows with the global denominator. The gradient of
    # the replicated params comes out psum-ed over "data" by shard_map's autodiff; the loss
    # is summed by hand.
    def per_device(p, b):
        (piece_loss, _), g = grad_fn(p, b, agg, level, denom)
        return jax.lax.psum(piece_loss, "data"), g

    spmd = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")),
                                 out_specs=P()))
    _close(spmd(params, batch), (loss, grads))

"""The jitted update through the real decoder: microbatches and meshes change nothing."""


import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax.config import AlgoConfig, ModelConfig, OptimConfig
from r1jax.models.decoder import forward, init_params, param_shardings
from r1jax.rl.rollout import pack_sequences
from r1jax.rl.update import RLBatch, make_optimizer, make_update_fn
from r1jax import sft
from r1jax.sharding import Sharding, make_mesh

CFG = ModelConfig(family="qwen2", vocab_size=40, hidden_size=32, intermediate_size=64,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True,
                  tie_embeddings=True)
MAX_LEN = 12
LR = 1e4


def make_batch(seed=0, rows=16):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(2, 40, rng.integers(2, 7)).tolist() for _ in range(rows)]
    comps = [rng.integers(2, 40, rng.integers(0, MAX_LEN + 1)).tolist() for _ in range(rows)]
    packed = pack_sequences(prompts, comps, prompt_width=8, completion_width=MAX_LEN, pad_id=0)
    mask = packed["completion_mask"]
    return RLBatch(tokens=packed["tokens"], positions=packed["positions"],
                   segment_ids=packed["segment_ids"], mask=mask,
                   adv=rng.normal(size=rows).astype(np.float32),
                   old_logp=(rng.normal(size=mask.shape) * 0.3 - 2).astype(np.float32) * mask,
                   ref_logp=np.zeros_like(mask), valid_rows=np.ones(rows, np.float32))


def one_update(agg, microbatches, sharding=None, **algo):
    algo = AlgoConfig(agg=agg, microbatches=microbatches, eps_low=0.2, eps_high=0.28, **algo)
    # Plain SGD makes the parameter change lr x the gradient (Adam's first step would
    # normalise away the gradient's scale); a large lr keeps the change far above the
    # parameters' float32 rounding.
    tx = optax.sgd(LR)
    params = init_params(CFG, jax.random.key(0))
    batch = make_batch()
    if sharding is not None:
        params = jax.device_put(params, param_shardings(CFG, sharding))
        batch = jax.device_put(batch, sharding.named(("act_batch",), (16,)))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}
    update = jax.jit(make_update_fn(CFG, algo, tx, sharding, 1.0, MAX_LEN))
    new, metrics = update(state, batch)
    grads = jax.tree.map(lambda a, b: (np.asarray(a) - np.asarray(b)) / LR, params,
                         new["params"])
    return grads, jax.tree.map(float, metrics)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                 "seq-mean-token-sum-norm"])
def test_microbatches_and_mesh_give_the_whole_batch_gradient(agg):
    whole, m_whole = one_update(agg, 1)
    split, m_split = one_update(agg, 4)
    mesh = Sharding(make_mesh(data=2, fsdp=2, tensor=2))
    sharded, m_mesh = one_update(agg, 2, sharding=mesh)
    for name in ("loss", "grad_norm", "clip_frac", "approx_kl", "entropy"):
        assert m_split[name] == pytest.approx(m_whole[name], rel=1e-4, abs=1e-6), name
        assert m_mesh[name] == pytest.approx(m_whole[name], rel=1e-4, abs=1e-6), name
    for a, b, c in zip(jax.tree.leaves(whole), jax.tree.leaves(split), jax.tree.leaves(sharded)):
        scale = np.abs(a).max()
        np.testing.assert_allclose(b, a, atol=1e-5 * scale)
        np.testing.assert_allclose(c, a, atol=1e-5 * scale)
    assert m_whole["skipped"] == 0.0


def test_warm_start_loss_is_the_mean_nll_of_solution_tokens():
    """The RL trainer's warm start: prompts and solutions packed several to a row; its loss
    is the mean over all solution tokens (EOS included) of -log p, computed here one
    example at a time with a plain forward pass."""
    rng = np.random.default_rng(3)
    tok = types.SimpleNamespace(encode=lambda text, add_special_tokens: [int(c) + 2
                                                                         for c in text])
    examples = [{"prompt_ids": rng.integers(2, 40, rng.integers(2, 7)).tolist(),
                 "solution": "".join(map(str, rng.integers(0, 10, rng.integers(1, 9))))}
                for _ in range(10)]
    pairs = sft.warm_start_examples(examples, tok, eos_id=1)
    assert pairs[0][0][-1] == 1 and sum(pairs[0][1]) == len(examples[0]["solution"]) + 1
    batch, stats = sft.pack_batch(pairs, 24, row_unit=2)
    assert stats.rows < 10 and batch.tokens.shape[0] == 2 * 2 ** int(np.ceil(np.log2(
        stats.rows / 2)))
    params = init_params(CFG, jax.random.key(1))
    tx = make_optimizer(OptimConfig(lr=1e-3), 10)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}
    _, metrics = jax.jit(sft.make_packed_sft_update(CFG, tx, None))(
        state, jax.tree.map(jnp.asarray, batch))
    total, count = 0.0, 0
    for ids, mask in pairs:
        logits = np.asarray(forward(params, jnp.asarray([ids]), CFG))[0, :-1]
        logp = np.asarray(jax.nn.log_softmax(logits, -1))
        nll = -logp[np.arange(len(ids) - 1), ids[1:]]
        total += float((nll * np.asarray(mask[1:])).sum())
        count += sum(mask[1:])
    assert float(metrics["sft/loss"]) == pytest.approx(total / count, rel=1e-5)
    assert float(metrics["sft/tokens"]) == count


def test_logprob_mismatch_metrics_by_hand():
    from r1jax.rl.steps import _logprob_mismatch
    sampler = np.array([[-1.0, -2.0, -0.5], [-3.0, -1.0, 0.0]], np.float32)
    trainer = np.array([[-1.1, -2.0, -0.2], [-2.5, -9.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.float32)  # row 1's -9 is padding
    got = jax.tree.map(float, _logprob_mismatch(sampler, trainer, mask))
    d = np.array([-0.1, 0.0, 0.3, 0.5])
    assert got["mean_abs"] == pytest.approx(0.9 / 4, rel=1e-5)
    assert got["max_abs"] == pytest.approx(0.5, rel=1e-5)
    assert got["kl"] == pytest.approx(np.mean(np.exp(d) - 1 - d), rel=1e-4)


@pytest.mark.parametrize("minibatches,microbatches", [(1, 1), (2, 2), (1, 4)])
def test_log_prob_pass_in_row_chunks_equals_a_plain_forward(minibatches, microbatches):
    from r1jax.config import base_config, run_config_from
    from r1jax.rl.steps import RLSteps
    c = base_config()
    c.model.path = "unused"
    c.train.prompts_per_step = 4
    c.rollout.group_size = 4
    c.algo.update(minibatches=minibatches, microbatches=microbatches)
    sharding = Sharding(make_mesh(data=2, fsdp=2, tensor=2))
    params = jax.device_put(init_params(CFG, jax.random.key(1)), param_shardings(CFG, sharding))
    steps = RLSteps(CFG, run_config_from(c), sharding, params)
    batch = make_batch(seed=3)
    calls = []
    plain, chunked = steps._logprobs, steps._chunk_logprobs
    steps._logprobs = lambda p, b: calls.append(b.tokens.shape[0]) or plain(p, b)
    steps._chunk_logprobs = lambda p, b, a, size: calls.append(size) or chunked(p, b, a,
                                                                               size=size)
    got = np.asarray(steps.logprobs(steps.params, jax.device_put(batch, steps.batch_sharding)))
    assert calls == [16 // (minibatches * microbatches)] * (minibatches * microbatches)
    # Reference: log_softmax of a plain full-sequence forward, at the completion columns.
    logits = np.asarray(forward(steps.params, batch.tokens, CFG, positions=batch.positions,
                                segment_ids=batch.segment_ids), np.float64)
    width = batch.tokens.shape[1] - MAX_LEN
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    ref = np.take_along_axis(logp[:, width - 1:-1], batch.tokens[:, width:, None], -1)[..., 0]
    np.testing.assert_allclose(got * batch.mask, ref * batch.mask, atol=2e-5)

"""SFT on packed conversations (`r1jax.sft`): the assistant-token mask of real chat templates,
best-fit packing, and the packed loss and gradients against transformers' PyTorch model with
the same random weights, one conversation at a time."""

from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import r1jax
from r1jax import sft
from r1jax.models import attention as attn
from r1jax.models.decoder import Decoder
from tests.hf_models import make_hf_model

PATHS = {"xla": ("xla", None), "pallas_tpu": ("pallas", "tpu"), "pallas_gpu": ("pallas", "gpu")}
CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "<think>2+3=5</think> 5"},
        {"role": "user", "content": "And times 4?"},
        {"role": "assistant", "content": "20"}]


@pytest.fixture(scope="module")
def qwen_tokenizer(data_dir):
    import transformers
    return transformers.AutoTokenizer.from_pretrained(
        os.path.join(data_dir, "tokenizers", "qwen2.5_derived"))


def test_multi_turn_mask_covers_exactly_the_assistant_turns(qwen_tokenizer):
    ids, mask = sft.render_conversation(qwen_tokenizer, CHAT)
    text = qwen_tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert qwen_tokenizer.decode(ids) == text
    trained = [i for i, m in zip(ids, mask) if m]
    # Both turns' contents with their end-of-turn token, nothing else (no "assistant\n"
    # header, no system / user text, no newline after <|im_end|>).
    assert qwen_tokenizer.decode(trained) == "<think>2+3=5</think> 5<|im_end|>20<|im_end|>"
    runs = np.flatnonzero(np.diff(np.r_[0, mask, 0]))  # starts and ends of the 1-runs
    assert len(runs) == 4
    end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert [ids[e - 1] for e in runs[1::2]] == [end, end]
    with pytest.raises(ValueError, match="assistant turn"):
        sft.render_conversation(qwen_tokenizer, CHAT[:2])
    with pytest.raises(ValueError, match="role"):
        sft.render_conversation(qwen_tokenizer, [{"role": "user"}, CHAT[2]])


def test_best_fit_decreasing_by_hand():
    # Longest first: 6 -> A (room 2), 5 -> B (3), 4 -> C (4), 3 -> B (tightest, 0),
    # 2 -> A (tightest, 0).
    assert sft.best_fit([5, 3, 4, 2, 6], 8) == [[0, 1], [2], [3, 4]]
    with pytest.raises(ValueError, match="capacity"):
        sft.best_fit([9], 8)


def test_pack_lays_out_segments_positions_targets_and_counts():
    examples = [([1, 2, 3, 4, 5], [0, 0, 1, 1, 1]), ([6, 7, 8], [0, 1, 1]),
                ([9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
                ([19, 20], [0, 0])]  # nothing to train on: dropped
    out, stats = sft.pack(examples, 8, pad_id=99)
    np.testing.assert_array_equal(out["tokens"], [[1, 2, 3, 4, 5, 6, 7, 8],
                                                  [9, 10, 11, 12, 13, 14, 15, 16]])
    np.testing.assert_array_equal(out["segment_ids"], [[1] * 5 + [2] * 3, [1] * 8])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 3, 4, 0, 1, 2], range(8)])
    np.testing.assert_array_equal(out["targets"][0], [2, 3, 4, 5, 0, 7, 8, 0])
    np.testing.assert_array_equal(out["weights"][0], [0, 1, 1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(out["weights"][1], [0, 0, 1, 1, 1, 1, 1, 0])
    assert (stats.examples, stats.truncated, stats.dropped, stats.rows) == (3, 1, 1, 2)
    assert stats.efficiency == 16 / 16
    out, stats = sft.pack(examples, 8, overflow="drop", rows=3)
    assert (stats.examples, stats.dropped, stats.rows) == (2, 2, 3)
    assert stats.efficiency == 8 / 24 and not out["segment_ids"][1:].any()
    with pytest.raises(ValueError, match="rows=1"):
        sft.pack(examples, 8, rows=1)


def conversations(seed, count=5):
    """(ids, mask) of `count` random conversations: a prompt and one or two answers."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(4, 11))
        mask = (rng.random(n) < 0.6).astype(int)
        mask[0] = 0
        mask[-1] = 1
        out.append((rng.integers(1, 256, n).tolist(), mask.tolist()))
    return out


def hf_loss_and_grads(hf_model, examples):
    """transformers: sum over examples of -log p(assistant token | its prefix), divided by
    the count of such tokens over all examples; and its gradients."""
    hf_model.zero_grad()
    total, count = 0.0, 0
    for ids, mask in examples:
        logits = hf_model(torch.tensor([ids])).logits[0, :-1].double()
        logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        w = torch.tensor(mask[1:], dtype=torch.float64)
        total = total - (logp * w).sum()
        count += int(w.sum())
    loss = total / count
    loss.backward()
    return float(loss), {n: p.grad.numpy() for n, p in hf_model.named_parameters()}


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft_qwen2")
    hf_model = make_hf_model("qwen2", init_std=0.2, seed=3).float()
    hf_model.save_pretrained(path)
    return hf_model, str(path)


@pytest.mark.parametrize("path", PATHS)
def test_packed_loss_and_gradients_equal_transformers_one_conversation_at_a_time(
        hf_pair, path, tmp_path):
    hf_model, model_dir = hf_pair
    examples = conversations(1)
    ref_loss, ref_grads = hf_loss_and_grads(hf_model, examples)
    impl, platform = PATHS[path]
    model = r1jax.load_hf(model_dir, attention_impl=impl)
    packed, stats = sft.pack(examples, 16)
    single, _ = sft.pack(examples, 16, rows=None)
    assert stats.rows < len(examples)  # several conversations share rows
    one_per_row = {k: np.stack([sft.pack([e], 16)[0][k][0] for e in examples])
                   for k in packed}

    def loss(params, batch):
        nll, count = sft.sft_token_sums(params, sft.SFTBatch(**batch), model.config)
        return nll / count

    ctx = attn.interpret(platform) if platform else contextlib.nullcontext()
    with ctx:
        results = [jax.value_and_grad(loss)(model.params, jax.tree.map(jnp.asarray, b))
                   for b in (packed, one_per_row)]
    (l_packed, g_packed), (l_rows, g_rows) = results
    # float32 here, float64 log-softmax in the reference: 1e-5 relative.
    assert float(l_packed) == pytest.approx(ref_loss, rel=1e-5)
    assert float(l_rows) == pytest.approx(ref_loss, rel=1e-5)
    from safetensors.numpy import load_file
    for name, grads in (("packed", g_packed), ("rows", g_rows)):
        out = r1jax.save_hf(Decoder(model.config, params=grads), str(tmp_path / name),
                            dtype="float32")
        ours = load_file(f"{out}/model.safetensors")
        for key, ref_g in ref_grads.items():
            scale = max(float(np.abs(ref_g).max()), 1e-3)
            err = float(np.abs(ours[key] - ref_g).max())
            assert err <= 1e-4 * scale, f"{name} {key}: {err:.3g} vs scale {scale:.3g}"


def test_only_assistant_targets_count(hf_pair):
    _, model_dir = hf_pair
    model = r1jax.load_hf(model_dir)
    packed, _ = sft.pack(conversations(2), 16)
    loss = lambda b: float(sft.sft_token_sums(model.params, sft.SFTBatch(
        **jax.tree.map(jnp.asarray, b)), model.config)[0])
    base = loss(packed)
    changed = dict(packed, targets=np.where(packed["weights"] > 0, packed["targets"],
                                            (packed["targets"] + 17) % 256))
    assert loss(changed) == base
    r, s = np.argwhere(packed["weights"] > 0)[0]
    one = dict(packed, targets=packed["targets"].copy())
    one["targets"][r, s] = (one["targets"][r, s] + 17) % 256
    assert loss(one) != base


def test_microbatches_and_the_mesh_leave_the_update_unchanged(hf_pair):
    _, model_dir = hf_pair
    packed, _ = sft.pack(conversations(4, count=12), 16, rows=8)
    tx = optax.sgd(1.0)  # the step is minus the gradient (Adam's first step would be ~sign)
    results = {}
    for name, micro, mesh in (("one", 1, None), ("micro4", 4, None),
                              ("mesh", 2, r1jax.sharding.make_mesh(data=2, fsdp=2, tensor=2))):
        model = r1jax.load_hf(model_dir, mesh=mesh)
        update = jax.jit(sft.make_packed_sft_update(model.config, tx, model.sharding, micro))
        state = {"params": model.params, "opt_state": tx.init(model.params),
                 "step": jnp.int32(0)}
        state, metrics = update(state, jax.tree.map(jnp.asarray, sft.SFTBatch(**packed)))
        results[name] = (jax.device_get(state["params"]), jax.device_get(metrics))
    ref_params, ref_metrics = results["one"]
    initial = jax.device_get(r1jax.load_hf(model_dir).params)
    moved = max(float(np.abs(a - b).max())
                for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(initial)))
    assert moved > 1e-2  # the step is large next to the tolerance below
    assert ref_metrics["sft/tokens"] == packed["weights"].sum()
    for name in ("micro4", "mesh"):
        params, metrics = results[name]
        assert float(metrics["sft/loss"]) == pytest.approx(float(ref_metrics["sft/loss"]),
                                                           rel=1e-5)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6, err_msg=name)

"""DPO losses against TRL 1.16's DPOTrainer and hand-computed values, and packing invariance.

TRL runs the same tiny random-weight Qwen2 (transformers, fp32) on the same token ids; its
loss, gradients and reward metrics must equal r1jax's to fp32 precision: loss and metrics
within 1e-5 relative, each gradient tensor within 2e-4 relative to its largest entry.
"""

import copy
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import r1jax
from r1jax import dpo
from r1jax.models import hf_io
from tests.hf_models import make_hf_model

VOCAB = 256
BETA = 0.3
GRAD_TENSORS = ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.bias",
                "model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight",
                "model.layers.1.input_layernorm.weight")


def make_pairs(n=4, seed=0, lo=3, hi=12):
    """n pairs of (prompt, chosen, rejected) token ids, each of lo..hi-1 tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p, c, r = (rng.integers(8, VOCAB, int(k)).tolist() for k in rng.integers(lo, hi, 3))
        out.append((p, c, r))
    return out


def as_pair_tokens(pairs):
    return [dpo.PairTokens(p + c, [0] * len(p) + [1] * len(c), p + r,
                           [0] * len(p) + [1] * len(r)) for p, c, r in pairs]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(policy HF model, reference HF model, r1jax policy, r1jax reference)."""
    policy, reference = make_hf_model("qwen2", seed=1), make_hf_model("qwen2", seed=2)
    loaded = []
    for name, m in (("policy", policy), ("reference", reference)):
        path = str(tmp_path_factory.mktemp(name))
        m.save_pretrained(path)
        loaded.append(r1jax.load_hf(path))
    return policy, reference, loaded[0], loaded[1]


@pytest.fixture(scope="module")
def trl(models, tmp_path_factory):
    """A TRL DPOTrainer over copies of the policy and reference; a test sets its loss."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    from r1jax.models.char_tokenizer import make_char_tokenizer
    policy, reference = models[:2]
    data = datasets.Dataset.from_list([{"prompt": "ab", "chosen": "cd", "rejected": "ef"}])
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), beta=BETA,
                     report_to="none", use_cpu=True, bf16=False, max_length=None)
    model = copy.deepcopy(policy).train()
    return DPOTrainer(model=model, ref_model=copy.deepcopy(reference), args=args,
                      train_dataset=data, processing_class=make_char_tokenizer("abcdefgh "))


def trl_step(trainer, pairs, loss_type, label_smoothing=0.0, sft_weight=0.0):
    """TRL's loss, gradients (HF names) and metrics on one batch of `pairs`; with
    sft_weight, TRL's "sft" loss added with that weight (its RPO form)."""
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    if sft_weight:
        trainer.loss_types, trainer.loss_weights = [loss_type, "sft"], [1.0, sft_weight]
    trainer.label_smoothing = label_smoothing
    model = trainer.model
    examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs]
    inputs = trainer.data_collator(examples)
    model.zero_grad()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    metrics = {k: v[0] for k, v in trainer._metrics["train"].items()}
    return float(loss.detach()), grads, metrics


def hf_named(grads, cfg):
    """r1jax parameter gradients under their Hugging Face names."""
    out = {}
    for m, spec in hf_io._active_maps(cfg):
        node = grads
        for key in m.path:
            node = node[key]
        arr = np.asarray(node)
        if m.path[0] == "layers":
            for i in range(arr.shape[0]):
                out[m.hf_name.format(i=i)] = m.to_hf(arr[i])
        else:
            out[m.hf_name] = m.to_hf(arr)
    return out


@functools.lru_cache(maxsize=None)
def reference_program(cfg):
    return jax.jit(dpo.make_reference_fn(cfg, None))


@functools.lru_cache(maxsize=None)
def grad_program(cfg, loss_type, label_smoothing, sft_weight=0.0):
    """Jitted loss, metric sums and gradient of one batch."""
    loss_fn = dpo.make_dpo_loss(cfg, None, beta=BETA, loss_type=loss_type,
                                label_smoothing=label_smoothing, sft_weight=sft_weight)
    return jax.jit(jax.value_and_grad(
        lambda p, b: loss_fn(p, b, jnp.sum(b.pair_weights), dpo.chosen_token_count(b)),
        has_aux=True))


def padded(batch, rows, length):
    """The batch with empty rows and columns added up to [rows, length] (fewer compiles)."""
    def pad(name, x):
        if x.ndim == 1:
            return x
        fill = -1 if name == "sequence_ids" else 0
        return np.pad(x, ((0, rows - x.shape[0]), (0, length - x.shape[1])),
                      constant_values=fill)
    return dpo.DPOBatch(**{f.name: pad(f.name, getattr(batch, f.name))
                           for f in dataclasses.fields(batch)})


def r1jax_step(policy, reference, pairs, loss_type, label_smoothing=0.0, shape=(8, 32),
               sft_weight=0.0, **pack):
    batch, _ = dpo.pack_pairs(as_pair_tokens(pairs), pack.pop("max_len", 32), **pack)
    batch = jax.tree.map(jnp.asarray, padded(batch, *shape))
    batch = reference_program(reference.config)(reference.params, batch)
    (loss, sums), grads = grad_program(policy.config, loss_type, label_smoothing,
                                      sft_weight)(policy.params, batch)
    return float(loss), grads, {k: float(v) for k, v in sums.items()}


def assert_grads_match(ours, theirs):
    norm = lambda g: math.sqrt(sum(float(np.sum(np.square(v))) for v in g.values()))
    assert set(ours) == set(theirs)
    assert norm(ours) == pytest.approx(norm(theirs), rel=1e-4)
    for name in GRAD_TENSORS:
        scale = float(np.max(np.abs(theirs[name])))
        assert scale > 0, name
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=2e-4 * scale,
                                   err_msg=name)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "nca_pair"])
def test_loss_gradient_and_metrics_equal_trl(models, trl, loss_type):
    _, _, policy, reference = models
    pairs = make_pairs(4)
    loss_t, grads_t, metrics_t = trl_step(trl, pairs, loss_type)
    loss, grads, metrics = r1jax_step(policy, reference, pairs, loss_type)
    assert loss == pytest.approx(loss_t, rel=1e-5)
    assert abs(metrics["rewards/margins"]) > 1e-3  # the reference differs from the policy
    for key in dpo.METRICS:
        assert metrics[key] == pytest.approx(metrics_t[key], rel=1e-5, abs=1e-6), key
    assert_grads_match(hf_named(grads, policy.config), grads_t)


def test_sft_term_equals_trl_rpo_form(models, trl):
    """sft_weight w: TRL's loss_type ["sigmoid", "sft"] with loss_weights [1, w] (the
    chosen tokens' NLL averaged over the batch's chosen tokens, not per pair): loss and
    gradients equal; the term is the gap to the plain DPO loss."""
    _, _, policy, reference = models
    pairs = make_pairs(4, seed=7, lo=2, hi=14)  # unequal lengths: token mean != pair mean
    loss_t, grads_t, _ = trl_step(trl, pairs, "sigmoid", sft_weight=0.5)
    loss, grads, metrics = r1jax_step(policy, reference, pairs, "sigmoid", sft_weight=0.5)
    assert loss == pytest.approx(loss_t, rel=1e-5)
    assert_grads_match(hf_named(grads, policy.config), grads_t)
    plain, _, _ = r1jax_step(policy, reference, pairs, "sigmoid")
    assert loss - plain == pytest.approx(0.5 * metrics["sft_loss"], rel=1e-5)
    # The NLL per chosen token by hand from the HF policy's logits.
    import torch
    hf_policy, total, count = models[0], 0.0, 0
    with torch.no_grad():
        for p, c, _ in pairs:
            logits = hf_policy(torch.tensor([p + c])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            total -= sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(c))
            count += len(c)
    assert metrics["sft_loss"] == pytest.approx(total / count, rel=1e-5)


def test_label_smoothing_equals_trl_conservative_form(models, trl):
    """Conservative DPO: TRL 1.16 applies -(1-e) log s(b D) - e log s(-b D) in its "aot"
    loss, which for a batch of one pair (nothing to sort) is exactly that formula; the
    batch mean over single-pair calls is the reference for r1jax's smoothed "sigmoid"."""
    _, _, policy, reference = models
    pairs = make_pairs(4, seed=5)
    runs = [trl_step(trl, [pair], "aot", label_smoothing=0.1) for pair in pairs]
    loss_t = sum(r[0] for r in runs) / len(runs)
    grads_t = {k: sum(r[1][k] for r in runs) / len(runs) for k in runs[0][1]}
    loss, grads, _ = r1jax_step(policy, reference, pairs, "sigmoid", label_smoothing=0.1)
    assert loss == pytest.approx(loss_t, rel=1e-5)
    assert_grads_match(hf_named(grads, policy.config), grads_t)
    plain, _, _ = r1jax_step(policy, reference, pairs, "sigmoid")
    assert abs(plain - loss) > 1e-3


def test_reference_policy_and_precomputed_reference_agree(models):
    """With the starting policy as reference the log-ratios are 0 (loss log 2, rewards 0);
    stored reference numbers give the same loss as computing them."""
    _, _, policy, reference = models
    pairs = make_pairs(4, seed=2)
    loss, _, metrics = r1jax_step(policy, policy, pairs, "sigmoid")
    assert loss == pytest.approx(math.log(2), rel=1e-6)
    assert metrics["rewards/margins"] == 0.0 and metrics["rewards/accuracies"] == 0.0
    batch, _ = dpo.pack_pairs(as_pair_tokens(pairs), 32)
    batch = reference_program(reference.config)(
        reference.params, jax.tree.map(jnp.asarray, padded(batch, 8, 32)))
    stored = [dpo.PairTokens(**{**vars(t), "ref_chosen_logps": float(c),
                                "ref_rejected_logps": float(r)})
              for t, c, r in zip(as_pair_tokens(pairs), batch.ref_chosen_logps,
                                 batch.ref_rejected_logps)]
    packed, _ = dpo.pack_pairs(stored, 32)
    (precomputed, _), _ = grad_program(policy.config, "sigmoid", 0.0)(
        policy.params, jax.tree.map(jnp.asarray, padded(packed, 8, 32)))
    computed, _, _ = r1jax_step(policy, reference, pairs, "sigmoid")
    assert float(precomputed) == pytest.approx(computed, rel=1e-6)


def test_packing_and_microbatching_leave_the_loss_unchanged(models):
    """Pairs in one row each, each sequence in its own row, several pairs per row, and two
    microbatches through the update's accumulation: the same loss and gradient (IPO plus
    the chosen-NLL term, whose denominator is the whole batch's chosen tokens)."""
    from r1jax.rl.update import accumulate_grads
    _, _, policy, reference = models
    pairs = make_pairs(4, seed=3, lo=8, hi=12)  # sequences of 16..22 tokens
    layouts = {"pair_per_row": dict(max_len=44, together=True),
               "sequence_per_row": dict(max_len=22),
               "many_per_row": dict(max_len=96, together=True)}
    results = {}
    for name, pack in layouts.items():
        batch, stats = dpo.pack_pairs(as_pair_tokens(pairs), **pack)
        results[name] = r1jax_step(policy, reference, pairs, "ipo", shape=(8, 96),
                                   sft_weight=0.5, **pack)
        rows, per_row = stats.rows, batch.segment_ids.max(axis=1)
        if name == "sequence_per_row":
            assert rows == 8 and per_row[:rows].tolist() == [1] * 8
        if name == "pair_per_row":
            assert rows == 4 and per_row[:rows].tolist() == [2] * 4
        if name == "many_per_row":
            assert rows < 4 and per_row.max() > 2
    batch, _ = dpo.pack_pairs(as_pair_tokens(pairs), 44, pieces=2)
    batch = jax.jit(dpo.make_reference_fn(reference.config, None, 2))(
        reference.params, jax.tree.map(jnp.asarray, batch))
    loss_fn = dpo.make_dpo_loss(policy.config, None, beta=BETA, loss_type="ipo",
                                sft_weight=0.5)
    loss, _, grads = jax.jit(lambda p, b: accumulate_grads(
        lambda q, piece: loss_fn(q, piece, 4.0, dpo.chosen_token_count(b)), p, b, 2))(
            policy.params, batch)
    results["two_microbatches"] = (float(loss), grads, None)
    base_loss, base_grads, _ = results.pop("pair_per_row")
    for name, (loss, grads, _) in results.items():
        assert loss == pytest.approx(base_loss, rel=1e-6), name
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)


def test_hand_computed_losses():
    """log-ratios r_c = 1, r_r = -1, beta 0.5 (beta D = 1), response lengths 4 and 2."""
    args = [jnp.array([-10.0]), jnp.array([-12.0]), jnp.array([-11.0]), jnp.array([-11.0])]
    sig = lambda **k: float(dpo.dpo_losses(*args, beta=0.5, **k)[0])
    assert sig() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)  # 0.313262
    assert sig(label_smoothing=0.1) == pytest.approx(0.9 * 0.3132617 + 0.1 * 1.3132617,
                                                     rel=1e-6)
    # IPO: (1/4 - (-1)/2 - 1/(2 x 0.5))^2 = (0.75 - 1)^2
    assert float(dpo.dpo_losses(*args, beta=0.5, loss_type="ipo",
                                chosen_tokens=jnp.array([4.0]),
                                rejected_tokens=jnp.array([2.0]))[0]) == pytest.approx(0.0625)
    # NCA: -log s(0.5) - 0.5 log s(-0.5) - 0.5 log s(0.5)
    assert sig(loss_type="nca_pair") == pytest.approx(
        1.5 * math.log1p(math.exp(-0.5)) + 0.5 * math.log1p(math.exp(0.5)), rel=1e-6)
    m = dpo.pair_metrics(*args, beta=0.5)
    assert [float(m[k][0]) for k in ("rewards/chosen", "rewards/rejected",
                                     "rewards/margins", "rewards/accuracies")] == \
        [0.5, -0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type 'sigmoid'"):
        dpo.dpo_losses(*args, beta=0.5, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo.dpo_losses(*args, beta=0.5, loss_type="hinge")


def test_sequence_logps_sums_by_sequence_and_ignores_padding():
    logp = jnp.array([[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0, -7.0, -8.0]])
    weights = jnp.array([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]])
    ids = jnp.array([[0, 0, 1, 2], [2, -1, 1, -1]])
    sums, counts = dpo.sequence_logps(logp, weights, ids, 3)
    np.testing.assert_array_equal(sums, [-3.0, -7.0, -9.0])
    np.testing.assert_array_equal(counts, [2.0, 1.0, 2.0])


def test_pack_pairs_drops_and_truncates_whole_pairs():
    pairs = as_pair_tokens(make_pairs(3, seed=4))
    long = dpo.PairTokens([1] * 40, [0] * 30 + [1] * 10, [1, 2, 3], [0, 1, 1])
    batch, stats = dpo.pack_pairs(pairs + [long], 32, overflow="drop")
    assert stats.dropped == 1 and stats.examples == 3
    assert batch.pair_weights.tolist() == [1.0, 1.0, 1.0, 0.0]
    batch, stats = dpo.pack_pairs(pairs + [long], 32)
    assert stats.truncated == 1 and stats.examples == 4
    assert (batch.sequence_ids == 6).sum() == 31  # chosen of pair 3: 31 targets of 32
    with pytest.raises(ValueError, match="overflow must be"):
        dpo.pack_pairs(pairs, 32, overflow="cut")

"""The trainer's KL reference, empty minibatches, stop tokens and preemption during SFT."""

import dataclasses
import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.config import load_config
from r1jax.metrics import read_metrics
from r1jax.models import decoder
from r1jax.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRPO = os.path.join(ROOT, "configs", "grpo_qwen2_5_math_1_5b_gsm8k.py")


def host(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def completion_logp_reference(params, batch, cfg) -> np.ndarray:
    """log pi(token) [B, T] from full [B, S, V] logits and log_softmax (the trainer uses a
    chunked custom-VJP kernel that never forms them)."""
    t = batch.mask.shape[1]
    width = batch.tokens.shape[1] - t
    logits = decoder.forward(params, batch.tokens, cfg, positions=batch.positions,
                             segment_ids=batch.segment_ids)
    logp = jax.nn.log_softmax(logits[:, width - 1:width - 1 + t].astype(jnp.float32), -1)
    return np.asarray(jnp.take_along_axis(logp, batch.tokens[:, width:, None], -1)[..., 0])


def k3(logp, ref):
    """Schulman's k3 estimator as README writes it: exp(d) - d - 1, d = ref - logp."""
    d = np.clip(ref - logp, -20, 20)
    return np.clip(np.exp(d) - d - 1, -10, 10)


def test_grpo_recipe_kl_term_is_positive_and_equals_k3_recomputed(data_dir, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    cfg = load_config(GRPO + ":tiny", [f"train.run_dir={tmp_path / 'grpo'}", "model.dtype=float32",
                                       "train.progress_bar=False", "train.tensorboard=False",
                                       "train.export_hf=False", "eval.source=None"])
    assert (cfg.algo.kl_beta, cfg.algo.kl_kind, cfg.algo.minibatches) == (0.04, "k3", 4)
    trainer = Trainer(cfg)
    calls = []
    update = trainer.rl._update

    def spy(state, piece):
        calls.append((host(state["params"]), host(piece)))
        return update(state, piece)
    trainer.rl._update = spy
    try:
        trainer.run()
        reference = host(trainer.rl.ref_params)
        final = host(trainer.rl.params)
    finally:
        trainer.close()
    rows = [r for r in read_metrics(cfg.train.run_dir) if "policy/kl" in r]
    assert len(calls) == 2 * cfg.algo.minibatches
    for step, row in enumerate(rows):
        kls = []
        for params, piece in calls[step * 4:(step + 1) * 4]:
            piece = jax.tree.map(jnp.asarray, piece)
            logp = completion_logp_reference(params, piece, trainer.model_config)
            ref = completion_logp_reference(reference, piece, trainer.model_config)
            m = np.asarray(piece.mask)
            kls.append((k3(logp, ref) * m).sum() / m.sum())
        # The first optimizer step of RL sees the reference itself.
        if step == 0:
            assert kls[0] < 1e-6
        assert row["policy/kl"] > 0
        np.testing.assert_allclose(row["policy/kl"], np.mean(kls), rtol=2e-3, atol=1e-7)
        np.testing.assert_allclose(row["policy/kl_loss"], 0.04 * row["policy/kl"], rtol=0.5)
    # The reference is the policy RL started from (after the warm start), a real copy that
    # the updates did not touch: it equals the parameters of the first optimizer step.
    jax.tree.map(np.testing.assert_array_equal, reference, calls[0][0])
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(reference), jax.tree.leaves(final)))


def test_resumed_run_keeps_the_reference(make_config, tmp_path):
    cfg = make_config("kl", algo=dict(kl_beta=0.1), train=dict(steps=1))
    trainer = Trainer(cfg)
    try:
        trainer.run()
        reference = host(trainer.rl.ref_params)
    finally:
        trainer.close()
    cfg2 = make_config("kl", algo=dict(kl_beta=0.1), train=dict(steps=2))
    again = Trainer(cfg2)
    try:
        assert again.restore()
        jax.tree.map(np.testing.assert_array_equal, host(again.rl.ref_params), reference)
    finally:
        again.close()


def test_empty_minibatches_leave_params_moments_and_step_bitwise_unchanged(make_config):
    """Dynamic sampling short of prompts_per_step: with 4 minibatches the padding rows fill
    whole minibatches; updating on them would move AdamW's moments and the schedule."""
    cfg = make_config(algo=dict(minibatches=4, dynamic_sampling=True, max_num_gen_batches=2,
                                min_train_prompts=1),
                      sft=dict(steps=40, batch_size=16, lr=1e-2),
                      rollout=dict(group_size=4), train=dict(steps=1, prompts_per_step=8,
                                                             gen_prompts_per_batch=8))
    trainer = Trainer(cfg)
    seen = []
    update = trainer.rl._update

    def spy(state, piece):
        before = host(state)
        new_state, metrics = update(state, piece)
        seen.append((before, host(new_state), float(np.sum(np.asarray(piece.mask))),
                     host(metrics)))
        return new_state, metrics
    trainer.rl._update = spy
    try:
        trainer.run()
    finally:
        trainer.close()
    row = [r for r in read_metrics(cfg.train.run_dir) if "batch/tokens" in r][0]
    kept = row["dynamic_sampling/groups_used"]
    assert 1 <= kept <= 6, "the case needs both real and empty minibatches"
    empty = [s for s in seen if s[2] == 0]
    assert len(empty) == 4 - (int(kept) + 1) // 2 and row["empty_minibatches"] == len(empty)
    for before, after, _, metrics in empty:
        jax.tree.map(np.testing.assert_array_equal, before, after)  # params, moments, step
        assert metrics["empty"] == 1.0 and metrics["skipped"] == 0.0
    real = [s for s in seen if s[2] > 0]
    assert real and all(int(a["step"]) == int(b["step"]) + 1 for b, a, _, _ in real)
    # The logged token count is the whole batch's, not the first minibatch's times 4.
    assert row["batch/tokens"] == sum(s[2] for s in seen)


def expected_stop_ids(tokenizer_dir: str, extra_eos: list) -> set:
    """From the files themselves: tokenizer_config's eos_token, the token the chat template
    closes an assistant turn with, generation_config's eos_token_id."""
    conf = json.load(open(os.path.join(tokenizer_dir, "tokenizer_config.json")))
    added = json.load(open(os.path.join(tokenizer_dir, "tokenizer.json")))["added_tokens"]
    by_content = {t["content"]: t["id"] for t in added}
    # Both templates close every turn with <|im_end|> right after the message content.
    assert "+ '<|im_end|>" in conf["chat_template"]
    return {by_content[conf["eos_token"]], by_content["<|im_end|>"], *extra_eos}


@pytest.mark.parametrize("family", ["qwen2.5_derived", "qwen3"])
def test_trainer_stops_completions_like_r1jax_eval(family, data_dir, tmp_path, make_config):
    """A base Qwen2.5-Math checkpoint ships EOS <|endoftext|> (and generation_config
    eos_token_id 151643); under the qwen_math chat template it must also stop at
    <|im_end|>, the template's end of turn. Same for a Qwen3 tokenizer."""
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    shutil.copy(os.path.join(data_dir, "tokenizers", "qwen2.5_derived", "tokenizer.json"),
                tok_dir)
    conf = json.load(open(os.path.join(data_dir, "tokenizers", family,
                                       "tokenizer_config.json")))
    conf["eos_token"] = "<|endoftext|>"  # as the base checkpoints ship it
    json.dump(conf, open(tok_dir / "tokenizer_config.json", "w"))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for f in os.listdir(tok_dir):
        shutil.copy(tok_dir / f, model_dir)
    json.dump({"eos_token_id": [151643]}, open(model_dir / "generation_config.json", "w"))
    from r1jax.evaluation.policy import stop_token_ids as eval_rule
    from r1jax.models import load_tokenizer
    want = expected_stop_ids(str(tok_dir), [151643])
    assert want == {151643, 151645}
    tokenizer = load_tokenizer(str(model_dir))
    assert set(eval_rule(tokenizer, str(model_dir))) == want
    cfg = make_config(data=dict(template="qwen_math", max_prompt_tokens=64),
                      train=dict(steps=0))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, char_vocab=None, tokenizer=str(model_dir),
        arch=dict(cfg.model.arch, vocab_size=151936)))
    trainer = Trainer(cfg)
    try:
        assert set(trainer.sampler.eos_token_ids) == want
    finally:
        trainer.close()


def test_sigterm_during_sft_saves_and_resumes_exactly(make_config, monkeypatch):
    straight = make_config("straight", sft=dict(steps=4), train=dict(steps=1))
    t = Trainer(straight)
    try:
        t.run()
        want = host(t.rl.params)
    finally:
        t.close()

    cfg = make_config("preempted", sft=dict(steps=4), train=dict(steps=1))
    from r1jax.rl import steps as rl_steps
    original = rl_steps.RLSteps.run_sft

    def preempt_after_two(self, *args, stop=None, **kwargs):
        count = {"n": 0}

        def stop_now():
            count["n"] += 1
            if count["n"] == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return stop()
        return original(self, *args, stop=stop_now, **kwargs)
    monkeypatch.setattr(rl_steps.RLSteps, "run_sft", preempt_after_two)
    t = Trainer(cfg)
    try:
        summary = t.run()
    finally:
        t.close()
    assert summary["stopped_in"] == "sft" and summary["sft"]["steps"] == 2
    assert t.checkpointer.latest_step() is None  # RL has not started: no eval, no RL save
    assert t.summary.get("eval_before") is None
    monkeypatch.setattr(rl_steps.RLSteps, "run_sft", original)
    t = Trainer(cfg)
    try:
        summary = t.run()
        got = host(t.rl.params)
    finally:
        t.close()
    assert summary["sft"]["steps"] == 4
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_sigterm_saves_before_a_due_evaluation_and_the_resumed_run_evaluates(make_config,
                                                                           monkeypatch):
    cfg = make_config(eval=dict(every=1), train=dict(steps=3, checkpoint_every=0))
    order = []
    original_eval, original_save = Trainer.evaluate, Trainer.save
    original_step = Trainer.train_step

    def step(self, s):
        out = original_step(self, s)
        if s == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(Trainer, "evaluate",
                        lambda self, tag: order.append(("eval", tag)) or original_eval(self, tag))
    monkeypatch.setattr(Trainer, "save",
                        lambda self, wait=False: order.append(("save", self.step))
                        or original_save(self, wait))
    monkeypatch.setattr(Trainer, "train_step", step)
    t = Trainer(cfg)
    try:
        assert t.run()["stopped_at"] == 1
    finally:
        t.close()
    assert order[-1] == ("save", 1) and ("eval", "step_1") not in order
    monkeypatch.setattr(Trainer, "train_step", original_step)
    order.clear()
    t = Trainer(cfg)
    try:
        t.run()
    finally:
        t.close()
    assert order[0] == ("eval", "step_1")  # the owed evaluation, first thing after resuming
    assert ("eval", "step_2") in order

"""An RL run whose reward mixes rule-based terms with a reward model's score."""

import numpy as np
import pytest
import torch
import transformers

from r1jax.metrics import read_metrics
from r1jax.models.char_tokenizer import make_char_tokenizer
from r1jax.train import Trainer
from tests.models.test_reward_model import make_seq_cls

VOCAB = "0123456789+=,"


def reward_model_dir(tmp_path, family: str) -> str:
    """A random-weight `family` sequence-classification model over the char vocabulary."""
    tok = make_char_tokenizer(VOCAB)
    rm_dir = str(tmp_path / "rm")
    make_seq_cls(family, vocab=len(tok), pad_token_id=tok.pad_token_id).save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    return rm_dir


def run_recording_scores(cfg) -> tuple[Trainer, list]:
    """Runs the trainer; returns it and every (texts, rows, RewardResult) its pool scored."""
    trainer = Trainer(cfg)
    scored = []
    score = trainer.pool.score

    def spy(texts, rows, lengths=None):
        out = score(texts, rows, lengths)
        scored.append((list(texts), list(rows), out))
        return out
    trainer.pool.score = spy
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer, scored


def test_rule_and_model_rewards_are_both_logged_and_summed(make_config, tmp_path):
    tok = make_char_tokenizer(VOCAB)
    rm_dir = reward_model_dir(tmp_path, "qwen2")
    functions = [dict(name="accuracy", weight=1.0, kwargs=dict(mode="answer_tag")),
                 dict(name="format", weight=0.1, kwargs={}),
                 dict(name="reward_model", weight=0.5,
                      kwargs=dict(path=rm_dir, format="concat", normalize="affine",
                                  scale=2.0, shift=0.0))]
    cfg = make_config(rewards=dict(functions=functions), sft=dict(steps=0),
                      eval=dict(source=None), train=dict(steps=2))
    _, scored = run_recording_scores(cfg)
    rows = [r for r in read_metrics(cfg.train.run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert {"reward/accuracy/mean", "reward/format/mean", "reward/reward_model/mean"} <= set(r)
        assert r["reward/reward_model/std"] > 0  # the model scored, rows differ
    # Each total = the rule terms + 0.5 * the model term, and the model term = 2 x the
    # transformers model's score of question + completion (no chat template: concatenated).
    texts, rows_seen, out = scored[0]
    np.testing.assert_allclose(
        out.total, out.per_function["accuracy"] + 0.1 * out.per_function["format"]
        + 0.5 * out.per_function["reward_model"], atol=1e-9)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    for i in range(0, len(texts), 7):
        ids = tok(rows_seen[i]["question"] + texts[i])["input_ids"]
        with torch.no_grad():
            want = float(hf(torch.tensor([ids])).logits[0, 0])
        assert out.per_function["reward_model"][i] == pytest.approx(2 * want, abs=1e-4)


def test_a_mixture_task_rewarded_by_the_model_alone(make_config, tmp_path):
    """Two tasks: "rule" by answer-tag accuracy, "open" by the reward model only (its
    accuracy: a positive score). The model scores the "open" rows and nothing else."""
    tok = make_char_tokenizer(VOCAB)
    rm_dir = reward_model_dir(tmp_path, "llama")
    common = dict(source="arithmetic", template="plain", recipe=None, system_prompt=None,
                  limit=None, num_generated=200, task_options=dict(terms=2, digits=1))
    mixture = [
        dict(name="rule", weight=1.0, accuracy="accuracy",
             functions=[dict(name="accuracy", weight=1.0, kwargs=dict(mode="answer_tag"))],
             **common),
        dict(name="open", weight=1.0, accuracy="reward_model",
             functions=[dict(name="reward_model", weight=1.0,
                             kwargs=dict(path=rm_dir, format="concat"))], **common)]
    cfg = make_config(data=dict(mixture=mixture), sft=dict(steps=0), eval=dict(source=None),
                      train=dict(steps=1, prompts_per_step=4))
    _, scored = run_recording_scores(cfg)
    texts, rows, out = scored[0]
    tasks = np.array([r["task"] for r in rows])
    assert {"rule", "open"} == set(tasks)
    model = out.per_function["open/reward_model"]
    assert np.isnan(model[tasks == "rule"]).all() and np.isfinite(model[tasks == "open"]).all()
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    for i in np.flatnonzero(tasks == "open")[:4]:
        ids = tok(rows[i]["question"] + texts[i])["input_ids"]
        with torch.no_grad():
            want = float(hf(torch.tensor([ids])).logits[0, 0])
        assert model[i] == pytest.approx(want, abs=1e-4)
        assert out.total[i] == pytest.approx(want, abs=1e-4)  # its only reward
    row = [r for r in read_metrics(cfg.train.run_dir) if "reward/mean" in r][0]
    assert "task/open/reward/reward_model/mean" in row and "task/rule/accuracy" in row

"""The trainer end to end on a tiny model: resume, preemption, skips, dynamic sampling, export."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from r1jax.config import ConfigError
from r1jax.metrics import read_metrics
from r1jax.train import Trainer, TrainingStopped

# Metrics that depend on wall-clock time, not on the computation.
TIMING = ("time/", "perf/generated_tokens_per_s", "eval/seconds")


def run(cfg):
    trainer = Trainer(cfg)
    try:
        return trainer, trainer.run()
    finally:
        trainer.close()


def comparable(row):
    return {k: v for k, v in row.items() if not k.startswith(TIMING)}


def test_resume_continues_exactly_like_an_uninterrupted_run(make_config):
    straight = make_config("straight", train=dict(steps=4))
    run(straight)
    first = make_config("resumed", train=dict(steps=2))
    run(first)
    again = make_config("resumed", train=dict(steps=4))
    trainer, _ = run(again)
    assert trainer.step == 4
    a = read_metrics(straight.train.run_dir)
    b = read_metrics(again.train.run_dir)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a[3:], b[3:]):  # steps 3 and 4 ran after the resume
        assert comparable(ra) == comparable(rb)
    assert a[3]["reward/mean"] == b[3]["reward/mean"]


def test_resume_may_lengthen_the_context_but_not_change_the_algorithm(make_config):
    run(make_config("grow", sft=dict(steps=0), eval=dict(source=None),
                    train=dict(steps=1)))
    # Context lengthening across resumed runs: 24 -> 40 new tokens.
    longer = make_config("grow", sft=dict(steps=0), eval=dict(source=None),
                         train=dict(steps=2), rollout=dict(max_new_tokens=40))
    trainer, _ = run(longer)
    assert trainer.step == 2
    rows = [r for r in read_metrics(longer.train.run_dir) if "response_length/max" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["response_length/max"] <= 24 < rows[1]["response_length/max"] <= 40
    assert trainer.checkpointer.meta(2)["config"]["rollout"]["max_new_tokens"] == 40
    # Another learning rate is another run: refused before any array is restored.
    other = make_config("grow", sft=dict(steps=0), eval=dict(source=None),
                        train=dict(steps=3), rollout=dict(max_new_tokens=40),
                        optim=dict(lr=5e-3))
    trainer = Trainer(other)
    try:
        with pytest.raises(ConfigError, match=r"optim\.lr: checkpoint 0\.001, now 0\.005"):
            trainer.run()
        assert trainer.step == 0
    finally:
        trainer.close()


def test_sigterm_saves_a_checkpoint_and_stops(make_config, monkeypatch):
    cfg = make_config(train=dict(steps=5, checkpoint_every=0))
    original = Trainer.train_step

    def step_then_preempt(self, step):
        out = original(self, step)
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(Trainer, "train_step", step_then_preempt)
    trainer, summary = run(cfg)
    assert summary["stopped_at"] == 2
    assert trainer.checkpointer.latest_step() == 2
    monkeypatch.setattr(Trainer, "train_step", original)
    trainer, summary = run(cfg)  # picks up at step 2 and finishes
    assert trainer.step == 5 and "eval_after" in summary
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_consecutive_skipped_updates_stop_with_a_checkpoint(make_config, monkeypatch):
    cfg = make_config(train=dict(steps=6, max_consecutive_skips=2, checkpoint_every=0),
                      sft=dict(steps=0))
    trainer = Trainer(cfg)
    try:
        # Poison one weight: every loss and gradient is NaN from now on.
        params = trainer.rl.state["params"]
        params["final_norm"] = params["final_norm"].at[0].set(jnp.nan)
        before = jax.tree.map(np.asarray, params)
        with pytest.raises(TrainingStopped, match="2 consecutive steps"):
            trainer.run()
        assert trainer.checkpointer.latest_step() == 2
        rows = read_metrics(cfg.train.run_dir)
        assert [r.get("skipped_updates") for r in rows if r["step"] > 0] == [1.0, 1.0]
        after = jax.tree.map(np.asarray, trainer.rl.state["params"])
        for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
            np.testing.assert_array_equal(x, y)  # skipped updates leave params untouched
        assert int(trainer.rl.state["step"]) == 0
    finally:
        trainer.close()


def test_dynamic_sampling_that_finds_nothing_stops_with_a_checkpoint(make_config):
    # No warm start and only the accuracy reward: an untrained model solves nothing, so
    # every group's rewards are all equal and dynamic sampling can never fill a batch.
    cfg = make_config(sft=dict(steps=0),
                      rewards=dict(functions=[dict(name="accuracy", weight=1.0,
                                                   kwargs=dict(mode="answer_tag"))]),
                      algo=dict(dynamic_sampling=True, max_num_gen_batches=3,
                                min_train_prompts=2),
                      eval=dict(source=None))
    trainer = Trainer(cfg)
    try:
        with pytest.raises(TrainingStopped, match=r"only 0 groups .* max_num_gen_batches=3"):
            trainer.run()
        assert trainer.checkpointer.latest_step() == 0
        # 3 generation batches of 4 prompts were drawn before stopping.
        assert trainer.data.get_state()["next_batch"] == 3
    finally:
        trainer.close()


def test_export_loads_in_transformers_with_the_trained_weights(make_config):
    cfg = make_config(train=dict(steps=1, export_hf=True))
    trainer, summary = run(cfg)
    out = summary["export"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok.encode("3+4", add_special_tokens=False)
    import torch
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits.numpy()
    from r1jax.models.decoder import forward
    got = np.asarray(forward(trainer.rl.params, jnp.asarray([ids]), trainer.model_config))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    summary_file = json.load(open(os.path.join(cfg.train.run_dir, "summary.json")))
    assert summary_file["export"] == out

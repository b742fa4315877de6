"""A training run with train.wandb_project set logs the run's metrics and config to an
offline W&B run under run_dir/wandb."""

import pytest

from r1jax.metrics import read_metrics

pytest.importorskip("wandb")

from tests.test_metrics_wandb import read_offline_run, wandb_offline_env  # noqa: E402,F401


def test_training_run_logs_metrics_and_config_to_wandb(make_config):
    from r1jax.train import Trainer
    cfg = make_config(sft=dict(steps=0), eval=dict(limit=4),
                      train=dict(steps=1, wandb_project="r1jax-e2e", wandb_mode="offline",
                                 wandb_run_name="tiny"))
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
    history, config, run = read_offline_run(cfg.train.run_dir)
    rows = {row["step"]: row for row in read_metrics(cfg.train.run_dir)}
    for name in ("reward/mean", "policy/loss", "response_length/mean", "eval/pass@1"):
        assert history[1][name] == pytest.approx(rows[1][name], rel=1e-12), name
    assert history[0]["eval/pass@1"] == rows[0]["eval/pass@1"]  # before RL, step 0
    assert config["train"]["wandb_project"] == "r1jax-e2e"
    assert config["rollout"]["group_size"] == cfg.rollout.group_size
    assert (run.project, run.display_name) == ("r1jax-e2e", "tiny")

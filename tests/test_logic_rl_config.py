"""configs/logic_rl_qwen2_5_7b_kk.py: Logic-RL's settings (its tiny variant trains through
the command line in tests/train/test_configs_cli.py)."""

import os

import pytest

from r1jax.config import ConfigError, load_config

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "logic_rl_qwen2_5_7b_kk.py")


def test_config_has_logic_rl_settings():
    c = load_config(CONFIG)
    # The paper: 3,600 steps, constant lr 4e-7, temperature 0.7, 3-7 people, ~5K puzzles.
    assert (c.train.steps, c.optim.lr, c.optim.schedule) == (3600, 4e-7, "constant")
    assert c.rollout.temperature == 0.7
    assert c.data.task_options == {"min_people": 3, "max_people": 7}
    assert (c.data.source, c.data.num_generated, c.eval.source) == (
        "knights_knaves", 5000, "knights_knaves")
    # Format +1/-1 and answer +2/-1.5/-2 summed with weight 1; correct = answer score > 0.
    assert [(f.name, f.weight) for f in c.rewards.functions] == [
        ("logic_format", 1.0), ("knights_knaves", 1.0)]
    assert c.rewards.accuracy == "knights_knaves"
    # Released GRPO script: 8 prompts x G 16, low_var_kl (k3) 0.001, one update per step.
    assert (c.train.prompts_per_step, c.rollout.group_size) == (8, 16)
    assert (c.algo.kl_kind, c.algo.kl_beta, c.algo.agg) == ("k3", 0.001, "token-mean")
    assert (c.algo.minibatches, c.algo.num_iterations) == (1, 1)
    assert "<answer> (1) Zoey is a knight" in c.data.system_prompt


def test_tiny_without_the_shared_data_says_what_to_set(monkeypatch):
    monkeypatch.delenv("R1JAX_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="set R1JAX_DATA_DIR"):
        load_config(CONFIG + ":tiny")

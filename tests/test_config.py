"""Config files, absl-style overrides and the typed tree's validation messages."""

import os

import pytest

from r1jax.config import ConfigError, ModelConfig, from_dict, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg_path(name):
    return os.path.join(ROOT, "configs", name)


def test_dapo_32b_config_has_the_papers_hyper_parameters():
    c = load_config(cfg_path("dapo_qwen2_5_32b.py"))
    assert (c.algo.eps_low, c.algo.eps_high, c.algo.agg) == (0.2, 0.28, "token-mean")
    assert c.algo.kl_beta == 0.0 and c.algo.dynamic_sampling
    assert (c.rollout.group_size, c.train.prompts_per_step) == (16, 512)
    assert (c.algo.overlong_buffer_len, c.rollout.max_new_tokens) == (4096, 20480)
    assert c.optim.lr == 1e-6
    assert c.train.prompts_per_step // c.algo.minibatches == 32  # 16 updates per step
    assert c.rewards.functions[0].kwargs["wrong_reward"] == -1.0


@pytest.mark.parametrize("name", ["demo_cpu.py", "demo_cpu.py:test",
                                  "grpo_qwen2_5_math_1_5b_gsm8k.py",
                                  "grpo_qwen2_5_math_1_5b_gsm8k.py:tiny",
                                  "dapo_qwen2_5_math_7b.py", "dapo_qwen2_5_32b.py"])
def test_every_config_file_loads_and_validates(name):
    c = load_config(cfg_path(name))
    assert c.rollout.group_size >= 1 and c.train.run_dir


def test_overrides_reach_the_typed_config():
    c = load_config(cfg_path("demo_cpu.py"),
                    ["optim.lr=2e-6", "train.run_dir=/tmp/elsewhere", "algo.eps_high=0.3",
                     "model.arch.hidden_size=64", "train.progress_bar=False"])
    assert c.optim.lr == 2e-6 and c.train.run_dir == "/tmp/elsewhere"
    assert c.algo.eps_high == 0.3 and c.model.arch["hidden_size"] == 64
    assert c.train.progress_bar is False


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optimm.lr=1", "unknown config key 'optimm.lr'"),
    ("optim.lr=-1", "config key 'config.optim.lr': must be > 0"),
    ("optim.lr=abc", "could not convert string to float"),
    ("algo.agg=token-sum", "config key 'config.algo.agg': must be one of"),
    ("algo.minibatches=3", "'config.algo.minibatches': must divide train.prompts_per_step"),
    ("rollout.temperature=0.0", "'config.rollout.temperature': must be > 0"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cfg_path("demo_cpu.py"), [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found: .*nope.py"):
        load_config(cfg_path("nope.py"))


def test_typed_tree_rejects_unknown_and_wrong_typed_keys():
    base = dict(family="qwen2", vocab_size=8, hidden_size=8, intermediate_size=8,
                num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4)
    assert from_dict(ModelConfig, base, "model").num_heads == 2
    with pytest.raises(ConfigError, match="unknown config key 'model.num_head'"):
        from_dict(ModelConfig, dict(base, num_head=2), "model")
    with pytest.raises(ConfigError, match="'model.num_layers': expected an integer"):
        from_dict(ModelConfig, dict(base, num_layers="2"), "model")
    with pytest.raises(ConfigError, match="missing config key 'model.head_dim'"):
        from_dict(ModelConfig, {k: v for k, v in base.items() if k != "head_dim"}, "model")
    with pytest.raises(ConfigError, match="'model.num_heads': .* multiple of num_kv_heads"):
        from_dict(ModelConfig, dict(base, num_heads=3, num_kv_heads=2), "model")
    with pytest.raises(ConfigError, match="'model.family': 'gpt2' is not one of"):
        from_dict(ModelConfig, dict(base, family="gpt2"), "model")

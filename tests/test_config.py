"""Config files, absl-style overrides and the typed tree's validation messages."""

import os

import pytest

from r1jax.config import ConfigError, ModelConfig, from_dict, load_config
from r1jax.rewards.model_reward import ALGORITHM_KWARGS

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


# Each shipped config against the recipe its docstring states (and README's config table).
DAPO = {  # the DAPO paper: clip-higher, token-mean, no KL, G = 16, 512 prompts, mu = 1
    "algo.adv": "group", "algo.eps_low": 0.2, "algo.eps_high": 0.28, "algo.clip_c": None,
    "algo.agg": "token-mean", "algo.kl_beta": 0.0, "algo.num_iterations": 1,
    "algo.minibatches": 16, "algo.dynamic_sampling": True, "algo.max_num_gen_batches": 10,
    "algo.overlong_filter": False, "algo.overlong_penalty_factor": 1.0,
    "rollout.group_size": 16, "rollout.temperature": 1.0, "rollout.top_p": 1.0,
    "train.prompts_per_step": 512, "train.gen_prompts_per_batch": 3 * 512,
    "optim.lr": 1e-6, "optim.warmup_steps": 10, "data.recipe": "dapo",
    "data.template": "plain", "rewards": [("accuracy", 1.0, "regex", -1.0)]}
RECIPES = {
    "demo_cpu.py": {  # warm start, then DAPO on addition with G = 8; greedy held-out eval
        "model.char_vocab": "0123456789+=,", "model.arch.model_type": "qwen2",
        "data.source": "arithmetic", "sft.steps": 200, "algo.adv": "group",
        "algo.eps_low": 0.2, "algo.eps_high": 0.28, "algo.agg": "token-mean",
        "algo.kl_beta": 0.0, "algo.dynamic_sampling": True, "algo.overlong_buffer_len": 8,
        "rollout.group_size": 8, "train.steps": 200, "eval.source": "arithmetic",
        "eval.limit": 256, "eval.temperature": 0.0,
        "rewards": [("accuracy", 1.0, "answer_tag", None), ("format", 0.1, None, None)]},
    "grpo_qwen2_5_math_1_5b_gsm8k.py": {  # GRPO: clip 0.2, seq-mean-token-mean, k3 KL 0.04
        "model.path": "/models/Qwen2.5-Math-1.5B", "data.source": "gsm8k_train",
        "data.template": "qwen_math", "algo.adv": "group", "algo.eps_low": 0.2,
        "algo.eps_high": 0.2, "algo.agg": "seq-mean-token-mean", "algo.kl_beta": 0.04,
        "algo.kl_kind": "k3", "algo.dynamic_sampling": False,
        "algo.overlong_buffer_len": 0, "rollout.group_size": 8, "rollout.temperature": 1.0,
        "rewards": [("accuracy", 1.0, "boxed", None), ("boxed", 0.1, None, None)]},
    "dapo_qwen2_5_math_7b.py": {  # DAPO in a 4k context: 1k prompt + 3k response, 512 buffer
        **DAPO, "model.path": "/models/Qwen2.5-Math-7B", "data.max_prompt_tokens": 1024,
        "rollout.max_new_tokens": 3072, "algo.overlong_buffer_len": 512},
    "dapo_qwen2_5_32b.py": {  # overlong buffer 4096 of 20480
        **DAPO, "model.path": "/models/Qwen2.5-32B", "rollout.max_new_tokens": 20480,
        "algo.overlong_buffer_len": 4096},
    "logic_rl_qwen2_5_7b_kk.py": {  # Logic-RL's GRPO script: 8 prompts, G = 16, k3 KL 0.001
        "model.path": "/models/Qwen2.5-7B-Instruct", "data.source": "knights_knaves",
        "data.template": "chat", "data.max_prompt_tokens": 400, "train.steps": 3600,
        "train.prompts_per_step": 8, "rollout.group_size": 16, "rollout.temperature": 0.7,
        "algo.adv": "group", "algo.eps_low": 0.2, "algo.eps_high": 0.2,
        "algo.agg": "token-mean", "algo.kl_beta": 0.001, "algo.kl_kind": "k3",
        "algo.minibatches": 1, "algo.num_iterations": 1, "algo.entropy_coef": 0.0,
        "optim.lr": 4e-7, "optim.schedule": "constant", "optim.warmup_steps": 0,
        "rewards.accuracy": "knights_knaves",
        "rewards": [("logic_format", 1.0, None, None), ("knights_knaves", 1.0, None, None)]},
    "tinyzero_countdown_qwen2_5_3b.py": {  # TinyZero's GRPO: 256 prompts, G = 5, KL 0.001
        "model.path": "/models/Qwen2.5-3B", "data.source": "countdown",
        "data.template": "r1_zero", "data.max_prompt_tokens": 256,
        "rollout.max_new_tokens": 1024, "rollout.group_size": 5, "rollout.temperature": 1.0,
        "train.prompts_per_step": 256, "algo.adv": "group", "algo.eps_low": 0.2,
        "algo.eps_high": 0.2, "algo.agg": "token-mean", "algo.kl_beta": 0.001,
        "algo.kl_kind": "k3", "algo.minibatches": 2, "algo.dynamic_sampling": False,
        "optim.lr": 1e-6, "optim.schedule": "constant", "rewards.accuracy": "countdown",
        "rewards": [("countdown", 1.0, None, None)]},
    "code_deepcoder_qwen2_5_7b.py": {  # GRPO+: clip-higher, no KL / entropy, overlong filter
        "model.path": "/models/Qwen2.5-7B-Instruct", "data.recipe": "taco",
        "data.template": "chat", "rollout.group_size": 16, "rollout.temperature": 1.0,
        "algo.adv": "group", "algo.eps_low": 0.2, "algo.eps_high": 0.28,
        "algo.agg": "token-mean", "algo.kl_beta": 0.0, "algo.entropy_coef": 0.0,
        "algo.overlong_filter": True, "algo.dynamic_sampling": False, "optim.lr": 1e-6,
        "rewards.accuracy": "code", "rewards": [("code", 1.0, "all_or_nothing", None)]},
    "mixture_math_code_logic.py": {  # GRPO over three tasks with a curriculum
        "model.path": "/models/Qwen2.5-7B-Instruct", "algo.adv": "group",
        "algo.eps_low": 0.2, "algo.eps_high": 0.2, "algo.agg": "token-mean",
        "algo.kl_beta": 0.001, "algo.kl_kind": "k3", "rollout.group_size": 8,
        "train.prompts_per_step": 64, "optim.lr": 1e-6,
        "mixture": [("math", "gsm8k_train", "qwen_math", 0.6, "accuracy"),
                    ("code", "/data/mbpp/train.jsonl", "chat", 0.2, "code"),
                    ("logic", "knights_knaves", "chat", 0.2, "knights_knaves")],
        "data.mixture_schedule": ((0, (0.6, 0.2, 0.2)), (100, (0.4, 0.3, 0.3)),
                                  (300, (0.3, 0.35, 0.35)))},
    "r1_all_scenarios.py": {  # the same mixture + open-ended prompts scored by a model
        "model.path": "/models/Qwen2.5-7B-Instruct", "algo.adv": "group",
        "algo.kl_beta": 0.001, "algo.kl_kind": "k3", "rollout.group_size": 8,
        "train.prompts_per_step": 64, "optim.lr": 1e-6,
        "mixture": [("math", "gsm8k_train", "qwen_math", 0.45, "accuracy"),
                    ("code", "/data/mbpp/train.jsonl", "chat", 0.15, "code"),
                    ("logic", "knights_knaves", "chat", 0.15, "knights_knaves"),
                    ("general", "/data/general/prompts.jsonl", "chat", 0.25, "reward_model")],
        "data.mixture_schedule": ((0, (0.45, 0.15, 0.15, 0.25)),
                                  (100, (0.3, 0.225, 0.225, 0.25)),
                                  (300, (0.225, 0.2625, 0.2625, 0.25))),
        "general_reward_model": {"path": "/models/Skywork-Reward-V2-Llama-3.1-8B",
                                 "arch": "llama-3.1-8b", "dtype": "bfloat16",
                                 "normalize": "group_zscore", "format": "chat",
                                 "max_length": 4096, "batch_size": 32}},
}

# Variants change sizes and budgets, never the algorithm.
ALGORITHM = ("algo.adv", "algo.eps_low", "algo.eps_high", "algo.clip_c", "algo.agg",
             "algo.ratio_level", "algo.kl_beta", "algo.kl_kind", "algo.num_iterations",
             "algo.minibatches", "algo.dynamic_sampling", "algo.overlong_filter",
             "rollout.temperature", "data.template", "rewards", "mixture_rewards")


def recipe_value(c, key):
    """A config value by dotted key; "rewards" gives (name, weight, mode, wrong_reward)."""
    if key == "rewards":
        return [(f.name, f.weight, f.kwargs.get("mode"), f.kwargs.get("wrong_reward"))
                for f in c.rewards.functions]
    if key == "mixture":  # (name, source, template, weight, accuracy) per task
        return [(m.name, m.source, m.template, m.weight, m.accuracy) for m in c.data.mixture]
    if key == "mixture_rewards":  # each task's template, rewards and accuracy
        def algorithm(f):
            if f.name != "reward_model":
                return dict(f.kwargs)
            return {k: v for k, v in f.kwargs.items() if k in ALGORITHM_KWARGS}
        return [(m.name, m.template, m.system_prompt, m.accuracy,
                 [(f.name, f.weight, algorithm(f)) for f in m.functions])
                for m in c.data.mixture]
    if key == "general_reward_model":
        task = next(m for m in c.data.mixture if m.name == "general")
        assert [f.name for f in task.functions] == ["reward_model"]
        return dict(task.functions[0].kwargs)
    if key == "data.mixture_schedule":
        return tuple((s.from_step, s.weights) for s in c.data.mixture_schedule)
    section, *rest = key.split(".")
    value = getattr(c, section)
    for part in rest:
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def test_every_shipped_config_has_a_recipe_here():
    shipped = {f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")}
    assert shipped == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_configs_hold_their_documented_recipe(name):
    c = load_config(cfg_path(name))
    got = {key: recipe_value(c, key) for key in RECIPES[name]}
    assert got == RECIPES[name]


@pytest.mark.parametrize("name", ["demo_cpu.py:test"] + [f"{n}:tiny" for n in sorted(RECIPES)])
def test_config_variants_keep_the_algorithm(name, request, monkeypatch):
    if name.endswith(":tiny"):  # tiny variants read a tokenizer from the shared data
        monkeypatch.setenv("R1JAX_DATA_DIR", request.getfixturevalue("data_dir"))
    full, variant = load_config(cfg_path(name.split(":")[0])), load_config(cfg_path(name))
    assert {k: recipe_value(variant, k) for k in ALGORITHM} == \
        {k: recipe_value(full, k) for k in ALGORITHM}
    assert variant.train.steps < full.train.steps


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
    ("dpo.sft_weight=-1", "'config.dpo.sft_weight': must be >= 0"),
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


def test_resume_allows_context_lengthening_and_refuses_other_changes(tmp_path):
    from r1jax.config import check_resume, to_dict
    spec = os.path.join(ROOT, "configs", "dapo_qwen2_5_math_7b.py")
    saved = to_dict(load_config(spec))
    # DeepScaleR-style lengthening with its tied settings, another slice, a longer run.
    longer = load_config(spec, ["rollout.max_new_tokens=8192", "algo.overlong_buffer_len=1024",
                                "mesh.tensor=2", "rollout.max_slots=128", "train.steps=600",
                                "eval.max_new_tokens=8192"])
    assert check_resume(saved, longer) == [
        "algo.overlong_buffer_len", "eval.max_new_tokens", "mesh.tensor",
        "rollout.max_new_tokens", "rollout.max_slots", "train.steps"]
    assert check_resume(saved, load_config(spec)) == []
    assert check_resume(None, longer) == []  # a checkpoint without a config: nothing to check
    changed = load_config(spec, ["optim.lr=2e-6", "rollout.group_size=8", "train.steps=600"])
    with pytest.raises(ConfigError) as err:
        check_resume(saved, changed)
    message = str(err.value)
    assert "optim.lr: checkpoint 1e-06, now 2e-06" in message
    assert "rollout.group_size: checkpoint 16, now 8" in message
    assert "train.steps" not in message.split(". A resumed")[0]
    # A field the saved config predates is not compared.
    old = {k: dict(v) for k, v in saved.items()}
    del old["rollout"]["max_slots"]
    assert check_resume(old, load_config(spec, ["rollout.max_slots=64"])) == []

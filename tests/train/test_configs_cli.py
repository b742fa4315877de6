"""Every shipped config's tiny variant trains 2 RL steps through the `r1jax-train` command
line, as a user runs it (a subprocess), on 1 CPU device and on a mesh of 8.

Each run is checked for what its recipe promises: the KL term of the GRPO recipes is
positive after the first update, DAPO's dynamic sampling keeps only informative groups,
the recipe's reward functions are the ones logged, the DAPO recipes roll out on the
continuous-batching engine (`rollout.max_slots`, kept by their tiny variants) on both meshes.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

from r1jax.config import load_config
from r1jax.metrics import read_metrics
from r1jax.rewards.model_reward import ALGORITHM_KWARGS
from tests.xla_env import cpu_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
TRAIN = os.path.join(os.path.dirname(sys.executable), "r1jax-train")
# 8 devices: the recipes' FSDP x tensor layout in miniature.
MESHES = {1: [], 8: ["--config.mesh.fsdp=4", "--config.mesh.tensor=2"]}


def run_cli(config: str, devices: int, run_dir: str, data_dir: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, R1JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
               XLA_FLAGS=cpu_xla_flags(devices))
    cmd = [TRAIN, f"--config=configs/{config}:tiny", f"--config.train.run_dir={run_dir}",
           "--config.train.progress_bar=False", *MESHES[devices]]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("devices", sorted(MESHES))
@pytest.mark.parametrize("config", CONFIGS)
def test_tiny_variant_trains_two_steps_from_the_command_line(config, devices, data_dir,
                                                             tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    proc = run_cli(config, devices, run_dir, data_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    cfg = load_config(os.path.join(ROOT, "configs", config) + ":tiny")
    rows = [r for r in read_metrics(run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert "eval_after" in summary or cfg.eval.source is None
    algo = cfg.algo
    for row in rows:
        assert row["skipped_updates"] == 0
        for f in cfg.rewards.functions if not cfg.data.mixture else ():
            assert f"reward/{f.name}/mean" in row
        for m in cfg.data.mixture:  # each task that drew prompts logs its own rewards
            if f"task/{m.name}/reward/mean" in row:
                assert all(f"task/{m.name}/reward/{f.name}/mean" in row for f in m.functions)
        if cfg.data.mixture:
            assert sum(row[f"task/{m.name}/completions"] for m in cfg.data.mixture
                       if f"task/{m.name}/completions" in row) == row["batch/rows"]
        assert row["batch/rows"] == cfg.train.prompts_per_step * cfg.rollout.group_size
        if algo.dynamic_sampling:
            assert row["dynamic_sampling/groups_used"] == cfg.train.prompts_per_step
            assert row["dynamic_sampling/groups_kept"] >= cfg.train.prompts_per_step
        if algo.overlong_buffer_len:
            assert "reward/overlong_penalty/mean" in row
        if cfg.rollout.max_slots:  # rolled out on the continuous-batching engine
            assert 0.5 < row["perf/slot_utilization"] <= 1
    if config.startswith(("grpo", "dapo", "demo")):
        # The warm start leaves a policy whose rewards vary within groups: updates happen.
        assert rows[0]["reward/std"] > 0 and rows[0]["grad_norm"] > 0
    if algo.kl_beta > 0 and rows[0]["grad_norm"] > 1e-4:
        # The first optimizer step of RL sees policy == reference (KL 0); once an update
        # moved the policy the estimate is positive. (The recipes whose tiny variant earns
        # no reward from a random model have only rounding-level gradients: no KL to see.)
        assert rows[-1]["policy/kl"] > 0 and rows[-1]["policy/kl_loss"] > 0
    if algo.kl_beta == 0:  # no reference model: no KL is computed or logged
        assert all(r.get("policy/kl", 0.0) == 0 for r in rows)
    if cfg.train.export_hf:
        assert os.path.exists(os.path.join(run_dir, "export", "config.json"))


def test_every_config_has_a_tiny_variant_that_keeps_its_algorithm(data_dir, monkeypatch):
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    for config in CONFIGS:
        path = os.path.join(ROOT, "configs", config)
        full, tiny = load_config(path), load_config(path + ":tiny")
        assert tiny.train.steps == 2, config
        kept = {"algo": ("adv", "eps_low", "eps_high", "clip_c", "agg", "ratio_level",
                         "kl_beta", "kl_kind", "entropy_coef", "num_iterations",
                         "minibatches", "microbatches", "dynamic_sampling",
                         "max_num_gen_batches", "overlong_filter", "overlong_penalty_factor"),
                "rollout": ("temperature", "top_p", "top_k", "min_p",
                            "recompute_old_logprobs"),
                "data": ("template", "system_prompt"),
                "model": ("param_dtype", "dtype", "remat", "attention_impl", "scan_layers"),
                "rewards": ("functions", "accuracy"),
                "optim": ("schedule", "weight_decay", "b1", "b2", "grad_clip")}
        for section, keys in kept.items():
            for key in keys:
                if (section, key) == ("rewards", "functions"):
                    # Same functions and weights; the tiny variants only add no new ones.
                    assert [(f.name, f.weight) for f in tiny.rewards.functions] == \
                        [(f.name, f.weight) for f in full.rewards.functions], config
                    continue
                a = getattr(getattr(full, section), key)
                b = getattr(getattr(tiny, section), key)
                assert a == b, (config, f"{section}.{key}", a, b)
        # A mixture keeps its tasks' templates, rewards and accuracy functions (a reward
        # model's kwargs that define the reward; a tiny variant swaps the model itself).
        def tasks(cfg):
            return [(m.name, m.template, m.system_prompt, m.accuracy,
                     [(f.name, f.weight, {k: v for k, v in f.kwargs.items()
                                          if f.name != "reward_model" or k in ALGORITHM_KWARGS})
                      for f in m.functions]) for m in cfg.data.mixture]
        assert tasks(tiny) == tasks(full), config
        # The overlong buffer keeps its share of the response budget.
        ratio = full.algo.overlong_buffer_len / full.rollout.max_new_tokens
        assert abs(tiny.algo.overlong_buffer_len / tiny.rollout.max_new_tokens - ratio) \
            <= 1 / tiny.rollout.max_new_tokens, config
        # A tiny variant reads no path of one machine: only $R1JAX_DATA_DIR or nothing.
        for value in (tiny.model.path, tiny.model.tokenizer, tiny.data.data_dir):
            assert value is None or value.startswith(data_dir), (config, value)

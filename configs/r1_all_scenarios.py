"""DeepSeek-R1's last RL stage, all scenarios: reasoning prompts rewarded by rule and
open-ended prompts by a reward model, in one GRPO run.

The math + code + logic mixture of configs/mixture_math_code_logic.py (its models, rules,
templates and GRPO settings) plus a fourth task, `general`: open-ended prompts (a JSONL of
`{"prompt": ...}` rows, recipe `prompts`) under the policy's chat template, rewarded only by
a reward model (`reward_model` entry: a LlamaForSequenceClassification checkpoint such as
Skywork-Reward-V2-Llama-3.1-8B, bf16, on the policy's mesh; its score z-normalised within
each group of G replies; a reply counts as correct when its normalised score is positive).
The rule-based tasks never see the reward model and the general task no rule. Every
task's prompts keep a quarter of each step for the general task: 45/15/15/25 at step 0,
30/22.5/22.5/25 from step 100, 22.5/26.25/26.25/25 from step 300.

    r1jax-train --config=configs/r1_all_scenarios.py \\
        --config.model.path=/models/Qwen2.5-7B-Instruct --config.data.data_dir=/data/shared \\
        --config.data.mixture[1].source=/data/mbpp/train.jsonl \\
        --config.data.mixture[3].source=/data/general/prompts.jsonl
    r1jax-train --config=configs/r1_all_scenarios.py:tiny     # CPU smoke run

The reward model's directory is the `general` task's `reward_model` kwargs `path`
(/models/Skywork-Reward-V2-Llama-3.1-8B); its `arch` (the Llama 3.1 8B preset) is what
r1jax-fit counts when that directory is not on the machine it runs on.

`tiny`: the mixture's tiny variant (a random 2-layer model over the Qwen2.5 tokenizer of the
shared public data), GSM8K training questions as the open-ended prompts, and a random-weight
reward model of the same size built from its `arch` (no checkpoint needed).

Recommended slice: v5p-32 (r1jax-fit: 51.3 of 95.0 GiB per chip), with 2 microbatches per
optimizer step; the largest program is the update, beside which the reward model's weights
stay resident.
"""

import importlib.util
import os

from r1jax import recipes
from r1jax.config import mixture_task

REWARD_MODEL = "/models/Skywork-Reward-V2-Llama-3.1-8B"
GENERAL_SHARE = 0.25


def _mixture_config():
    """configs/mixture_math_code_logic.py beside this file (its get_config)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "mixture_math_code_logic.py")
    spec = importlib.util.spec_from_file_location("mixture_math_code_logic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config


def get_config(arg: str = ""):
    if arg not in ("", "tiny"):
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    c = _mixture_config()(arg)
    scorer = dict(path=REWARD_MODEL, arch="llama-3.1-8b", dtype="bfloat16",
                  normalize="group_zscore", format="chat", max_length=4096, batch_size=32)
    general = dict(name="general", source="/data/general/prompts.jsonl", recipe="prompts",
                   template="chat", accuracy="reward_model", weight=GENERAL_SHARE,
                   functions=[dict(name="reward_model", weight=1.0, kwargs=scorer)])
    if arg == "tiny":
        scorer.update(path=None, arch=dict(recipes.TINY_ARCH, model_type="qwen2"),
                      tokenizer=c.model.tokenizer, dtype="float32", max_length=512,
                      batch_size=8)
        general.update(source="gsm8k_train", recipe=None, limit=32)
    c.data.mixture = list(c.data.mixture) + [mixture_task(**general)]
    c.data.mixture_schedule = [
        dict(from_step=s["from_step"], weights=tuple(
            round(w * (1 - GENERAL_SHARE), 6) for w in s["weights"]) + (GENERAL_SHARE,))
        for s in c.data.mixture_schedule]
    for task, weight in zip(c.data.mixture, c.data.mixture_schedule[0]["weights"]):
        task.weight = weight
    c.train.run_dir = "runs/r1_all_scenarios"
    return c

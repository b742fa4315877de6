"""Logic-RL on Knights and Knaves puzzles with Qwen2.5-7B-Instruct, as GRPO.

Logic-RL (Xie et al. 2025, arXiv 2502.14768) trains Qwen2.5-7B on ~5K K&K puzzles of 3 to 7
people for 3,600 steps at a constant lr of 4e-7 and temperature 0.7, rewarded by the sum of
its format score (+1 / -1) and answer score (+2 / -1.5 / -2) (`r1jax.rewards.logic`). The
paper's main runs use a modified REINFORCE++; its released GRPO script (main_grpo.sh) is the
setting here: 8 prompts a step, G = 16, one optimizer step per rollout, clip 0.2, token-mean
loss, k3 ("low_var_kl") KL in the loss with beta 0.001, prompts up to 400 tokens. Puzzles
are generated (`r1jax.data.knights_knaves`, a disjoint held-out split for evaluation); a
K&K / Logic-RL file works too: `--config.data.source=/data/kk/5ppl/train.parquet
--config.data.recipe=knights_knaves`.

Differences: the prompt is the tokenizer's chat template with Logic-RL's system prompt, so
the model opens `<think>` itself (Logic-RL's prompt ends with it); verl's default entropy
bonus (0.001) is not used.

    r1jax-train --config=configs/logic_rl_qwen2_5_7b_kk.py \\
        --config.model.path=/models/Qwen2.5-7B-Instruct --config.train.run_dir=/ckpt/logic_rl

`tiny` swaps in a random 2-layer model of the same family over the Qwen2.5 tokenizer of the
shared public data (found through $R1JAX_DATA_DIR) and 2-3 person puzzles, for a CPU smoke
run of the same algorithm and rewards.

Recommended slice: v5p-16 (r1jax-fit: 55.3 of 95.0 GiB per chip), with 8 microbatches per
optimizer step; the largest program is the update.
"""

from ml_collections import ConfigDict

from r1jax import recipes
from r1jax.config import base_config

# Logic-RL's system prompt (its data/kk/instruct prompts).
LOGIC_RL_SYSTEM = (
    "You are a helpful assistant. The assistant first thinks about the reasoning process in "
    "the mind and then provides the user with the answer. The reasoning process and answer "
    "are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>. Now the user "
    "asks you to solve a logical reasoning problem. After thinking, when you finally reach a "
    "conclusion, clearly state the identity of each character within <answer> </answer> "
    "tags. i.e., <answer> (1) Zoey is a knight\n(2) ... </answer>.")


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="/models/Qwen2.5-7B-Instruct", param_dtype="float32",
                   dtype="bfloat16", remat="dots_no_batch", attention_impl="auto")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(source="knights_knaves", template="chat", system_prompt=LOGIC_RL_SYSTEM,
                  max_prompt_tokens=400, num_generated=5000,
                  task_options=dict(min_people=3, max_people=7))
    c.rewards.functions = [dict(name="logic_format", weight=1.0, kwargs={}),
                           dict(name="knights_knaves", weight=1.0, kwargs={})]
    c.rewards.update(accuracy="knights_knaves", num_workers=8, timeout_s=10.0)
    c.rollout.update(group_size=16, max_new_tokens=4096, temperature=0.7)
    c.algo.update(adv="group", eps_low=0.2, eps_high=0.2, agg="token-mean", kl_beta=0.001,
                  kl_kind="k3", minibatches=1, num_iterations=1)
    c.algo.microbatches = 8  # gradient accumulation: one update's activations fit a v5p-16
    c.optim.update(lr=4e-7, schedule="constant", warmup_steps=0, weight_decay=0.01,
                   grad_clip=1.0)
    c.eval.update(source="knights_knaves", limit=500, n=1, temperature=0.0, every=200,
                  max_new_tokens=4096)
    c.train.update(steps=3600, prompts_per_step=8, run_dir="runs/logic_rl_qwen2_5_7b_kk",
                   checkpoint_every=100)
    if arg == "tiny":
        recipes.tiny_chat_model(c)
        c.data.update(num_generated=64, task_options=dict(min_people=2, max_people=3))
        c.eval.update(limit=4, max_new_tokens=16, every=0)
        recipes.tiny_sizes(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

"""TinyZero: Countdown with Qwen2.5-3B (base), as GRPO.

TinyZero (Pan et al. 2025, github.com/Jiayi-Pan/TinyZero) reproduces R1-Zero's "aha moment"
on Countdown: a base model, an R1-Zero-style prompt asking for `<think>` reasoning and the
equation in `<answer>` tags, and TinyZero's rule reward (1.0 for a correct equation using
each number once, 0.1 for a well-formed answer that is wrong, 0 otherwise:
`r1jax.rewards.countdown`). Its GRPO script (verl, `algorithm.adv_estimator=grpo`): 256
prompts a step, G = 5 (`rollout.n=5`), lr 1e-6 constant, two optimizer steps per rollout
(PPO mini-batch 128), clip 0.2, token-mean loss (verl's masked mean at the time), k3
(`low_var_kl`) KL in the loss with beta 0.001, prompts up to 256 tokens, responses up to
1,024, temperature 1. Puzzles are generated (3-4 numbers in 1..100, targets up to 1,000;
`r1jax.data.generate_countdown`), with a disjoint held-out split for evaluation.

    r1jax-train --config=configs/tinyzero_countdown_qwen2_5_3b.py \\
        --config.model.path=/models/Qwen2.5-3B --config.train.run_dir=/ckpt/tinyzero

`tiny` swaps in a random 2-layer model of the same family over the Qwen2.5 tokenizer of the
shared public data (found through $R1JAX_DATA_DIR), for a CPU smoke run of the same
algorithm, prompt and reward (a random model earns no reward: the run checks the plumbing).

Recommended slice: v5p-16 (r1jax-fit: 66.7 of 95.0 GiB per chip), with 4 microbatches per
optimizer step; the largest program is the update.
"""

from ml_collections import ConfigDict

from r1jax import recipes
from r1jax.config import base_config


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="/models/Qwen2.5-3B", param_dtype="float32", dtype="bfloat16",
                   remat="dots_no_batch", attention_impl="auto")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(source="countdown", template="r1_zero", max_prompt_tokens=256,
                  num_generated=327680,
                  task_options=dict(min_numbers=3, max_numbers=4, max_number=100,
                                    max_target=1000))
    c.rewards.functions = [dict(name="countdown", weight=1.0, kwargs={})]
    c.rewards.update(accuracy="countdown", num_workers=8, timeout_s=10.0)
    c.rollout.update(group_size=5, max_new_tokens=1024, temperature=1.0, top_p=1.0)
    c.algo.update(adv="group", eps_low=0.2, eps_high=0.2, agg="token-mean", kl_beta=0.001,
                  kl_kind="k3", minibatches=2, num_iterations=1)
    c.algo.microbatches = 4  # gradient accumulation: one update's activations fit a v5p-16
    c.optim.update(lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.01,
                   grad_clip=1.0)
    c.eval.update(source="countdown", limit=512, n=1, temperature=0.0, every=10,
                  max_new_tokens=1024)
    c.train.update(steps=1000, prompts_per_step=256, run_dir="runs/tinyzero_countdown",
                   checkpoint_every=50)
    if arg == "tiny":
        recipes.tiny_chat_model(c)
        c.data.update(num_generated=64)
        c.eval.update(limit=4, max_new_tokens=16, every=0)
        recipes.tiny_sizes(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

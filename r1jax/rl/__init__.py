"""GRPO / DAPO maths as pure functions: advantages, policy losses, DAPO shaping and filtering,
memory-efficient per-token log-probs."""

from r1jax.rl import advantages, dapo, logprobs, losses

__all__ = ["advantages", "dapo", "logprobs", "losses"]

"""Verifiable rewards: math accuracy (math-verify), format, Countdown, length and shape terms,
code run against its tests in a sandbox.

Pure Python (no JAX). `RewardPool` runs weighted combinations of the functions named in
`REWARD_FUNCTIONS` in worker processes with a per-item timeout.
"""

from r1jax.rewards.accuracy import (DAPO_ANSWER_PATTERN, EXTRACTION_MODES, VerifierTimeout,
                                    answer_key, extract_answer, gold_answer_text,
                                    last_answer_tag, last_boxed, math_accuracy, parse_answer,
                                    parse_gold, verify)
from r1jax.rewards.code import code_tests, extract_program
from r1jax.rewards.countdown import countdown, evaluate_equation
from r1jax.rewards.formatting import boxed_format_reward, format_reward
from r1jax.rewards.functions import REWARD_FUNCTIONS, RewardSpec, make_specs
from r1jax.rewards.pool import RewardFailures, RewardPool, RewardResult
from r1jax.rewards.sandbox import sandbox_kind
from r1jax.rewards.shaping import (cosine_scaled, language_consistency, reasoning_text,
                                   repetition_penalty)

__all__ = [
    "DAPO_ANSWER_PATTERN", "EXTRACTION_MODES", "VerifierTimeout", "answer_key",
    "extract_answer", "gold_answer_text", "last_answer_tag", "last_boxed", "math_accuracy", "parse_answer", "parse_gold", "verify",
    "countdown", "evaluate_equation", "boxed_format_reward", "format_reward",
    "REWARD_FUNCTIONS", "RewardSpec", "make_specs", "RewardFailures", "RewardPool",
    "RewardResult", "cosine_scaled", "language_consistency", "reasoning_text",
    "repetition_penalty", "code_tests", "extract_program", "sandbox_kind",
]

"""The reward functions a RewardPool can run, by name, with one calling convention.

Every entry takes `(completion, example, length, **kwargs)`: the completion text, the data
example it answers (a dict from r1jax.data with at least `answer`, or `numbers` and `target`
for Countdown, and `completion_prefix`, the text the prompt template already opened the
response with, e.g. "<think>"), and its length in tokens (None when unknown).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from r1jax.rewards import accuracy, code, countdown, formatting, logic, shaping, steps

RewardFn = Callable[..., float]


def _full_text(completion: str, example: Mapping[str, Any]) -> str:
    return example.get("completion_prefix", "") + completion


def accuracy_reward(completion: str, example: Mapping[str, Any], length: Optional[int], *,
                    mode: str = "auto", pattern: Optional[str] = None,
                    correct_reward: float = 1.0, wrong_reward: float = 0.0,
                    timeout_s: int = 3) -> float:
    """`math_accuracy` against `example["answer"]` (1 / 0, or DAPO's 1 / -1)."""
    return accuracy.math_accuracy(completion, example["answer"], mode=mode, pattern=pattern,
                                  correct_reward=correct_reward, wrong_reward=wrong_reward,
                                  timeout_s=timeout_s)


def format_tags_reward(completion: str, example: Mapping[str, Any],
                       length: Optional[int]) -> float:
    """R1-Zero format: `<think>...</think> <answer>...</answer>`."""
    return formatting.format_reward(_full_text(completion, example))


def format_tags_boxed_reward(completion: str, example: Mapping[str, Any],
                             length: Optional[int]) -> float:
    """R1-Zero format with a `\\boxed{}` inside the answer tag."""
    return formatting.format_reward(_full_text(completion, example), require_boxed=True)


def boxed_reward(completion: str, example: Mapping[str, Any], length: Optional[int]) -> float:
    """A complete `\\boxed{...}` somewhere in the completion."""
    return formatting.boxed_format_reward(completion)


def countdown_reward(completion: str, example: Mapping[str, Any],
                     length: Optional[int]) -> float:
    """TinyZero's Countdown score against `example["numbers"]` and `example["target"]`."""
    return countdown.countdown(completion, example["numbers"], example["target"])


def cosine_reward(completion: str, example: Mapping[str, Any], length: Optional[int], *,
                  max_length: int, mode: str = "auto", pattern: Optional[str] = None,
                  correct_at_0: float = 2.0, correct_at_max: float = 1.0,
                  wrong_at_0: float = -10.0, wrong_at_max: float = 0.0,
                  exceed_penalty: float = -10.0, timeout_s: int = 3) -> float:
    """Cosine length-scaled accuracy (Yeo et al.); replaces the plain accuracy reward."""
    if length is None:
        raise ValueError("the cosine reward needs completion lengths in tokens")
    correct = accuracy.math_accuracy(completion, example["answer"], mode=mode,
                                     pattern=pattern, timeout_s=timeout_s) > 0
    return shaping.cosine_scaled(correct, length, max_length, correct_at_0=correct_at_0,
                                 correct_at_max=correct_at_max, wrong_at_0=wrong_at_0,
                                 wrong_at_max=wrong_at_max, exceed_penalty=exceed_penalty)


def repetition_reward(completion: str, example: Mapping[str, Any], length: Optional[int], *,
                      ngram_size: int = 3, max_penalty: float = -1.0) -> float:
    """n-gram repetition penalty (<= 0)."""
    return shaping.repetition_penalty(completion, ngram_size=ngram_size,
                                      max_penalty=max_penalty)


def language_reward(completion: str, example: Mapping[str, Any], length: Optional[int], *,
                    language: str = "en") -> float:
    """Fraction of the reasoning in the target language (DeepSeek-R1)."""
    return shaping.language_consistency(_full_text(completion, example), language)


def knights_knaves_reward(completion: str, example: Mapping[str, Any],
                          length: Optional[int], *, require_format: bool = True) -> float:
    """Logic-RL's answer score (2 / -1.5 / -2) against `example["answer"]`, the K&K
    `solution_text_format`; -2 for a malformed response unless require_format=False."""
    return logic.knights_knaves_score(_full_text(completion, example), example["answer"],
                                      require_format=require_format)


def logic_format_reward(completion: str, example: Mapping[str, Any],
                        length: Optional[int]) -> float:
    """Logic-RL's format score: +1 for <think>..</think><answer>..</answer>, else -1."""
    return logic.logic_format_reward(_full_text(completion, example))


def reasoning_steps_reward(completion: str, example: Mapping[str, Any],
                           length: Optional[int], *, target_steps: int = 3) -> float:
    """open-r1's step-marker count, min(1, count / 3)."""
    return steps.reasoning_steps(completion, target_steps=target_steps)


def code_reward(completion: str, example: Mapping[str, Any], length: Optional[int], *,
                mode: str = "all_or_nothing", timeout_s: float = 4.0,
                total_timeout_s: float = 8.0, memory_mb: int = 1024,
                require_fence: bool = False) -> float:
    """`code_tests`: the last code block run against the example's tests in a sandbox (1 / 0,
    or the fraction passed). The pool's `timeout_s` must exceed `total_timeout_s`."""
    return code.code_tests(completion, example, mode=mode, timeout_s=timeout_s,
                           total_timeout_s=total_timeout_s, memory_mb=memory_mb,
                           require_fence=require_fence)


REWARD_FUNCTIONS: Mapping[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_tags_reward,
    "format_boxed": format_tags_boxed_reward,
    "boxed": boxed_reward,
    "countdown": countdown_reward,
    "cosine": cosine_reward,
    "repetition": repetition_reward,
    "language": language_reward,
    "knights_knaves": knights_knaves_reward,
    "logic_format": logic_format_reward,
    "reasoning_steps": reasoning_steps_reward,
    "code": code_reward,
}
NEEDS_LENGTH = frozenset({"cosine"})


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One weighted term of the total reward: `weight * REWARD_FUNCTIONS[name](..., **kwargs)`."""

    name: str
    weight: float = 1.0
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


SpecLike = Union[RewardSpec, Sequence[Any]]


def make_specs(specs: Sequence[SpecLike],
               functions: Mapping[str, RewardFn] = REWARD_FUNCTIONS) -> tuple[RewardSpec, ...]:
    """Validates `(name, weight, kwargs)` triples (or RewardSpecs) against `functions`.

    Raises:
      ValueError: no specs, an unknown or repeated name, a non-finite weight, or keyword
        arguments the function does not accept (the message names the spec).
    """
    if not specs:
        raise ValueError("at least one reward function is needed")
    out, seen = [], set()
    for raw in specs:
        spec = raw if isinstance(raw, RewardSpec) else RewardSpec(*raw)
        if spec.name not in functions:
            raise ValueError(f"unknown reward function {spec.name!r}; known: {sorted(functions)}")
        if spec.name in seen:
            raise ValueError(f"reward function {spec.name!r} appears twice")
        if not math.isfinite(float(spec.weight)):
            raise ValueError(f"reward {spec.name!r}: weight must be finite, got {spec.weight}")
        try:
            inspect.signature(functions[spec.name]).bind("", {}, None, **spec.kwargs)
        except TypeError as e:
            raise ValueError(f"reward {spec.name!r}: bad kwargs {dict(spec.kwargs)}: {e}") from e
        seen.add(spec.name)
        out.append(RewardSpec(spec.name, float(spec.weight), dict(spec.kwargs)))
    return tuple(out)

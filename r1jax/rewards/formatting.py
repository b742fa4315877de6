"""Format rewards for the R1-Zero template and for boxed final answers."""

from __future__ import annotations

import re

from r1jax.rewards.accuracy import last_answer_tag, last_boxed

# Reasoning in <think>...</think>, then the answer in <answer>...</answer>, and nothing after
# it but whitespace: the strict shape the R1 reproductions reward.
_R1_FORMAT = re.compile(r"\A\s*<think>.*?</think>\s*<answer>.*?</answer>\s*\Z", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(completion: str, *, require_boxed: bool = False) -> float:
    """1.0 when the completion is `<think>...</think> <answer>...</answer>`, else 0.0.

    Each of the four tags must occur exactly once, so a second answer block cannot be used to
    hedge. When the prompt template already ends with `<think>` (the R1-Zero template here),
    pass `"<think>" + completion`.

    Args:
      completion: model output (response only).
      require_boxed: also require a complete `\\boxed{...}` inside the answer tag.
    """
    if any(completion.count(tag) != 1 for tag in _TAGS):
        return 0.0
    if _R1_FORMAT.match(completion) is None:
        return 0.0
    if require_boxed and last_boxed(last_answer_tag(completion) or "") is None:
        return 0.0
    return 1.0


def boxed_format_reward(completion: str) -> float:
    """1.0 when the completion holds a complete `\\boxed{...}` with non-empty content, else 0.

    The format reward for chat templates that ask for the final answer "within \\boxed{}"
    instead of answer tags.
    """
    boxed = last_boxed(completion)
    return 1.0 if boxed is not None and boxed.strip() else 0.0

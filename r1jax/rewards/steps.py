"""open-r1's `reasoning_steps` reward: credit for visible step-by-step structure (no jax).

open-r1 (src/open_r1/rewards.py, `reasoning_steps_reward`) counts the matches of

    (Step \\d+:|^\\d+\\.|\\n-|\\n\\*|First,|Second,|Next,|Finally,)

in the completion ("Step 1:" markers, a numbered item at the very start, "-" or "*" bullets
that open a line, and the transition words "First,", "Second,", "Next,", "Finally,") and
rewards `min(1, count / 3)`: three or more markers earn the full 1.0. The pattern is used as
open-r1 uses it, without re.MULTILINE, so `^\\d+\\.` only matches a numbered item at the very
start of the text; later items of a numbered list are not counted (write "Step 2:" or
bullets to be counted).
"""

from __future__ import annotations

import re

STEP_PATTERN = re.compile(r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,)")


def count_step_markers(completion: str) -> int:
    """Non-overlapping matches of `STEP_PATTERN` in `completion`."""
    return len(STEP_PATTERN.findall(completion))


def reasoning_steps(completion: str, *, target_steps: int = 3) -> float:
    """`min(1, markers / target_steps)` (open-r1's "magic number" target is 3).

    Raises:
      ValueError: target_steps < 1.
    """
    if target_steps < 1:
        raise ValueError(f"target_steps must be >= 1, got {target_steps}")
    return min(1.0, count_step_markers(completion) / target_steps)

"""Sample-based evaluation estimators (pure Python): pass@k, mean pass@1, maj@k.

With n samples per problem of which c are correct:
- pass@k is Chen et al. 2021's unbiased estimator `1 - C(n - c, k) / C(n, k)`, the chance
  that at least one of k samples drawn without replacement from the n is correct;
- pass@1 averaged over n samples is c / n (the same estimator at k = 1);
- maj@k takes the most frequent extracted answer (by normal form, `r1jax.rewards.answer_key`)
  among the first k samples and scores whether it is correct.
"""

from __future__ import annotations

import collections
from typing import Hashable, Optional, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021, the numerically stable product form).

    Args:
      n: samples drawn (>= 1).
      c: correct samples (0 <= c <= n).
      k: budget (1 <= k <= n).

    Raises:
      ValueError: arguments out of range.
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs n >= 1, 0 <= c <= n, 1 <= k <= n; got n={n}, c={c}, "
                         f"k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i = n-c+1}^{n} (1 - k / i) == 1 - C(n-c, k) / C(n, k)
    survive = 1.0
    for i in range(n - c + 1, n + 1):
        survive *= 1.0 - k / i
    return 1.0 - survive


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems; `correct[p]` holds the verdicts of problem p's samples."""
    if not correct:
        raise ValueError("no problems")
    return sum(pass_at_k(len(v), sum(bool(x) for x in v), k) for v in correct) / len(correct)


def mean_pass_at_1(correct: Sequence[Sequence[bool]]) -> float:
    """pass@1 averaged over the n samples of each problem, then over problems (mean of c / n)."""
    return mean_pass_at_k(correct, 1)


def majority_answer(keys: Sequence[Optional[Hashable]]) -> Optional[int]:
    """Index of the first sample holding the most frequent non-None key, or None if all None.

    Ties go to the key that appears first.
    """
    counts = collections.Counter(key for key in keys if key is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, key in enumerate(keys) if key is not None and counts[key] == best)


def maj_at_k(keys: Sequence[Optional[Hashable]], correct: Sequence[bool], k: int) -> float:
    """maj@k of one problem: 1.0 if the majority answer of the first k samples is correct.

    Args:
      keys: per sample, the normal form of its extracted answer (None: no answer).
      correct: per sample, its verdict; the majority answer's verdict is that of the first
        sample holding it.
      k: samples voting (1 <= k <= len(keys)).

    Raises:
      ValueError: mismatched lengths or k out of range.
    """
    if len(keys) != len(correct):
        raise ValueError(f"{len(keys)} answer keys but {len(correct)} verdicts")
    if not 1 <= k <= len(keys):
        raise ValueError(f"maj@k needs 1 <= k <= {len(keys)}, got {k}")
    winner = majority_answer(keys[:k])
    return 0.0 if winner is None else float(bool(correct[winner]))


def mean_maj_at_k(keys: Sequence[Sequence[Optional[Hashable]]],
                  correct: Sequence[Sequence[bool]], k: int) -> float:
    """maj@k averaged over problems."""
    if not keys or len(keys) != len(correct):
        raise ValueError(f"need one key list per problem: {len(keys)} vs {len(correct)}")
    return sum(maj_at_k(kk, cc, k) for kk, cc in zip(keys, correct)) / len(keys)

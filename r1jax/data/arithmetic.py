"""A generated GSM8K-style arithmetic task in miniature, with worked solutions (the CPU demo).

Problems are sums of `terms` numbers of `digits` digits ("47+38+5"). Every problem of the
space is enumerated in a fixed order and split once (by a hash of the question) into train
and test, so the held-out problems never appear in training, whatever the seeds.

Each example carries a worked `solution`, the R1 format the model should learn in the
supervised warm start: column addition from the units up, carries written out, then the
answer.

    47+38     ->  <think>7+8=15,4+3+1=8</think><answer>85</answer>
    47+38+5   ->  <think>7+8+5=20,4+3+2=9</think><answer>90</answer>

The gold `answer` is the integer result as a string, checked by the math-verify reward.
"""

from __future__ import annotations

import hashlib

import numpy as np

from r1jax.data.sources import LoadStats, PromptSource


def _is_test(question: str, test_fraction: float) -> bool:
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < test_fraction


# How a worked solution states its answer, matching the answer extraction of each recipe:
# R1 tags (accuracy mode "answer_tag"), a final \boxed{} ("boxed", Qwen2.5-Math / GRPO
# recipes), or DAPO's last line "Answer: ..." (mode "regex" with DAPO_ANSWER_PATTERN).
ANSWER_FORMATS = ("tags", "boxed", "answer_line")


def worked_solution(terms: list[int], answer_format: str = "tags") -> str:
    """Column addition: one `digits(+carry)=sum` step per column, units first, then the
    answer in `answer_format` (see ANSWER_FORMATS).

    Raises:
      ValueError: unknown answer_format.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got "
                         f"{answer_format!r}")
    steps, carry, column = [], 0, 0
    while column == 0 or any(t // 10 ** column for t in terms):
        digits = [t // 10 ** column % 10 for t in terms if t // 10 ** column or column == 0]
        parts = [str(d) for d in digits] + ([str(carry)] if carry else [])
        total = sum(digits) + carry
        steps.append("+".join(parts) + f"={total}")
        carry = total // 10
        column += 1
    work = ",".join(steps)
    if answer_format == "boxed":
        return f"{work}. The answer is \\boxed{{{sum(terms)}}}."
    if answer_format == "answer_line":
        return f"{work}\nAnswer: {sum(terms)}"
    return f"<think>{work}</think><answer>{sum(terms)}</answer>"


def generate_arithmetic(num_examples: int, *, split: str = "train", terms: int = 2,
                        digits: int = 2, test_fraction: float = 0.2, seed: int = 0,
                        answer_format: str = "tags") -> PromptSource:
    """Up to `num_examples` addition problems of one split, identical for the same arguments.

    Args:
      num_examples: examples wanted (fewer when the split has fewer problems).
      split: "train" or "test"; disjoint by construction.
      terms: numbers per problem (>= 2).
      digits: digits per number (1..3): numbers are drawn from [0, 10**digits).
      test_fraction: share of the problem space that is held out.
      seed: order in which the split's problems are drawn.
      answer_format: how solutions state the answer (ANSWER_FORMATS).

    Returns:
      a PromptSource of task "math"; examples have `id`, `question`, `answer` (the result as
      text) and `solution` (the worked solution).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if terms < 2 or not 1 <= digits <= 3 or num_examples < 1:
        raise ValueError(f"need terms >= 2, 1 <= digits <= 3, num_examples >= 1; got "
                         f"{terms}, {digits}, {num_examples}")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got "
                         f"{answer_format!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    space = 10 ** (digits * terms)
    examples, seen = [], set()
    # Draw from the whole space and keep the split's members; for small spaces enumerate.
    if space <= 200_000:
        order = rng.permutation(space)
    else:
        order = rng.integers(0, space, size=num_examples * 20)
    for code in order:
        nums = [int(code // 10 ** (digits * i) % 10 ** digits) for i in range(terms)]
        question = "+".join(map(str, nums))
        if question in seen or _is_test(question, test_fraction) != (split == "test"):
            continue
        seen.add(question)
        examples.append({"id": f"arith-{split}-{len(examples)}", "question": question,
                         "answer": str(sum(nums)), "solution": worked_solution(nums, answer_format)})
        if len(examples) == num_examples:
            break
    stats = LoadStats(path=f"arithmetic(split={split}, terms={terms}, digits={digits})",
                      rows=len(examples), kept=len(examples))
    return PromptSource(name="arithmetic", task="math", examples=examples, stats=stats)


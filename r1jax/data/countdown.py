"""Seeded generator of solvable Countdown puzzles (TinyZero's task), fully offline.

Each puzzle draws 3-4 numbers, combines all of them into a random expression tree with
`+ - * /`, and keeps the value as the target when it is a positive integer in range; the
expression is kept as `answer`, a witness that the puzzle is solvable.
"""

from __future__ import annotations

import fractions
from typing import Sequence

import numpy as np

from r1jax.data.sources import LoadStats, PromptSource

_OPS = ("+", "-", "*", "/")


def countdown_question(numbers: Sequence[int], target: int) -> str:
    """The task statement shown to the model (answer format: an equation in answer tags)."""
    listed = ", ".join(str(n) for n in numbers)
    return (f"Using the numbers [{listed}], create an equation that equals {target}. "
            "You can use basic arithmetic operations (+, -, *, /) and each number must be "
            "used exactly once. Show your reasoning in <think> </think> tags, and give the "
            "final equation in <answer> </answer> tags, for example "
            "<answer> (1 + 2) / 3 </answer>.")


def _combine(a: fractions.Fraction, b: fractions.Fraction, op: str) -> fractions.Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b


def _random_expression(numbers: Sequence[int], rng: np.random.Generator):
    """(value, expression) of a random binary tree over all `numbers`, or None (÷ by 0)."""
    terms = [(fractions.Fraction(n), str(n)) for n in numbers]
    while len(terms) > 1:
        i, j = rng.choice(len(terms), size=2, replace=False)
        (a, ea), (b, eb) = terms[i], terms[j]
        op = _OPS[rng.integers(len(_OPS))]
        if op == "/" and b == 0:
            return None
        combined = (_combine(a, b, op), f"({ea} {op} {eb})")
        terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [combined]
    value, expression = terms[0]
    return value, expression[1:-1] if expression.startswith("(") else expression


def generate_countdown(num_examples: int, seed: int, *, min_numbers: int = 3,
                       max_numbers: int = 4, max_number: int = 100,
                       max_target: int = 1000) -> PromptSource:
    """`num_examples` solvable puzzles, identical for the same arguments.

    Args:
      num_examples: puzzles to make.
      seed: numpy Generator seed.
      min_numbers, max_numbers: how many numbers a puzzle gives (inclusive range).
      max_number: numbers are drawn uniformly from 1..max_number.
      max_target: targets are integers in 1..max_target.

    Returns:
      a PromptSource of task "countdown"; examples have `id`, `question`, `numbers`,
      `target` and `answer` (one equation that reaches the target).
    """
    if num_examples < 1 or not 2 <= min_numbers <= max_numbers:
        raise ValueError(f"need num_examples >= 1 and 2 <= min_numbers <= max_numbers, got "
                         f"{num_examples}, {min_numbers}, {max_numbers}")
    rng = np.random.default_rng(seed)
    examples = []
    while len(examples) < num_examples:
        count = int(rng.integers(min_numbers, max_numbers + 1))
        numbers = [int(n) for n in rng.integers(1, max_number + 1, size=count)]
        made = _random_expression(numbers, rng)
        if made is None:
            continue
        value, expression = made
        if value.denominator != 1 or not 1 <= value <= max_target:
            continue
        target = int(value)
        examples.append({"id": f"countdown-{seed}-{len(examples)}",
                         "question": countdown_question(numbers, target),
                         "numbers": numbers, "target": target, "answer": expression})
    stats = LoadStats(path=f"countdown(seed={seed})", rows=num_examples, kept=num_examples)
    return PromptSource(name="countdown", task="countdown", examples=examples, stats=stats)

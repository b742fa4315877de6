"""Countdown reward (TinyZero): an equation over the given numbers that reaches the target.

The equation is parsed with `ast` and evaluated by a walker that accepts only integer
literals, `+ - * /` (binary and unary minus / plus) and parentheses, in exact rational
arithmetic. Model output is never passed to `eval`.
"""

from __future__ import annotations

import ast
import collections
import fractions
from typing import Sequence

from r1jax.rewards.accuracy import last_answer_tag

CORRECT_SCORE = 1.0
FORMAT_SCORE = 0.1
# Longer than any honest equation over four numbers; bounds the parser's work on junk.
MAX_EQUATION_CHARS = 256

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_UNARY = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}


class EquationError(ValueError):
    """The equation uses something other than integers, + - * / and parentheses."""


def _evaluate(node: ast.AST) -> fractions.Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        if type(node.value) is not int:
            raise EquationError(f"only integer literals are allowed, got {node.value!r}")
        return fractions.Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise EquationError("division by zero")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        raise EquationError(f"operator {type(node.op).__name__} is not allowed")
    raise EquationError(f"{type(node).__name__} is not allowed")


def _literals(tree: ast.AST) -> list[int]:
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]


def evaluate_equation(equation: str) -> fractions.Fraction:
    """Exact value of an arithmetic equation over integers.

    Raises:
      EquationError: too long, not an expression, a disallowed node (names, calls,
        attributes, `**`, floats, ...), or a division by zero.
    """
    if len(equation) > MAX_EQUATION_CHARS:
        raise EquationError(f"equation longer than {MAX_EQUATION_CHARS} characters")
    try:
        tree = ast.parse(equation.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise EquationError(f"not an arithmetic expression: {e}") from e
    return _evaluate(tree)


def countdown(completion: str, numbers: Sequence[int], target: int) -> float:
    """TinyZero's Countdown score for one completion.

    Args:
      completion: model output; the equation is the content of its last `<answer>` tag.
      numbers: the given numbers; each must be used exactly once.
      target: the value the equation must reach.

    Returns:
      1.0 if the equation uses each number exactly once, only `+ - * /` and parentheses, and
      equals the target; 0.1 if there is an answer tag but the equation is wrong or invalid
      in any way; 0.0 if there is no answer tag.
    """
    equation = last_answer_tag(completion)
    if equation is None:
        return 0.0
    try:
        if len(equation) > MAX_EQUATION_CHARS:
            return FORMAT_SCORE
        tree = ast.parse(equation, mode="eval")
        used = collections.Counter(_literals(tree))
        if used != collections.Counter(int(n) for n in numbers):
            return FORMAT_SCORE
        value = _evaluate(tree)
    except (EquationError, SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return FORMAT_SCORE
    return CORRECT_SCORE if value == target else FORMAT_SCORE

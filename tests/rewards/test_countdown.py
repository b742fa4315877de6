"""Countdown reward: TinyZero's scores (1.0 / 0.1 / 0) from an AST walker, never eval."""

import pytest

from r1jax.rewards import countdown, evaluate_equation
from r1jax.rewards.countdown import EquationError

NUMBERS = [3, 5, 7, 11]   # target 67 = (3 + 5) * 7 + 11 in the table below


def tagged(equation):
    return f"<think>try things</think> <answer> {equation} </answer>"


@pytest.mark.parametrize("equation,expected", [
    ("(11 - 3) * 7 + 5 + 7", 0.1),        # 7 used twice
    ("(11 - 3) * 7 + 12", 0.1),           # 12 is not given (5 and 3 missing)
    ("11 * 7 - 3 * 5 + 6", 0.1),           # extra number
    ("11 * 7 - 3 * 5", 0.1),               # all four numbers, value 62: wrong
    ("(3 + 5) * 7 + 11", 1.0),             # 8 * 7 + 11 = 67
    ("(3 + 5) * 11 + 7", 0.1),             # 95
])
def test_table_against_hand_values(equation, expected):
    assert countdown(tagged(equation), NUMBERS, 67) == expected


def test_correct_equations_with_division_and_parentheses():
    assert countdown(tagged("(7 - 5) * 11 + 3"), NUMBERS, 25) == 1.0
    assert countdown(tagged("(11 + 7) / 3 * 5"), NUMBERS, 30) == 1.0
    assert countdown(tagged("(11 + 7) / (3 * 5)"), NUMBERS, 1) == 0.1   # 6/5, not 1
    # exact arithmetic: 1/3 * 3 is exactly 1
    assert countdown(tagged("1 / 3 * 3 + 4"), [1, 3, 3, 4], 5) == 1.0
    # numbers may come in any order; the last answer tag counts
    assert countdown("<answer>1+2</answer> then <answer> 5 * 3 - 7 + 11 </answer>",
                     [11, 7, 5, 3], 19) == 1.0


@pytest.mark.parametrize("completion", [
    "no tags at all: (3 + 5) * 7 + 11",
    "<answer> (3 + 5) * 7 + 11",
    "(3 + 5) * 7 + 11 </answer>",
])
def test_no_answer_tag_scores_zero(completion):
    assert countdown(completion, NUMBERS, 67) == 0.0


@pytest.mark.parametrize("equation", [
    "(3 + 5) / (7 - 7) + 11",             # division by zero (and 7 reused)
    "3 / (5 - 5) + 7 + 11",
    "3 / (7 - 7) * 5 + 11 - 7",
])
def test_division_by_zero_is_well_formed_but_wrong(equation):
    assert countdown(tagged(equation), NUMBERS, 67) == 0.1


def test_division_by_zero_with_exact_numbers():
    assert countdown(tagged("3 / (7 - 7) + 5 + 11"), [3, 7, 7, 5, 11], 19) == 0.1


@pytest.mark.parametrize("equation", [
    "__import__('os').system('echo pwned')",
    "(3).__class__.__mro__",
    "3 .real + 5 + 7 + 11",
    "[3, 5, 7, 11]",
    "lambda: 3 + 5 + 7 + 11",
    "3 if 5 else 7 + 11",
    "open('/etc/passwd')",
    "3 ** 5 ** 7 ** 11",                   # huge exponent: ** is not allowed
    "3 ** 5 + 7 + 11",
    "3.0 + 5 + 7 + 11",
    "3 + 5 + 7 + 11 = 26",
    "3 @ 5 + 7 + 11",
    "3 // 5 + 7 + 11",
    "3 % 5 + 7 + 11",
    "(" * 300 + "3" + ")" * 300,
    "1" * 5000,
    "\x00\xff junk \ud800",
])
def test_malicious_or_invalid_equations_score_format_only(equation, tmp_path):
    marker = tmp_path / "pwned"
    equation = equation.replace("echo pwned", f"touch {marker}")
    assert countdown(tagged(equation), NUMBERS, 26) == 0.1
    assert not marker.exists()


def test_huge_exponent_is_rejected_before_computing():
    with pytest.raises(EquationError, match="Pow"):
        evaluate_equation("9 ** 9 ** 9 ** 9")


def test_unary_minus_is_arithmetic():
    assert evaluate_equation("-3 + 5 * (7 - 11)") == -23
    assert countdown(tagged("-3 + 5 * (11 - 7)"), NUMBERS, 17) == 1.0


def test_never_calls_eval(monkeypatch):
    import builtins

    def refuse(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    assert countdown(tagged("(3 + 5) * 7 + 11"), NUMBERS, 67) == 1.0
    assert countdown(tagged("__import__('os')"), NUMBERS, 67) == 0.1

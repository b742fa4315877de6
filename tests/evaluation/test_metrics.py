"""pass@k, mean pass@1 and maj@k against hand-computed values."""

import math

import pytest

from r1jax.evaluation.metrics import (majority_answer, maj_at_k, mean_maj_at_k, mean_pass_at_1,
                                      mean_pass_at_k, pass_at_k)
from r1jax.rewards import answer_key


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 2, 0.7),              # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 1, 0.3),             # c / n
    (10, 5, 3, 11 / 12),         # 1 - C(5,3)/C(10,3) = 1 - 10/120
    (4, 0, 2, 0.0),
    (3, 2, 2, 1.0),              # fewer wrong samples than k: certain
    (16, 16, 16, 1.0),
    (16, 1, 16, 1.0),
    (16, 1, 4, 0.25),            # 1 - C(15,4)/C(16,4) = 1 - 12/16
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_binomial_ratio_on_a_grid():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_means_over_problems():
    correct = [[True, False, False, False], [True, True, False, False], [False] * 4]
    assert mean_pass_at_1(correct) == pytest.approx((0.25 + 0.5 + 0.0) / 3)
    # pass@2: 1 - C(3,2)/C(4,2) = 0.5; 1 - C(2,2)/C(4,2) = 5/6; 0
    assert mean_pass_at_k(correct, 2) == pytest.approx((0.5 + 5 / 6 + 0.0) / 3)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_maj_at_k_hand_values():
    keys = ["a", "b", "a", None, "b", "b"]
    correct = [False, True, False, False, True, True]
    assert maj_at_k(keys, correct, 1) == 0.0     # only "a"
    assert maj_at_k(keys, correct, 3) == 0.0     # a:2 b:1
    assert maj_at_k(keys, correct, 5) == 0.0     # a:2 b:2, tie -> first seen ("a")
    assert maj_at_k(keys, correct, 6) == 1.0     # a:2 b:3
    assert maj_at_k([None, None], [True, True], 2) == 0.0   # no answer, no vote
    assert majority_answer([None, "x", "y", "y"]) == 2
    assert mean_maj_at_k([keys, ["z"] * 6], [correct, [True] * 6], 6) == 1.0
    with pytest.raises(ValueError):
        maj_at_k(keys, correct[:3], 3)
    with pytest.raises(ValueError):
        maj_at_k(keys, correct, 7)


def test_maj_at_k_votes_over_math_verify_normal_forms():
    answers = ["\\frac{1}{2}", "0.7", "0.5", "1/2", "0.7"]
    keys = [answer_key(a) for a in answers]
    correct = [True, False, True, True, False]
    # 1/2 written three ways is one vote of three; 0.7 has two
    assert maj_at_k(keys, correct, 5) == 1.0
    assert maj_at_k(keys, correct, 2) == 1.0     # tie 1-1: the first sample's answer
    raw_keys = answers                           # without normalisation 0.7 would win
    assert maj_at_k(raw_keys, correct, 5) == 0.0

"""Format rewards and the length / shape rewards against hand-computed values."""

import math

import pytest

from r1jax.rewards import (boxed_format_reward, cosine_scaled, format_reward,
                           language_consistency, repetition_penalty)
from r1jax.rewards.functions import REWARD_FUNCTIONS


@pytest.mark.parametrize("completion,expected", [
    ("<think>reason</think><answer>5</answer>", 1.0),
    ("<think>\nreason\n</think>\n<answer>\n5\n</answer>\n", 1.0),
    ("  <think>a</think> <answer>b</answer>", 1.0),
    ("<think>reason</think><answer>5</answer> trailing text", 0.0),
    ("preamble <think>reason</think><answer>5</answer>", 0.0),
    ("<answer>5</answer><think>reason</think>", 0.0),
    ("<think>reason</think>", 0.0),
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # hedging with two answers
    ("<think>a<think>b</think><answer>1</answer>", 0.0),
    ("<think>reason</think><answer>5", 0.0),                          # truncated
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


def test_format_reward_with_box_and_prompt_prefix():
    assert format_reward("<think>r</think><answer>\\boxed{5}</answer>", require_boxed=True) == 1.0
    assert format_reward("<think>r</think><answer>5</answer>", require_boxed=True) == 0.0
    assert format_reward("<think>\\boxed{5}</think><answer>5</answer>", require_boxed=True) == 0.0
    # the R1-Zero prompt ends with "<think>": the pool checks prefix + completion
    fn = REWARD_FUNCTIONS["format"]
    assert fn("r</think><answer>5</answer>", {"completion_prefix": "<think>"}, None) == 1.0
    assert fn("r</think><answer>5</answer>", {"completion_prefix": ""}, None) == 0.0


def test_boxed_format_reward():
    assert boxed_format_reward("so \\boxed{12}.") == 1.0
    assert boxed_format_reward("so \\boxed{ }.") == 0.0
    assert boxed_format_reward("so \\boxed{12") == 0.0


# Yeo et al. eq. 1 with the paper's r0c=2, rLc=1, r0w=-10, rLw=0, re=-10 and T=1000:
# CosFn(t) = rL + (r0 - rL)(1 + cos(pi t / T)) / 2, cos(pi/4) = 0.70710678.
@pytest.mark.parametrize("correct,length,expected", [
    (True, 0, 2.0), (True, 250, 1.8535533905932737), (True, 500, 1.5),
    (True, 750, 1.1464466094067263), (True, 999, 1.0000024674), (True, 1000, -10.0),
    (False, 0, -10.0), (False, 250, -8.535533905932738), (False, 500, -5.0),
    (False, 750, -1.4644660940672622), (False, 1200, -10.0),
])
def test_cosine_scaled_paper_defaults(correct, length, expected):
    assert cosine_scaled(correct, length, 1000) == pytest.approx(expected, abs=1e-9)


def test_cosine_scaled_open_r1_values():
    # open-r1's defaults: correct 1.0 -> 0.5, wrong -1.0 -> -0.5 over max_len 1000;
    # at 250 tokens: 0.5 + 0.25 * 1.70710678 = 0.9267767, -0.5 - 0.25 * 1.70710678.
    kw = dict(correct_at_0=1.0, correct_at_max=0.5, wrong_at_0=-1.0, wrong_at_max=-0.5)
    assert cosine_scaled(True, 250, 1000, **kw) == pytest.approx(0.9267766952966369)
    assert cosine_scaled(False, 250, 1000, **kw) == pytest.approx(-0.9267766952966369)
    with pytest.raises(ValueError):
        cosine_scaled(True, 1, 0)


def test_cosine_reward_uses_accuracy_and_length():
    fn = REWARD_FUNCTIONS["cosine"]
    example = {"answer": "\\frac{1}{2}"}
    assert fn("\\boxed{0.5}", example, 500, max_length=1000) == pytest.approx(1.5)
    assert fn("\\boxed{0.6}", example, 500, max_length=1000) == pytest.approx(-5.0)
    with pytest.raises(ValueError, match="lengths"):
        fn("\\boxed{0.5}", example, None, max_length=1000)


@pytest.mark.parametrize("text,n,expected", [
    ("a b c a b c a b c", 3, -4 / 7),       # 7 trigrams, 3 distinct
    ("A b C a B c", 3, -0.25),              # lower-cased: 4 trigrams, 3 distinct
    ("one two three four five", 3, 0.0),
    ("one two", 3, 0.0),
    ("", 3, 0.0),
    ("x x x x x", 1, -0.8),                 # 5 unigrams, 1 distinct
])
def test_repetition_penalty(text, n, expected):
    assert repetition_penalty(text, ngram_size=n) == pytest.approx(expected)


def test_repetition_penalty_scale_and_checks():
    assert repetition_penalty("a b c a b c a b c", max_penalty=-0.5) == pytest.approx(-2 / 7)
    with pytest.raises(ValueError):
        repetition_penalty("a", max_penalty=1.0)


@pytest.mark.parametrize("completion,language,expected", [
    ("<think>We compute 所以答案</think><answer>1</answer>", "en", 2 / 6),
    ("<think>We compute 所以答案</think><answer>1</answer>", "zh", 4 / 6),
    ("<think>Let x be $\\frac{a}{b}$ so \\sqrt{x} = 2</think>", "en", 1.0),  # Let, be, so
    ("<think>Пусть x равно 2, then done</think>", "ru", 2 / 4),
    ("<think>2 + 2 = 4</think>", "en", 0.0),   # no language units at all
    ("no tags: all of it is reasoning", "en", 1.0),
])
def test_language_consistency(completion, language, expected):
    assert language_consistency(completion, language) == pytest.approx(expected)
    assert not math.isnan(language_consistency(completion, language))


def test_language_consistency_unknown_language():
    with pytest.raises(ValueError, match="unknown language"):
        language_consistency("text", "xx")

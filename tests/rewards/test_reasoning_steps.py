"""open-r1's remaining rewards: `reasoning_steps` on hand-counted texts, and its soft overlong
punishment against r1jax's DAPO overlong shaping on hand-computed lengths."""

import numpy as np
import pytest

from r1jax.rewards import REWARD_FUNCTIONS
from r1jax.rewards.steps import count_step_markers, reasoning_steps


@pytest.mark.parametrize("text,markers", [
    ("The answer is 4.", 0),
    ("Step 1: add. Step 2: carry. Step 3: done.", 3),
    ("First, add the units. Next, the tens. Finally, check.", 3),
    ("Second, third", 1),                         # "Second," only; "third" is not a marker
    ("Plan:\n- add units\n- add tens\n* check", 3),   # two "\n-" bullets and one "\n*"
    ("1. add units\n2. add tens\n3. check", 1),   # no re.MULTILINE: only the leading "1."
    ("We get 1. Then 2. Then 3.", 0),             # numbers not at the start of the text
    ("step 1: lower case", 0),                    # case-sensitive, as open-r1
    ("Step 10: two digits", 1),
])
def test_markers_are_counted_as_open_r1_counts_them(text, markers):
    assert count_step_markers(text) == markers


@pytest.mark.parametrize("text,expected", [
    ("The answer is 4.", 0.0),
    ("First, add.", 1 / 3),
    ("First, add. Next, carry.", 2 / 3),
    ("Step 1: a Step 2: b Step 3: c", 1.0),
    ("Step 1: a Step 2: b Step 3: c Step 4: d Finally, e", 1.0),   # capped at 1
])
def test_reward_is_min_1_count_over_3(text, expected):
    assert reasoning_steps(text) == pytest.approx(expected)
    assert REWARD_FUNCTIONS["reasoning_steps"](text, {"answer": "4"}, None) == \
        pytest.approx(expected)


def test_target_steps_changes_the_denominator():
    assert reasoning_steps("First, a. Second, b.", target_steps=4) == 0.5
    with pytest.raises(ValueError):
        reasoning_steps("x", target_steps=0)


def open_r1_soft_overlong(length: int, max_completion_len: int, soft_punish_cache: int) -> float:
    """open-r1 / TRL `get_soft_overlong_punishment`, transcribed (DAPO eq. 13)."""
    if length <= max_completion_len - soft_punish_cache:
        return 0.0
    if length <= max_completion_len:
        return (max_completion_len - soft_punish_cache - length) / soft_punish_cache
    return -1.0


# L_max = 20, cache 4: 0 up to 16, then -1/4 per token, -1 at 20 and beyond.
HAND = [(0, 0.0), (16, 0.0), (17, -0.25), (18, -0.5), (19, -0.75), (20, -1.0), (25, -1.0)]


@pytest.mark.parametrize("length,expected", HAND)
def test_open_r1_formula_on_hand_computed_lengths(length, expected):
    assert open_r1_soft_overlong(length, 20, 4) == expected


def test_dapo_overlong_penalty_with_factor_1_is_open_r1_soft_overlong():
    from r1jax.rl.dapo import overlong_penalty
    lengths = np.array([length for length, _ in HAND])
    ours = np.asarray(overlong_penalty(lengths, max_len=20, buffer_len=4, factor=1.0))
    np.testing.assert_allclose(ours, [expected for _, expected in HAND], atol=1e-7)
    # Every length and buffer up to L_max = 12: the same function.
    for cache in range(1, 13):
        lengths = np.arange(0, 16)
        ours = np.asarray(overlong_penalty(lengths, 12, cache, 1.0))
        theirs = [open_r1_soft_overlong(int(n), 12, cache) for n in lengths]
        np.testing.assert_allclose(ours, theirs, atol=1e-6)

"""group_advantages against hand-computed GRPO / Dr. GRPO / batch-std / RLOO values."""

import numpy as np
import pytest

from r1jax.rl import advantages

# Rewards [1, 0, 0, 1]: mean 1/2; Bessel std = sqrt((4 x 1/4) / 3) = sqrt(1/3) = 0.5773503.
# A = +-0.5 / (0.5773503 + 1e-6) = +-0.8660239.
# Rewards [1, 0, 0]: mean 1/3; squares 4/9 + 1/9 + 1/9 = 2/3, / 2 -> std sqrt(1/3);
# A = (2/3) / 0.5773513 = 1.1546986, (-1/3) / 0.5773513 = -0.5773493.


def test_grpo_group_std_uses_bessel_correction():
    a = advantages.group_advantages(np.array([1.0, 0.0, 0.0, 1.0]), 4)
    np.testing.assert_allclose(a, [0.8660239, -0.8660239, -0.8660239, 0.8660239], rtol=1e-6)
    a = advantages.group_advantages(np.array([1.0, 0.0, 0.0]), 3)
    np.testing.assert_allclose(a, [1.1546986, -0.5773493, -0.5773493], rtol=1e-6)


def test_groups_are_independent():
    a = advantages.group_advantages(np.array([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 7.0]), 4)
    # second group: mean 5.5, deviations -0.5 x 3, 1.5; squares 0.75 + 2.25 = 3, / 3 -> std 1.
    np.testing.assert_allclose(a[4:], [-0.4999995, -0.4999995, -0.4999995, 1.4999985],
                               rtol=1e-6)
    np.testing.assert_allclose(a[:4], [0.8660239, -0.8660239, -0.8660239, 0.8660239],
                               rtol=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("baseline", ["mean", "rloo"])
def test_all_equal_rewards_give_exactly_zero(scale, baseline):
    # 0.1 x 3 does not sum to exactly 0.3 in float32: a computed mean would leave a residue
    # that the 1e-6 denominator amplifies.
    r = np.array([0.1, 0.1, 0.1, 1.0, 0.0, 0.0], np.float32)
    a = np.asarray(advantages.group_advantages(r, 3, scale, baseline=baseline))
    assert np.all(a[:3] == 0.0)
    assert np.all(a[3:] != 0.0)


def test_dr_grpo_no_scaling():
    a = advantages.group_advantages(np.array([1.0, 0.0, 0.0, 1.0, 2.0, 0.0]), 3, "none")
    # means 1/3 and 1.
    np.testing.assert_allclose(a, [2 / 3, -1 / 3, -1 / 3, 0.0, 1.0, -1.0], rtol=1e-6)


def test_batch_level_std():
    # centred by group: [0.5, -0.5, 0, 0]; std of [1, 0, 3, 3]: mean 1.75, squares
    # 0.5625 + 3.0625 + 1.5625 + 1.5625 = 6.75, / 3 = 2.25 -> 1.5.
    a = advantages.group_advantages(np.array([1.0, 0.0, 3.0, 3.0]), 2, "batch")
    np.testing.assert_allclose(a, [0.5 / 1.500001, -0.5 / 1.500001, 0.0, 0.0], rtol=1e-6)


def test_rloo():
    a = advantages.group_advantages(np.array([1.0, 0.0, 0.0, 1.0]), 4, "none",
                                    baseline="rloo")
    # 1 - (1 + 0 + 0) / 3 = 2/3; 0 - (1 + 0 + 1) / 3 = -2/3.
    np.testing.assert_allclose(a, [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)
    a = advantages.group_advantages(np.array([3.0, 0.0, 0.0]), 3, "none", baseline="rloo")
    np.testing.assert_allclose(a, [3.0, -1.5, -1.5], rtol=1e-6)


def test_group_of_one_gets_a_equals_r():
    r = np.array([2.0, -1.0, 0.0])
    np.testing.assert_array_equal(advantages.group_advantages(r, 1), r)
    np.testing.assert_array_equal(advantages.group_advantages(r, 1, "none"), r)
    np.testing.assert_array_equal(advantages.group_advantages(r, 1, "none", baseline="rloo"),
                                  r)
    # batch scale still divides by the batch std: mean 1/3, squares 25/9 + 16/9 + 1/9 =
    # 42/9, / 2 = 7/3 -> std 1.5275252.
    np.testing.assert_allclose(advantages.group_advantages(r, 1, "batch"),
                               r / (1.5275252 + 1e-6), rtol=1e-6)


def test_rloo_divided_by_group_or_batch_std():
    r = np.array([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 7.0])
    # RLOO values: group 1 +-2/3 (see test_rloo); group 2: 5 - (5 + 5 + 7) / 3 = -2/3 (x3),
    # 7 - (5 + 5 + 5) / 3 = 2. Group stds (Bessel): sqrt(1/3) = 0.5773503 and 1.
    a = advantages.group_advantages(r, 4, "group", baseline="rloo")
    np.testing.assert_allclose(a, [1.1546985, -1.1546985, -1.1546985, 1.1546985,
                                   -0.6666660, -0.6666660, -0.6666660, 1.9999980], rtol=1e-6)
    # Batch std: mean 3, squares 4 + 9 + 9 + 4 + 4 + 4 + 4 + 16 = 54, / 7 -> 2.7774603.
    a = advantages.group_advantages(r, 4, "batch", baseline="rloo")
    np.testing.assert_allclose(a, [0.2400273, -0.2400273, -0.2400273, 0.2400273,
                                   -0.2400273, -0.2400273, -0.2400273, 0.7200820], rtol=1e-6)


def formula(rewards: np.ndarray, g: int, scale: str, baseline: str) -> np.ndarray:
    """The estimators as the papers write them, in float64, one group at a time."""
    out = []
    for r in rewards.reshape(-1, g):
        if baseline == "mean":  # GRPO (Shao et al. 2024), Dr. GRPO (Liu et al. 2025)
            centred = r - r.mean()
        else:  # RLOO (Ahmadian et al. 2024): the mean of the other G - 1 rewards
            centred = np.array([r[i] - np.delete(r, i).mean() for i in range(g)])
        if scale == "group":
            centred = centred / (np.std(r, ddof=1) + 1e-6)
        elif scale == "batch":
            centred = centred / (np.std(rewards, ddof=1) + 1e-6)
        out.append(centred)
    return np.concatenate(out)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("baseline", ["mean", "rloo"])
def test_mixed_reward_patterns_follow_the_formulas(scale, baseline):
    # Groups of 5: one right; all right (exactly 0); four right; DAPO +-1 rewards; a
    # continuous (format + accuracy) pattern; all wrong (exactly 0).
    r = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, -1, 1, -1, -1, 1,
                  0.1, 1.1, 0.0, 1.0, 0.1, 0, 0, 0, 0, 0], np.float32)
    a = np.asarray(advantages.group_advantages(r, 5, scale, baseline=baseline))
    np.testing.assert_allclose(a, formula(r.astype(np.float64), 5, scale, baseline),
                               rtol=2e-6, atol=1e-6)
    assert np.all(a[5:10] == 0.0) and np.all(a[25:] == 0.0)
    # The lone right answer is pushed up, the lone wrong one down, the rest the other way.
    assert a[2] > 0 and np.all(np.delete(a[:5], 2) < 0)
    assert a[12] < 0 and np.all(np.delete(a[10:15], 2) > 0)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="whole number of groups"):
        advantages.group_advantages(np.zeros(5), 2)
    with pytest.raises(ValueError, match="unknown advantage scale"):
        advantages.group_advantages(np.zeros(4), 2, "std")
    with pytest.raises(ValueError, match="unknown advantage baseline"):
        advantages.group_advantages(np.zeros(4), 2, baseline="median")
    with pytest.raises(ValueError, match="1-D"):
        advantages.group_advantages(np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match="positive int"):
        advantages.group_advantages(np.zeros(4), 0)

"""group_advantages against hand-computed GRPO / Dr. GRPO / batch-std / RLOO values."""

import jax
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


def test_jit_matches_eager():
    r = np.array([1.0, 0.0, 0.5, 0.5, 0.2, 0.9], np.float32)
    f = jax.jit(advantages.group_advantages, static_argnums=(1, 2))
    np.testing.assert_allclose(f(r, 2, "group"), advantages.group_advantages(r, 2), rtol=1e-6)


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

"""DAPO overlong shaping and filtering, group filter and the dynamic-sampling state machine."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import dapo
from r1jax.rl.dapo import DynamicSampler, DynamicSamplingError, Status


def test_overlong_penalty_three_regions():
    # L_max = 20, L_buf = 5: 0 up to 15, then (15 - |y|) / 5 x f, then -f beyond 20.
    lengths = np.array([3, 15, 16, 18, 20, 21, 100])
    np.testing.assert_allclose(dapo.overlong_penalty(lengths, 20, 5),
                               [0, 0, -0.2, -0.6, -1.0, -1.0, -1.0], rtol=1e-6, atol=0)
    np.testing.assert_allclose(dapo.overlong_penalty(lengths, 20, 5, factor=2.0),
                               [0, 0, -0.4, -1.2, -2.0, -2.0, -2.0], rtol=1e-6, atol=0)
    # the DAPO paper's setting: 16,384 + 4,096 buffer = 20,480; 18,432 is half-way.
    np.testing.assert_allclose(dapo.overlong_penalty(np.array([18432]), 20480, 4096), [-0.5])


def test_overlong_penalty_bad_arguments():
    with pytest.raises(ValueError, match="buffer_len"):
        dapo.overlong_penalty(np.array([1]), 10, 0)
    with pytest.raises(ValueError, match="buffer_len"):
        dapo.overlong_penalty(np.array([1]), 10, 11)
    with pytest.raises(ValueError, match="factor"):
        dapo.overlong_penalty(np.array([1]), 10, 2, factor=-1.0)


def test_filter_truncated_zeroes_whole_rows():
    mask = jnp.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], jnp.float32)
    out = dapo.filter_truncated(mask, np.array([False, True, False]))
    np.testing.assert_array_equal(out, [[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="does not match"):
        dapo.filter_truncated(mask, np.array([True, False]))


def test_keep_groups():
    r = np.array([1, 1, 0, 1, 0, 0, 0.1, 0.1, 0.3, 0.30000001], np.float64)
    np.testing.assert_array_equal(dapo.keep_groups(r, 2), [False, True, False, False, True])
    # groups of one are kept
    np.testing.assert_array_equal(dapo.keep_groups(np.array([1.0, 1.0, 0.0]), 1),
                                  [True, True, True])
    with pytest.raises(ValueError, match="whole number of groups"):
        dapo.keep_groups(np.zeros(5), 2)


def _batch(group_rewards, first_id):
    """Rewards [n x G] and payloads (ids) for a scripted generation batch."""
    rewards = np.array(group_rewards, np.float32).reshape(-1)
    return rewards, [first_id + i for i in range(len(group_rewards))]


def test_dynamic_sampling_accumulates_until_full_and_discards_surplus():
    s = DynamicSampler(train_batch=4, group_size=2)
    # batch 1: groups 0..3, informative: 1, 3
    assert s.add(*_batch([[1, 1], [0, 1], [0, 0], [1, 0]], 0)) is Status.NEED_MORE
    # batch 2: groups 4..7, informative: 6
    assert s.add(*_batch([[0, 0], [0, 0], [1, 0], [1, 1]], 4)) is Status.NEED_MORE
    # batch 3: groups 8..11, informative: 8, 9, 11 -> 6 kept, 4 used, 10 and 11 discarded
    assert s.add(*_batch([[0, 1], [1, 0], [1, 1], [0, 1]], 8)) is Status.READY
    groups, stats = s.take()
    assert groups == [1, 3, 6, 8]
    assert stats.as_dict() == {"gen_batches": 3, "groups_generated": 12, "groups_kept": 6,
                               "groups_used": 4, "frac_dropped": 0.5,
                               "solve_all": 3 / 12, "solve_none": 3 / 12}
    # the next step starts from scratch: nothing carried over
    assert s.add(*_batch([[0, 1], [1, 0], [1, 0], [0, 1]], 12)) is Status.READY
    groups, stats = s.take()
    assert groups == [12, 13, 14, 15] and stats.gen_batches == 1 and stats.frac_dropped == 0


def test_correct_flags_drive_solve_metrics():
    s = DynamicSampler(train_batch=1, group_size=2)
    # rewards include an overlong penalty; correctness comes from the verifier
    status = s.add(np.array([1.0, 0.8, -1.0, -1.0]), ["a", "b"],
                   correct=np.array([True, True, False, False]))
    assert status is Status.READY
    _, stats = s.take()
    assert (stats.solve_all, stats.solve_none, stats.groups_kept) == (0.5, 0.5, 1)


def test_limit_hit_with_enough_groups_trains_on_partial_batch(caplog):
    s = DynamicSampler(train_batch=4, group_size=2, max_num_gen_batches=2, min_train_batch=2)
    assert s.add(*_batch([[0, 1], [0, 0]], 0)) is Status.NEED_MORE
    with caplog.at_level(logging.WARNING, logger="r1jax.rl.dapo"):
        assert s.add(*_batch([[1, 1], [1, 0]], 2)) is Status.PARTIAL
    assert "max_num_gen_batches=2" in caplog.text and "2 of train_batch=4" in caplog.text
    groups, stats = s.take()
    assert groups == [0, 3]
    assert (stats.gen_batches, stats.groups_used, stats.frac_dropped) == (2, 2, 0.5)


def test_limit_hit_with_too_few_groups_raises_after_status():
    s = DynamicSampler(train_batch=4, group_size=2, max_num_gen_batches=2, min_train_batch=2)
    assert s.add(*_batch([[0, 0], [0, 0]], 0)) is Status.NEED_MORE
    assert s.add(*_batch([[1, 1], [1, 0]], 2)) is Status.EXHAUSTED
    with pytest.raises(DynamicSamplingError, match="only 1 groups") as err:
        s.take()
    assert "max_num_gen_batches=2" in str(err.value) and "min_train_batch=2" in str(err.value)
    assert err.value.stats.gen_batches == 2 and err.value.stats.solve_none == 0.5
    assert s.status is Status.NEED_MORE  # reset


def test_unlimited_keeps_asking_and_default_min_is_full_batch():
    s = DynamicSampler(train_batch=2, group_size=2)
    for i in range(20):
        assert s.add(*_batch([[0, 0], [1, 1]], 2 * i)) is Status.NEED_MORE
    s = DynamicSampler(train_batch=2, group_size=2, max_num_gen_batches=1)
    assert s.add(*_batch([[0, 1], [1, 1]], 0)) is Status.EXHAUSTED


def test_misuse_raises():
    s = DynamicSampler(train_batch=1, group_size=2)
    with pytest.raises(RuntimeError, match="before the batch is complete"):
        s.take()
    with pytest.raises(ValueError, match="2 group payloads for 1 groups"):
        s.add(np.array([0.0, 1.0]), ["a", "b"])
    assert s.add(np.array([0.0, 1.0]), ["a"]) is Status.READY
    with pytest.raises(RuntimeError, match="call take"):
        s.add(np.array([0.0, 1.0]), ["b"])
    with pytest.raises(ValueError, match="min_train_batch"):
        DynamicSampler(train_batch=4, group_size=2, min_train_batch=5)
    with pytest.raises(ValueError, match="max_num_gen_batches"):
        DynamicSampler(train_batch=4, group_size=2, max_num_gen_batches=-1)

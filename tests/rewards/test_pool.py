"""RewardPool: same scores as direct calls, isolation of hangs / crashes / exceptions,
adversarial completions within the timeout, and no leaked processes."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from r1jax import rewards
from r1jax.rewards.functions import REWARD_FUNCTIONS
from tests.rewards import faulty

SPECS = [("accuracy", 1.0, {}), ("format", 0.5, {}), ("repetition", 0.2, {}),
         ("language", 0.1, {"language": "en"})]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:     # a zombie counts as gone
        return f.read().split()[2] != "Z"


@pytest.fixture(scope="module")
def math_batch(data_dir):
    rows = [json.loads(line) for line in open(os.path.join(data_dir, "math500/test.jsonl"))]
    completions, examples = [], []
    for row in rows[:24]:
        gold = row["answer"]
        for text in (f"reason</think><answer> {gold} </answer>",
                     f"reason reason reason</think><answer>\\boxed{{{gold}}}</answer>",
                     "I think it is \\boxed{12345}", "truncated \\boxed{" + gold):
            completions.append(text)
            examples.append({"answer": gold, "completion_prefix": "<think>", "id": row["unique_id"],
                             "prompt_ids": list(range(50))})
    return completions, examples


def test_pool_equals_direct_calls(math_batch):
    completions, examples = math_batch
    with rewards.RewardPool(SPECS, num_workers=2, timeout_s=10) as pool:
        result = pool.score(completions, examples)
    for name, _, kwargs in SPECS:
        direct = [REWARD_FUNCTIONS[name](c, e, None, **kwargs)
                  for c, e in zip(completions, examples)]
        np.testing.assert_allclose(result.per_function[name], direct, rtol=0, atol=1e-12)
    weights = np.array([w for _, w, _ in SPECS])
    expected_total = np.stack([result.per_function[n] for n, _, _ in SPECS], 1) @ weights
    np.testing.assert_allclose(result.total, expected_total)
    # the answers written as given are right; 12345 and the truncated box are not
    acc = result.per_function["accuracy"].reshape(-1, 4)
    assert acc[:, 2:].sum() == 0 and acc[:, 1].mean() == 1.0
    assert result.failures.total == 0 and not result.failed.any()


def test_failures_are_isolated_counted_and_workers_replaced():
    texts = ["fine", "HANG", "fine", "SEGV", "RAISE", "fine", "EXIT", "NAN", "HOG", "fine"]
    pool = rewards.RewardPool([("misbehave", 2.0, {})], num_workers=2, timeout_s=1.5,
                              functions=faulty.FUNCTIONS, chunk_size=4, memory_limit_mb=2048)
    try:
        first_pids = pool.worker_pids
        start = time.monotonic()
        result = pool.score(texts, [{}] * len(texts))
        elapsed = time.monotonic() - start
        expected_ok = np.array([t == "fine" for t in texts])
        np.testing.assert_array_equal(result.failed, ~expected_ok)
        np.testing.assert_array_equal(result.total, np.where(expected_ok, 2.0, 0.0))
        assert (result.failures.timeouts, result.failures.crashes,
                result.failures.exceptions) == (1, 2, 3)
        assert len(result.failures.examples) == 3
        assert elapsed < 15, elapsed   # one 1.5 s timeout plus three worker restarts
        assert len(pool.worker_pids) == 2 and set(pool.worker_pids) != set(first_pids)
        # the replaced workers keep serving
        again = pool.score(["fine"] * 6, [{}] * 6)
        assert again.failures.total == 0 and again.total.tolist() == [2.0] * 6
    finally:
        pids = pool.worker_pids
        pool.close()
    assert not any(alive(p) for p in pids + first_pids)


ADVERSARIAL = {
    "100k_chars": "x " * 50_000 + "\\boxed{5}",
    "binary_junk": bytes(range(256)).decode("latin-1") * 400,
    "nested_braces": "\\boxed{" + "{" * 5000 + "5" + "}" * 5000 + "}",
    "unclosed_box": "\\boxed{" * 3000 + "5",
    "deep_parentheses": "\\boxed{" + "(" * 500 + "5" + ")" * 500 + "}",
    "power_tower": "\\boxed{9^{9^{9}}}",
    "huge_factorial": "\\boxed{(10^{7})!}",
    "many_boxes": "\\boxed{1} " * 20_000 + "\\boxed{5}",
    "lone_surrogates": "\ud800\udfff \\boxed{\ud800}",
}


def test_adversarial_completions_finish_and_are_counted():
    names = list(ADVERSARIAL)
    completions = [ADVERSARIAL[n] for n in names]
    specs = [("accuracy", 1.0, {"timeout_s": 1}), ("format", 1.0, {}), ("repetition", 1.0, {}),
             ("language", 1.0, {}), ("boxed", 1.0, {})]
    with rewards.RewardPool(specs, num_workers=2, timeout_s=4) as pool:
        start = time.monotonic()
        result = pool.score(completions, [{"answer": "5"}] * len(names))
        elapsed = time.monotonic() - start
    acc = dict(zip(names, result.per_function["accuracy"]))
    assert acc["100k_chars"] == 1.0 and acc["many_boxes"] == 1.0
    assert acc["deep_parentheses"] == 0.0 and acc["unclosed_box"] == 0.0
    # math-verify's own 1 s limit fires on the slow ones; they score 0 and are counted
    assert result.failures.timeouts >= 2 and result.failures.crashes == 0
    assert result.failed[names.index("power_tower")]
    assert elapsed < 30, elapsed


def test_hard_timeout_kills_slow_latex():
    # With math-verify's own limit out of reach, only the pool's kill stops 9^(9^9).
    specs = [("accuracy", 1.0, {"timeout_s": 60})]
    with rewards.RewardPool(specs, num_workers=1, timeout_s=1.0) as pool:
        start = time.monotonic()
        result = pool.score(["\\boxed{9^{9^{9}}}", "\\boxed{5}"], [{"answer": "5"}] * 2)
        elapsed = time.monotonic() - start
    assert result.total.tolist() == [0.0, 1.0]
    assert result.failures.timeouts == 1 and result.failed.tolist() == [True, False]
    assert elapsed < 10, elapsed


def test_workers_exit_when_parent_dies():
    script = textwrap.dedent("""
        import os, sys
        from r1jax.rewards import RewardPool
        pool = RewardPool([("format", 1.0, {})], num_workers=2)
        pool.score(["x"], [{}])
        print(" ".join(map(str, pool.worker_pids)), flush=True)
        os._exit(0)   # no close(), no atexit: the workers must notice on their own
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids)


def test_lengths_reach_the_functions_and_are_validated():
    with rewards.RewardPool([("echo_length", 1.0, {})], num_workers=1,
                            functions=faulty.FUNCTIONS) as pool:
        assert pool.score(["a", "b"], [{}, {}], lengths=[7, 9]).total.tolist() == [7.0, 9.0]
        empty = pool.score([], [], lengths=[])
        assert empty.total.shape == (0,) and empty.per_function["echo_length"].shape == (0,)
        with pytest.raises(ValueError, match="2 completions"):
            pool.score(["a", "b"], [{}])
    with rewards.RewardPool([("cosine", 1.0, {"max_length": 10})], num_workers=1) as pool:
        with pytest.raises(ValueError, match="lengths"):
            pool.score(["a"], [{"answer": "1"}])
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(["a"], [{"answer": "1"}], lengths=[1])


@pytest.mark.parametrize("specs,match", [
    ([], "at least one"),
    ([("nope", 1.0, {})], "unknown reward function 'nope'"),
    ([("format", 1.0, {}), ("format", 2.0, {})], "twice"),
    ([("format", float("nan"), {})], "finite"),
    ([("accuracy", 1.0, {"mdoe": "boxed"})], "bad kwargs"),
])
def test_bad_specs_fail_before_starting_workers(specs, match):
    with pytest.raises(ValueError, match=match):
        rewards.RewardPool(specs)


def test_unpicklable_functions_are_refused():
    with pytest.raises(ValueError, match="picklable"):
        rewards.RewardPool([("local", 1.0, {})], functions={"local": lambda c, e, n: 1.0})


def test_workers_do_not_load_jax():
    # The parent test process has JAX loaded (conftest); workers are fresh interpreters that
    # import r1jax.rewards without r1jax/__init__.py.
    assert "jax" in sys.modules
    with rewards.RewardPool([("heavy_modules_loaded", 1.0, {})], num_workers=1,
                            functions=faulty.FUNCTIONS) as pool:
        assert pool.score(["x"], [{}]).total.tolist() == [0.0]

"""A math + code + logic mixture end to end: routed rewards, per-task metrics, exact resume."""

import types

import numpy as np
import pytest

from r1jax import train
from r1jax.config import load_config
from r1jax.metrics import read_metrics
from r1jax.rewards import REWARD_FUNCTIONS, RewardPool
from r1jax.rl import dapo, steps
from r1jax.rl.rollout import GenerationBatch

from tests.train.test_trainer import comparable, run

MIXTURE = "configs/mixture_math_code_logic.py:tiny"
KK_SOLVED = ("<think>Zoey lies.</think><answer>(1) Zoey is a knave\n(2) Oliver is a knight"
             "</answer>")


def test_a_multi_task_pool_scores_each_completion_with_its_tasks_functions():
    kk = {"task": "logic", "answer": "(1) Zoey is a knave\n(2) Oliver is a knight",
          "names": ["Zoey", "Oliver"]}
    math = {"task": "math", "answer": "4"}
    specs = {"math": [("accuracy", 1.0, {"mode": "boxed"})],
             "logic": [("logic_format", 1.0, {}), ("knights_knaves", 0.5, {})]}
    with RewardPool(specs, num_workers=1) as pool:
        result = pool.score([r"so \boxed{4}", KK_SOLVED, "no tags"], [math, kk, kk])
        with pytest.raises(ValueError, match="tasks"):
            pool.score(["x"], [{"answer": "1"}])
    # logic: format +1, answer +2 (weight 0.5); broken: format -1, answer -2 (x 0.5)
    np.testing.assert_allclose(result.total, [1.0, 1.0 + 0.5 * 2.0, -1.0 - 0.5 * 2.0])
    np.testing.assert_allclose(result.per_function["math/accuracy"], [1.0, np.nan, np.nan])
    np.testing.assert_allclose(result.per_function["logic/knights_knaves"], [np.nan, 2.0, -2.0])


def fake_gen(tasks, accuracy, group_size):
    """A GenerationBatch of groups with the given tasks and accuracy values."""
    rows = len(accuracy)
    out = types.SimpleNamespace(lengths=np.arange(1, rows + 1),
                                finish_reason=np.zeros(rows, np.int32))
    row_tasks = np.array([t for t in tasks for _ in range(group_size)], dtype=object)
    acc = np.asarray(accuracy, float)
    parts = {f"{t}/acc": np.where(row_tasks == t, acc, np.nan) for t in set(tasks)}
    return GenerationBatch([{"task": t} for t in tasks], out, [""] * rows, acc.astype(np.float32),
                           parts, acc > 0, types.SimpleNamespace(timeouts=0, crashes=0,
                                                                 exceptions=0),
                           {"rollout": 1.0, "reward": 1.0}, acc, row_tasks)


def test_dynamic_sampling_filters_and_counts_each_task_on_its_own_accuracy():
    # G = 2; groups: math (1, 0) kept, math (0, 0) dropped, code (1, 1) dropped, logic (0, 1)
    gens = [fake_gen(["math", "math", "code", "logic"], [1, 0, 0, 0, 1, 1, 0, 1], 2),
            fake_gen(["code", "logic"], [0, 1, 0, 0], 2)]
    ds = dapo.DynamicSampler(3, 2, 0, None)
    for gen in gens:
        ds.add(gen.accuracy, list(range(len(gen.examples))), correct=gen.correct)
    metrics = steps.rollout_metrics(gens, ds.take()[1])
    assert metrics["dynamic_sampling/groups_kept"] == 3
    assert {k: v for k, v in metrics.items() if "dynamic_sampling/groups_" in k and "task/" in k} \
        == {"task/math/dynamic_sampling/groups_kept": 1.0,
            "task/math/dynamic_sampling/groups_dropped": 1.0,
            "task/code/dynamic_sampling/groups_kept": 1.0,
            "task/code/dynamic_sampling/groups_dropped": 1.0,
            "task/logic/dynamic_sampling/groups_kept": 1.0,
            "task/logic/dynamic_sampling/groups_dropped": 1.0}
    assert metrics["task/math/accuracy"] == 0.25 and metrics["task/code/accuracy"] == 0.75
    assert metrics["task/logic/response_length/mean"] == np.mean([7, 8, 3, 4])
    assert metrics["task/math/reward/acc/mean"] == 0.25


@pytest.fixture
def mixture_config(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)

    def make(name, steps):
        return load_config(MIXTURE, [f"train.run_dir={tmp_path / name}", f"train.steps={steps}",
                                     "train.progress_bar=False", "train.export_hf=False",
                                     "train.tensorboard=False"])
    return make


def test_mixture_run_logs_each_tasks_own_rewards_and_resumes_exactly(mixture_config,
                                                                    monkeypatch):
    seen = []
    original = train.generate_batch

    def recording(*args, **kwargs):
        gen = original(*args, **kwargs)
        seen.append(gen)
        return gen
    monkeypatch.setattr(train, "generate_batch", recording)
    straight = mixture_config("straight", 2)
    run(straight)
    tasks = {m.name: m for m in straight.data.mixture}
    rows = [r for r in read_metrics(straight.train.run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for gen, row in zip(seen, rows):
        # Each completion scored by its own task's functions, recomputed here directly.
        lengths = gen.output.lengths
        rows_of = {}
        for i, text in enumerate(gen.texts):
            example = gen.examples[i // straight.rollout.group_size]
            task = tasks[example["task"]]
            total = sum(f.weight * REWARD_FUNCTIONS[f.name](text, example, int(lengths[i]),
                                                            **f.kwargs)
                        for f in task.functions)
            rows_of.setdefault(task.name, []).append(total)
        assert sorted(rows_of) == sorted(k.split("/")[1] for k in row
                                         if k.endswith("/completions"))
        for name, totals in rows_of.items():
            assert row[f"task/{name}/reward/mean"] == pytest.approx(np.mean(totals))
            assert row[f"task/{name}/completions"] == len(totals)
        assert row["reward/mean"] == pytest.approx(np.mean(sum(rows_of.values(), [])))
    # The curriculum: from step 1 the tiny's weights are 0.2 / 0.4 / 0.4, before 0.6 / ...
    first = mixture_config("resumed", 1)
    run(first)
    again = mixture_config("resumed", 2)
    trainer, _ = run(again)
    assert trainer.step == 2
    a, b = ([r for r in read_metrics(c.train.run_dir) if "reward/mean" in r]
            for c in (straight, again))
    assert [r["step"] for r in b] == [1, 2]
    assert comparable(a[1]) == comparable(b[1])  # step 2 ran after the resume

"""The weighted multi-task prompt stream: draws by weight, curriculum stages, exact resume."""

import numpy as np
import pytest

from r1jax.config import ConfigError, load_config
from r1jax.data import DataError, LoadStats, PromptSource, make_prompt_iterator, make_template
from r1jax.data.mixture import MixtureIterator, Task, weights_at
from r1jax.models.char_tokenizer import make_char_tokenizer

TOKENIZER = make_char_tokenizer("0123456789+=?abcdefghijklmnopqrstuvwxyz ")


def source(name, n):
    examples = [{"id": f"{name}{i}", "question": f"{name} {i}?", "answer": str(i)}
                for i in range(n)]
    return PromptSource(name, "math", examples, LoadStats(name, n, n))


def tasks(weights=(0.5, 0.3, 0.2)):
    templates = ("plain", "r1_zero", "plain")
    return [Task(name, source(name, n), make_template(t), w)
            for name, n, t, w in zip("abc", (7, 11, 13), templates, weights)]


def mixture(schedule=(), weights=(0.5, 0.3, 0.2), batch_size=8, seed=3):
    return MixtureIterator(tasks(weights), TOKENIZER, batch_size, seed, schedule)


def documented_draws(seed, counter, batch_size, weights):
    """README's rule, written out: default_rng([seed, k]).choice(n, size=B, p=w / sum(w))."""
    p = np.asarray(weights, float) / np.sum(weights)
    return list(np.random.default_rng([seed, counter]).choice(len(p), size=batch_size, p=p))


def test_each_slot_draws_its_task_by_the_documented_rule():
    it = mixture()
    for k in range(5):
        batch = next(it)
        expected = ["abc"[i] for i in documented_draws(3, k, 8, (0.5, 0.3, 0.2))]
        assert [ex["task"] for ex in batch] == expected


def test_draws_follow_the_weights():
    it = mixture(batch_size=16)
    counts = np.zeros(3)
    for _ in range(200):
        for ex in next(it):
            counts["abc".index(ex["task"])] += 1
    expected = 3200 * np.array([0.5, 0.3, 0.2])
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_each_task_keeps_its_own_order_and_template():
    it = mixture()
    seen = {name: [] for name in "abc"}
    for _ in range(6):
        for ex in next(it):
            seen[ex["task"]].append(ex)
    for task in tasks():
        alone = make_prompt_iterator(task.source, TOKENIZER, task.template, 1, 3)
        ids = [next(alone)[0]["id"] for _ in seen[task.name]]
        assert [ex["id"] for ex in seen[task.name]] == ids
        for ex in seen[task.name]:
            assert ex["prompt_text"] == task.template.render(ex["question"])
            assert ex["prompt_ids"] == TOKENIZER(ex["prompt_text"],
                                                 add_special_tokens=True)["input_ids"]


def test_the_schedule_switches_weights_at_its_steps():
    schedule = [(0, (1.0, 0.0, 0.0)), (2, (0.0, 1.0, 1.0)), (5, (0.0, 0.0, 1.0))]
    assert list(weights_at(1, (1, 1, 1), schedule)) == [1.0, 0.0, 0.0]
    assert list(weights_at(4, (1, 1, 1), schedule)) == [0.0, 1.0, 1.0]
    assert list(weights_at(9, (1, 1, 1), schedule)) == [0.0, 0.0, 1.0]
    assert list(weights_at(0, (1, 2, 3), [(3, (1, 0, 0))])) == [1.0, 2.0, 3.0]
    it = mixture(schedule)
    tasks_by_step = []
    for step in range(7):
        it.set_step(step)
        tasks_by_step.append({ex["task"] for ex in next(it)})
    assert tasks_by_step[:2] == [{"a"}, {"a"}]
    assert all(t <= {"b", "c"} for t in tasks_by_step[2:5])
    assert tasks_by_step[2] | tasks_by_step[3] | tasks_by_step[4] == {"b", "c"}
    assert tasks_by_step[5:] == [{"c"}, {"c"}]


def test_state_resumes_the_same_mixed_stream():
    it = mixture()
    for _ in range(3):
        next(it)
    state = it.get_state()
    rest = [[ex["id"] for ex in next(it)] for _ in range(5)]
    again = mixture()
    again.set_state(state)
    assert [[ex["id"] for ex in next(again)] for _ in range(5)] == rest
    other = MixtureIterator(tasks()[:2], TOKENIZER, 8, 3)
    with pytest.raises(DataError, match="tasks"):
        other.set_state(state)


MIXTURE = "configs/mixture_math_code_logic.py"


@pytest.mark.parametrize("override,message", [
    ("data.mixture[1].name=math", "task names must be unique"),
    ("data.mixture[0].weight=-1.0", r"'config.data.mixture\[0\].weight': must be >= 0"),
    ("data.mixture_schedule[1].from_step=0", "strictly increasing from_step"),
    ("data.mixture_schedule[0].weights=(1.0, 1.0)", "has 2 weights for 3 tasks"),
    ("data.mixture_schedule[0].weights=(0.0, 0.0, 0.0)", "not all 0"),
    ("data.mixture[2].accuracy=code", "not one of the task's reward functions"),
    ("sft.steps=3", "a warm start needs one data source"),
])
def test_bad_mixtures_fail_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(MIXTURE, [override])

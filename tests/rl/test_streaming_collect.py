"""Streaming DAPO dynamic sampling (`Trainer._collect_streaming`) on the real engine, with a
scripted reward: the groups drawn, kept, dropped and left unfinished match a hand count."""

import types

import numpy as np
import pytest

from r1jax import train
from r1jax.rl import dapo
from r1jax.sampling import Sampler
from tests.sampling.test_sampler import hf_pair, prompts_of  # noqa: F401

G, SLOTS, T = 2, 4, 3


class ScriptedPool:
    """Accuracy of sample i of a prompt = the prompt's pattern[i]; records what it scored."""

    def __init__(self):
        self.scored = []

    def score(self, texts, rows, lengths):
        self.scored.append([r["id"] for r in rows][::G])
        acc = np.array([r["pattern"][i % G] for i, r in enumerate(rows)], float)
        return types.SimpleNamespace(
            total=acc, per_function={"accuracy": acc},
            failures=types.SimpleNamespace(timeouts=0, crashes=0, exceptions=0))


def trainer_for(model, patterns, per_batch, train_batch, max_batches, stream_steps=2):
    examples = [{"id": i, "pattern": p, "prompt_ids": ids}
                for i, (p, ids) in enumerate(zip(patterns,
                                                 prompts_of([4 + i % 5 for i in
                                                             range(len(patterns))])))]
    batches = iter([examples[i:i + per_batch] for i in range(0, len(examples), per_batch)])
    cfg = types.SimpleNamespace(
        rollout=types.SimpleNamespace(group_size=G, max_new_tokens=T,
                                      stream_steps=stream_steps),
        algo=types.SimpleNamespace(max_num_gen_batches=max_batches))
    # No stop tokens: every row runs T tokens, so the engine's schedule is known: SLOTS / G
    # groups enter at once and end T - 1 decode steps later, together.
    sampler = Sampler(model, max_prompt_len=16, max_new_tokens=T, max_slots=SLOTS)
    saved = []
    fake = types.SimpleNamespace(
        cfg=cfg, sampler=sampler, data=batches, pool=ScriptedPool(), accuracy_name="accuracy",
        tokenizer=types.SimpleNamespace(batch_decode=lambda rows, **_: ["x"] * len(rows)),
        rl=types.SimpleNamespace(params=model.params), _seed=lambda step, i: 7 + step,
        save=lambda wait: saved.append(wait), step=0)
    return fake, saved


def collect(fake, ds):
    return train.Trainer._collect_streaming(fake, 0, ds, dict(temperature=1.0), None)


INFORMATIVE, ALL_RIGHT, ALL_WRONG = (1, 0), (1, 1), (0, 0)


def test_streaming_dynamic_sampling_counts_match_a_hand_count(hf_pair):
    _, model = hf_pair
    patterns = [INFORMATIVE, ALL_WRONG, INFORMATIVE, ALL_RIGHT, INFORMATIVE, INFORMATIVE,
                INFORMATIVE, INFORMATIVE, INFORMATIVE, INFORMATIVE]
    fake, _ = trainer_for(model, patterns, per_batch=2, train_batch=3, max_batches=0)
    ds = dapo.DynamicSampler(3, G, 0)
    groups, metrics = collect(fake, ds)
    # Two groups per segment of two decode steps: segment k ends prompts 2k and 2k + 1.
    # A batch of 2 prompts is drawn whenever fewer than SLOTS / G = 2 wait: before the
    # first segment, then after each collect. After segment 2 (prompts 4, 5) the step has
    # 1 + 1 + 2 = 4 >= 3 informative groups; segment 3 (prompts 6, 7) was already decoding.
    assert fake.pool.scored == [[0, 1], [2, 3], [4, 5]]
    assert [g["example"]["id"] for g in groups] == [0, 2, 4]
    assert metrics["dynamic_sampling/gen_batches"] == 4
    assert metrics["dynamic_sampling/groups_generated"] == 6
    assert metrics["dynamic_sampling/groups_kept"] == 4
    assert metrics["dynamic_sampling/groups_used"] == 3
    assert metrics["dynamic_sampling/groups_unfinished"] == 2
    assert metrics["dynamic_sampling/prompts_unstarted"] == 0
    assert metrics["dynamic_sampling/solve_all"] == pytest.approx(1 / 6)
    assert metrics["dynamic_sampling/solve_none"] == pytest.approx(1 / 6)
    assert metrics["perf/slot_utilization"] == 1.0  # 4 segments x 2 steps, all slots busy
    for g in groups:
        assert [len(c) for c in g["completions"]] == [T, T]


def test_the_prompt_cap_gives_a_partial_batch_or_stops_after_a_checkpoint(hf_pair):
    _, model = hf_pair
    patterns = [INFORMATIVE, ALL_WRONG, ALL_RIGHT, INFORMATIVE, ALL_WRONG, ALL_WRONG]
    # Batches of 3 prompts, at most 2 of them: 6 groups, 2 informative.
    fake, saved = trainer_for(model, patterns, per_batch=3, train_batch=3, max_batches=2)
    groups, metrics = collect(fake, dapo.DynamicSampler(3, G, 2, min_train_batch=2))
    assert [g["example"]["id"] for g in groups] == [0, 3]
    assert metrics["dynamic_sampling/groups_generated"] == 6
    assert metrics["dynamic_sampling/gen_batches"] == 2
    assert metrics["dynamic_sampling/groups_unfinished"] == 0
    fake, saved = trainer_for(model, patterns, per_batch=3, train_batch=3, max_batches=2)
    with pytest.raises(train.TrainingStopped, match="only 2 groups"):
        collect(fake, dapo.DynamicSampler(3, G, 2))
    assert saved == [True]


def test_without_dynamic_sampling_the_stream_returns_the_batch_in_prompt_order(hf_pair):
    _, model = hf_pair
    patterns = [ALL_WRONG, INFORMATIVE, ALL_RIGHT, ALL_WRONG, INFORMATIVE]
    fake, _ = trainer_for(model, patterns, per_batch=5, train_batch=5, max_batches=0,
                          stream_steps=1)
    groups, metrics = collect(fake, None)
    assert [g["example"]["id"] for g in groups] == [0, 1, 2, 3, 4]
    assert "dynamic_sampling/groups_kept" not in metrics
    assert metrics["accuracy"] == pytest.approx(4 / 10)

"""Weighted multi-task prompt streams: several sources, each with its own template.

`MixtureIterator` holds one `PromptIterator` per task (batches of one prompt, each task's
template, the same tokenizer) and fills every generation batch slot by slot. The rule, a
pure function of the seed and the counters (identical on every process):

    weights w = the stage of `schedule` in force at RL step s (the last stage with
                from_step <= s), else the tasks' base weights
    k         = how many batches this iterator has produced before (0, 1, 2, ...)
    tasks     = numpy.random.default_rng([seed, k]).choice(n_tasks, size=B, p=w / sum(w))
    slot i    = the next prompt of task tasks[i]'s own iterator

Each example carries its task's name in `task`. `get_state` / `set_state` cover k and every
task's iterator, so a restored stream continues exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from r1jax.data.pipeline import PromptIterator
from r1jax.data.sources import DataError, PromptSource
from r1jax.data.templates import PromptTemplate

_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a mixture: its name, prompts, template and base weight."""

    name: str
    source: PromptSource
    template: PromptTemplate
    weight: float


def weights_at(step: int, base: Sequence[float],
               schedule: Sequence[tuple[int, Sequence[float]]]) -> np.ndarray:
    """The task weights in force at RL step `step`: the last schedule stage starting at or
    before it, else `base`. `schedule` is (from_step, weights) pairs, sorted by from_step."""
    weights = base
    for from_step, stage in schedule:
        if from_step <= step:
            weights = stage
    return np.asarray(weights, np.float64)


def draw_tasks(seed: int, counter: int, batch_size: int, weights: Sequence[float]) -> np.ndarray:
    """[batch_size] task indices of batch number `counter` (the module docstring's rule)."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"weights must be >= 0 and not all 0, got {list(w)}")
    rng = np.random.default_rng([seed, counter])
    return rng.choice(len(w), size=batch_size, p=w / w.sum())


class MixtureIterator:
    """Batches of prompts drawn from several tasks by weight; `set_step` tells it the RL step
    whose weights apply to the next batches."""

    def __init__(self, tasks: Sequence[Task], tokenizer: Any, batch_size: int, seed: int,
                 schedule: Sequence[tuple[int, Sequence[float]]] = (), shard_index: int = 0,
                 shard_count: int = 1, max_prompt_tokens: Optional[int] = None):
        if not tasks:
            raise ValueError("a mixture needs at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        for from_step, weights in schedule:
            if len(weights) != len(tasks):
                raise ValueError(f"schedule stage at step {from_step} has {len(weights)} "
                                 f"weights for {len(tasks)} tasks")
        self.tasks = tuple(tasks)
        self.batch_size = batch_size
        self.seed = seed
        self.schedule = tuple((int(s), tuple(w)) for s, w in schedule)
        self.base_weights = tuple(t.weight for t in tasks)
        self.step = 0
        self._counter = 0
        self._iterators = [PromptIterator(t.source, tokenizer, t.template, 1, seed,
                                          shard_index, shard_count, max_prompt_tokens, None)
                           for t in tasks]

    def set_step(self, step: int) -> None:
        """The RL step whose weights the following batches use."""
        self.step = step

    def weights(self, step: int) -> np.ndarray:
        return weights_at(step, self.base_weights, self.schedule)

    def __iter__(self) -> "MixtureIterator":
        return self

    def __next__(self) -> list:
        chosen = draw_tasks(self.seed, self._counter, self.batch_size, self.weights(self.step))
        self._counter += 1
        batch = []
        for index in chosen:
            (example,) = next(self._iterators[index])
            batch.append(dict(example, task=self.tasks[index].name))
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position: the batch counter and every task iterator's state."""
        return {"version": _STATE_VERSION, "counter": self._counter,
                "tasks": {t.name: it.get_state() for t, it in zip(self.tasks, self._iterators)}}

    def set_state(self, state: dict) -> None:
        """Resumes where `get_state` was taken.

        Raises:
          DataError: a state of another version or of other tasks (or a task's own
            pipeline changed: see `PromptIterator.set_state`).
        """
        if state.get("version") != _STATE_VERSION or "tasks" not in state:
            raise DataError(f"mixture iterator state version {state.get('version')!r}, "
                            f"expected {_STATE_VERSION}")
        names = [t.name for t in self.tasks]
        if sorted(state["tasks"]) != sorted(names):
            raise DataError(f"mixture iterator state has tasks {sorted(state['tasks'])}, "
                            f"this mixture {sorted(names)}")
        for task, it in zip(self.tasks, self._iterators):
            it.set_state(state["tasks"][task.name])
        self._counter = int(state["counter"])

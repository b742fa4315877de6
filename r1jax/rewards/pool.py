"""RewardPool: weighted reward functions scored in worker processes with a per-item timeout.

Workers are fresh interpreters (never forks of a parent that has JAX loaded), reused across
calls; each receives chunks of items and answers item by item. An item whose worker has not
answered within `timeout_s` of starting it has its worker killed and replaced; a worker that
dies is replaced too. Such an item, or a reward function that raises or hits math-verify's
own time limit, scores 0, is counted in `RewardResult.failures`, and the first few are logged.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import pickle
import subprocess
import sys
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from r1jax.rewards.functions import NEEDS_LENGTH, REWARD_FUNCTIONS, RewardFn, SpecLike, make_specs

log = logging.getLogger(__name__)

# Workers import r1jax.rewards without running r1jax/__init__.py, which loads JAX and Flax
# (about 1 s and 120 MB per worker) that reward functions never use.
_BOOTSTRAP = """
import sys, types
sys.path[:] = {path!r}
package = types.ModuleType("r1jax")
package.__path__ = [{package_dir!r}]
sys.modules["r1jax"] = package
from r1jax.rewards import worker
worker.main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
"""
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXAMPLE_KEYS_DROPPED = ("prompt_ids",)
_LOGGED_CHARS = 200


@dataclasses.dataclass
class RewardFailures:
    """What went wrong in one `score` call.

    Attributes:
      timeouts: items killed after `timeout_s`, plus reward calls that hit math-verify's limit.
      crashes: items whose worker process died.
      exceptions: reward calls that raised (or returned a non-finite value).
      examples: descriptions of the first few failures, with the start of the completion.
    """

    timeouts: int = 0
    crashes: int = 0
    exceptions: int = 0
    examples: list = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return self.timeouts + self.crashes + self.exceptions


@dataclasses.dataclass
class RewardResult:
    """Rewards of B completions.

    Attributes:
      total: [B] float64, sum over functions of weight * reward.
      per_function: name -> [B] float64 unweighted rewards (a multi-task pool: "<task>/<name>"
        -> values, NaN on rows of other tasks).
      failed: [B] bool, items where any function timed out, crashed or raised (scored 0).
      failures: counts and examples.
    """

    total: np.ndarray
    per_function: dict
    failed: np.ndarray
    failures: RewardFailures

    def metrics(self, prefix: str = "reward/") -> dict:
        """Scalar metrics for logging: mean of each function and of the total, failure counts."""
        out = {f"{prefix}{name}": float(np.nanmean(v)) for name, v in self.per_function.items()
               if not np.all(np.isnan(v))}
        out[f"{prefix}total"] = float(self.total.mean())
        for kind in ("timeouts", "crashes", "exceptions"):
            out[f"{prefix}{kind}"] = float(getattr(self.failures, kind))
        return out


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, setup: dict, start_timeout_s: float):
        child_read, parent_write = os.pipe()
        parent_read, child_write = os.pipe()
        code = _BOOTSTRAP.format(path=[p or os.getcwd() for p in sys.path],
                                 package_dir=_PACKAGE_DIR)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(child_read), str(child_write), str(os.getpid())],
            pass_fds=(child_read, child_write), stdin=subprocess.DEVNULL)
        os.close(child_read)
        os.close(child_write)
        self.inbox = Connection(parent_read, writable=False)
        self.outbox = Connection(parent_write, readable=False)
        self.outbox.send(setup)
        self.ready = False
        self.chunk: Optional[list] = None
        self.position = 0
        self.deadline = time.monotonic() + start_timeout_s

    @property
    def busy(self) -> bool:
        return self.chunk is not None

    def assign(self, chunk: list, timeout_s: float) -> None:
        self.chunk, self.position = chunk, 0
        self.deadline = time.monotonic() + timeout_s
        self.outbox.send(("score", chunk))

    def stop(self, grace_s: float = 2.0) -> None:
        if self.proc.poll() is None:
            try:
                self.outbox.send(("stop",))
                self.proc.wait(timeout=grace_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.inbox.close()
        self.outbox.close()


def _stop_all(workers: list) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


class RewardPool:
    """Scores completions with weighted reward functions in `num_workers` processes.

    Usage:
      with RewardPool([("accuracy", 1.0, {"mode": "boxed"}), ("format", 0.1, {})],
                      num_workers=4, timeout_s=10) as pool:
          result = pool.score(completions, examples)

    A multi-task pool takes `{task: specs}`: each completion is scored by the functions of
    its example's `task` only, `per_function` is keyed `"<task>/<name>"` (NaN on rows of
    other tasks) and `total` is the weighted sum of the row's own task's functions.

    Args:
      specs: `(name, weight, kwargs)` triples or RewardSpecs naming entries of `functions`,
        or a mapping task name -> such specs (a multi-task pool).
      num_workers: worker processes, started now and reused by every `score` call.
      timeout_s: wall-clock limit for all reward functions of one item.
      functions: name -> reward function; REWARD_FUNCTIONS unless extending it. Functions must
        be importable module-level callables (workers unpickle them by name).
      chunk_size: items per task sent to a worker; by default about a quarter of the batch per
        worker, at most 32.
      memory_limit_mb: address-space limit of each worker (0: none); an allocation beyond it
        raises MemoryError inside the reward function, which counts as an exception.
      max_logged: failures logged (and kept in `failures.examples`) per `score` call.
      start_timeout_s: how long a new worker may take to import its modules.
    """

    def __init__(self, specs: "Sequence[SpecLike] | Mapping[str, Sequence[SpecLike]]",
                 num_workers: int = 2, timeout_s: float = 10.0,
                 *, functions: Mapping[str, RewardFn] = REWARD_FUNCTIONS,
                 chunk_size: Optional[int] = None, memory_limit_mb: int = 4096,
                 max_logged: int = 3, start_timeout_s: float = 120.0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.routes: Optional[dict] = None
        if isinstance(specs, Mapping):
            if not specs:
                raise ValueError("a multi-task pool needs at least one task")
            # A task may have no function here (a reward model scores it outside the pool).
            by_task = {task: make_specs(s, functions) if len(s) else ()
                       for task, s in specs.items()}
            self.specs = tuple(s for task_specs in by_task.values() for s in task_specs)
            self.names = tuple(f"{task}/{s.name}" for task, task_specs in by_task.items()
                               for s in task_specs)
            starts = np.cumsum([0] + [len(v) for v in by_task.values()])
            self.routes = {task: tuple(range(starts[i], starts[i + 1]))
                           for i, task in enumerate(by_task)}
        else:
            self.specs = make_specs(specs, functions)
            self.names = tuple(s.name for s in self.specs)
        self.weights = np.array([s.weight for s in self.specs], dtype=np.float64)
        self.timeout_s = float(timeout_s)
        self.chunk_size = chunk_size
        self.max_logged = max_logged
        self._start_timeout_s = float(start_timeout_s)
        self._setup = {"specs": self.specs, "functions": dict(functions),
                       "memory_limit_mb": int(memory_limit_mb), "routes": self.routes}
        try:
            pickle.dumps(self._setup)
        except Exception as e:  # noqa: BLE001 - pickling raises several types
            raise ValueError("reward functions and their kwargs must be picklable "
                             f"(module-level functions): {e}") from e
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)
        for _ in range(num_workers):
            self._workers.append(_Worker(self._setup, self._start_timeout_s))

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops every worker process; idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def score(self, completions: Sequence[str], examples: Sequence[Mapping[str, Any]],
              lengths: Optional[Sequence[int]] = None) -> RewardResult:
        """Rewards of B completions.

        Args:
          completions: B response texts.
          examples: B data examples (dicts from r1jax.data; row i is what completion i
            answers, so each prompt's example repeats G times).
          lengths: B completion lengths in tokens; required by length-aware rewards (cosine).

        Raises:
          ValueError: mismatched lengths, or lengths missing for a length-aware reward.
          RuntimeError: the pool is closed, or a worker cannot start.
        """
        if self.closed:
            raise RuntimeError("RewardPool is closed")
        n = len(completions)
        if len(examples) != n or (lengths is not None and len(lengths) != n):
            raise ValueError(f"got {n} completions, {len(examples)} examples and "
                             f"{'no' if lengths is None else len(lengths)} lengths")
        used = {s.name for s in self.specs}
        if lengths is None and NEEDS_LENGTH.intersection(used):
            raise ValueError(f"rewards {sorted(NEEDS_LENGTH.intersection(used))} need "
                             "completion lengths")
        items = [(i, completions[i], _slim(examples[i]),
                  None if lengths is None else int(lengths[i])) for i in range(n)]
        run = _Run(n, self.names, self.max_logged, completions, self._columns(examples))
        try:
            self._drain(items, run)
        except BaseException:
            # Busy workers would answer this call's items during the next one: replace them.
            for w in [w for w in self._workers if w.busy]:
                w.kill()
                self._workers[self._workers.index(w)] = _Worker(self._setup,
                                                                self._start_timeout_s)
            raise
        return run.result(self.weights)

    def _columns(self, examples: Sequence[Mapping[str, Any]]) -> Optional[list]:
        """Per item, the spec indices that score it (None: all of them)."""
        if self.routes is None:
            return None
        tasks = [ex.get("task") for ex in examples]
        unknown = sorted({str(t) for t in tasks if t not in self.routes})
        if unknown:
            raise ValueError(f"examples of tasks {unknown}: this pool scores the tasks "
                             f"{sorted(self.routes)} (each example needs a `task`)")
        return [self.routes[t] for t in tasks]

    def _chunks(self, items: list) -> collections.deque:
        size = self.chunk_size or max(1, min(32, math.ceil(len(items) / (4 * len(self._workers)))))
        return collections.deque(items[i:i + size] for i in range(0, len(items), size))

    def _drain(self, items: list, run: "_Run") -> None:
        pending = self._chunks(items)
        while pending or any(w.busy for w in self._workers):
            for w in self._workers:
                if w.ready and not w.busy and pending:
                    self._assign(w, pending.popleft(), pending)
            now = time.monotonic()
            waiting = [w for w in self._workers if w.busy or not w.ready]
            timeout = max(0.0, min(w.deadline for w in waiting) - now)
            for conn in wait([w.inbox for w in waiting], timeout):
                self._receive(next(w for w in waiting if w.inbox is conn), run, pending)
            now = time.monotonic()
            for w in list(self._workers):
                if (w.busy or not w.ready) and now >= w.deadline and w.proc.poll() is None:
                    self._replace(w, run, pending, "timeout")

    def _assign(self, w: _Worker, chunk: list, pending: collections.deque) -> None:
        try:
            w.assign(chunk, self.timeout_s)
        except OSError:  # it died while idle: nothing of this chunk ran
            w.chunk = None
            pending.appendleft(chunk)
            self._replace(w, None, pending, "crash")

    def _receive(self, w: _Worker, run: "_Run", pending: collections.deque) -> None:
        try:
            while True:
                message = w.inbox.recv()
                if message[0] == "ready":
                    w.ready = True
                else:
                    _, index, scores, errors = message
                    if w.chunk is None or index != w.chunk[w.position][0]:
                        raise RuntimeError(f"reward worker answered item {index} out of turn")
                    run.record(index, scores, errors)
                    w.position += 1
                    w.deadline = time.monotonic() + self.timeout_s
                    if w.position == len(w.chunk):
                        w.chunk = None
                if not w.inbox.poll(0):
                    return
        except (EOFError, OSError):
            self._replace(w, run, pending, "crash")

    def _replace(self, w: _Worker, run: Optional["_Run"], pending: collections.deque,
                 kind: str) -> None:
        """Kills `w`, charges its current item with `kind`, requeues the rest, starts another."""
        if not w.ready:
            w.kill()
            self._workers.remove(w)
            raise RuntimeError(f"a reward worker failed to start ({kind}, exit code "
                               f"{w.proc.returncode}); see its traceback on stderr")
        w.kill()
        if w.busy:
            index = w.chunk[w.position][0]
            run.record_failure(index, kind, f"worker {kind} (limit {self.timeout_s:g} s)"
                               if kind == "timeout" else f"worker died ({w.proc.returncode})")
            rest = w.chunk[w.position + 1:]
            if rest:
                pending.appendleft(rest)
        self._workers[self._workers.index(w)] = _Worker(self._setup, self._start_timeout_s)


def _slim(example: Mapping[str, Any]) -> dict:
    return {k: v for k, v in example.items() if k not in _EXAMPLE_KEYS_DROPPED}


class _Run:
    """Accumulates the scores and failures of one `score` call."""

    def __init__(self, n: int, names: Sequence[str], max_logged: int,
                 completions: Sequence[str], columns: Optional[list] = None):
        self.names = tuple(names)
        self.scores = np.zeros((n, len(names)), dtype=np.float64)
        # Which functions apply to each item (a multi-task pool scores a task's own only).
        self.applies = np.ones((n, len(names)), dtype=bool)
        self.columns = columns
        if columns is not None:
            self.applies[:] = False
            for i, cols in enumerate(columns):
                self.applies[i, list(cols)] = True
        self.failed = np.zeros(n, dtype=bool)
        self.failures = RewardFailures()
        self._max_logged = max_logged
        self._completions = completions

    def record(self, index: int, scores: Sequence[float], errors: Sequence[tuple]) -> None:
        if self.columns is None:
            self.scores[index] = scores
        else:
            self.scores[index, list(self.columns[index])] = scores
        for name, kind, message in errors:
            self.record_failure(index, kind, f"{name}: {message}")

    def record_failure(self, index: int, kind: str, message: str) -> None:
        self.failed[index] = True
        field = {"timeout": "timeouts", "crash": "crashes", "exception": "exceptions"}[kind]
        setattr(self.failures, field, getattr(self.failures, field) + 1)
        if len(self.failures.examples) < self._max_logged:
            start = self._completions[index][:_LOGGED_CHARS]
            text = f"item {index}: {kind}: {message}; completion starts {start!r}"
            self.failures.examples.append(text)
            log.warning("reward %s", text)

    def result(self, weights: np.ndarray) -> RewardResult:
        shown = np.where(self.applies, self.scores, np.nan)
        per_function = {name: shown[:, j].copy() for j, name in enumerate(self.names)}
        return RewardResult(total=self.scores @ weights, per_function=per_function,
                            failed=self.failed, failures=self.failures)

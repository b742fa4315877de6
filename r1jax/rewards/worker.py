"""The reward worker process: scores the items a RewardPool sends it, one after another.

Protocol over two pipes (multiprocessing Connections, pickled messages):
  parent -> worker: {"specs", "functions", "memory_limit_mb", "routes"} once, then ("score", items)
    with items = [(index, completion, example, length), ...], or ("stop",).
  worker -> parent: ("ready", pid) once, then ("done", index, scores, errors) per item, where
    scores has one value per spec, or with routes (task -> spec indices) one per spec of
    the item's `example["task"]`, and
    errors = [(function name, "timeout" | "exception", message), ...].

Reward functions run on this process's main thread, so math-verify's signal-based limits
work; the parent kills the process when an item runs past its own deadline.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Mapping, Optional, Sequence

from r1jax.rewards.accuracy import VerifierTimeout

_MAX_ERROR_CHARS = 300


def score_item(functions: Mapping[str, Any], specs: Sequence[Any], completion: str,
               example: Mapping[str, Any], length: Optional[int]) -> tuple[list, list]:
    """Each spec's reward for one completion; a failing function scores 0 and is reported.

    Returns:
      (scores, errors): one float per spec, and (name, kind, message) per failure.
    """
    scores, errors = [], []
    for spec in specs:
        try:
            value = float(functions[spec.name](completion, example, length, **spec.kwargs))
            if not math.isfinite(value):
                raise ValueError(f"reward is not finite: {value}")
            scores.append(value)
        except VerifierTimeout as e:
            scores.append(0.0)
            errors.append((spec.name, "timeout", str(e)[:_MAX_ERROR_CHARS]))
        except Exception as e:  # noqa: BLE001 - any failure of a reward function scores 0
            scores.append(0.0)
            errors.append((spec.name, "exception", f"{type(e).__name__}: {e}"[:_MAX_ERROR_CHARS]))
    return scores, errors


def _exit_with_parent(parent_pid: int) -> None:
    """Ends this process when the parent dies, even while a reward function is stuck."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(read_fd: int, write_fd: int, parent_pid: int) -> None:
    """Worker loop; returns on "stop" or when the parent closes the pipe."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent_pid)
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    setup = inbox.recv()
    if setup["memory_limit_mb"]:
        limit = int(setup["memory_limit_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    functions, specs = setup["functions"], setup["specs"]
    routes = setup.get("routes")  # task -> indices of its specs (a multi-task pool)
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        for index, completion, example, length in message[1]:
            chosen = specs if routes is None else [specs[j] for j in routes[example["task"]]]
            scores, errors = score_item(functions, chosen, completion, example, length)
            outbox.send(("done", index, scores, errors))

"""Where metrics go: a JSONL file, TensorBoard event files and the console.

`run_dir/metrics.jsonl` gets one JSON object per step (`{"step": k, "<name>": value, ...}`);
the same scalars go to TensorBoard under `run_dir/tb`; the console shows a progress bar with
the main numbers. Every metric name is documented in README ("Metrics").
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)

CONSOLE_KEYS = ("reward/mean", "accuracy", "response_length/mean", "policy/entropy",
                "policy/approx_kl", "time/step_s")


def _scalar(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


class MetricsWriter:
    """Writes per-step scalar metrics to JSONL, TensorBoard and a progress bar."""

    def __init__(self, run_dir: str, *, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress_bar: bool = True):
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(run_dir, "tb"))
        self._bar = None
        if progress_bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, desc="r1jax",
                             dynamic_ncols=True)

    def write(self, step: int, metrics: Mapping[str, Any], advance: bool = True) -> dict:
        """Logs `metrics` for `step`; returns the scalars written.

        `advance=False` adds to a step without moving the progress bar (evaluations).
        """
        scalars = {k: s for k, v in metrics.items() if (s := _scalar(v)) is not None}
        row = {"step": step, **{k: (v if math.isfinite(v) else str(v))
                                for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._bar is not None and advance:
            shown = {k.split("/")[0] if k.endswith("/mean") else k.split("/")[-1]:
                     f"{scalars[k]:.3g}" for k in CONSOLE_KEYS if k in scalars}
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)
        return scalars

    def note(self, message: str) -> None:
        """A line on the console that does not break the progress bar."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def read_metrics(run_dir: str) -> list[dict]:
    """The rows of `run_dir/metrics.jsonl`, one per step; rows of the same step are merged,
    later values winning (a resumed run rewrites the steps after its checkpoint)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    rows: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row["step"], {}).update(row)
    return [rows[k] for k in sorted(rows)]

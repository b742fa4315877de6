"""Where metrics go: a JSONL file, TensorBoard event files, Weights & Biases and the console.

`run_dir/metrics.jsonl` gets one JSON object per step (`{"step": k, "<name>": value, ...}`);
the same scalars go to TensorBoard under `run_dir/tb` and, when a W&B project is set, to a
W&B run (files under `run_dir/wandb`) whose config is the run config; the console shows a
progress bar with the main numbers. Every metric name is documented in README ("Metrics").
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


def start_wandb(run_dir: str, project: str, mode: str, name: Optional[str],
                config: Optional[Mapping[str, Any]]) -> Any:
    """A W&B run writing under `run_dir/wandb`; `mode`: "online" or "offline".

    Raises:
      ImportError: wandb is not installed (it is the optional `wandb` extra).
    """
    try:
        import wandb
    except ImportError as e:
        raise ImportError("train.wandb_project is set but wandb is not installed: "
                          "pip install 'r1jax[wandb]' (or unset train.wandb_project)") from e
    return wandb.init(project=project, mode=mode, name=name, dir=run_dir,
                      config=dict(config or {}))


class MetricsWriter:
    """Writes per-step scalar metrics to JSONL, TensorBoard, W&B and a progress bar.

    W&B is on when `wandb_project` is set and `wandb_mode` is not "disabled"; `config` (the
    run config as a dict) becomes the W&B config. Only process 0 (`process_index`) writes
    anything: the other processes of a multi-host job hold the same metrics and stay silent.
    """

    def __init__(self, run_dir: str, *, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress_bar: bool = True,
                 wandb_project: Optional[str] = None, wandb_mode: str = "offline",
                 wandb_run_name: Optional[str] = None,
                 config: Optional[Mapping[str, Any]] = None, process_index: int = 0):
        os.makedirs(run_dir, exist_ok=True)
        self._primary = process_index == 0
        self._wandb = None  # first: a missing wandb fails before any file is opened
        if wandb_project is not None and wandb_mode != "disabled" and self._primary:
            self._wandb = start_wandb(run_dir, wandb_project, wandb_mode, wandb_run_name,
                                      config)
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._file = open(self.path, "a") if self._primary else None
        self._tb = None
        self._bar = None
        if not self._primary:
            return
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(run_dir, "tb"))
        if progress_bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, desc="r1jax",
                             dynamic_ncols=True)

    @classmethod
    def for_run(cls, run_dir: str, cfg: Any, *, total_steps: int,
                start_step: int) -> "MetricsWriter":
        """The writer a run of RunConfig `cfg` logs with (its `train` section's choices; W&B
        on process 0 with the config as a dict)."""
        import jax

        from r1jax.config import to_dict
        t = cfg.train
        return cls(run_dir, total_steps=total_steps, start_step=start_step,
                   tensorboard=t.tensorboard, progress_bar=t.progress_bar,
                   wandb_project=t.wandb_project, wandb_mode=t.wandb_mode,
                   wandb_run_name=t.wandb_run_name, config=to_dict(cfg),
                   process_index=jax.process_index())

    def write(self, step: int, metrics: Mapping[str, Any], advance: bool = True) -> dict:
        """Logs `metrics` for `step`; returns the scalars written.

        `advance=False` adds to a step without moving the progress bar (evaluations).
        """
        scalars = {k: s for k, v in metrics.items() if (s := _scalar(v)) is not None}
        row = {"step": step, **{k: (v if math.isfinite(v) else str(v))
                                for k, v in scalars.items()}}
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
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
        elif self._primary:
            print(message, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
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

"""`r1jax-plot RUN_DIR`: the main curves of a run as one PNG (run_dir/curves.png)."""

from __future__ import annotations

import os
import sys
from typing import Optional

from r1jax.metrics import read_metrics

PANELS = (
    ("reward/mean", "reward (mean)"),
    ("accuracy", "rollout accuracy"),
    ("response_length/mean", "response length (tokens)"),
    ("policy/entropy", "policy entropy"),
    ("policy/approx_kl", "approx KL (old || new)"),
    ("policy/clip_frac", "clip fraction"),
    ("eval/pass@1", "held-out pass@1"),
    ("dynamic_sampling/frac_dropped", "groups dropped (dynamic sampling)"),
    ("sft/loss", "SFT loss (assistant tokens)"),
    ("sft/packing_efficiency", "SFT packing efficiency"),
    ("rewards/margins", "DPO reward margin (chosen - rejected)"),
    ("rewards/accuracies", "DPO reward accuracy"),
)


def plot_run(run_dir: str, out: Optional[str] = None) -> str:
    """Renders the metrics of `run_dir` into a PNG; returns its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    panels = [(k, t) for k, t in PANELS if any(k in r for r in rows)]
    if not panels:
        raise ValueError(f"no plottable metrics in {run_dir}/metrics.jsonl")
    cols = 2
    fig, axes = plt.subplots((len(panels) + 1) // cols, cols, figsize=(10, 2.6 *
                             ((len(panels) + 1) // cols)), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: r1jax-plot RUN_DIR", file=sys.stderr)
        return 2
    print(plot_run(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

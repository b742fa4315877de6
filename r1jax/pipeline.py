"""The R1 pipeline on the CPU demo task, stage by stage through the command-line tools.

    make pipeline                                    # = python -m r1jax.pipeline
    python -m r1jax.pipeline --run_dir=runs/pipeline --variant=full

A tiny character-level model (configs/demo_cpu.py's) learns two-digit sums from scratch:

1. cold start: `r1jax-sft` on worked solutions (`<think>...</think><answer>...</answer>`);
2. reasoning RL: `r1jax-train` (DAPO) from the cold-start export;
3. rejection sampling: `r1jax-rejection-sample` of the RL policy on training prompts, the
   shortest verified completion of each prompt kept;
4. SFT on the rejection-sampled set: `r1jax-sft`, restarting from the cold-start checkpoint
   (R1 restarts from its base model);
5. RL again: `r1jax-train` from that export.

Each stage is its own process and run directory under --run_dir and writes its own outputs
(checkpoints, metrics, eval/ reports, export); a stage whose outputs are complete is skipped,
so running the pipeline again continues where it stopped. After each stage the held-out
greedy accuracy (256 problems never seen in training) is printed; the end writes
`summary.json` (accuracy and seconds per stage, the commands) and `stages.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

DEMO = os.path.join("configs", "demo_cpu.py")
# Settings of each variant: the full demo, and a short one for the tests.
# "test" trains on one-digit sums with a hotter cold start (as demo_cpu.py:tiny), so that a
# few steps leave a policy that solves some prompts sometimes.
VARIANTS = {
    "full": dict(sft_steps=200, sft_lr=2e-3, rl_steps=60, rs_prompts=512, rs_k=4,
                 sft2_epochs=3, eval_limit=256, extra=()),
    "test": dict(sft_steps=40, sft_lr=1e-2, rl_steps=3, rs_prompts=32, rs_k=2,
                 sft2_epochs=1, eval_limit=32,
                 extra=("--config.data.task_options={'terms': 2, 'digits': 1}",)),
}


@dataclasses.dataclass
class Stage:
    """One stage: the command, its run directory and the report holding its accuracy."""

    name: str
    title: str
    argv: list
    out_dir: str
    report: Optional[str]  # eval report (held-out accuracy after the stage)
    done_file: str  # exists once the stage's outputs are complete


def stages(run_dir: str, variant: str) -> list[Stage]:
    """The five stages' commands for `variant` ("full" or "test")."""
    v = VARIANTS[variant]
    d = {k: os.path.join(run_dir, k) for k in ("1_cold_start", "2_dapo", "3_rejection",
                                                "4_sft", "5_rl")}
    common = [f"--config={demo_config()}", "--config.train.progress_bar=False",
              "--config.eval.every=0", f"--config.eval.limit={v['eval_limit']}", *v["extra"]]
    sft = ["--config.sft.max_len=256", "--config.train.checkpoint_every=0",
           "--config.optim.warmup_steps=10"]

    def from_export(path):
        return ["--config.model.arch=None", "--config.model.char_vocab=None",
                f"--config.model.path={os.path.join(path, 'export')}"]

    rl = ["--config.sft.steps=0", f"--config.train.steps={v['rl_steps']}"]
    return [
        Stage("cold_start", "cold-start SFT", [
            "r1jax.sft_run", *common, *sft, f"--config.train.run_dir={d['1_cold_start']}",
            f"--config.sft.steps={v['sft_steps']}", f"--config.optim.lr={v['sft_lr']}"],
            d["1_cold_start"], os.path.join(d["1_cold_start"], "eval", "after_sft.json"),
            os.path.join(d["1_cold_start"], "summary.json")),
        Stage("dapo", "DAPO", [
            "r1jax.train", *common, *from_export(d["1_cold_start"]), *rl,
            f"--config.train.run_dir={d['2_dapo']}"],
            d["2_dapo"], os.path.join(d["2_dapo"], "eval", "after_rl.json"),
            os.path.join(d["2_dapo"], "summary.json")),
        Stage("rejection", "rejection sampling", [
            "r1jax.rejection", f"--checkpoint={d['2_dapo']}", f"--k={v['rs_k']}",
            "--keep=shortest", f"--limit={v['rs_prompts']}", "--batch_size=64",
            "--mesh=1,1,1", f"--out_dir={d['3_rejection']}"],
            d["3_rejection"], None, os.path.join(d["3_rejection"], "summary.json")),
        Stage("sft", "SFT on rejection samples", [
            "r1jax.sft_run", *common, *sft, *from_export(d["1_cold_start"]),
            f"--config.data.source={os.path.join(d['3_rejection'], 'sft.jsonl')}",
            "--config.sft.layout=messages", "--config.sft.steps=0",
            f"--config.sft.epochs={v['sft2_epochs']}", "--config.optim.lr=1e-3",
            f"--config.train.run_dir={d['4_sft']}"],
            d["4_sft"], os.path.join(d["4_sft"], "eval", "after_sft.json"),
            os.path.join(d["4_sft"], "summary.json")),
        Stage("rl", "RL again", [
            "r1jax.train", *common, *from_export(d["4_sft"]), *rl,
            f"--config.train.run_dir={d['5_rl']}"],
            d["5_rl"], os.path.join(d["5_rl"], "eval", "after_rl.json"),
            os.path.join(d["5_rl"], "summary.json")),
    ]


def demo_config() -> str:
    """configs/demo_cpu.py of the working directory, else of the source checkout."""
    if os.path.isfile(DEMO):
        return os.path.abspath(DEMO)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), DEMO)


def _complete(stage: Stage) -> bool:
    if not os.path.isfile(stage.done_file):
        return False
    if stage.report is None:
        with open(stage.done_file) as f:
            return bool(json.load(f).get("complete"))
    return os.path.isfile(stage.report)


def _accuracy(stage: Stage) -> Optional[float]:
    if stage.report is None:
        return None
    with open(stage.report) as f:
        return float(json.load(f)["pass@1"])


def plot_stages(results: list[dict], path: str) -> str:
    """A bar chart of held-out accuracy after each stage that has one; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in results if r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar([r["title"] for r in shown], [100 * r["accuracy"] for r in shown],
                  color="#4c72b0")
    for bar, r in zip(bars, shown):
        ax.annotate(f"{100 * r['accuracy']:.1f}%", (bar.get_x() + bar.get_width() / 2,
                                                   bar.get_height()),
                    ha="center", va="bottom")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("The R1 pipeline on the CPU demo task")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def run(run_dir: str, variant: str) -> dict:
    """Runs (or continues) every stage; returns the summary written to run_dir."""
    os.makedirs(run_dir, exist_ok=True)
    results, start = [], time.perf_counter()
    for stage in stages(run_dir, variant):
        began = time.perf_counter()
        if _complete(stage):
            print(f"== {stage.title}: already complete in {stage.out_dir}", flush=True)
        else:
            print(f"== {stage.title}: python -m {' '.join(stage.argv)}", flush=True)
            log_path = os.path.join(run_dir, f"{stage.name}.log")
            with open(log_path, "w") as log:
                done = subprocess.run([sys.executable, "-m", *stage.argv], stdout=log,
                                      stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise RuntimeError(f"stage {stage.title!r} failed with exit status "
                                   f"{done.returncode}; its output is in {log_path}")
        result = {"stage": stage.name, "title": stage.title, "accuracy": _accuracy(stage),
                  "seconds": time.perf_counter() - began, "command": stage.argv}
        if stage.report is None:
            with open(stage.done_file) as f:
                rs = json.load(f)
            result.update(pass_rate=rs["pass_rate_mean"], sft_rows=rs["kept"])
            print(f"   pass rate {rs['pass_rate_mean']:.3f} over {rs['samples']} samples, "
                  f"{rs['kept']} SFT rows", flush=True)
        else:
            print(f"   held-out accuracy after {stage.title}: {result['accuracy']:.1%}",
                  flush=True)
        results.append(result)
    cold, final = results[0]["accuracy"], results[-1]["accuracy"]
    summary = {"variant": variant, "stages": results, "seconds": time.perf_counter() - start,
               "gain_over_cold_start_points": 100 * (final - cold),
               "plot": plot_stages(results, os.path.join(run_dir, "stages.png"))}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"cold start {cold:.1%} -> final {final:.1%} "
          f"({summary['gain_over_cold_start_points']:+.1f} points) in "
          f"{summary['seconds'] / 60:.1f} min; {summary['plot']}", flush=True)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m r1jax.pipeline",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run_dir", default="runs/pipeline")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="full")
    a = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        run(a.run_dir, a.variant)
    except RuntimeError as e:
        print(f"pipeline: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

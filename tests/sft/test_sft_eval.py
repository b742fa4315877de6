"""r1jax-sft's periodic held-out evaluation (`eval.*`): before, every `eval.every` steps and
after, logged as eval/* metrics and written as eval/<tag>.json(l), graded like RL."""

import json
import os

import numpy as np

from r1jax import sft_run
from r1jax.config import load_config
from r1jax.metrics import read_metrics
from r1jax.rewards import REWARD_FUNCTIONS


def test_held_out_evaluation_before_during_and_after(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    run_dir = tmp_path / "run"
    cfg = load_config("configs/sft/generic.py:tiny", [
        f"train.run_dir={run_dir}", "sft.steps=4", "train.checkpoint_every=0",
        "train.progress_bar=False", "eval.source=arithmetic", "eval.limit=8", "eval.every=2",
        "rollout.max_new_tokens=24",
        "rewards.functions=[{'name': 'accuracy', 'weight': 1.0, "
        "'kwargs': {'mode': 'answer_tag'}}]"])
    run = sft_run.SFTRun(cfg)
    try:
        summary = run.run()
    finally:
        run.close()
    tags = ["before_sft", "step_2", "after_sft"]
    for tag in tags:
        with open(run_dir / "eval" / f"{tag}.json") as f:
            report = json.load(f)
        with open(run_dir / "eval" / f"{tag}.samples.jsonl") as f:
            samples = [json.loads(line) for line in f]
        assert report["problems"] == len(samples) == 8
        # Each verdict recomputed here with the reward function on the sample's text.
        for s in samples:
            again = REWARD_FUNCTIONS["accuracy"](s["completion"], {"answer": s["gold"]},
                                                 s["tokens"], mode="answer_tag")
            assert s["correct"] == (again > 0)
        assert report["pass@1"] == np.mean([s["correct"] for s in samples])
    rows = [r for r in read_metrics(str(run_dir)) if "eval/pass@1" in r]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert summary["accuracy_gain_points"] == 100 * (summary["eval_after"]["pass@1"]
                                                     - summary["eval_before"]["pass@1"])
    assert not os.path.exists(run_dir / "eval" / "step_4.json")  # the end is "after_sft"

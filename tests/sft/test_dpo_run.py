"""`r1jax-dpo` end to end: Light-R1's last stages as tiny variants from the command line on
one CPU device: SFT (configs/sft/light_r1.py:tiny) -> DPO from its export
(configs/dpo/light_r1_dpo.py:tiny) -> merge of the two exports
(configs/merge/light_r1_merge.py:tiny)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from r1jax import dpo
from r1jax.metrics import read_metrics
from tests.xla_env import cpu_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "dpo", "light_r1_dpo.py")
SFT_CONFIG = os.path.join(ROOT, "configs", "sft", "light_r1.py")
MERGE_RECIPE = os.path.join(ROOT, "configs", "merge", "light_r1_merge.py")


def command(*args):
    return [sys.executable, "-m", "r1jax.dpo_run", f"--config={CONFIG}:tiny",
            "--config.train.progress_bar=False", *args]


def test_light_r1_tiny_sft_dpo_merge_from_the_command_line(tmp_path, data_dir):
    """DPO: 4 steps of 8 pairs (2 microbatches) with the NCA loss plus 0.5 x the chosen NLL
    (dpo.sft_weight) from the tiny SFT export: at step 1 the policy is its own reference, so
    every reward is 0 and the loss is NCA's 2 log 2 (DPO's would be log 2) plus that term; metrics carry TRL's names; checkpoints at steps 2 and 4
    and a Hugging Face export. Merge: the recipe's tiny variant (linear, equal weights) over
    the two exports equals their NumPy mean, tensor by tensor."""
    env = dict(os.environ, R1JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
               XLA_FLAGS=cpu_xla_flags(1))
    sft_dir, run_dir = tmp_path / "sft", tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "r1jax.sft_run", f"--config={SFT_CONFIG}:tiny",
                           "--config.train.progress_bar=False", "--config.train.export_hf=True",
                           f"--config.train.run_dir={sft_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run(command(f"--config.train.run_dir={run_dir}",
                                  "--config.train.export_hf=True", "--config.model.arch=None",
                                  f"--config.model.path={sft_dir / 'export'}",
                                  "--config.dpo.sft_weight=0.5"),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    rows = [r for r in read_metrics(str(run_dir)) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    first = rows[0]
    # NCA's 2 log 2 plus sft_weight x the chosen responses' NLL per token.
    assert first["dpo/sft_loss"] > 0
    assert first["loss"] == pytest.approx(2 * math.log(2) + 0.5 * first["dpo/sft_loss"],
                                          rel=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert first[key] == 0.0, key
    for r in rows:
        assert set(dpo.METRICS) <= set(r)
        assert r["dpo/pairs"] == 8 and r["dpo/dropped"] == 0
        assert r["logps/chosen"] < 0 and r["logps/rejected"] < 0
        assert r["rewards/margins"] == pytest.approx(r["rewards/chosen"]
                                                     - r["rewards/rejected"], abs=1e-5)
        assert r["rewards/accuracies"] * 8 == pytest.approx(round(r["rewards/accuracies"] * 8))
    assert any(r["rewards/margins"] != 0 for r in rows[1:])  # the policy moved off the reference
    assert summary["first_loss"] == first["loss"] and summary["loss"] == rows[-1]["loss"]
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]
    assert os.path.isfile(run_dir / "export" / "config.json")
    assert os.path.isfile(run_dir / "export" / "model.safetensors")
    merged = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "r1jax.merge", f"--recipe={MERGE_RECIPE}:tiny",
                           "--models", str(sft_dir / "export"), str(run_dir / "export"),
                           "--out", str(merged)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from safetensors.numpy import load_file
    sft_t, dpo_t = (load_file(str(d / "export" / "model.safetensors")) for d in (sft_dir, run_dir))
    out = load_file(str(merged / "model.safetensors"))
    assert set(out) == set(sft_t) == set(dpo_t)
    moved = 0
    for name, value in out.items():
        np.testing.assert_allclose(value, (sft_t[name] + dpo_t[name]) / 2, rtol=1e-6,
                                   atol=1e-7, err_msg=name)
        moved += not np.array_equal(sft_t[name], dpo_t[name])
    assert moved > 0  # DPO changed the weights, so the mean is a new model
    with open(merged / "merge.json") as f:
        assert json.load(f)["method"] == "linear"
    # A missing preference file is a clear error naming it, exit status 2.
    bad = subprocess.run(command(f"--config.train.run_dir={tmp_path / 'bad'}",
                                 "--config.data.source=/nonexistent/pairs.jsonl"),
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "/nonexistent/pairs.jsonl" in bad.stderr

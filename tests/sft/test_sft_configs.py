"""Every shipped r1jax-sft config's tiny variant trains (the full variants are checked for
fit by tests/test_fit.py)."""

import json
import math
import os

import pytest

from r1jax import sft_run
from r1jax.config import load_config
from r1jax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT_CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs", "sft"))
                     if f.endswith(".py"))


@pytest.mark.parametrize("name", SFT_CONFIGS)
def test_tiny_variant_trains(name, tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    full = load_config(os.path.join(ROOT, "configs", "sft", name))
    cfg = load_config(os.path.join(ROOT, "configs", "sft", name) + ":tiny", [
        f"train.run_dir={tmp_path}", "sft.steps=2", "train.checkpoint_every=0",
        "train.progress_bar=False", "train.export_hf=True"])
    run = sft_run.SFTRun(cfg)
    try:
        summary = run.run()
    finally:
        run.close()
    rows = [r for r in read_metrics(str(tmp_path)) if "sft/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["sft/loss"]) and r["sft/tokens"] > 0 for r in rows)
    # A RoPE base the recipe raises is the tiny's too, and reaches the exported config.
    with open(os.path.join(summary["export"], "config.json")) as f:
        exported = json.load(f)
    theta = exported.get("rope_theta", (exported.get("rope_parameters") or {}).get(
        "rope_theta"))
    if full.model.rope_theta is not None:
        assert run.model_config.rope_theta == full.model.rope_theta == theta

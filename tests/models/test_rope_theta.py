"""`model.rope_theta`: a RoPE base over the checkpoint's, in the forward pass (hence training,
sampling and evaluation) and in the exported config.json, against transformers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from r1jax import builder, save_hf
from r1jax.config import ConfigError, ModelSpec, from_dict
from r1jax.sharding import make_mesh, Sharding
from tests.hf_models import hf_logits, make_hf_model

THETA = 10000.0  # Qwen2.5-Math's base, over the checkpoint's 1e6


def test_rope_theta_override_matches_transformers_and_is_exported(tmp_path):
    hf_model = make_hf_model("qwen2", init_std=0.2)  # rope_theta 1e6; peaked attention
    source = str(tmp_path / "source")
    hf_model.save_pretrained(source)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (2, 200))  # long enough for the base to matter
    mask = np.ones_like(tokens)
    positions = np.broadcast_to(np.arange(200), tokens.shape)
    sharding = Sharding(make_mesh(1, 1, 1, devices=jax.devices()[:1]))

    model = builder.build_policy(ModelSpec(path=source, rope_theta=THETA), sharding)
    assert model.config.rope_theta == THETA
    out = np.asarray(model(jnp.asarray(tokens)))
    # Not the checkpoint's base: the logits move far beyond the fp32 tolerance.
    assert np.abs(out - hf_logits(hf_model, tokens, mask, positions)).max() > 1e-2

    export = str(tmp_path / "export")
    save_hf(model, export)
    with open(os.path.join(export, "config.json")) as f:
        written = json.load(f)
    theta = written.get("rope_theta") or written["rope_parameters"]["rope_theta"]
    assert theta == THETA
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    np.testing.assert_allclose(out, hf_logits(reloaded, tokens, mask, positions), atol=1e-4)

    # Without the override the checkpoint's base stays.
    plain = builder.build_policy(ModelSpec(path=source), sharding)
    assert plain.config.rope_theta == 1e6


def test_rope_theta_must_be_positive():
    with pytest.raises(ConfigError, match="rope_theta"):
        from_dict(ModelSpec, {"path": "/m", "rope_theta": 0.0}, "config.model")


def test_rope_theta_through_the_command_line_on_a_mesh(tmp_path):
    # r1jax-train on the 8-device CPU mesh (tests/conftest.py's XLA_FLAGS): one RL step of
    # the demo's tiny variant with the base overridden, and the export carries it.
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run_dir = str(tmp_path / "run")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "r1jax-train"),
         "--config=configs/demo_cpu.py:tiny", f"--config.train.run_dir={run_dir}",
         "--config.model.rope_theta=50000.0", "--config.train.steps=1",
         "--config.train.progress_bar=False"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(run_dir, "export", "config.json")) as f:
        written = json.load(f)
    assert (written.get("rope_theta") or written["rope_parameters"]["rope_theta"]) == 50000.0
    bad = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "r1jax-train"),
         "--config=configs/demo_cpu.py:tiny", "--config.model.rope_theta=-1.0"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "rope_theta" in bad.stderr, bad.stderr[-2000:]

"""`r1jax-sft` end to end: the shipped config's tiny variant from the command line, and an
exact resume after SIGTERM in the middle of an epoch with packing on."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from r1jax import sft_run
from r1jax.config import load_config
from r1jax.metrics import read_metrics
from tests.xla_env import cpu_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "sft", "generic.py")
SFT = os.path.join(os.path.dirname(sys.executable), "r1jax-sft")


def test_tiny_variant_from_the_command_line(tmp_path, data_dir):
    env = dict(os.environ, R1JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
               XLA_FLAGS=cpu_xla_flags(8))  # fsdp over 8
    run_dir = tmp_path / "run"
    done = subprocess.run([SFT, f"--config={CONFIG}:tiny", f"--config.train.run_dir={run_dir}",
                           "--config.train.progress_bar=False", "--config.train.export_hf=True"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    rows = [r for r in read_metrics(str(run_dir)) if "sft/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert summary["loss"] == rows[-1]["sft/loss"] < rows[0]["sft/loss"]
    for r in rows:
        assert r["sft/examples"] == 8 and r["sft/dropped"] == 0
        assert 0.5 < r["sft/packing_efficiency"] <= 1.0
        assert r["sft/tokens"] > 8  # assistant tokens only: fewer than the rows' tokens
        assert r["sft/tokens"] < r["sft/packing_efficiency"] * r["sft/rows"] * 128
        # Padded with empty rows to a power of two times the 8 devices' batch parallelism.
        assert r["sft/batch_rows"] == 8 * 2 ** np.ceil(np.log2(np.ceil(r["sft/rows"] / 8)))
    assert os.path.isfile(run_dir / "export" / "config.json")
    with open(summary["plot"], "rb") as f:  # run_dir/curves.png: the loss curve
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(run_dir / "export" / "tokenizer_config.json")
    # A missing data file is a clear error naming it, exit status 2.
    bad = subprocess.run([SFT, f"--config={CONFIG}:tiny", f"--config.train.run_dir={run_dir}2",
                          "--config.data.source=/nonexistent/sft.jsonl"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "/nonexistent/sft.jsonl" in bad.stderr


def config(run_dir, steps=5):
    # 64 conversations, 8 a step: steps 1-5 stay inside the first epoch.
    return load_config(CONFIG + ":tiny", [f"train.run_dir={run_dir}", f"sft.steps={steps}",
                                          "train.checkpoint_every=0",
                                          "train.progress_bar=False"])


def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, data_dir,
                                                                   monkeypatch):
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    straight = sft_run.SFTRun(config(tmp_path / "straight"))
    straight.run()
    ref_params = jax.device_get(straight.state["params"])
    real = sft_run.SFTRun.train_step

    def killed_after_two(self):
        out = real(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(sft_run.SFTRun, "train_step", killed_after_two)
    first = sft_run.SFTRun(config(tmp_path / "resumed"))
    summary = first.run()
    assert summary["stopped_at"] == 2 and first.position == 16
    monkeypatch.setattr(sft_run.SFTRun, "train_step", real)
    again = sft_run.SFTRun(config(tmp_path / "resumed"))
    again.run()
    assert again.step == 5 and again.position == 40
    a = [r for r in read_metrics(str(tmp_path / "straight")) if "sft/loss" in r]
    b = [r for r in read_metrics(str(tmp_path / "resumed")) if "sft/loss" in r]
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for x, y in zip(a, b):
        for key in ("sft/loss", "sft/tokens", "sft/rows", "lr", "grad_norm"):
            assert x[key] == y[key], (x["step"], key)
    for x, y in zip(jax.tree.leaves(ref_params),
                    jax.tree.leaves(jax.device_get(again.state["params"]))):
        np.testing.assert_array_equal(x, y)
    # Resuming may not change the data order.
    with pytest.raises(Exception, match="sft.seed"):
        sft_run.SFTRun(load_config(CONFIG + ":tiny", [
            f"train.run_dir={tmp_path / 'resumed'}", "sft.steps=6", "sft.seed=9"])).run()


def test_a_tiny_model_overfits_16_conversations_and_reproduces_them(tmp_path, data_dir,
                                                                     monkeypatch):
    """A 2-layer character-level model memorises 16 two-digit sums with worked solutions:
    loss under 0.01 within 150 steps, then greedy decoding from each question gives its
    solution exactly (the character tokenizer's chat template: question, then solution and
    <eos>)."""
    from r1jax.models.decoder import Decoder
    from r1jax.sampling import Sampler
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    arch = dict(model_type="qwen2", hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=128, tie_word_embeddings=True)
    cfg = load_config(CONFIG + ":tiny", [
        f"train.run_dir={tmp_path}", "sft.steps=150", "sft.batch_size=16", "sft.max_len=64",
        "data.num_generated=16", "data.task_options={'terms': 2, 'digits': 2}",
        "optim.lr=5e-3", "optim.schedule=constant", "train.checkpoint_every=0",
        "train.progress_bar=False", "model.tokenizer=None", "model.char_vocab=0123456789+=,",
        f"model.arch={arch!r}"])
    run = sft_run.SFTRun(cfg)
    summary = run.run()
    assert summary["loss"] < 0.01 < summary["first_loss"]
    tok = run.tokenizer
    model = Decoder(run.model_config, params=run.state["params"], sharding=run.sharding)
    sampler = Sampler(model, max_prompt_len=32, max_new_tokens=48,
                      eos_token_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    prompts = [tok.encode(tok.apply_chat_template(e["messages"][:-1], tokenize=False,
                                                  add_generation_prompt=True),
                          add_special_tokens=False) for e in run.examples]
    out = sampler.generate(prompts, temperature=0.0)
    got = tok.batch_decode(out.completions(), skip_special_tokens=True)
    assert len(run.examples) == 16 and len(set(got)) == 16
    assert got == [e["messages"][-1]["content"] for e in run.examples]
    assert (out.finish_reason == 0).all()  # each stopped at <eos>


def test_a_conversation_file_on_one_device_with_field_mapping_and_drops(tmp_path, data_dir):
    """r1jax-sft on 1 device over a JSONL file in the prompt / response layout with renamed
    fields: conversations longer than sft.max_len are left out (overflow=drop) and counted,
    exactly the ones whose rendered length exceeds it."""
    import transformers

    from r1jax.sft import render_conversation
    rng = np.random.default_rng(0)
    rows = [{"q": f"What is {a}+{b}?", "a": f"<think>{a}+{b}={a + b}</think> {a + b}" +
             (" and so on" * 30 if i % 4 == 0 else "")}
            for i, (a, b) in enumerate(rng.integers(0, 50, (16, 2)))]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = transformers.AutoTokenizer.from_pretrained(
        os.path.join(data_dir, "tokenizers", "qwen2.5_derived"))
    lengths = [len(render_conversation(tok, [{"role": "user", "content": r["q"]},
                                             {"role": "assistant", "content": r["a"]}])[0])
               for r in rows]
    too_long = sum(n > 96 for n in lengths)
    assert 0 < too_long < 16
    env = dict(os.environ, R1JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
               XLA_FLAGS=cpu_xla_flags(1))
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [SFT, f"--config={CONFIG}:tiny", f"--config.train.run_dir={run_dir}",
         "--config.train.progress_bar=False", f"--config.data.source={data}",
         "--config.sft.layout=prompt_response", "--config.sft.overflow=drop",
         "--config.sft.fields={'prompt': 'q', 'response': 'a'}", "--config.sft.max_len=96",
         "--config.sft.batch_size=16", "--config.sft.steps=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    got = [r for r in read_metrics(str(run_dir)) if "sft/loss" in r]
    assert [r["step"] for r in got] == [1, 2]
    for r in got:  # each step is one pass over the 16 conversations
        assert r["sft/dropped"] == too_long and r["sft/examples"] == 16 - too_long
        assert r["sft/truncated"] == 0
    bad = subprocess.run(
        [SFT, f"--config={CONFIG}:tiny", f"--config.train.run_dir={run_dir}2",
         "--config.sft.overflow=clip"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300)
    assert bad.returncode == 2 and "sft.overflow" in bad.stderr

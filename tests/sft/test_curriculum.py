"""SFT curricula (`sft.stages`): the stream order by hand, the stage filters by hand counts,
and a run whose batches come from each stage in turn."""

import dataclasses
import json
import math

import pytest

from r1jax import sft, sft_run
from r1jax.config import ConfigError, SFTStage, load_config
from r1jax.metrics import read_metrics
from r1jax.sft_run import curriculum_indices, filter_stage


def test_the_stream_takes_each_stage_for_its_epochs_in_turn():
    sizes, epochs = [3, 2], [2, 1]
    idx = curriculum_indices(0, 10, sizes, epochs, seed=0)
    assert [k for k, _ in idx] == [0] * 6 + [1] * 4  # 2 x 3 from stage 0, then stage 1
    for a, b in ((0, 3), (3, 6)):  # each epoch of stage 0 is a permutation of its examples
        assert sorted(i for _, i in idx[a:b]) == [0, 1, 2]
    assert sorted(i for _, i in idx[6:8]) == [0, 1]
    assert sorted(i for _, i in idx[8:10]) == [0, 1]  # past the end: the last stage goes on
    # Any split of the stream gives the same positions (what a resume relies on).
    assert curriculum_indices(0, 4, sizes, epochs, 0) + curriculum_indices(4, 6, sizes,
                                                                           epochs, 0) == idx
    assert curriculum_indices(0, 10, sizes, epochs, 1) != idx  # the seed matters


def conv(i, **row):
    return {"id": row.pop("id", i), "row": row,
            "messages": [{"role": "user", "content": f"q{i}"},
                         {"role": "assistant", "content": f"a{i}"}]}


def test_stage_filters_by_field_range_values_and_pass_rate(tmp_path):
    examples = [conv(0, level=1), conv(1, level=3), conv(2, level="4"), conv(3),
                conv(4, level=5, source="amc"), conv(5, level=2, source="aime")]
    kept, counts = filter_stage(examples, SFTStage("x", where={"level": [2, 4]}))
    assert [e["id"] for e in kept] == [1, 2, 5]  # "4" compares as a number
    assert counts["where_missing"] == 1 and counts["where_rejected"] == 2
    kept, _ = filter_stage(examples, SFTStage("x", where={"source": ["aime", "amc"]}))
    assert [e["id"] for e in kept] == [4, 5]
    rates = tmp_path / "pass_rates.jsonl"
    rates.write_text("".join(json.dumps({"id": str(i), "pass_rate": r}) + "\n"
                             for i, r in [(0, 0.0), (1, 0.5), (2, 1.0), (4, 0.25)]))
    kept, counts = filter_stage(examples, SFTStage("x", pass_rates=str(rates),
                                                   pass_rate_min=0.1, pass_rate_max=0.9))
    assert [e["id"] for e in kept] == [1, 4]
    assert counts["pass_rate_out_of_range"] == 2 and counts["no_pass_rate"] == 2


def write_convs(path, items):
    with open(path, "w") as f:
        for i, (q, a, level) in enumerate(items):
            f.write(json.dumps({"id": f"{path.stem}-{i}", "level": level, "messages": [
                {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")


def test_a_two_stage_run_trains_each_stage_in_turn(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    easy = tmp_path / "easy.jsonl"
    hard = tmp_path / "hard.jsonl"
    write_convs(easy, [(f"{i}+1", str(i + 1), 1) for i in range(6)])
    write_convs(hard, [(f"{i}+{i}", str(2 * i), 1 + i % 3) for i in range(6)])
    cfg = load_config("configs/sft/generic.py:tiny", [
        f"train.run_dir={tmp_path / 'run'}", "sft.steps=0", "sft.batch_size=4",
        "train.checkpoint_every=0", "train.progress_bar=False"])
    stages = (SFTStage(str(easy), epochs=1),
              SFTStage(str(hard), epochs=2, where={"level": [2, 3]}))  # 4 of 6 are hard
    cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, stages=stages))
    seen = []
    original = sft.render_conversation

    def recording(tokenizer, messages):
        seen.append(messages[0]["content"])
        return original(tokenizer, messages)
    monkeypatch.setattr(sft, "render_conversation", recording)
    run = sft_run.SFTRun(cfg)
    try:
        assert run.total_steps == math.ceil((6 + 2 * 4) / 4) == 4
        summary = run.run()
    finally:
        run.close()
    hard_kept = {f"{i}+{i}" for i in range(6) if 1 + i % 3 >= 2}
    assert set(seen[:6]) == {f"{i}+1" for i in range(6)}  # stage 0, one epoch
    assert sorted(seen[6:10]) == sorted(hard_kept)  # stage 1, epoch 1
    assert sorted(seen[10:14]) == sorted(hard_kept)  # stage 1, epoch 2
    rows = [r for r in read_metrics(str(tmp_path / "run")) if "sft/loss" in r]
    assert [r["sft/stage"] for r in rows] == [0.0, 1.0, 1.0, 1.0]  # last example's stage
    assert summary["stages"][1]["where_rejected"] == 2
    assert summary["stages"][1]["examples"] == 4


def test_a_stage_with_nothing_left_is_an_error_naming_it(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    easy = tmp_path / "easy.jsonl"
    write_convs(easy, [("1+1", "2", 1)])
    cfg = load_config("configs/sft/generic.py:tiny", [f"train.run_dir={tmp_path / 'run'}"])
    cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, stages=(
        SFTStage(str(easy), where={"level": [5, 9]}),)))
    with pytest.raises(ConfigError, match=r"sft.stages\[0\].*no conversation left"):
        sft_run.SFTRun(cfg)


def test_shipped_light_r1_tiny_from_the_command_line(tmp_path, data_dir):
    """configs/sft/light_r1.py:tiny: 64 one-digit sums, then the sums with a carry twice."""
    import os
    import subprocess
    import sys

    from r1jax.data.arithmetic import generate_arithmetic
    from tests.xla_env import cpu_xla_flags
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sft_cli = os.path.join(os.path.dirname(sys.executable), "r1jax-sft")
    env = dict(os.environ, R1JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
               XLA_FLAGS=cpu_xla_flags(8))
    run_dir = tmp_path / "run"
    done = subprocess.run([sft_cli, "--config=configs/sft/light_r1.py:tiny",
                           f"--config.train.run_dir={run_dir}",
                           "--config.train.progress_bar=False"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    sums = generate_arithmetic(64, split="train", terms=2, digits=1).examples
    carries = sum(int(e["answer"]) >= 10 for e in sums)  # counted here, not by the filter
    assert summary["stages"][0]["examples"] == 64
    assert summary["stages"][1]["examples"] == carries
    assert summary["stages"][1]["where_rejected"] == 64 - carries
    steps = math.ceil((64 + 2 * carries) / 8)
    assert summary["steps"] == steps
    rows = [r for r in read_metrics(str(run_dir)) if "sft/loss" in r]
    assert [r["sft/stage"] for r in rows] == [0.0 if 8 * k <= 64 else 1.0
                                              for k in range(1, steps + 1)]

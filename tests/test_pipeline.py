"""The R1 pipeline demo (`python -m r1jax.pipeline`, `make pipeline`) end to end in its short
variant: five stages through the command-line tools, each feeding the next, the accuracy
printed after each, a summary and PNG that agree with the stages' own reports, and a second
run that finds every stage complete."""

import json
import os
import subprocess
import sys

import pytest

from r1jax.evaluation.policy import read_run_config, resolve_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pipeline(run_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device, as `make pipeline` runs it
    return subprocess.run([sys.executable, "-m", "r1jax.pipeline", f"--run_dir={run_dir}",
                           "--variant=test"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline")
    done = pipeline(run_dir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    with open(run_dir / "summary.json") as f:
        return run_dir, done.stdout, json.load(f)


def test_each_stage_prints_its_accuracy_and_the_summary_agrees(ran):
    run_dir, out, summary = ran
    names = [s["stage"] for s in summary["stages"]]
    assert names == ["cold_start", "dapo", "rejection", "sft", "rl"]
    reports = {"cold_start": "1_cold_start/eval/after_sft.json",
               "dapo": "2_dapo/eval/after_rl.json", "sft": "4_sft/eval/after_sft.json",
               "rl": "5_rl/eval/after_rl.json"}
    for stage in summary["stages"]:
        if stage["stage"] in reports:
            with open(run_dir / reports[stage["stage"]]) as f:
                pass1 = json.load(f)["pass@1"]
            assert stage["accuracy"] == pass1
            assert f"held-out accuracy after {stage['title']}: {pass1:.1%}" in out
    rs = summary["stages"][2]
    with open(run_dir / "3_rejection" / "summary.json") as f:
        rs_summary = json.load(f)
    assert rs_summary["complete"] and rs["sft_rows"] == rs_summary["kept"]
    assert summary["gain_over_cold_start_points"] == pytest.approx(
        100 * (summary["stages"][-1]["accuracy"] - summary["stages"][0]["accuracy"]))
    with open(summary["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_each_stage_starts_from_the_previous_ones_output(ran):
    run_dir, _, _ = ran
    def config(name):
        return read_run_config(resolve_checkpoint(str(run_dir / name))[1])
    assert config("2_dapo").model.path == str(run_dir / "1_cold_start" / "export")
    assert config("4_sft").model.path == str(run_dir / "1_cold_start" / "export")
    assert config("4_sft").data.source == str(run_dir / "3_rejection" / "sft.jsonl")
    assert config("5_rl").model.path == str(run_dir / "4_sft" / "export")
    with open(run_dir / "3_rejection" / "progress.json") as f:
        assert json.load(f)["settings"]["policy"] == resolve_checkpoint(
            str(run_dir / "2_dapo"))[1]
    with open(run_dir / "3_rejection" / "sft.jsonl") as f:
        rows = [json.loads(line) for line in f]
    with open(run_dir / "4_sft" / "summary.json") as f:
        assert json.load(f)["examples"] == len(rows)


def test_a_second_run_finds_every_stage_complete(ran):
    run_dir, _, summary = ran
    again = pipeline(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already complete") == 5
    with open(run_dir / "summary.json") as f:
        second = json.load(f)
    assert [s["accuracy"] for s in second["stages"]] == [s["accuracy"]
                                                         for s in summary["stages"]]

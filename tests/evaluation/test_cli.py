"""`r1jax-eval` end to end on a tiny random Qwen2 with the full Qwen2.5 vocabulary over a
slice of MATH-500, and its errors for bad flags and paths."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from r1jax.data import load_benchmark
from r1jax.evaluation.cli import main
from r1jax.evaluation.policy import stop_token_ids
from r1jax.models import load_tokenizer
from r1jax.rewards import extract_answer, math_accuracy
from tests.hf_models import make_hf_model

LIMIT, N, MAX_NEW = 8, 2, 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, qwen_tokenizer_dir):
    """transformers' Qwen2 (hidden 64, tied embeddings, vocab = the tokenizer's 151,665)."""
    path = tmp_path_factory.mktemp("qwen_tiny")
    make_hf_model("qwen2", vocab=151665, tied=True, seed=0).save_pretrained(path)
    for name in os.listdir(qwen_tokenizer_dir):
        shutil.copy(os.path.join(qwen_tokenizer_dir, name), path)
    return str(path)


@pytest.fixture(scope="module")
def math500_run(model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = main([f"--model={model_dir}", "--benchmarks=math500", f"--data_dir={data_dir}",
               f"--limit={LIMIT}", f"--n={N}", "--temperature=1.0", f"--max_new_tokens={MAX_NEW}",
               "--mesh=1,1,1", "--batch_size=8", "--seed=3", f"--out_dir={out}",
               "--no_progress"])
    assert rc == 0
    with open(out / "math500.json") as f:
        report = json.load(f)
    with open(out / "math500.samples.jsonl") as f:
        samples = [json.loads(line) for line in f]
    with open(out / "overall.json") as f:
        overall = json.load(f)
    return report, samples, overall


def test_writes_report_and_samples_for_each_problem(math500_run, data_dir):
    report, samples, overall = math500_run
    gold = load_benchmark("math500", data_dir=data_dir, limit=LIMIT)
    assert report["problems"] == LIMIT and report["samples_per_problem"] == N
    assert len(samples) == LIMIT * N
    assert [(s["id"], s["sample"]) for s in samples] == [
        (g["id"], j) for g in gold for j in range(N)]
    for s, g in zip(samples, [g for g in gold for _ in range(N)]):
        assert s["gold"] == g["answer"]
        assert s["prompt"].endswith(g["question"] + "<|im_end|>\n<|im_start|>assistant\n")
        assert "put your final answer within \\boxed{}" in s["prompt"]
        assert 1 <= s["tokens"] <= MAX_NEW and (s["tokens"] == MAX_NEW or not s["truncated"])
    assert report["settings"]["template"] == "qwen_math" and report["benchmark"] == "math500"
    assert overall["benchmarks"] == ["math500"] and overall["problems"] == LIMIT
    assert overall["weighted"]["pass@1"] == report["pass@1"]


def test_verdicts_agree_with_math_verify(math500_run):
    _, samples, _ = math500_run
    for s in samples:
        assert s["correct"] == (math_accuracy(s["completion"], s["gold"], mode="auto") == 1.0)
        assert s["extracted"] == extract_answer(s["completion"], "auto")


def test_report_numbers_follow_from_the_samples(math500_run):
    report, samples, _ = math500_run
    by_problem = {}
    for s in samples:
        by_problem.setdefault(s["id"], []).append(s)
    counts = [sum(s["correct"] for s in group) for group in by_problem.values()]
    for k in (1, 2):
        expected = np.mean([1 - math.comb(N - c, k) / math.comb(N, k) for c in counts])
        assert report[f"pass@{k}"] == pytest.approx(expected, abs=1e-12)
    assert report["mean_response_tokens"] == pytest.approx(np.mean([s["tokens"] for s in samples]))
    assert report["truncation_rate"] == pytest.approx(np.mean([s["truncated"] for s in samples]))
    assert report["no_answer_rate"] == pytest.approx(
        np.mean([s["extracted"] is None for s in samples]))
    # A random model: its samples differ from each other and (almost surely) score nothing.
    assert len({s["completion"] for s in samples}) == len(samples)


def run_main(argv, capsys):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_missing_paths_and_bad_flags_are_clear_errors(tmp_path, data_dir, model_dir, capsys):
    base = ["--benchmarks=math500", f"--data_dir={data_dir}", f"--out_dir={tmp_path}/o"]
    rc, err = run_main([f"--model={tmp_path}/nope"] + base, capsys)
    assert rc == 2 and f"--model: directory does not exist: {tmp_path}/nope" in err
    rc, err = run_main(base, capsys)
    assert rc == 2 and "exactly one of --model" in err
    rc, err = run_main([f"--checkpoint={tmp_path}"] + base, capsys)
    assert rc == 2 and "no r1jax checkpoint" in err
    rc, err = run_main([f"--model={model_dir}", "--benchmarks=math5000",
                        f"--data_dir={data_dir}", f"--out_dir={tmp_path}/o"], capsys)
    assert rc == 2 and "unknown benchmark 'math5000'" in err
    rc, err = run_main([f"--model={model_dir}", f"--benchmarks={tmp_path}/missing.jsonl",
                        "--recipe=math500", f"--out_dir={tmp_path}/o"], capsys)
    assert rc == 2 and f"benchmark file not found: {tmp_path}/missing.jsonl" in err
    rc, err = run_main([f"--model={model_dir}", "--n=0"] + base, capsys)
    assert rc == 2 and "--n must be >= 1" in err
    rc, err = run_main([f"--model={model_dir}", "--mesh=2,x"] + base, capsys)
    assert rc == 2 and "--mesh must be three" in err
    empty_tok = tmp_path / "tok"
    empty_tok.mkdir()
    rc, err = run_main([f"--model={model_dir}", f"--tokenizer={empty_tok}"] + base, capsys)
    assert rc == 2 and "no tokenizer files" in err
    assert not os.path.exists(tmp_path / "o")


def test_stop_tokens_cover_eos_end_of_turn_and_generation_config(qwen_tokenizer_dir,
                                                                 tmp_path):
    tokenizer = load_tokenizer(qwen_tokenizer_dir)
    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t)
                         for t in ("<|im_end|>", "<|endoftext|>"))
    assert stop_token_ids(tokenizer) == sorted({im_end, endoftext})
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({"eos_token_id": [endoftext, 151646]}, f)
    assert stop_token_ids(tokenizer, str(tmp_path)) == sorted({im_end, endoftext, 151646})

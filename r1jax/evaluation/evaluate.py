"""Sampling-based evaluation of a policy on math benchmarks.

For every problem the native sampler draws k completions; each is scored by the reward pool's
accuracy function (math-verify, in worker processes with a timeout), its final answer is
extracted and normalized (`r1jax.rewards.answer_key`) for majority voting. The report gives,
per benchmark: pass@1 averaged over the k samples, unbiased pass@j (Chen et al. 2021) and
maj@j for j = 1, 2, 4, ..., k, mean response length in tokens and the truncation rate
(completions cut at max_new_tokens).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from r1jax.evaluation import metrics as est
from r1jax.rewards import accuracy

LENGTH = 1  # finish_reason of a truncated completion


@dataclasses.dataclass
class EvalResult:
    """`report`: the summary numbers; `samples`: one dict per completion."""

    report: dict
    samples: list


def _budgets(k: int) -> list[int]:
    out, j = [], 1
    while j <= k:
        out.append(j)
        j *= 2
    return out if out[-1] == k else out + [k]


def summarize(correct: Sequence[Sequence[bool]], keys: Sequence[Sequence[Any]],
              lengths: Sequence[Sequence[int]], truncated: Sequence[Sequence[bool]]) -> dict:
    """Report numbers from per-problem lists of per-sample values (k samples each)."""
    k = len(correct[0])
    report = {"problems": len(correct), "samples_per_problem": k,
              "pass@1": est.mean_pass_at_1(correct)}
    for j in _budgets(k):
        report[f"pass@{j}"] = est.mean_pass_at_k(correct, j)
        report[f"maj@{j}"] = est.mean_maj_at_k(keys, correct, j)
    report["mean_response_tokens"] = float(np.mean([np.mean(x) for x in lengths]))
    report["truncation_rate"] = float(np.mean([np.mean(x) for x in truncated]))
    return report


def evaluate(sampler: Any, tokenizer: Any, problems: Sequence[dict], pool: Any, *,
             accuracy_name: str = "accuracy", params: Any = None, n: int = 1,
             temperature: float = 0.0, top_p: float = 1.0,
             max_new_tokens: Optional[int] = None, seed: int = 0, batch_size: int = 64,
             extraction_mode: str = "auto", progress: bool = False) -> EvalResult:
    """Samples `n` completions per problem and scores them.

    Args:
      problems: examples with `prompt_ids`, `answer` (gold), `id` and `question` (as made by
        r1jax.data's prompt pipeline).
      pool: a RewardPool whose `accuracy_name` function decides correctness.
      params: parameters to sample from (default: the sampler's model).
      n: samples per problem (k).
      batch_size: prompts per sampler call.
      extraction_mode: how the shown answer is extracted for maj@k and the JSONL.
    """
    if not problems:
        raise ValueError("no problems to evaluate")
    correct, keys, lengths, truncated, samples = [], [], [], [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(problems), desc="eval", dynamic_ncols=True)
    for start in range(0, len(problems), batch_size):
        chunk = list(problems[start:start + batch_size])
        out = sampler.generate([p["prompt_ids"] for p in chunk], n=n,
                               max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, seed=seed + start, params=params)
        texts = tokenizer.batch_decode(out.completions(), skip_special_tokens=True)
        rows = [chunk[i] for i in out.prompt_index]
        scored = pool.score(texts, rows, out.lengths.tolist())
        verdicts = scored.per_function[accuracy_name] > 0
        for p, prob in enumerate(chunk):
            idx = range(p * n, (p + 1) * n)
            extracted = [accuracy.extract_answer(texts[i], extraction_mode) for i in idx]
            correct.append([bool(verdicts[i]) for i in idx])
            keys.append([accuracy.answer_key(a) for a in extracted])
            lengths.append([int(out.lengths[i]) for i in idx])
            truncated.append([bool(out.finish_reason[i] == LENGTH) for i in idx])
            for j, i in enumerate(idx):
                samples.append({"id": prob.get("id"), "sample": j,
                                "prompt": prob.get("prompt_text", prob.get("question")),
                                "completion": texts[i], "extracted": extracted[j],
                                "gold": str(prob["answer"]), "correct": bool(verdicts[i]),
                                "tokens": int(out.lengths[i]),
                                "truncated": bool(out.finish_reason[i] == LENGTH)})
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return EvalResult(summarize(correct, keys, lengths, truncated), samples)


def write_results(out_dir: str, name: str, result: EvalResult) -> tuple[str, str]:
    """Writes `<name>.json` (report) and `<name>.samples.jsonl`; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    report_path = os.path.join(out_dir, f"{name}.json")
    samples_path = os.path.join(out_dir, f"{name}.samples.jsonl")
    tmp = report_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(result.report, written_at=time.strftime("%Y-%m-%dT%H:%M:%S")), f,
                  indent=2)
    os.replace(tmp, report_path)
    tmp = samples_path + ".tmp"
    with open(tmp, "w") as f:
        for s in result.samples:
            f.write(json.dumps(s) + "\n")
    os.replace(tmp, samples_path)
    return report_path, samples_path

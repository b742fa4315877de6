"""Sampling-based evaluation of a policy on math benchmarks.

For every problem the native sampler draws k completions; each is scored by the reward pool's
accuracy function (math-verify, in worker processes with a timeout), its final answer is
extracted and normalized (`r1jax.rewards.answer_key`) for majority voting. The report gives,
per benchmark: pass@1 averaged over the k samples, unbiased pass@j (Chen et al. 2021) and
maj@j for j = 1, 2, 4, ..., k, mean response length in tokens, the truncation rate
(completions cut at max_new_tokens) and the share of completions without an extractable
answer. `combine_reports` averages several benchmarks (problem-weighted and macro).

    problems = make_problems(["What is 2+3?"], ["5"], tokenizer, template="qwen_math")
    result = evaluate(sampler, tokenizer, problems, n=4, temperature=0.6)
    result.report["pass@1"], result.samples[0]["completion"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence, Union

import numpy as np

from r1jax import distributed
from r1jax.data.pipeline import FilterStats, prepare_prompts
from r1jax.data.sources import LoadStats, PromptSource
from r1jax.data.templates import PromptTemplate, make_template
from r1jax.evaluation import metrics as est
from r1jax.rewards import accuracy

LENGTH = 1  # finish_reason of a truncated completion
# Report entries that are averages over problems, hence combinable across benchmarks.
_RATE_KEYS = ("mean_response_tokens", "truncation_rate", "no_answer_rate")


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
    """Report numbers from per-problem lists of per-sample values (k samples each).

    Args:
      correct: [problems][k] verdicts.
      keys: [problems][k] answer normal forms (None: no answer) for maj@j.
      lengths: [problems][k] completion lengths in tokens.
      truncated: [problems][k] whether the completion hit max_new_tokens.
    """
    k = len(correct[0])
    report = {"problems": len(correct), "samples_per_problem": k,
              "pass@1": est.mean_pass_at_1(correct)}
    for j in _budgets(k):
        report[f"pass@{j}"] = est.mean_pass_at_k(correct, j)
        report[f"maj@{j}"] = est.mean_maj_at_k(keys, correct, j)
    report["mean_response_tokens"] = float(np.mean([np.mean(x) for x in lengths]))
    report["truncation_rate"] = float(np.mean([np.mean(x) for x in truncated]))
    report["no_answer_rate"] = float(np.mean([np.mean([key is None for key in x])
                                              for x in keys]))
    return report


def combine_reports(reports: dict) -> dict:
    """The overall report of several benchmarks' reports (name -> report).

    `weighted` averages each metric over all problems (benchmarks weighted by their problem
    counts); `macro` is the plain mean over benchmarks. Only metrics every report has are
    combined.
    """
    if not reports:
        raise ValueError("no benchmark reports to combine")
    names = list(reports)
    common = [key for key in reports[names[0]]
              if key.startswith(("pass@", "maj@")) or key in _RATE_KEYS]
    common = [key for key in common if all(key in r for r in reports.values())]
    counts = np.array([reports[name]["problems"] for name in names], np.float64)
    weighted, macro = {}, {}
    for key in common:
        values = np.array([reports[name][key] for name in names], np.float64)
        weighted[key] = float(values @ counts / counts.sum())
        macro[key] = float(values.mean())
    return {"benchmarks": names, "problems": int(counts.sum()),
            "samples": int(sum(r["problems"] * r["samples_per_problem"]
                               for r in reports.values())),
            "weighted": weighted, "macro": macro,
            "per_benchmark": {name: {key: reports[name][key] for key in common + ["problems"]}
                              for name in names}}


# ----------------------------------------------------------------------------------------
# Problems: prompt text and token ids for each question.


def prepare_problems(source: PromptSource, tokenizer: Any,
                     template: Union[str, PromptTemplate] = "plain", *,
                     system_prompt: Optional[str] = None,
                     max_prompt_tokens: Optional[int] = None) -> tuple[list, FilterStats]:
    """Templated, tokenized problems of a source (as `evaluate` takes them).

    Args:
      source: examples from `r1jax.data.load_source` (or any PromptSource).
      template: a TEMPLATES name ("qwen_math", "r1_zero", "chat", "plain") or a template.
      system_prompt: replaces the template's system prompt / instruction when given.
      max_prompt_tokens: prompts longer than this are dropped (counted in the stats).

    Returns:
      (problems: the examples plus `prompt_text`, `prompt_ids`, `prompt_len`,
      `completion_prefix`; the length-filter counts).

    Raises:
      DataError: the template needs a chat template the tokenizer lacks, or every prompt
        is too long.
    """
    if isinstance(template, str):
        template = make_template(template, system_prompt)
    elif system_prompt is not None:
        template = dataclasses.replace(template, system_prompt=system_prompt)
    problems, stats = prepare_prompts(source, tokenizer, template, max_prompt_tokens)
    # Same encoding as the training pipeline: chat templates already hold their specials.
    ids = tokenizer([p["prompt_text"] for p in problems],
                    add_special_tokens=not template.uses_chat_template)["input_ids"]
    for problem, row in zip(problems, ids):
        problem["prompt_ids"] = list(row)
    return problems, stats


def make_problems(questions: Sequence[str], answers: Sequence[Any], tokenizer: Any, *,
                  template: Union[str, PromptTemplate] = "plain",
                  system_prompt: Optional[str] = None, ids: Optional[Sequence[str]] = None,
                  max_prompt_tokens: Optional[int] = None) -> list:
    """Problems from question strings and gold answers, templated and tokenized.

    Args:
      questions: the problem statements.
      answers: gold answers as `r1jax.rewards.math_accuracy` takes them (LaTeX or numbers,
        a worked solution with `\\boxed{}`, a GSM8K `#### 42` line, or a list of
        acceptable answers).
      ids: problem ids for the report (default "q-0", "q-1", ...).
      template, system_prompt, max_prompt_tokens: see `prepare_problems`.

    Raises:
      ValueError: mismatched lengths, or an empty question.
    """
    if len(questions) != len(answers) or (ids is not None and len(ids) != len(questions)):
        raise ValueError(f"got {len(questions)} questions, {len(answers)} answers and "
                         f"{'no' if ids is None else len(ids)} ids")
    examples = []
    for i, (question, answer) in enumerate(zip(questions, answers)):
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question {i} is empty or not a string")
        examples.append({"id": str(ids[i]) if ids is not None else f"q-{i}",
                         "question": question, "answer": answer})
    source = PromptSource(name="questions", task="math", examples=examples,
                          stats=LoadStats(path="<questions>", rows=len(examples),
                                          kept=len(examples)))
    return prepare_problems(source, tokenizer, template, system_prompt=system_prompt,
                            max_prompt_tokens=max_prompt_tokens)[0]


# ----------------------------------------------------------------------------------------
# Sampling and scoring.


def _pool_extraction(pool: Any, accuracy_name: str) -> tuple[str, Optional[str]]:
    """The extraction mode and pattern the pool's accuracy function grades with."""
    for spec in getattr(pool, "specs", ()):
        if spec.name == accuracy_name:
            return spec.kwargs.get("mode", "auto"), spec.kwargs.get("pattern")
    return "auto", None


def evaluate(sampler: Any, tokenizer: Any, problems: Sequence[dict], pool: Any = None, *,
             accuracy_name: str = "accuracy", params: Any = None, n: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             max_new_tokens: Optional[int] = None, seed: int = 0, batch_size: int = 64,
             extraction_mode: Optional[str] = None, answer_pattern: Optional[str] = None,
             progress: Union[bool, str] = False, num_workers: int = 2,
             timeout_s: float = 10.0, budget_forcing: Any = None) -> EvalResult:
    """Samples `n` completions per problem and scores them.

    Args:
      sampler: an `r1jax.sampling.Sampler` (or anything with its `generate`).
      tokenizer: decodes the completions.
      problems: examples with `prompt_ids`, `answer` (gold), `id` and `question` or
        `prompt_text` (from `make_problems`, `prepare_problems` or r1jax.data's pipeline).
      pool: a RewardPool whose `accuracy_name` function decides correctness; None starts
        (and afterwards stops) a pool of `num_workers` processes grading with
        `math_accuracy(mode=extraction_mode, pattern=answer_pattern)`.
      params: parameters to sample from (default: the sampler's model).
      n: samples per problem (k).
      temperature, top_p, top_k: sampling (temperature 0 = greedy).
      max_new_tokens: completion budget (default: the sampler's).
      seed: sampling seed; the same seed gives the same completions.
      batch_size: prompts per sampler call. With more problems than that the last call is
        padded to the same size (and its extra rows dropped) so nothing recompiles.
      extraction_mode, answer_pattern: how the answer shown in the samples and voted on in
        maj@k is extracted (see `r1jax.rewards.extract_answer`); None: the mode and pattern
        of the pool's accuracy function, so that the shown answer is the graded one.
      progress: show a progress bar (a string labels it).
      num_workers, timeout_s: the pool started when `pool` is None.
      budget_forcing: an `r1jax.sampling.BudgetForcing` passed to every `generate` call
        (None: not passed, so any object with `generate` still works).

    Raises:
      ValueError: no problems, n < 1 or batch_size < 1.
    """
    if not problems:
        raise ValueError("no problems to evaluate")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    own_pool = pool is None
    if own_pool:
        from r1jax.rewards import RewardPool
        mode = extraction_mode or "auto"
        pool = RewardPool([("accuracy", 1.0, {"mode": mode, "pattern": answer_pattern})],
                          num_workers=num_workers, timeout_s=timeout_s)
        accuracy_name = "accuracy"
    if extraction_mode is None:
        extraction_mode, pool_pattern = _pool_extraction(pool, accuracy_name)
        answer_pattern = answer_pattern if answer_pattern is not None else pool_pattern
    try:
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k)
        if budget_forcing is not None:
            sampling["budget_forcing"] = budget_forcing
        return _evaluate(sampler, tokenizer, problems, pool, accuracy_name, params, n,
                         sampling,
                         max_new_tokens, seed, batch_size, extraction_mode, answer_pattern,
                         progress)
    finally:
        if own_pool:
            pool.close()


def _evaluate(sampler, tokenizer, problems, pool, accuracy_name, params, n, sampling,
              max_new_tokens, seed, batch_size, extraction_mode, answer_pattern,
              progress) -> EvalResult:
    correct, keys, lengths, truncated, samples = [], [], [], [], []
    failures, generated, start_time = 0, 0, time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(problems), desc=progress if isinstance(progress, str) else "eval",
                   dynamic_ncols=True)
    for start in range(0, len(problems), batch_size):
        chunk = list(problems[start:start + batch_size])
        prompts = [p["prompt_ids"] for p in chunk]
        if len(problems) > batch_size:  # one compiled shape for every call
            prompts += [prompts[-1]] * (batch_size - len(chunk))
        out = sampler.generate(prompts, n=n, max_new_tokens=max_new_tokens, seed=seed + start,
                               params=params, **sampling)
        rows = len(chunk) * n
        texts = tokenizer.batch_decode(out.completions()[:rows], skip_special_tokens=True)
        out_len = [int(x) for x in out.lengths[:rows]]
        out_cut = [bool(x == LENGTH) for x in out.finish_reason[:rows]]
        scored = distributed.score_shared(pool, texts, [chunk[i // n] for i in range(rows)],
                                          out_len)
        verdicts = scored.per_function[accuracy_name] > 0
        failures += int(scored.failed.sum())
        generated += sum(out_len)
        for p, prob in enumerate(chunk):
            idx = range(p * n, (p + 1) * n)
            extracted = [accuracy.extract_answer(texts[i], extraction_mode, answer_pattern)
                         for i in idx]
            correct.append([bool(verdicts[i]) for i in idx])
            keys.append([accuracy.answer_key(a) for a in extracted])
            lengths.append([out_len[i] for i in idx])
            truncated.append([out_cut[i] for i in idx])
            for j, i in enumerate(idx):
                samples.append({"id": prob.get("id"), "sample": j,
                                "prompt": prob.get("prompt_text", prob.get("question")),
                                "completion": texts[i], "extracted": extracted[j],
                                "gold": _jsonable(prob["answer"]),
                                "correct": bool(verdicts[i]), "tokens": out_len[i],
                                "truncated": out_cut[i]})
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    report = summarize(correct, keys, lengths, truncated)
    seconds = time.perf_counter() - start_time
    report.update(extraction_mode=extraction_mode, reward_failures=failures,
                  generated_tokens=generated, seconds=seconds)
    return EvalResult(report, samples)


def _jsonable(gold: Any) -> Any:
    """The gold answer as JSON keeps it (a list of alternatives stays a list)."""
    if isinstance(gold, (list, tuple)):
        return [_jsonable(g) for g in gold]
    return gold if isinstance(gold, (str, int, float)) else str(gold)


def write_results(out_dir: str, name: str, result: EvalResult) -> tuple[str, str]:
    """Writes `<name>.json` (report) and `<name>.samples.jsonl`; returns both paths.

    Both files are written to temporary names and renamed, so a reader never sees half a
    file.
    """
    os.makedirs(out_dir, exist_ok=True)
    report_path = os.path.join(out_dir, f"{name}.json")
    samples_path = os.path.join(out_dir, f"{name}.samples.jsonl")
    write_json(report_path, dict(result.report,
                                 written_at=time.strftime("%Y-%m-%dT%H:%M:%S")))
    tmp = samples_path + ".tmp"
    with open(tmp, "w") as f:
        for s in result.samples:
            f.write(json.dumps(s) + "\n")
    os.replace(tmp, samples_path)
    return report_path, samples_path


def write_json(path: str, obj: Any) -> str:
    """Writes `obj` as indented JSON, atomically; returns the path."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
    return path

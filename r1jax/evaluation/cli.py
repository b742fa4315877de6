"""`r1jax-eval`: sample a policy on math benchmarks and report pass@k / maj@k.

    r1jax-eval --model=/models/Qwen2.5-Math-1.5B --benchmarks=math500,aime24 \\
        --data_dir=../shared/data --n=16 --temperature=0.6 --top_p=0.95 \\
        --max_new_tokens=3072 --out_dir=results/qwen_math_1.5b
    r1jax-eval --checkpoint=runs/dapo/checkpoints/200 --benchmarks=math500 --out_dir=ev
    r1jax-eval --model=/models/Qwen3-1.7B --benchmarks=aime24 --data_dir=../shared/data \\
        --template=chat --max_new_tokens=8192 --thinking_budget=4096 --max_waits=2 \\
        --out_dir=results/qwen3_budget4096

Budget forcing (--thinking_budget, --end_think, --wait, --max_waits): a thinking budget
enforced token by token in the sampler's decode loop, see `r1jax.sampling.budget`.

Writes into --out_dir, per benchmark, `<name>.json` (the report) and `<name>.samples.jsonl`
(one line per completion: prompt, completion, extracted answer, gold, verdict, tokens,
truncated), and `overall.json` (problem-weighted and macro averages over the benchmarks).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, Optional, Sequence

from r1jax import distributed
from r1jax.config import ConfigError
from r1jax.data import BENCHMARKS, RECIPES, DataError, field_recipe, load_source
from r1jax.data.code_recipes import PACKAGED_BENCHMARKS
from r1jax.evaluation.evaluate import (combine_reports, evaluate, prepare_problems, write_json,
                                       write_results)
from r1jax.evaluation import policy as pol
from r1jax.models import CheckpointError, UnsupportedModelError
from r1jax.rewards import EXTRACTION_MODES
from r1jax.sampling.budget import BudgetForcing

log = logging.getLogger("r1jax.eval")
_ERRORS = (FileNotFoundError, DataError, ConfigError, CheckpointError, UnsupportedModelError,
           pol.PolicyError)


class UsageError(ValueError):
    """Flags that do not make sense together."""


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1jax-eval", description=__doc__.split("\n\n")[0])
    pol.add_policy_arguments(p)
    data = p.add_argument_group("benchmarks")
    data.add_argument("--benchmarks", required=True, help="comma-separated names "
                      f"({', '.join([*BENCHMARKS, *PACKAGED_BENCHMARKS])}) or .jsonl / "
                      ".parquet files; code benchmarks (humaneval) are graded by code_tests")
    data.add_argument("--data_dir", help="shared data folder for names (default: "
                      "$R1JAX_DATA_DIR)")
    data.add_argument("--recipe", choices=sorted(RECIPES), metavar="RECIPE",
                      help=f"row layout of the files: {', '.join(sorted(RECIPES))}")
    data.add_argument("--question_key", help="files: question field (instead of --recipe)")
    data.add_argument("--answer_key", help="files: gold answer field (with --question_key)")
    data.add_argument("--answer_format", default="text",
                      choices=("text", "gsm8k", "boxed_solution"),
                      help="files: how --answer_key holds the answer (default %(default)s)")
    data.add_argument("--limit", type=int, help="first N problems of each benchmark")
    data.add_argument("--template", help="prompt template: qwen_math, r1_zero, chat, plain "
                      "(default: the run's for --checkpoint, else qwen_math)")
    data.add_argument("--system_prompt", help="replaces the template's system prompt")
    data.add_argument("--max_prompt_tokens", type=int, help="drop (and count) longer prompts")
    smp = p.add_argument_group("sampling and grading")
    smp.add_argument("--n", type=int, default=1,
                     help="samples per problem, k (default %(default)s)")
    smp.add_argument("--temperature", type=float, default=0.0,
                     help="0 = greedy (default %(default)s)")
    smp.add_argument("--top_p", type=float, default=1.0, help="nucleus (default %(default)s)")
    smp.add_argument("--top_k", type=int, default=0, help="0 = off (default %(default)s)")
    smp.add_argument("--max_new_tokens", type=int, default=1024,
                     help="completion budget (default %(default)s)")
    smp.add_argument("--batch_size", type=int, default=32,
                     help="prompts per sampler call (default %(default)s)")
    smp.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    smp.add_argument("--thinking_budget", type=int, help="budget forcing: thinking tokens "
                     "before --end_think is forced (default: off; with --max_waits alone, "
                     "--max_new_tokens)")
    smp.add_argument("--end_think", default="</think>", help="budget forcing: the "
                     "end-of-thinking delimiter (default %(default)s)")
    smp.add_argument("--wait", default="Wait", help="budget forcing: what replaces an early "
                     "--end_think (default %(default)s)")
    smp.add_argument("--max_waits", type=int, default=0, help="budget forcing: early "
                     "--end_think replaced by --wait at most this often (default %(default)s)")
    smp.add_argument("--extraction", choices=EXTRACTION_MODES, help="answer extraction "
                     "(default: the run's accuracy reward's for --checkpoint, else auto)")
    smp.add_argument("--answer_pattern", help="regex for --extraction=regex")
    smp.add_argument("--reward_workers", type=int, default=2,
                     help="grading processes (default %(default)s)")
    smp.add_argument("--reward_timeout", type=float, default=10.0,
                     help="grading seconds per completion (default %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--out_dir", required=True, help="where the reports are written")
    out.add_argument("--no_progress", action="store_true", help="no progress bar")
    distributed.add_arguments(p)
    return p


def _check_args(a: argparse.Namespace) -> None:
    pol.check_policy_arguments(a)
    checks = ((a.n >= 1, "--n must be >= 1"),
              (a.temperature >= 0, "--temperature must be >= 0"),
              (0 < a.top_p <= 1, "--top_p must be in (0, 1]"),
              (a.top_k >= 0, "--top_k must be >= 0"),
              (a.max_new_tokens >= 1, "--max_new_tokens must be >= 1"),
              (a.thinking_budget is None or a.thinking_budget >= 1,
               "--thinking_budget must be >= 1"),
              (a.max_waits >= 0, "--max_waits must be >= 0"),
              (a.batch_size >= 1, "--batch_size must be >= 1"),
              (a.limit is None or a.limit >= 1, "--limit must be >= 1"),
              (a.reward_workers >= 1, "--reward_workers must be >= 1"),
              (a.reward_timeout > 0, "--reward_timeout must be > 0"),
              ((a.question_key is None) == (a.answer_key is None),
               "--question_key and --answer_key go together"),
              (a.recipe is None or a.question_key is None,
               "pass --recipe or --question_key/--answer_key, not both"),
              (a.extraction != "regex" or bool(a.answer_pattern),
               "--extraction=regex needs --answer_pattern"))
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    _check_benchmarks(a)
    if a.n > 1 and a.temperature == 0:
        log.warning("--n=%d with --temperature=0: greedy samples are identical", a.n)


def _check_benchmarks(a: argparse.Namespace) -> None:
    """Unknown names and missing files fail before any model is loaded."""
    entries = [e.strip() for e in a.benchmarks.split(",") if e.strip()]
    if not entries:
        raise UsageError("--benchmarks is empty")
    data_dir = a.data_dir or os.environ.get("R1JAX_DATA_DIR")
    for entry in entries:
        if entry in BENCHMARKS:
            if not data_dir:
                raise UsageError(f"benchmark {entry!r} needs --data_dir (or $R1JAX_DATA_DIR)")
            path = os.path.join(data_dir, BENCHMARKS[entry][1])
        elif entry in PACKAGED_BENCHMARKS:
            path = PACKAGED_BENCHMARKS[entry][1]()
        elif os.path.splitext(entry)[1]:
            path = entry
            if a.recipe is None and a.question_key is None:
                raise UsageError(f"{entry}: files need --recipe or --question_key/--answer_key")
        else:
            raise UsageError(f"unknown benchmark {entry!r}: not one of "
                             f"{', '.join([*BENCHMARKS, *PACKAGED_BENCHMARKS])} "
                             "and not a .jsonl / .parquet path")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"benchmark file not found: {path}")


def _defaults(a: argparse.Namespace, policy: pol.Policy) -> tuple[str, Optional[str], str,
                                                                   Optional[str]]:
    """(template, system prompt, extraction mode, pattern): flags, else the run's."""
    run = policy.run_config
    template = a.template or (run.data.template if run else "qwen_math")
    system = a.system_prompt if a.system_prompt is not None else (
        run.data.system_prompt if run and a.template is None else None)
    mode, pattern = a.extraction, a.answer_pattern
    if mode is None and run is not None:
        spec = next(f for f in run.rewards.functions if f.name == run.rewards.accuracy)
        mode = spec.kwargs.get("mode", "auto")
        pattern = pattern if pattern is not None else spec.kwargs.get("pattern")
    return template, system, mode or "auto", pattern


def _budget_forcing(a: argparse.Namespace, tokenizer: Any) -> Optional[BudgetForcing]:
    """The budget forcing the flags ask for (None when --thinking_budget and --max_waits
    are unset), its strings tokenized by the policy's tokenizer."""
    if a.thinking_budget is None and a.max_waits == 0:
        return None

    def ids(text: str, flag: str) -> tuple[int, ...]:
        out = tuple(tokenizer.encode(text, add_special_tokens=False))
        if not out:
            raise UsageError(f"{flag}={text!r} tokenizes to no tokens")
        return out

    return BudgetForcing(
        budget=a.thinking_budget if a.thinking_budget is not None else a.max_new_tokens,
        end_ids=ids(a.end_think, "--end_think"),
        wait_ids=ids(a.wait, "--wait") if a.max_waits > 0 else (), max_waits=a.max_waits)


def _benchmark_names(entries: Sequence[str]) -> list[tuple[str, str]]:
    """(output name, name or path) per entry; file stems are made unique."""
    out, seen = [], set()
    for entry in entries:
        base = entry if entry in BENCHMARKS else os.path.splitext(os.path.basename(entry))[0]
        name, i = base, 2
        while name in seen or name == "overall":
            name, i = f"{base}_{i}", i + 1
        seen.add(name)
        out.append((name, entry))
    return out


def _load_benchmarks(a, tokenizer, template, system) -> dict:
    entries = [e.strip() for e in a.benchmarks.split(",") if e.strip()]
    recipe = a.recipe
    if a.question_key is not None:
        recipe = field_recipe(a.question_key, a.answer_key, answer_format=a.answer_format)
    loaded = {}
    for name, entry in _benchmark_names(entries):
        named = entry in BENCHMARKS or entry in PACKAGED_BENCHMARKS
        source = load_source(entry, recipe=None if named else recipe,
                             data_dir=a.data_dir, limit=a.limit)
        if source.task not in ("math", "code"):
            raise UsageError(f"{entry}: r1jax-eval grades math answers; {source.task} tasks "
                             "are scored by the trainer's held-out evaluation")
        try:
            problems, stats = prepare_problems(source, tokenizer, template,
                                               system_prompt=system,
                                               max_prompt_tokens=a.max_prompt_tokens)
        except DataError as e:
            raise DataError(f"{e} (choose another --template, e.g. plain or r1_zero)"
                            if "chat template" in str(e) else str(e)) from None
        loaded[name] = (source, problems, stats)
    return loaded


def run(a: argparse.Namespace) -> dict:
    """Evaluates as the parsed flags say; returns the overall report.

    In a multi-process job every process samples and holds every completion, grades its
    share (`distributed.score_shared`), and process 0 alone prints and writes the reports.
    """
    from r1jax.rewards import RewardPool
    from r1jax.sampling import Sampler

    _check_args(a)
    writer = distributed.is_writer()
    policy = pol.load_policy(a, pol.mesh_from_flag(a.mesh))
    template, system, mode, pattern = _defaults(a, policy)
    budget_forcing = _budget_forcing(a, policy.tokenizer)
    benchmarks = _load_benchmarks(a, policy.tokenizer, template, system)
    longest = max(p["prompt_len"] for _, problems, _ in benchmarks.values() for p in problems)
    tok = policy.tokenizer
    sampler = Sampler(policy.model, max_prompt_len=longest, max_new_tokens=a.max_new_tokens,
                      eos_token_ids=policy.stop_token_ids,
                      pad_id=tok.pad_token_id if tok.pad_token_id is not None
                      else policy.stop_token_ids[0])
    settings = {"policy": policy.source, "step": policy.step, "template": template,
                "system_prompt": system, "n": a.n, "temperature": a.temperature,
                "top_p": a.top_p, "top_k": a.top_k, "max_new_tokens": a.max_new_tokens,
                "seed": a.seed, "extraction": mode, "answer_pattern": pattern,
                "stop_token_ids": policy.stop_token_ids, "limit": a.limit,
                "max_prompt_tokens": a.max_prompt_tokens,
                "thinking_budget": a.thinking_budget, "end_think": a.end_think,
                "wait": a.wait, "max_waits": a.max_waits}
    reports = {}
    code_pool = contextlib.nullcontext()
    if any(source.task == "code" for source, _, _ in benchmarks.values()):
        # Code benchmarks are graded by running their tests; code_tests' own limit stays
        # under the pool's per-item kill.
        code_spec = ("code", 1.0, {"total_timeout_s": max(1.0, a.reward_timeout - 2)})
        code_pool = RewardPool([code_spec], num_workers=a.reward_workers,
                               timeout_s=a.reward_timeout)
    with RewardPool([("accuracy", 1.0, {"mode": mode, "pattern": pattern})],
                    num_workers=a.reward_workers, timeout_s=a.reward_timeout) as pool, code_pool:
        for name, (source, problems, stats) in benchmarks.items():
            grader, grade_name = (code_pool, "code") if source.task == "code" else (pool,
                                                                                   "accuracy")
            result = evaluate(sampler, tok, problems, grader, accuracy_name=grade_name,
                              n=a.n, temperature=a.temperature,
                              top_p=a.top_p, top_k=a.top_k, max_new_tokens=a.max_new_tokens,
                              seed=a.seed, batch_size=a.batch_size, extraction_mode=mode,
                              answer_pattern=pattern, budget_forcing=budget_forcing,
                              progress=False if a.no_progress or not writer else name)
            result.report = dict(result.report, benchmark=name, source=source.stats.path,
                                 skipped_rows=dict(source.stats.skipped),
                                 dropped_long_prompts=stats.too_long, settings=settings)
            reports[name] = result.report
            if writer:
                write_results(a.out_dir, name, result)
                _print_line(name, result.report)
    overall = dict(combine_reports(reports), settings=settings)
    if writer:
        write_json(os.path.join(a.out_dir, "overall.json"), overall)
    return overall


def _print_line(name: str, report: dict) -> None:
    k = report["samples_per_problem"]
    print(f"{name}: {report['problems']} problems x {k} samples | pass@1 "
          f"{report['pass@1']:.4f} | pass@{k} {report[f'pass@{k}']:.4f} | maj@{k} "
          f"{report[f'maj@{k}']:.4f} | mean tokens {report['mean_response_tokens']:.1f} | "
          f"truncated {report['truncation_rate']:.3f}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `r1jax-eval`; returns the exit status (2 for bad flags or paths)."""
    parser = make_parser()
    a = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if distributed.initialize(distributed.config_from_args(a)):
            distributed.watch_processes()
        distributed.check_same_config(distributed.flags_config(a))
        try:
            overall = run(a)
        except Exception as e:  # noqa: BLE001 - a lost process ends the job with its name
            distributed.exit_if_peer_lost(e)
            raise
    except (UsageError,) + _ERRORS as e:
        print(f"r1jax-eval: error: {e}", file=sys.stderr)
        return 2
    if not distributed.is_writer():
        return 0
    if len(overall["benchmarks"]) > 1:
        w = overall["weighted"]
        print(f"overall ({overall['problems']} problems): pass@1 {w['pass@1']:.4f} weighted, "
              f"{overall['macro']['pass@1']:.4f} macro", flush=True)
    print(f"reports in {os.path.abspath(a.out_dir)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`r1jax-rejection-sample`: k completions per prompt from a policy, verified, kept as SFT data.

    r1jax-rejection-sample --checkpoint=runs/dapo --k=8 --keep=shortest --out_dir=data/rs1
    r1jax-rejection-sample --model=/models/Qwen2.5-Math-7B --data=math500 --k=16 \\
        --temperature=0.6 --max_new_tokens=4096 --max_slots=256 --out_dir=data/rs_math

The policy is a Hugging Face directory (`--model`) or an r1jax run (`--checkpoint`); a run
brings its own training prompts, template and reward functions (each overridable). Every
completion is scored by the reward functions in the reward pool's worker processes; it is
correct when the accuracy function's value is > 0. Writes into --out_dir:

- `sft.jsonl`: the kept correct completions as conversations (`messages`: the system prompt
  if the template has one, the user's question, the assistant's completion including the
  text the prompt opened it with, e.g. `<think>`), with `id`, `sample`, `round`, `tokens`,
  the reward `verdicts` and `provenance` (policy, step, sampling settings, seed): the
  `messages` layout `r1jax-sft` reads;
- `samples.jsonl`: every completion with its verdicts (correct or not);
- `pass_rates.jsonl`: per prompt `id`, `samples`, `correct`, `pass_rate` (what
  `data.pass_rates` filters training prompts by);
- `summary.json`: counts and the settings; `progress.json` while running.

Keep policies (`--keep`): `all` correct completions, one `random` correct completion (seeded
by the seed and the prompt's index), or the `shortest` correct one (fewest tokens; the
lowest sample index among equals). `--pass_rate_min/max` keep SFT rows only from prompts
whose pass rate lies in the range. `--resample_failed=R` samples prompts with no correct
completion again, in up to R more rounds of k (new seeds), and counts those samples in the
pass rate (history resampling).

Prompts go in batches of `--batch_size`; after each batch its lines are flushed to disk and
`progress.json` records the prompts done and each file's length. A killed run started again
with the same flags truncates the files to those lengths and continues with the next batch:
nothing is duplicated or lost, and the output equals an uninterrupted run's (a batch's seed
depends only on --seed, its first prompt and the round). SIGTERM stops after the current
batch.

Several processes (`--distributed.*` flags, the `distributed` config fields): every process
samples every completion and scores its share; process 0 writes --out_dir, which every
process must see (it resumes from the shared progress record).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from r1jax import distributed
from r1jax.data import RECIPES, DataError, field_recipe, load_source
from r1jax.evaluation import policy as pol
from r1jax.evaluation.evaluate import prepare_problems, write_json
from r1jax.rewards import EXTRACTION_MODES

log = logging.getLogger("r1jax.rejection")
KEEP_POLICIES = ("all", "random", "shortest")
FILES = ("sft.jsonl", "samples.jsonl", "pass_rates.jsonl")
_ROUND_SEED = 1_000_003  # a round's seeds are far from the first round's


class UsageError(ValueError):
    """Flags that do not make sense together, or a resume with different flags."""


# ----------------------------------------------------------------------------------------
# Selection (pure).


def select_kept(correct: Sequence[bool], lengths: Sequence[int], keep: str,
                seed: int, prompt_index: int) -> list[int]:
    """Indices of the samples of one prompt that become SFT rows.

    Args:
      correct: [k] verdict per sample.
      lengths: [k] completion tokens per sample.
      keep: "all" (every correct sample), "random" (one correct sample drawn with a
        generator seeded by (seed, prompt_index)), "shortest" (the correct sample with the
        fewest tokens, the lowest index among equals).
    Returns:
      sample indices in increasing order (empty when none is correct).
    """
    hits = [i for i, c in enumerate(correct) if c]
    if not hits or keep == "all":
        return hits
    if keep == "shortest":
        return [min(hits, key=lambda i: (lengths[i], i))]
    if keep == "random":
        rng = np.random.default_rng([seed, prompt_index])
        return [hits[int(rng.integers(len(hits)))]]
    raise ValueError(f"keep must be one of {KEEP_POLICIES}, got {keep!r}")


def batch_seed(seed: int, start: int, round_: int) -> int:
    """The sampling seed of the batch whose first prompt is `start`, in round `round_`."""
    return seed + start + _ROUND_SEED * round_


def conversation(problem: dict, completion: str, system_prompt: Optional[str]) -> list[dict]:
    """The SFT conversation of one kept completion (messages layout)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": problem["question"]})
    messages.append({"role": "assistant",
                     "content": problem.get("completion_prefix", "") + completion})
    return messages


# ----------------------------------------------------------------------------------------
# Command line.


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1jax-rejection-sample",
                                description=__doc__.split("\n\n")[0])
    pol.add_policy_arguments(p)
    data = p.add_argument_group("prompts (default: the run's training prompts)")
    data.add_argument("--data", help="a benchmark name or a .jsonl / .parquet file")
    data.add_argument("--data_dir", help="shared data folder for names (default: "
                      "$R1JAX_DATA_DIR)")
    data.add_argument("--recipe", choices=sorted(RECIPES), metavar="RECIPE",
                      help=f"row layout of --data files: {', '.join(sorted(RECIPES))}")
    data.add_argument("--question_key", help="--data files: question field")
    data.add_argument("--answer_key", help="--data files: gold answer field")
    data.add_argument("--id_key", help="--data files: id field (default: the row number)")
    data.add_argument("--answer_format", default="text",
                      choices=("text", "gsm8k", "boxed_solution"))
    data.add_argument("--limit", type=int, help="first N prompts")
    data.add_argument("--template", help="prompt template (default: the run's, else "
                      "qwen_math)")
    data.add_argument("--system_prompt", help="replaces the template's system prompt")
    data.add_argument("--max_prompt_tokens", type=int, help="drop (and count) longer prompts "
                      "(default: the run's)")
    smp = p.add_argument_group("sampling and verification")
    smp.add_argument("--k", type=int, default=8, help="samples per prompt (default %(default)s)")
    smp.add_argument("--temperature", type=float, default=1.0)
    smp.add_argument("--top_p", type=float, default=1.0)
    smp.add_argument("--top_k", type=int, default=0)
    smp.add_argument("--max_new_tokens", type=int, help="completion budget (default: the "
                     "run's rollout.max_new_tokens, else 1024)")
    smp.add_argument("--batch_size", type=int, default=32, help="prompts per sampler call")
    smp.add_argument("--max_slots", type=int, help="rows decoded at once (continuous "
                     "batching engine); default one static batch per call")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--extraction", choices=EXTRACTION_MODES,
                     help="--model: answer extraction of the accuracy check (default auto)")
    smp.add_argument("--answer_pattern", help="regex for --extraction=regex")
    smp.add_argument("--reward_workers", type=int, default=2)
    smp.add_argument("--reward_timeout", type=float, default=10.0)
    sel = p.add_argument_group("selection")
    sel.add_argument("--keep", choices=KEEP_POLICIES, default="all",
                     help="correct completions kept per prompt (default %(default)s)")
    sel.add_argument("--pass_rate_min", type=float, default=0.0,
                     help="keep rows only from prompts with pass rate >= this")
    sel.add_argument("--pass_rate_max", type=float, default=1.0,
                     help="keep rows only from prompts with pass rate <= this")
    sel.add_argument("--resample_failed", type=int, default=0,
                     help="extra rounds of k samples for prompts with no correct one")
    out = p.add_argument_group("output")
    out.add_argument("--out_dir", required=True)
    out.add_argument("--restart", action="store_true",
                     help="discard a previous run's output in --out_dir instead of resuming")
    distributed.add_arguments(p)
    return p


def _check_args(a: argparse.Namespace) -> None:
    pol.check_policy_arguments(a)
    checks = ((a.k >= 1, "--k must be >= 1"),
              (a.temperature >= 0, "--temperature must be >= 0"),
              (0 < a.top_p <= 1, "--top_p must be in (0, 1]"),
              (a.top_k >= 0, "--top_k must be >= 0"),
              (a.max_new_tokens is None or a.max_new_tokens >= 1,
               "--max_new_tokens must be >= 1"),
              (a.batch_size >= 1, "--batch_size must be >= 1"),
              (a.max_slots is None or a.max_slots >= 1, "--max_slots must be >= 1"),
              (a.limit is None or a.limit >= 1, "--limit must be >= 1"),
              (a.resample_failed >= 0, "--resample_failed must be >= 0"),
              (0 <= a.pass_rate_min <= a.pass_rate_max <= 1,
               "need 0 <= --pass_rate_min <= --pass_rate_max <= 1"),
              ((a.question_key is None) == (a.answer_key is None),
               "--question_key and --answer_key go together"),
              (a.data is not None or a.checkpoint is not None,
               "--model needs --data (a run's checkpoint brings its training prompts)"),
              (a.extraction != "regex" or bool(a.answer_pattern),
               "--extraction=regex needs --answer_pattern"))
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if a.data is not None and os.path.splitext(a.data)[1] and not os.path.isfile(a.data):
        raise FileNotFoundError(f"--data: file not found: {a.data}")
    if a.k == 1 and a.temperature == 0 and a.resample_failed:
        raise UsageError("--resample_failed with greedy sampling repeats the same completion")


@dataclasses.dataclass
class Job:
    """What a run samples and how it grades: prompts, template, reward specs."""

    problems: list
    system_prompt: Optional[str]
    specs: Any  # reward specs as RewardPool takes them
    accuracy: str
    source_name: str
    dropped_long_prompts: int
    max_new_tokens: int


def _job(a: argparse.Namespace, policy: pol.Policy) -> Job:
    from r1jax import builder
    from r1jax.data.templates import make_template
    run = policy.run_config
    if run is not None and run.data.mixture and a.data is None:
        raise UsageError("the run trains on a data mixture: pass --data")
    template_name = a.template or (run.data.template if run else "qwen_math")
    system = a.system_prompt if a.system_prompt is not None else (
        run.data.system_prompt if run and a.template is None else None)
    template = make_template(template_name, system)
    if a.data is not None:
        recipe = a.recipe
        if a.question_key is not None:
            recipe = field_recipe(a.question_key, a.answer_key, a.id_key,
                                  answer_format=a.answer_format)
        source = load_source(a.data, recipe=recipe, data_dir=a.data_dir, limit=a.limit)
    else:
        source = builder.build_train_source(run.data)
        if a.limit is not None:
            source = dataclasses.replace(source, examples=source.examples[:a.limit])
    max_prompt = a.max_prompt_tokens or (run.data.max_prompt_tokens if run else None)
    problems, stats = prepare_problems(source, policy.tokenizer, template,
                                       max_prompt_tokens=max_prompt)
    if a.extraction is None and run is not None and a.data is None:
        specs = [(f.name, f.weight, dict(f.kwargs)) for f in run.rewards.functions]
        accuracy = run.rewards.accuracy
    else:
        mode = a.extraction
        if mode is None and run is not None:
            spec = next(f for f in run.rewards.functions if f.name == run.rewards.accuracy)
            mode, pattern = spec.kwargs.get("mode", "auto"), spec.kwargs.get("pattern")
        else:
            pattern = None
        specs = [("accuracy", 1.0, {"mode": mode or "auto",
                                    "pattern": a.answer_pattern or pattern})]
        accuracy = "accuracy"
    max_new = a.max_new_tokens or (run.rollout.max_new_tokens if run else 1024)
    return Job(problems, template.system_prompt, specs, accuracy, source.name,
               stats.too_long, max_new)


def _settings(a: argparse.Namespace, policy: pol.Policy, job: Job) -> dict:
    """Everything the output depends on; a resume must see the same."""
    return {"policy": policy.source, "step": policy.step, "source": job.source_name,
            "prompts": len(job.problems), "system_prompt": job.system_prompt,
            "rewards": [list(s[:2]) + [s[2]] for s in job.specs], "accuracy": job.accuracy,
            "k": a.k, "temperature": a.temperature, "top_p": a.top_p, "top_k": a.top_k,
            "max_new_tokens": job.max_new_tokens, "batch_size": a.batch_size,
            "seed": a.seed, "keep": a.keep, "pass_rate_min": a.pass_rate_min,
            "pass_rate_max": a.pass_rate_max, "resample_failed": a.resample_failed}


# ----------------------------------------------------------------------------------------
# Output: append-only files and a progress record.


class Output:
    """The output files of a run, resumable at batch boundaries.

    Every process of a multi-process job reads the progress record (the directory is shared:
    `distributed.check_shared_dir`), so all resume at the same prompt with the same counts;
    only the `writer` (process 0) opens, truncates and appends to the files.
    """

    def __init__(self, out_dir: str, settings: dict, restart: bool, writer: bool = True):
        self.dir = os.path.abspath(out_dir)
        os.makedirs(self.dir, exist_ok=True)
        self.writer = writer
        self.progress_path = os.path.join(self.dir, "progress.json")
        self.done, self.counts = 0, {"samples": 0, "correct": 0, "kept": 0,
                                     "prompts_in_range": 0, "prompts_solved": 0}
        offsets = {name: 0 for name in FILES}
        if os.path.exists(self.progress_path) and not restart:
            with open(self.progress_path) as f:
                saved = json.load(f)
            changed = sorted(k for k in set(saved["settings"]) | set(settings)
                             if saved["settings"].get(k) != settings.get(k))
            if changed:
                raise UsageError(f"{self.dir} holds a run with different settings "
                                 f"({', '.join(changed)}); use the same flags to resume, "
                                 "or --restart")
            self.done, self.counts, offsets = saved["done"], saved["counts"], saved["offsets"]
            log.info("resuming after %d prompts", self.done)
        self.settings = settings
        self.files = {}
        distributed.barrier("r1jax_rejection_progress_read")  # before the writer rewrites it
        if not writer:
            return
        for name in FILES:
            path = os.path.join(self.dir, name)
            with open(path, "ab"):
                pass
            os.truncate(path, offsets[name])  # drops what a killed run wrote past its record
            self.files[name] = open(path, "ab")
        self._record()

    def write(self, lines: dict[str, list[dict]], done: int, counts: dict) -> None:
        """Appends a batch's lines, syncs them, then records the new position (the writer;
        the other processes only count)."""
        for name, rows in (lines.items() if self.writer else ()):
            f = self.files[name]
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
            f.flush()
            os.fsync(f.fileno())
        self.done = done
        for key, value in counts.items():
            self.counts[key] += value
        if self.writer:
            self._record()

    def _record(self) -> None:
        offsets = {name: self.files[name].tell() for name in FILES} if self.files else \
            {name: 0 for name in FILES}
        write_json(self.progress_path, {"settings": self.settings, "done": self.done,
                                        "counts": self.counts, "offsets": offsets})

    def close(self) -> None:
        for f in self.files.values():
            f.close()


# ----------------------------------------------------------------------------------------
# The loop.


def _sample_round(sampler, tok, pool, job, chunk, a, seed, indices) -> list[dict]:
    """k scored samples of each problem in `chunk` (one sampler call)."""
    from r1jax.sampling.sampler import LENGTH
    prompts = [p["prompt_ids"] for p in chunk]
    prompts += [prompts[-1]] * (a.batch_size - len(chunk))  # one compiled shape
    out = sampler.generate(prompts, n=a.k, max_new_tokens=job.max_new_tokens, seed=seed,
                           temperature=a.temperature, top_p=a.top_p, top_k=a.top_k)
    rows = len(chunk) * a.k
    texts = tok.batch_decode(out.completions()[:rows], skip_special_tokens=True)
    lengths = [int(x) for x in out.lengths[:rows]]
    scored = distributed.score_shared(pool, texts, [chunk[i // a.k] for i in range(rows)],
                                      lengths)
    samples = []
    for i in range(rows):
        p, j = divmod(i, a.k)
        verdicts = {name: float(v[i]) for name, v in scored.per_function.items()}
        samples.append({"id": str(chunk[p]["id"]), "prompt_index": indices[p], "sample": j,
                        "completion": texts[i], "tokens": lengths[i],
                        "truncated": bool(out.finish_reason[i] == LENGTH),
                        "reward": float(scored.total[i]), "verdicts": verdicts,
                        "correct": bool(scored.per_function[job.accuracy][i] > 0)})
    return samples


def run(a: argparse.Namespace, stop: Any = lambda: False) -> dict:
    """Samples, verifies and writes as the flags say; returns the summary.

    In a multi-process job every process samples and holds every completion, scores its
    share (`distributed.score_shared`), and takes the same keep / resample decisions from
    the gathered verdicts; process 0 alone writes --out_dir, which must be shared; a stop
    request on any process stops all after the same batch.
    """
    from r1jax.rewards import RewardPool
    from r1jax.sampling import Sampler

    _check_args(a)
    if distributed.multi_process():
        distributed.check_shared_dir(a.out_dir, "--out_dir")
    policy = pol.load_policy(a, pol.mesh_from_flag(a.mesh))
    job = _job(a, policy)
    if not job.problems:
        raise DataError("no prompts to sample")
    settings = _settings(a, policy, job)
    output = Output(a.out_dir, settings, a.restart, writer=distributed.is_writer())
    tok = policy.tokenizer
    longest = max(p["prompt_len"] for p in job.problems)
    sampler = Sampler(policy.model, max_prompt_len=longest, max_new_tokens=job.max_new_tokens,
                      eos_token_ids=policy.stop_token_ids,
                      pad_id=tok.pad_token_id if tok.pad_token_id is not None
                      else policy.stop_token_ids[0], max_slots=a.max_slots)
    provenance = {k: settings[k] for k in ("policy", "step", "temperature", "top_p", "top_k",
                                           "max_new_tokens")}
    start_time = time.perf_counter()
    try:
        with RewardPool(job.specs, num_workers=a.reward_workers,
                        timeout_s=a.reward_timeout) as pool:
            for start in range(output.done, len(job.problems), a.batch_size):
                if distributed.any_process(stop()):
                    log.info("stopping after %d prompts (signal)", output.done)
                    break
                chunk = job.problems[start:start + a.batch_size]
                lines, counts = _batch(sampler, tok, pool, job, chunk, a, start, provenance)
                output.write(lines, start + len(chunk), counts)
                log.info("%d / %d prompts", output.done, len(job.problems))
    finally:
        output.close()
    summary = dict(settings, prompts_done=output.done, complete=output.done == len(
        job.problems), dropped_long_prompts=job.dropped_long_prompts, **output.counts,
        seconds=time.perf_counter() - start_time)
    summary["pass_rate_mean"] = (output.counts["correct"] / output.counts["samples"]
                                 if output.counts["samples"] else 0.0)
    if output.writer:
        write_json(os.path.join(output.dir, "summary.json"), summary)
    return summary


def _batch(sampler, tok, pool, job, chunk, a, start, provenance) -> tuple[dict, dict]:
    """The lines and counts of one batch of prompts (all its rounds)."""
    indices = list(range(start, start + len(chunk)))
    per_prompt = {i: [] for i in indices}
    pending = list(range(len(chunk)))
    for round_ in range(a.resample_failed + 1):
        sub = [chunk[p] for p in pending]
        samples = _sample_round(sampler, tok, pool, job, sub, a,
                                batch_seed(a.seed, start, round_), [indices[p] for p in pending])
        for s in samples:
            s["round"] = round_
            per_prompt[s["prompt_index"]].append(s)
        pending = [p for p in pending if not any(s["correct"] for s in per_prompt[indices[p]])]
        if not pending:
            break
    lines = {name: [] for name in FILES}
    counts = {"samples": 0, "correct": 0, "kept": 0, "prompts_in_range": 0,
              "prompts_solved": 0}
    for p, index in enumerate(indices):
        samples = per_prompt[index]
        correct = [s["correct"] for s in samples]
        rate = sum(correct) / len(samples)
        problem = chunk[p]
        lines["samples.jsonl"].extend(samples)
        lines["pass_rates.jsonl"].append({"id": str(problem["id"]), "prompt_index": index,
                                          "samples": len(samples), "correct": sum(correct),
                                          "pass_rate": rate,
                                          "rounds": max(s["round"] for s in samples) + 1})
        counts["samples"] += len(samples)
        counts["correct"] += sum(correct)
        counts["prompts_solved"] += any(correct)
        if not a.pass_rate_min <= rate <= a.pass_rate_max:
            continue
        counts["prompts_in_range"] += 1
        for i in select_kept(correct, [s["tokens"] for s in samples], a.keep, a.seed, index):
            s = samples[i]
            lines["sft.jsonl"].append({
                "messages": conversation(problem, s["completion"], job.system_prompt),
                "id": s["id"], "prompt_index": index, "sample": s["sample"],
                "round": s["round"], "tokens": s["tokens"], "verdicts": s["verdicts"],
                "provenance": dict(provenance, seed=batch_seed(a.seed, start, s["round"]),
                                   keep=a.keep)})
            counts["kept"] += 1
    return lines, counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `r1jax-rejection-sample`; returns the exit status (2 for bad flags or
    paths, 0 also when SIGTERM stopped it early: run it again to continue)."""
    from r1jax.config import ConfigError
    from r1jax.models import CheckpointError, UnsupportedModelError
    errors = (UsageError, FileNotFoundError, DataError, ConfigError, CheckpointError,
              UnsupportedModelError, pol.PolicyError)
    parser = make_parser()
    a = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stopped = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    try:
        if distributed.initialize(distributed.config_from_args(a)):
            distributed.watch_processes()
        distributed.check_same_config(distributed.flags_config(a))
        try:
            summary = run(a, stop=lambda: bool(stopped))
        except Exception as e:  # noqa: BLE001 - a lost process ends the job with its name
            distributed.exit_if_peer_lost(e)
            raise
    except errors as e:
        print(f"r1jax-rejection-sample: error: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not distributed.is_writer():
        return 0
    state = "complete" if summary["complete"] else "stopped early (run again to continue)"
    print(f"{summary['prompts_done']} / {summary['prompts']} prompts {state} | samples "
          f"{summary['samples']} | correct {summary['correct']} (pass rate "
          f"{summary['pass_rate_mean']:.4f}) | prompts solved {summary['prompts_solved']} | "
          f"SFT rows {summary['kept']} | {os.path.abspath(a.out_dir)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Preference pairs from JSONL / Parquet rows, and from `r1jax-rejection-sample` output.

A loaded pair is `{"id", "prompt", "chosen", "rejected"}` (plus `ref_chosen_logps` /
`ref_rejected_logps` when the row stores them): the prompt a string or a message list, each
response a string or a message list; `r1jax.dpo.tokenize_pair` renders it. Layouts:

- "preference" (TRL's): `prompt` (string or messages), `chosen` and `rejected` (strings or
  messages). Without `prompt`, chosen and rejected are whole conversations and the prompt
  is the messages they begin with in common (TRL's implicit prompt).
- "sharegpt_ranking" (LLaMA-Factory's ranking data, e.g. Light-R1-DPOData): a
  `conversations` list of {from, value} turns (and an optional top-level `system`) is the
  prompt; `chosen` and `rejected` are one {from, value} turn each (or lists of them).
- "samples": `samples.jsonl` of r1jax-rejection-sample; see `pairs_from_samples`.
- "auto": "samples" when the first row has `completion` and `correct`, "sharegpt_ranking"
  when it has `conversations`, else "preference".

Recipes name public layouts: "light_r1_dpo" (sharegpt_ranking), "rejection_samples".
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from r1jax.data.sources import BadRow, DataError, LoadStats, load_examples, read_rows

LAYOUTS = ("auto", "preference", "sharegpt_ranking", "samples")
RECIPES = {"light_r1_dpo": "sharegpt_ranking", "rejection_samples": "samples"}
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}
CHOSEN_RULES = ("shortest", "random")
REJECTED_RULES = ("random", "longest", "shortest")


def _message(m: Any, where: str) -> dict:
    """A {role, content} or ShareGPT {from, value} turn as {role, content}."""
    if isinstance(m, dict) and isinstance(m.get("content"), str) \
            and m.get("role") in ("system", "user", "assistant"):
        return {"role": m["role"], "content": m["content"]}
    if isinstance(m, dict) and isinstance(m.get("value"), str) and m.get("from") in _ROLES:
        return {"role": _ROLES[m["from"]], "content": m["value"]}
    raise BadRow("bad_message", f"{where}: a turn is not {{role, content}} or "
                                f"{{from, value}}: {m!r:.80}")


def _side(value: Any, where: str) -> Any:
    """A prompt or response: a non-empty string, or a list of turns as messages."""
    if isinstance(value, str):
        if not value.strip():
            raise BadRow("missing_field", f"empty `{where}`")
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise BadRow("missing_field", f"no `{where}` (a string or a list of messages)")
    return [_message(m, where) for m in value]


def _implicit_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """(shared leading messages, chosen rest, rejected rest) of two conversations."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def to_pair(row: dict, layout: str) -> dict:
    """One row as {"prompt", "chosen", "rejected"} (BadRow when it does not fit `layout`)."""
    if layout == "sharegpt_ranking":
        turns = row.get("conversations")
        if not isinstance(turns, (list, tuple)) or not turns:
            raise BadRow("missing_field", "no `conversations` list")
        prompt = [_message(t, "conversations") for t in turns]
        if isinstance(row.get("system"), str) and row["system"].strip():
            prompt.insert(0, {"role": "system", "content": row["system"]})
        chosen, rejected = _side(row.get("chosen"), "chosen"), \
            _side(row.get("rejected"), "rejected")
    elif layout == "preference":
        chosen, rejected = _side(row.get("chosen"), "chosen"), \
            _side(row.get("rejected"), "rejected")
        if row.get("prompt") is not None:
            prompt = _side(row["prompt"], "prompt")
        elif isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = _implicit_prompt(chosen, rejected)
        else:
            raise BadRow("missing_field", "no `prompt` (needed with string responses)")
    else:
        raise ValueError(f"unknown preference layout {layout!r} (known: {LAYOUTS})")
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        if key in row:
            if isinstance(row[key], bool) or not isinstance(row[key], (int, float)):
                raise BadRow("wrong_type", f"`{key}` is not a number: {row[key]!r:.40}")
            out[key] = float(row[key])
    return out


def detect_layout(path: str) -> str:
    """The layout "auto" stands for in `path` (its first row decides)."""
    for _, row in read_rows(path):
        if isinstance(row, dict):
            if "completion" in row and "correct" in row:
                return "samples"
            return "sharegpt_ranking" if "conversations" in row else "preference"
        break
    return "preference"


def load_pairs(path: str, layout: str = "auto", *, strict: bool = False,
               limit: Optional[int] = None, **sample_options: Any
               ) -> tuple[list[dict], Any]:
    """Preference pairs of a JSONL / Parquet file; `layout` a LAYOUTS or RECIPES name.

    Returns (pairs, LoadStats), or with the "samples" layout (pairs, counts of
    `pairs_from_samples`, which gets `sample_options`). Each pair has an `id`: the row's
    `id` when it is a string or an integer, else the row number.
    """
    layout = RECIPES.get(layout, layout)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown preference layout {layout!r} (layouts: {LAYOUTS}; "
                         f"recipes: {tuple(RECIPES)})")
    if layout == "auto":
        layout = detect_layout(path)
    if layout == "samples":
        pairs, counts = pairs_from_samples(path, **sample_options)
        return pairs[:limit] if limit else pairs, counts

    def recipe(row: Any, number: int) -> dict:
        given = row.get("id")
        return dict(to_pair(row, layout),
                    id=given if isinstance(given, (str, int)) else number)
    return load_examples(path, recipe, strict=strict, limit=limit)


# ----------------------------------------------------------------------------------------
# Pairs from rejection sampling.


def select_pair(correct: Sequence[bool], lengths: Sequence[int], usable: Sequence[bool], *,
                chosen: str = "shortest", rejected: str = "random", seed: int = 0,
                prompt_index: int = 0) -> Optional[tuple[int, int]]:
    """(chosen, rejected) sample indices of one prompt, or None without a usable correct and
    a usable incorrect sample.

    Args:
      correct: [k] verdicts; lengths: [k] completion tokens; usable: [k] False for samples
        left out (truncated ones, unless allowed).
      chosen: "shortest" correct sample (lowest index among equals) or a "random" one.
      rejected: a "random" incorrect sample, the "longest" (lowest index among equals) or
        the "shortest".
      seed, prompt_index: the random draws use a generator seeded by (seed, prompt_index),
        chosen first.
    """
    if chosen not in CHOSEN_RULES:
        raise ValueError(f"chosen must be one of {CHOSEN_RULES}, got {chosen!r}")
    if rejected not in REJECTED_RULES:
        raise ValueError(f"rejected must be one of {REJECTED_RULES}, got {rejected!r}")
    hits = [i for i, (c, u) in enumerate(zip(correct, usable)) if c and u]
    misses = [i for i, (c, u) in enumerate(zip(correct, usable)) if not c and u]
    if not hits or not misses:
        return None
    rng = np.random.default_rng([seed, prompt_index])
    shortest = lambda idx: min(idx, key=lambda i: (lengths[i], i))
    good = shortest(hits) if chosen == "shortest" else hits[int(rng.integers(len(hits)))]
    if rejected == "random":
        bad = misses[int(rng.integers(len(misses)))]
    elif rejected == "longest":
        bad = min(misses, key=lambda i: (-lengths[i], i))
    else:
        bad = shortest(misses)
    return good, bad


def _prompts_from_sft(sft_path: str, samples: dict) -> dict[str, tuple[list, str]]:
    """id -> (prompt messages, completion prefix) from r1jax-rejection-sample's sft.jsonl:
    each row's messages without the last turn, and the text the assistant turn holds before
    its sample's completion (e.g. "<think>")."""
    out = {}
    for number, row in read_rows(sft_path):
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise DataError(f"{sft_path}: line {number} has no `messages`")
        key = (row.get("prompt_index"), row.get("sample"), row.get("round"))
        completion = samples.get(key, {}).get("completion")
        content = row["messages"][-1]["content"]
        if completion is None or not content.endswith(completion):
            continue
        out[str(row["id"])] = (row["messages"][:-1], content[:len(content) - len(completion)])
    return out


def pairs_from_samples(path: str, *, problems: Optional[dict] = None, prefix: str = "",
                       chosen: str = "shortest", rejected: str = "random", seed: int = 0,
                       allow_truncated: bool = False) -> tuple[list[dict], dict]:
    """One preference pair per prompt from r1jax-rejection-sample's `samples.jsonl`: a
    correct completion (chosen) and an incorrect one (rejected) of the same prompt, by
    `select_pair`'s rules. Completions cut at the token limit are left out unless
    `allow_truncated` (they have no ending, and a pair would render them as finished).

    The prompt of each id comes from `problems` (id -> question string or message list;
    each response is then `prefix` + completion) or, by default, from `sft.jsonl` beside
    `path` (its conversation's turns before the answer, and the answer's text before the
    completion as the prefix): a prompt whose pass rate was outside the sampler's
    --pass_rate_min/max range has no sft.jsonl row and needs `problems`.

    Returns:
      (pairs in prompt order, counts: prompts, pairs, no_correct, no_incorrect, no_prompt).
    Raises:
      DataError: a missing file or a line without the sample fields.
    """
    if not os.path.isfile(path):
        raise DataError(f"samples file {path} does not exist (r1jax-rejection-sample writes "
                        "OUT_DIR/samples.jsonl)")
    groups: dict[int, list[dict]] = collections.defaultdict(list)
    by_key = {}
    for number, row in read_rows(path):
        need = ("id", "prompt_index", "completion", "correct", "tokens")
        if not isinstance(row, dict) or any(k not in row for k in need):
            raise DataError(f"{path}: line {number} is not a sample (needs {', '.join(need)})")
        groups[row["prompt_index"]].append(row)
        by_key[(row["prompt_index"], row.get("sample"), row.get("round", 0))] = row
    if problems is None:
        sft_path = os.path.join(os.path.dirname(os.path.abspath(path)), "sft.jsonl")
        prompts = _prompts_from_sft(sft_path, by_key) if os.path.isfile(sft_path) else {}
    else:
        prompts = {str(k): (v, prefix) for k, v in problems.items()}
    counts = dict.fromkeys(("prompts", "pairs", "no_correct", "no_incorrect", "no_prompt"), 0)
    pairs = []
    for index in sorted(groups):
        rows = groups[index]
        counts["prompts"] += 1
        usable = [allow_truncated or not r.get("truncated", False) for r in rows]
        correct = [bool(r["correct"]) for r in rows]
        picked = select_pair(correct, [r["tokens"] for r in rows], usable, chosen=chosen,
                             rejected=rejected, seed=seed, prompt_index=index)
        if picked is None:
            ok = [c for c, u in zip(correct, usable) if u]
            counts["no_correct" if not any(ok) else "no_incorrect"] += 1
            continue
        key = str(rows[0]["id"])
        if key not in prompts:
            counts["no_prompt"] += 1
            continue
        prompt, head = prompts[key]
        answer = lambda i: [{"role": "assistant", "content": head + rows[i]["completion"]}]
        pairs.append({"id": key, "prompt": prompt, "chosen": answer(picked[0]),
                      "rejected": answer(picked[1])})
        counts["pairs"] += 1
    return pairs, counts


def pairs_from_solutions(examples: Sequence[dict], seed: int = 0) -> list[dict]:
    """Synthetic pairs from a dataset with worked solutions (a generated task, for smoke runs
    and toy experiments): for example i, the question as one user turn, its own `solution`
    as chosen, and as rejected the solution of another example with a different `answer`,
    drawn with a generator seeded by (seed, i). Examples whose answer no other example
    differs from are left out.

    Raises:
      DataError: an example without `question`, `solution` or `answer`.
    """
    for ex in examples:
        if not all(ex.get(k) not in (None, "") for k in ("question", "solution", "answer")):
            raise DataError(f"example {ex.get('id')!r} needs `question`, `solution` and "
                            "`answer` to make a preference pair")
    pairs = []
    for i, ex in enumerate(examples):
        others = [j for j, o in enumerate(examples) if str(o["answer"]) != str(ex["answer"])]
        if not others:
            continue
        j = others[int(np.random.default_rng([seed, i]).integers(len(others)))]
        pairs.append({"id": ex.get("id", i),
                      "prompt": [{"role": "user", "content": ex["question"]}],
                      "chosen": [{"role": "assistant", "content": ex["solution"]}],
                      "rejected": [{"role": "assistant", "content": examples[j]["solution"]}]})
    return pairs


def write_pairs(path: str, pairs: Sequence[dict]) -> None:
    """Writes pairs as JSONL in the "preference" layout."""
    with open(path, "w") as f:
        f.write("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))

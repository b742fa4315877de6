"""Pass rates of prompts under a policy, and difficulty filtering by them.

`r1jax-rejection-sample` writes `pass_rates.jsonl`: one line per prompt with its `id`, the
number of `samples` drawn, how many were `correct`, and `pass_rate` = correct / samples.
`filter_by_pass_rate` keeps the examples of a source whose pass rate lies in a closed range
(config `data.pass_rates`, `data.pass_rate_min`, `data.pass_rate_max`): the usual choice
drops what the policy always solves (nothing left to learn) and what it never solves (no
reward signal), e.g. the range [0.125, 0.875].
"""

from __future__ import annotations

import dataclasses
import json
import os

from r1jax.data.sources import DataError, PromptSource


def read_pass_rates(path: str) -> dict[str, float]:
    """id -> pass rate from a `pass_rates.jsonl` file.

    Raises:
      FileNotFoundError: no such file.
      DataError: a line that is not JSON, lacks `id` / `pass_rate`, has a rate outside
        [0, 1], or repeats an id (named with its line number).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pass-rate file {path} does not exist (r1jax-rejection-sample "
                                "writes OUT_DIR/pass_rates.jsonl)")
    rates: dict[str, float] = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, rate = str(row["id"]), float(row["pass_rate"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path} line {number}: not a pass-rate row with `id` and "
                                f"`pass_rate` ({e})") from None
            if not 0.0 <= rate <= 1.0:
                raise DataError(f"{path} line {number}: pass_rate {rate} is outside [0, 1]")
            if key in rates:
                raise DataError(f"{path} line {number}: id {key!r} appears twice")
            rates[key] = rate
    return rates


def filter_by_pass_rate(source: PromptSource, path: str, low: float = 0.0,
                        high: float = 1.0) -> PromptSource:
    """The examples of `source` whose pass rate in `path` lies in [low, high].

    Examples without a pass rate are dropped too; both drops are counted in the returned
    source's `stats.skipped` ("pass_rate_out_of_range", "no_pass_rate").

    Raises:
      ValueError: not 0 <= low <= high <= 1.
      DataError: no example is left.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= pass_rate_min <= pass_rate_max <= 1, got [{low}, {high}]")
    rates = read_pass_rates(path)
    kept, out_of_range, missing = [], 0, 0
    for example in source.examples:
        rate = rates.get(str(example["id"]))
        if rate is None:
            missing += 1
        elif low <= rate <= high:
            kept.append(example)
        else:
            out_of_range += 1
    stats = dataclasses.replace(source.stats, kept=len(kept),
                                skipped=source.stats.skipped.copy())
    if out_of_range:
        stats.skipped["pass_rate_out_of_range"] += out_of_range
    if missing:
        stats.skipped["no_pass_rate"] += missing
    if not kept:
        raise DataError(f"{source.name}: no example has a pass rate in [{low}, {high}] in "
                        f"{path} ({out_of_range} outside the range, {missing} without a rate)")
    return dataclasses.replace(source, examples=kept, stats=stats)

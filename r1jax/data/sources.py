"""Local JSONL / Parquet files as random-access sources of validated examples.

A recipe turns each raw row into an example dict (`id`, `question`, `answer`, extras) or raises
BadRow; bad rows (invalid UTF-8, bad JSON, missing field, wrong type, empty question) are
skipped and counted by reason, the first few logged, or raise DataError in strict mode. A
missing file, or one without a single usable row, is a DataError at start-up.

`PromptSource` holds the examples in memory (the largest R1 training sets are ~10^5 short
rows) and implements grain's random-access protocol (`__len__`, `__getitem__`).
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import logging
import os
from typing import Any, Callable, Iterator, Optional

log = logging.getLogger(__name__)

Recipe = Callable[[dict, int], dict]


class DataError(ValueError):
    """A dataset that cannot be used: missing or empty file, or a bad row in strict mode."""


class BadRow(ValueError):
    """A row a recipe cannot use. `reason` is the counter key, e.g. "missing_field"."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass
class LoadStats:
    """What loading a file kept and skipped.

    Attributes:
      path: the file.
      rows: rows read (JSONL lines that are not blank, or Parquet rows).
      kept: rows that became examples.
      skipped: reason -> count ("invalid_utf8", "bad_json", "not_object", "missing_field",
        "wrong_type", "empty_question", "empty_answer", "no_final_answer").
      examples: "line N: message" for the first few skipped rows.
    """

    path: str
    rows: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": self.path, "rows": self.rows, "kept": self.kept,
                "skipped": dict(self.skipped), "examples": list(self.examples)}


@dataclasses.dataclass
class PromptSource:
    """Validated examples of one dataset (a grain random-access data source).

    Attributes:
      name: benchmark name or file path.
      task: "math" (examples carry `answer`) or "countdown" (`numbers`, `target`).
      examples: dicts with at least `id` (str), `question` (str) and `answer`.
      stats: the loading counts (rows read, kept, skipped by reason).
    """

    name: str
    task: str
    examples: list
    stats: LoadStats

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


def _jsonl_rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or BadRow) for each non-blank line."""
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, BadRow("invalid_utf8", f"invalid UTF-8 at byte {e.start}")
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield number, BadRow("bad_json", f"bad JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(row, dict):
                yield number, BadRow("not_object", f"a JSON {type(row).__name__}, not an object")
                continue
            yield number, row


def _parquet_rows(path: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for broken files
        raise DataError(f"{path}: not a readable Parquet file: {e}") from e
    number = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def read_rows(path: str) -> Iterator[tuple[int, Any]]:
    """Rows of a `.jsonl` / `.json` (one object per line, also gzipped: `.jsonl.gz`) or
    `.parquet` file.

    Raises:
      DataError: the file does not exist or has an unknown extension.
    """
    if not os.path.isfile(path):
        raise DataError(f"dataset file not found: {path}")
    extension = os.path.splitext(path.removesuffix(".gz"))[1].lower()
    if extension in (".jsonl", ".json"):
        return _jsonl_rows(path)
    if extension == ".parquet":
        return _parquet_rows(path)
    raise DataError(f"{path}: unknown dataset format {extension!r} (expected .jsonl or .parquet)")


def load_examples(path: str, recipe: Recipe, *, strict: bool = False, limit: Optional[int] = None,
                  max_logged: int = 5) -> tuple[list, LoadStats]:
    """Reads `path` and converts every row with `recipe(row, row_number)`.

    Args:
      path: a JSONL or Parquet file.
      recipe: raw row, 1-based row number -> example dict; raises BadRow for unusable rows.
      strict: raise DataError on the first bad row instead of skipping it.
      limit: stop after this many kept examples (the first ones in file order).
      max_logged: bad rows logged (and kept in `stats.examples`).

    Raises:
      DataError: missing file, bad row in strict mode, or no usable row at all.
    """
    stats = LoadStats(path=path)
    examples = []
    for number, row in read_rows(path):
        stats.rows += 1
        try:
            if isinstance(row, BadRow):
                raise row
            examples.append(recipe(row, number))
        except BadRow as bad:
            if strict:
                raise DataError(f"{path}: line {number}: {bad}") from bad
            stats.skipped[bad.reason] += 1
            if len(stats.examples) < max_logged:
                stats.examples.append(f"line {number}: {bad}")
                log.warning("%s: skipping line %d: %s", path, number, bad)
            continue
        stats.kept += 1
        if limit is not None and stats.kept >= limit:
            break
    if not examples:
        detail = f"; skipped {dict(stats.skipped)}" if stats.skipped else ""
        raise DataError(f"{path}: no usable rows ({stats.rows} read{detail})")
    return examples, stats

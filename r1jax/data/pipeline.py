"""The prompt pipeline: source -> template -> length filter -> shuffle / shard -> batches.

Built on grain's MapDataset: a global shuffle that differs per epoch (`shuffle` before
`repeat`), then `[shard_index::shard_count]`, so that at batch k the shard_count processes
together hold positions [k * B * shard_count, (k + 1) * B * shard_count) of the global order
(B = batch_size, prompts per process per step). The iterator's state is the index of the
next batch, so a restored iterator continues with exactly the batches that remain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any, Optional

import grain

from r1jax.data.sources import DataError, PromptSource
from r1jax.data.templates import PromptTemplate, make_template

log = logging.getLogger(__name__)
_STATE_VERSION = 1
_TOKENIZE_BATCH = 1024


@dataclasses.dataclass
class FilterStats:
    """Prompt-length filtering: `kept` of `total` prompts; `too_long` exceed the limit."""

    total: int
    kept: int
    too_long: int
    max_prompt_tokens: Optional[int]
    longest_kept: int


def _encode(tokenizer: Any, texts: list, add_special_tokens: bool) -> list:
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


def prepare_prompts(source: PromptSource, tokenizer: Any, template: PromptTemplate,
                    max_prompt_tokens: Optional[int]) -> tuple[list, FilterStats]:
    """Renders every prompt and drops those longer than `max_prompt_tokens` tokens.

    Returns:
      (examples with `prompt_text`, `prompt_len`, `completion_prefix` added, counts).
    """
    add_special = not template.uses_chat_template
    rendered = [dict(ex, prompt_text=template.render(ex["question"], tokenizer),
                     completion_prefix=template.completion_prefix) for ex in source.examples]
    for start in range(0, len(rendered), _TOKENIZE_BATCH):
        chunk = rendered[start:start + _TOKENIZE_BATCH]
        ids = _encode(tokenizer, [ex["prompt_text"] for ex in chunk], add_special)
        for ex, row in zip(chunk, ids):
            ex["prompt_len"] = len(row)
    kept = [ex for ex in rendered
            if max_prompt_tokens is None or ex["prompt_len"] <= max_prompt_tokens]
    stats = FilterStats(total=len(rendered), kept=len(kept), too_long=len(rendered) - len(kept),
                        max_prompt_tokens=max_prompt_tokens,
                        longest_kept=max((ex["prompt_len"] for ex in kept), default=0))
    if stats.too_long:
        log.info("%s: dropped %d of %d prompts longer than %d tokens", source.name,
                 stats.too_long, stats.total, max_prompt_tokens)
    if not kept:
        raise DataError(f"{source.name}: all {stats.total} prompts are longer than "
                        f"max_prompt_tokens={max_prompt_tokens}")
    return kept, stats


class PromptIterator:
    """Batches of prompt examples; `get_state` / `set_state` resume exactly.

    Each example is the source example (`id`, `question`, `answer`, task fields such as
    `numbers` and `target`) plus `prompt_text`, `prompt_ids` (list[int]), `prompt_len`,
    `completion_prefix` and `epoch`.
    """

    def __init__(self, source: PromptSource, tokenizer: Any, template: PromptTemplate,
                 batch_size: int, seed: int, shard_index: int, shard_count: int,
                 max_prompt_tokens: Optional[int], num_epochs: Optional[int]):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, "
                             f"{shard_count}")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.source = source
        self.template = template
        self.batch_size = batch_size
        examples, self.filter_stats = prepare_prompts(source, tokenizer, template,
                                                      max_prompt_tokens)
        size = len(examples)
        add_special = not template.uses_chat_template

        def finish(index: int, example: dict) -> dict:
            ids = _encode(tokenizer, [example["prompt_text"]], add_special)[0]
            epoch = (shard_index + index * shard_count) // size
            return dict(example, prompt_ids=list(ids), epoch=epoch)

        dataset = grain.MapDataset.source(examples).shuffle(seed=seed).repeat(num_epochs)
        self._batches = (dataset[shard_index::shard_count].map_with_index(finish)
                         .batch(batch_size, drop_remainder=True, batch_fn=list))
        self._length = None if num_epochs is None else len(self._batches)
        self._next = 0
        self._fingerprint = _fingerprint(
            [ex["id"] for ex in examples], template, batch_size, seed, shard_index,
            shard_count, max_prompt_tokens, num_epochs)

    def __iter__(self) -> "PromptIterator":
        return self

    def __next__(self) -> list:
        if self._length is not None and self._next >= self._length:
            raise StopIteration
        batch = self._batches[self._next]
        self._next += 1
        return batch

    def __len__(self) -> int:
        """Batches per full run (finite num_epochs only)."""
        if self._length is None:
            raise TypeError("an iterator with num_epochs=None has no length")
        return self._length

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch index and the pipeline's fingerprint."""
        return {"version": _STATE_VERSION, "next_batch": self._next,
                "fingerprint": self._fingerprint}

    def set_state(self, state: dict) -> None:
        """Resumes at `state["next_batch"]`.

        Raises:
          DataError: a state from another pipeline (data, template, batch size, seed or
            sharding differ), or of another version.
        """
        if state.get("version") != _STATE_VERSION:
            raise DataError(f"data iterator state version {state.get('version')!r}, expected "
                            f"{_STATE_VERSION}")
        if state.get("fingerprint") != self._fingerprint:
            raise DataError("data iterator state belongs to a different pipeline (dataset, "
                            "template, batch size, seed, sharding or length filter changed)")
        next_batch = int(state["next_batch"])
        if next_batch < 0 or (self._length is not None and next_batch > self._length):
            raise DataError(f"data iterator state next_batch={next_batch} is out of range")
        self._next = next_batch


def _fingerprint(ids: list, template: PromptTemplate, *settings: Any) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([ids, dataclasses.asdict(template), settings]).encode())
    return digest.hexdigest()[:32]


def make_prompt_iterator(source: PromptSource, tokenizer: Any,
                         template: "str | PromptTemplate", batch_size: int, seed: int,
                         shard_index: int = 0, shard_count: int = 1,
                         max_prompt_tokens: Optional[int] = None,
                         num_epochs: Optional[int] = None) -> PromptIterator:
    """An iterator over batches of `batch_size` prompts for this process.

    Args:
      source: examples from `load_source`, `generate_countdown`, ...
      tokenizer: a transformers tokenizer (chat templates need its `chat_template`).
      template: a TEMPLATES name ("r1_zero", "qwen_math", "chat", "plain") or a template.
      batch_size: prompts per batch for this process (the group size G multiplies it later).
      seed: shuffling seed in [0, 2**32); each epoch is shuffled differently.
      shard_index, shard_count: this process's shard of the global order.
      max_prompt_tokens: drop prompts longer than this (counted in `filter_stats`).
      num_epochs: passes over the data; None repeats forever. The last partial batch of a
        finite run is dropped.

    Raises:
      DataError: every prompt is too long, or the template cannot be rendered.
    """
    if isinstance(template, str):
        template = make_template(template)
    return PromptIterator(source, tokenizer, template, batch_size, seed, shard_index,
                          shard_count, max_prompt_tokens, num_epochs)

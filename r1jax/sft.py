"""Supervised fine-tuning: conversations rendered with the chat template (or, for the RL
trainer's warm start, prompts followed by worked solutions), packed several to a row, trained
with the next-token loss on the assistant / solution tokens only.

The loss is the mean negative log-likelihood of the trained tokens (each assistant turn's
end-of-turn token, or the solution's EOS, included) over all trained tokens of the optimizer
batch; `r1jax-sft` (`r1jax.sft_run`) and the warm start share `make_packed_sft_update`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r1jax.config import ModelConfig
from r1jax.rl.update import apply_update
from r1jax.sharding import Sharding


def solution_ids(tokenizer: Any, examples: Sequence[dict], eos_id: int) -> list[list[int]]:
    """Token ids of each example's `solution`, followed by EOS.

    Raises:
      ValueError: an example has no `solution`.
    """
    out = []
    for ex in examples:
        if not ex.get("solution"):
            raise ValueError(f"SFT example {ex.get('id')!r} has no `solution` text")
        out.append(list(tokenizer.encode(ex["solution"], add_special_tokens=False)) + [eos_id])
    return out


def warm_start_examples(examples: Sequence[dict], tokenizer: Any,
                        eos_id: int) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of each example for `pack`: its prompt ids (as the RL prompt template
    rendered them, mask 0) followed by its solution and EOS (mask 1)."""
    return [(list(e["prompt_ids"]) + sol, [0] * len(e["prompt_ids"]) + [1] * len(sol))
            for e, sol in zip(examples, solution_ids(tokenizer, examples, eos_id))]


# ----------------------------------------------------------------------------------------
# Conversations, packing and the packed next-token loss (r1jax-sft).


def render_conversation(tokenizer: Any, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation rendered with the tokenizer's chat template, and a 0/1
    mask that is 1 exactly on the tokens of assistant turns (each turn's content and its
    end-of-turn token, e.g. Qwen's `<|im_end|>`; not the role header, not the newline after).

    Assistant spans are found by rendering: turn i's text starts where the template's render of
    messages[:i] with the generation prompt ends and ends where the render of messages[:i + 1]
    ends (trailing whitespace dropped); a token belongs to a turn when its first character
    does (the fast tokenizer's offsets).

    Raises:
      ValueError: no assistant turn, a message without role / content, or a template whose
        render of a conversation's first turns is not a prefix of the render of the whole
        conversation (the spans could not be placed).
    """
    if not messages or not any(m.get("role") == "assistant" for m in messages):
        raise ValueError("an SFT conversation needs at least one assistant turn")
    for i, m in enumerate(messages):
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} needs string `role` and `content`, got {m!r}")
    render = lambda ms, gen: tokenizer.apply_chat_template(list(ms), tokenize=False,
                                                           add_generation_prompt=gen)
    text = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head, upto = render(messages[:i], True), render(messages[:i + 1], False).rstrip()
        if not (text.startswith(head) and text.startswith(upto) and len(upto) > len(head)):
            raise ValueError(f"the chat template does not render turn {i} as a prefix of "
                             "the whole conversation; assistant tokens cannot be located")
        spans.append((len(head), len(upto)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in enc["offset_mapping"]]
    return ids, mask


def best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bins: each length (longest first, ties by index) goes to the open
    bin it fills most tightly, or a new one. Returns bins of indices, each bin's indices in
    input order, bins ordered by their smallest index. Every length must be <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"length {n} exceeds the bin capacity {capacity}")
        fits = [b for b in range(len(bins)) if room[b] >= n]
        if fits:
            b = min(fits, key=lambda b: (room[b], b))
            bins[b].append(i)
            room[b] -= n
        else:
            bins.append([i])
            room.append(capacity - n)
    return sorted((sorted(b) for b in bins), key=lambda b: b[0])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SFTBatch:
    """Packed rows of conversations: [R, S] each.

    tokens: int32 ids (pad after the last segment). positions: int32, 0 at each segment's
    first token. segment_ids: int32, 1, 2, ... per packed example, 0 on padding (no token
    attends across segments). targets: int32, the next token of the same segment (0 where
    there is none). weights: float32, 1 where targets[r, s] is an assistant token to train
    on, else 0.
    """

    tokens: Any
    positions: Any
    segment_ids: Any
    targets: Any
    weights: Any


@dataclasses.dataclass
class PackStats:
    """What packing did: examples packed, truncated (cut to the row length) and dropped
    (too long, with `overflow="drop"`, or without an assistant token left), rows, and
    real tokens / row tokens."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    rows: int = 0
    tokens: int = 0
    row_tokens: int = 0

    @property
    def efficiency(self) -> float:
        return self.tokens / max(self.row_tokens, 1)


def pack(examples: Sequence[tuple[Sequence[int], Sequence[int]]], max_len: int, *,
         pad_id: int = 0, overflow: str = "truncate", rows: Optional[int] = None
         ) -> tuple[dict, PackStats]:
    """Packs (ids, assistant mask) examples into rows of `max_len` tokens (`best_fit`).

    Args:
      overflow: an example longer than max_len is cut to its first max_len tokens
        ("truncate") or left out ("drop"); both are counted. An example with no assistant
        token within its first max_len tokens is dropped and counted either way.
      rows: pad the result with empty rows to this many (an error if more are needed).
    Returns:
      (numpy SFTBatch fields as a dict, PackStats).
    """
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', got {overflow!r}")
    stats = PackStats()
    kept = []
    for ids, mask in examples:
        if len(ids) != len(mask):
            raise ValueError(f"ids ({len(ids)}) and mask ({len(mask)}) differ in length")
        if len(ids) > max_len:
            if overflow == "drop":
                stats.dropped += 1
                continue
            ids, mask = ids[:max_len], mask[:max_len]
            stats.truncated += 1
        if not any(mask[1:]):  # nothing to predict
            stats.dropped += 1
            continue
        kept.append((list(ids), list(mask)))
    bins = best_fit([len(ids) for ids, _ in kept], max_len)
    count = len(bins) if rows is None else rows
    if count < len(bins):
        raise ValueError(f"{len(kept)} examples need {len(bins)} rows of {max_len} tokens, "
                         f"more than rows={rows}")
    out = {k: np.zeros((count, max_len), np.int32)
           for k in ("tokens", "positions", "segment_ids", "targets")}
    out["tokens"][:] = pad_id
    out["weights"] = np.zeros((count, max_len), np.float32)
    for r, members in enumerate(bins):
        at = 0
        for seg, i in enumerate(members, start=1):
            ids, mask = kept[i]
            n = len(ids)
            span = slice(at, at + n)
            out["tokens"][r, span] = ids
            out["positions"][r, span] = np.arange(n)
            out["segment_ids"][r, span] = seg
            out["targets"][r, at:at + n - 1] = ids[1:]
            out["weights"][r, at:at + n - 1] = mask[1:]
            at += n
        stats.tokens += at
    stats.examples, stats.rows, stats.row_tokens = len(kept), count, count * max_len
    return out, stats


def padded_rows(rows: int, unit: int) -> int:
    """`rows` rounded up to a power of two times `unit` (at least `unit`): the row counts a
    packed batch is padded to, so that a run compiles few shapes."""
    return unit * (1 << (max(1, -(-rows // unit)) - 1).bit_length())


def pack_batch(examples: Sequence[tuple[Sequence[int], Sequence[int]]], max_len: int, *,
               row_unit: int, pad_id: int = 0, overflow: str = "truncate"
               ) -> tuple[SFTBatch, PackStats]:
    """`pack`, with the rows padded (empty rows) to a power of two times `row_unit`
    (microbatches x batch parallelism), so that a run compiles few shapes; the stats are the
    packer's (its rows, before padding)."""
    arrays, stats = pack(examples, max_len, pad_id=pad_id, overflow=overflow)
    extra = padded_rows(stats.rows, row_unit) - stats.rows
    arrays = {k: np.pad(v, ((0, extra), (0, 0)), constant_values=pad_id if k == "tokens" else 0)
              for k, v in arrays.items()}
    return SFTBatch(**arrays), stats


def sft_token_sums(params: Any, batch: SFTBatch, cfg: ModelConfig,
                   sharding: Optional[Sharding] = None) -> tuple[jax.Array, jax.Array]:
    """(sum over trained tokens of -log p(target), trained tokens) of a packed batch.

    h [R, S, D] at every position predicts targets [R, S]; weights select the assistant
    targets. Never forms [R, S, V] logits (`token_logprobs`).
    """
    from r1jax.models import decoder
    from r1jax.rl.logprobs import token_logprobs
    h = decoder.final_hidden(params, batch.tokens, cfg, positions=batch.positions,
                             segment_ids=batch.segment_ids, sharding=sharding)
    logp, _ = token_logprobs(h, decoder.lm_head_kernel(params, cfg), batch.targets,
                             return_entropy=False)
    return -jnp.sum(logp * batch.weights), jnp.sum(batch.weights)


def make_packed_sft_update(cfg: ModelConfig, tx: optax.GradientTransformation,
                           sharding: Optional[Sharding], microbatches: int = 1):
    """`update(state, batch) -> (state, metrics)`: one optimizer step on a packed SFTBatch
    of R rows (R divisible by `microbatches`), through the RL update's machinery
    (`accumulate_grads`, `apply_update`).

    The loss is the mean over the whole batch's trained tokens: each microbatch's sum is
    divided by the batch's token count, so microbatching, packing and the device count
    leave the gradient unchanged.
    """
    from r1jax.rl.update import accumulate_grads

    def update(state, batch: SFTBatch):
        tokens = jnp.sum(batch.weights)
        denominator = jnp.maximum(tokens, 1.0)

        def loss_fn(params, piece):
            nll, count = sft_token_sums(params, piece, cfg, sharding)
            return nll / denominator, {"tokens": count}

        loss, sums, grads = accumulate_grads(loss_fn, state["params"], batch, microbatches)
        state, opt = apply_update(state, grads, loss, tx, tokens=sums["tokens"])
        return state, {"sft/loss": loss, "sft/tokens": sums["tokens"],
                       "sft/grad_norm": opt["grad_norm"], "sft/skipped": opt["skipped"],
                       "sft/empty": opt["empty"]}

    return update

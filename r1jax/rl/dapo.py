"""DAPO's overlong reward shaping, overlong filtering and dynamic sampling (group filtering).

`overlong_penalty` and `filter_truncated` are pure array functions (jit-able).
`keep_groups` and `DynamicSampler` run on the host, between reward computation and the update:

    sampler = DynamicSampler(train_batch=512, group_size=16, max_num_gen_batches=10,
                             min_train_batch=256)
    status = Status.NEED_MORE
    while status is Status.NEED_MORE:
        rewards, correct, groups = generate_and_score(next_prompts())  # one generation batch
        status = sampler.add(rewards, groups, correct=correct)
    if status is Status.EXHAUSTED:
        save_checkpoint()                  # then take() raises DynamicSamplingError
    groups, stats = sampler.take()         # resets the sampler for the next step
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)


def overlong_penalty(lengths: jax.Array, max_len: int, buffer_len: int,
                     factor: float = 1.0) -> jax.Array:
    """DAPO's soft overlong punishment, a reward term added to each completion's reward.

    With |y| the completion length in TOKENS, L_max = max_len, L_buf = buffer_len:

        0                                  if |y| <= L_max - L_buf
        (L_max - L_buf - |y|) / L_buf x f  if L_max - L_buf < |y| <= L_max
        -f                                 if |y| > L_max

    (continuous: -f at |y| = L_max).

    Args:
      lengths: [B] completion lengths in tokens (int or float).
      max_len: L_max, the maximum completion length in tokens.
      buffer_len: L_buf, 1 <= L_buf <= L_max.
      factor: f >= 0, the penalty at and beyond L_max.

    Returns:
      [B] float32 penalties in [-f, 0].
    """
    if not 1 <= buffer_len <= max_len:
        raise ValueError(f"overlong buffer_len={buffer_len} must satisfy "
                         f"1 <= buffer_len <= max_len={max_len}")
    if factor < 0:
        raise ValueError(f"overlong penalty factor={factor} must be >= 0")
    y = jnp.asarray(lengths, jnp.float32)
    ramp = (max_len - buffer_len - y) / buffer_len * factor
    return jnp.clip(ramp, -factor, 0.0)


def filter_truncated(mask: jax.Array, truncated: jax.Array) -> jax.Array:
    """Overlong filtering: zero the loss mask of completions cut at the length limit.

    Args:
      mask: [B, T] loss mask.
      truncated: [B] bool, True for completions that hit the limit without an end token.

    Returns:
      [B, T] mask of mask's dtype; truncated rows are all 0 and so leave the loss and every
      denominator (see `losses.aggregate`).
    """
    truncated = jnp.asarray(truncated, bool)
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated {truncated.shape} does not match mask rows {mask.shape}")
    return jnp.where(truncated[:, None], jnp.zeros_like(mask), mask)


def _grouped(values: Any, group_size: int, name: str) -> np.ndarray:
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {v.shape}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if v.shape[0] % group_size:
        raise ValueError(f"{v.shape[0]} {name} are not a whole number of groups of "
                         f"group_size={group_size}")
    return v.reshape(-1, group_size)


def keep_groups(rewards: Any, group_size: int) -> np.ndarray:
    """Dynamic-sampling filter: which groups have reward std > 0 (host side, numpy).

    std > 0 is tested as max != min, so all-equal rewards are dropped whatever the float
    rounding of a computed std. Groups of one are kept: they have no std, and
    `advantages.group_advantages` gives them A = R.

    Args:
      rewards: [B] rewards (B = prompts x G, groups contiguous). DAPO filters on accuracy
        (verl's `filter_groups.metric=acc`), not on the shaped reward, whose overlong
        penalty would make nearly every group look informative.
      group_size: G.

    Returns:
      [B / G] bool.
    """
    r = _grouped(rewards, group_size, "rewards")
    if group_size == 1:
        return np.ones(r.shape[0], bool)
    return r.max(axis=1) != r.min(axis=1)


class Status(enum.Enum):
    """What the trainer does after `DynamicSampler.add`."""

    NEED_MORE = "need_more"  # generate another batch
    READY = "ready"          # take() gives exactly train_batch groups
    PARTIAL = "partial"      # limit hit with >= min_train_batch groups: take() gives them all
    EXHAUSTED = "exhausted"  # limit hit with fewer: save a checkpoint; take() raises


class DynamicSamplingError(RuntimeError):
    """Dynamic sampling hit max_num_gen_batches without min_train_batch informative groups."""


@dataclasses.dataclass
class SamplerStats:
    """Dynamic-sampling metrics of one training step (all generation batches it used)."""

    gen_batches: int       # generation batches sampled for this step
    groups_generated: int  # groups (prompts) in those batches
    groups_kept: int       # groups with reward std > 0, before trimming to train_batch
    groups_used: int       # groups handed to the update (train_batch, or fewer on PARTIAL)
    frac_dropped: float    # 1 - groups_kept / groups_generated
    solve_all: float       # fraction of generated groups with every completion correct
    solve_none: float      # fraction of generated groups with no completion correct

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


class DynamicSampler:
    """DAPO dynamic sampling: accumulates informative groups until a train batch is full.

    After each generation batch the trainer calls `add` with its rewards and one opaque
    payload per group (token arrays, rewards, ... : never inspected here). Groups whose
    rewards are all equal are dropped (`keep_groups`); kept groups accumulate in generation
    order. `add` returns:

    - READY once >= train_batch groups are kept: `take()` returns the first train_batch of
      them. The surplus is discarded, not carried to the next step: carried groups would be
      off-policy by one update and would have to be checkpointed for an exact resume.
    - NEED_MORE otherwise, unless max_num_gen_batches (0 = unlimited) batches are used:
    - PARTIAL when the limit is hit with >= min_train_batch kept groups: a warning with the
      counts is logged and `take()` returns all of them (fewer than train_batch);
    - EXHAUSTED when the limit is hit with fewer: the trainer saves a checkpoint and calls
      `take()`, which raises DynamicSamplingError with the counts.

    `take()` resets the sampler for the next step. Nothing persists across steps, so the
    sampler has no state to checkpoint.
    """

    def __init__(self, train_batch: int, group_size: int, max_num_gen_batches: int = 0,
                 min_train_batch: Optional[int] = None):
        """
        Args:
          train_batch: prompts (groups) per update.
          group_size: G, completions per prompt.
          max_num_gen_batches: generation batches allowed per step; 0 = unlimited.
          min_train_batch: the fewest kept groups worth an update when the limit is hit;
            default train_batch (never train on a partial batch).
        """
        if min_train_batch is None:
            min_train_batch = train_batch
        if train_batch < 1 or group_size < 1:
            raise ValueError(f"train_batch={train_batch} and group_size={group_size} must be "
                             ">= 1")
        if max_num_gen_batches < 0:
            raise ValueError(f"max_num_gen_batches={max_num_gen_batches} must be >= 0 "
                             "(0 = unlimited)")
        if not 1 <= min_train_batch <= train_batch:
            raise ValueError(f"min_train_batch={min_train_batch} must be in "
                             f"[1, train_batch={train_batch}]")
        self.train_batch = train_batch
        self.group_size = group_size
        self.max_num_gen_batches = max_num_gen_batches
        self.min_train_batch = min_train_batch
        self._reset()

    def _reset(self) -> None:
        self._kept: list[Any] = []
        self._gen_batches = 0
        self._generated = 0
        self._solve_all = 0
        self._solve_none = 0
        self.status = Status.NEED_MORE

    def note_batch(self) -> None:
        """Counts a generation batch drawn for a streaming rollout (see `add(last=...)`)."""
        self._gen_batches += 1

    def add(self, rewards: Any, groups: Sequence[Any], *,
            correct: Optional[Any] = None, last: Optional[bool] = None) -> Status:
        """Adds one generation batch, or (streaming) the groups that finished since the
        last call.

        Args:
          rewards: [n x G] the values to filter on (DAPO: accuracy), groups contiguous.
          groups: n opaque per-group payloads, in the order of the rewards' groups.
          correct: [n x G] bool, for the solve-all / solve-none metrics; default
            rewards > 0.
          last: None: the call is one whole generation batch, counted against
            max_num_gen_batches. True / False: a streaming rollout, whose caller counts
            the batches it draws (`note_batch`) and caps them at max_num_gen_batches itself;
            `last` says whether any more groups can come this step (the cap reached and
            every drawn prompt's group finished).

        Returns:
          The new Status.
        """
        if self.status is not Status.NEED_MORE:
            raise RuntimeError(f"DynamicSampler.add after status {self.status.name}: call "
                               "take() first")
        keep = keep_groups(rewards, self.group_size)
        if len(groups) != keep.shape[0]:
            raise ValueError(f"{len(groups)} group payloads for {keep.shape[0]} groups of "
                             "rewards")
        correct = np.asarray(rewards) > 0 if correct is None else np.asarray(correct, bool)
        correct = _grouped(correct, self.group_size, "correct")
        if correct.shape[0] != keep.shape[0]:
            raise ValueError(f"correct has {correct.shape[0]} groups, rewards {keep.shape[0]}")
        if last is None:
            self._gen_batches += 1
        self._generated += keep.shape[0]
        self._solve_all += int(correct.all(axis=1).sum())
        self._solve_none += int((~correct).all(axis=1).sum())
        self._kept.extend(g for g, k in zip(groups, keep) if k)
        self.status = self._next_status(last)
        if self.status is Status.PARTIAL:
            log.warning("dynamic sampling: max_num_gen_batches=%d reached with %d of "
                        "train_batch=%d informative groups (min_train_batch=%d); training on "
                        "%d groups. %s", self.max_num_gen_batches, len(self._kept),
                        self.train_batch, self.min_train_batch, len(self._kept),
                        self._counts())
        return self.status

    def _next_status(self, last: Optional[bool] = None) -> Status:
        if len(self._kept) >= self.train_batch:
            return Status.READY
        limit = (self.max_num_gen_batches and self._gen_batches >= self.max_num_gen_batches) \
            if last is None else last
        if limit:
            if len(self._kept) >= self.min_train_batch:
                return Status.PARTIAL
            return Status.EXHAUSTED
        return Status.NEED_MORE

    def _counts(self) -> str:
        return (f"{self._gen_batches} generation batches, {self._generated} groups generated, "
                f"{len(self._kept)} kept, {self._solve_all} all-correct, "
                f"{self._solve_none} all-wrong")

    def stats(self) -> SamplerStats:
        """The metrics of the step so far."""
        n = max(self._generated, 1)
        used = min(len(self._kept), self.train_batch)
        return SamplerStats(
            gen_batches=self._gen_batches, groups_generated=self._generated,
            groups_kept=len(self._kept),
            groups_used=used if self.status in (Status.READY, Status.PARTIAL) else 0,
            frac_dropped=1.0 - len(self._kept) / n if self._generated else 0.0,
            solve_all=self._solve_all / n, solve_none=self._solve_none / n)

    def take(self) -> tuple[list[Any], SamplerStats]:
        """The groups of this step and its metrics; resets the sampler.

        Raises:
          DynamicSamplingError: on EXHAUSTED (after which the sampler is reset).
          RuntimeError: on NEED_MORE (the batch is not complete yet).
        """
        if self.status is Status.NEED_MORE:
            raise RuntimeError(f"DynamicSampler.take before the batch is complete "
                               f"({len(self._kept)} of {self.train_batch} groups)")
        stats = self.stats()
        if self.status is Status.EXHAUSTED:
            msg = (f"dynamic sampling gave only {len(self._kept)} groups with non-zero reward "
                   f"std after max_num_gen_batches={self.max_num_gen_batches}, fewer than "
                   f"min_train_batch={self.min_train_batch} (train_batch={self.train_batch}): "
                   f"{self._counts()}. Raise max_num_gen_batches (0 = unlimited), lower "
                   "min_train_batch, or use prompts that the policy solves sometimes.")
            self._reset()
            err = DynamicSamplingError(msg)
            err.stats = stats
            raise err
        groups = self._kept[:self.train_batch]
        self._reset()
        return groups, stats

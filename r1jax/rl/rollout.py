"""Host side of a rollout: sample G completions per prompt, score them, shape the rewards,
and lay the kept groups out as an `RLBatch`.

Glossary: P prompts, G group size, B = P x G rows, Pw prompt width, T completion width.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

import numpy as np

from r1jax import distributed
from r1jax.rl import dapo
from r1jax.sampling import SampleOutput, Sampler

LENGTH = 1  # SampleOutput.finish_reason of a completion cut at max_new_tokens


def bucket(n: int, minimum: int, cap: int) -> int:
    """n rounded up to a power of two (at least `minimum`), at most `cap` (and at least n).

    Batches are padded to bucketed widths so the update compiles for a handful of shapes.
    """
    size = minimum
    while size < n:
        size *= 2
    return max(n, min(size, cap))


def pack_sequences(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
                   prompt_width: int, completion_width: int, pad_id: int) -> dict:
    """Rows `[left-padded prompt | completion, right-padded]` as numpy arrays.

    Returns:
      tokens [B, Pw + T] int32, positions [B, Pw + T] int32 (0 at each prompt's first token),
      segment_ids [B, Pw + T] int32 (1 = token, 0 = padding), completion_mask [B, T] float32.
    """
    b = len(prompts)
    width = prompt_width + completion_width
    tokens = np.full((b, width), pad_id, np.int32)
    seg = np.zeros((b, width), np.int32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if len(p) > prompt_width or len(c) > completion_width:
            raise ValueError(f"row {i}: prompt {len(p)} / completion {len(c)} tokens exceed "
                             f"the widths {prompt_width} / {completion_width}")
        tokens[i, prompt_width - len(p):prompt_width] = p
        tokens[i, prompt_width:prompt_width + len(c)] = c
        seg[i, prompt_width - len(p):prompt_width + len(c)] = 1
    positions = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
    mask = seg[:, prompt_width:].astype(np.float32)
    return {"tokens": tokens, "positions": positions, "segment_ids": seg,
            "completion_mask": mask}


@dataclasses.dataclass
class GenerationBatch:
    """One generation batch: P prompts x G completions, scored.

    Attributes:
      examples: P data examples.
      output: the sampler's output (B rows).
      texts: B decoded completions.
      rewards: [B] total reward (weighted functions + overlong penalty).
      parts: reward function name -> [B] values (unweighted), plus "overlong_penalty".
      correct: [B] bool, the accuracy function's value > 0.
      accuracy: [B] the accuracy function's values (each row's own task's in a mixture).
      tasks: [B] each row's task name (None: a single-task run).
      failures: reward failure counts (timeouts, crashes, exceptions).
      seconds: {"rollout": ..., "reward": ...}.
    """

    examples: list
    output: SampleOutput
    texts: list
    rewards: np.ndarray
    parts: dict
    correct: np.ndarray
    failures: dict
    seconds: dict
    accuracy: Optional[np.ndarray] = None
    tasks: Optional[np.ndarray] = None

    def group(self, p: int, g: int) -> dict:
        """The payload of prompt p's group (what dynamic sampling keeps)."""
        rows = slice(p * g, (p + 1) * g)
        out = self.output
        return {"example": self.examples[p], "prompt": out.prompt_ids[p],
                "completions": [out.tokens[r, :out.lengths[r]].tolist()
                                for r in range(rows.start, rows.stop)],
                "finish": out.finish_reason[rows], "logp": out.logprobs[rows],
                "rewards": self.rewards[rows], "correct": self.correct[rows]}


def generate_batch(sampler: Sampler, tokenizer: Any, pool: Any, examples: list, *,
                   params: Any, group_size: int, max_new_tokens: int, sampling: dict,
                   seed: int, accuracy_name: "str | dict",
                   overlong: Optional[tuple[int, float]]) -> GenerationBatch:
    """Samples and scores one generation batch.

    Args:
      examples: P examples with `prompt_ids`.
      params: the live policy parameters.
      sampling: temperature / top_p / top_k / min_p.
      accuracy_name: the reward function that decides correctness, or for a multi-task
        pool a mapping task -> its function (examples carry their `task`).
      overlong: (buffer_len, factor) of DAPO's soft overlong punishment, or None.
    """
    start = time.perf_counter()
    out = sampler.generate([e["prompt_ids"] for e in examples], n=group_size,
                           max_new_tokens=max_new_tokens, seed=seed, params=params,
                           **sampling)
    return score_batch(tokenizer, pool, examples, out, max_new_tokens=max_new_tokens,
                       accuracy_name=accuracy_name, overlong=overlong,
                       rollout_s=time.perf_counter() - start)


def merge_groups(outputs: Sequence[SampleOutput]) -> SampleOutput:
    """One SampleOutput of several groups of one stream (each a SampleOutput of one prompt's
    G rows, as `RolloutStream.collect` gives them); prompt i is outputs[i]'s."""
    cat = lambda name: np.concatenate([getattr(o, name) for o in outputs])
    return SampleOutput(
        tokens=cat("tokens"), lengths=cat("lengths"), finish_reason=cat("finish_reason"),
        logprobs=cat("logprobs"), sampling_logprobs=cat("sampling_logprobs"),
        prompt_index=np.repeat(np.arange(len(outputs)), [len(o.lengths) for o in outputs]),
        prompt_ids=[o.prompt_ids[0] for o in outputs], stats={})


def score_batch(tokenizer: Any, pool: Any, examples: list, out: SampleOutput, *,
                max_new_tokens: int, accuracy_name: "str | dict",
                overlong: Optional[tuple[int, float]], rollout_s: float) -> GenerationBatch:
    """Scores sampled groups (`out`'s rows b belong to examples[out.prompt_index[b]], G per
    example, contiguous); arguments as for `generate_batch`."""
    texts = tokenizer.batch_decode(out.completions(), skip_special_tokens=True)
    start = time.perf_counter()
    rows = [examples[i] for i in out.prompt_index]
    result = distributed.score_shared(pool, texts, rows, out.lengths.tolist())
    rewards = np.asarray(result.total, np.float64)
    parts = {k: np.asarray(v) for k, v in result.per_function.items()}
    if overlong is not None:
        penalty = np.asarray(dapo.overlong_penalty(out.lengths, max_new_tokens, *overlong))
        parts["overlong_penalty"] = penalty
        rewards = rewards + penalty
    tasks = None
    if isinstance(accuracy_name, dict):
        tasks = np.array([row["task"] for row in rows], dtype=object)
        accuracy = np.array([parts[f"{t}/{accuracy_name[t]}"][i] for i, t in enumerate(tasks)],
                            np.float64)
    else:
        accuracy = parts[accuracy_name]
    return GenerationBatch(examples, out, texts, rewards.astype(np.float32), parts,
                           accuracy > 0, result.failures,
                           {"rollout": rollout_s, "reward": time.perf_counter() - start},
                           accuracy, tasks)

"""A learned reward: a reward model's scores as one weighted term of the total reward.

The functions of `REWARD_FUNCTIONS` score one completion at a time in worker processes. A
reward model scores a whole batch at once on the accelerator, so it runs in the trainer's own
process instead. This module is its host side and imports no JAX: the options (the kwargs of
a `reward_model` entry among the reward functions), the normalisation, and the call. The
scorer is any object with `score(prompts, completions) -> [B]` rewards, normally an
`r1jax.models.reward_model.RewardModel` built from `ModelRewardOptions.load_kwargs()`.
`PoolWithModelReward` adds the weighted term to a RewardPool's results, so code that calls
`pool.score` is unchanged.

Normalisations of the raw scores r (B rows, groups g of the G completions of one prompt):
- "none":          r
- "group_zscore":  (r - mean_g(r)) / (std_g(r) + 1e-6), population std; a group whose
                   scores are all equal gets 0
- "affine":        scale * r + shift
- "sigmoid":       1 / (1 + exp(-(scale * r + shift)))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from r1jax.rewards.pool import RewardResult

NAME = "reward_model"
NORMALIZATIONS = ("none", "group_zscore", "affine", "sigmoid")
# The kwargs that define what the reward is; the others name the model (path, arch, seed,
# tokenizer, dtype) and its batch sizes, which a config's variants may change.
ALGORITHM_KWARGS = ("normalize", "scale", "shift", "prompt_key", "label", "format")
ZSCORE_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ModelRewardOptions:
    """The kwargs of a `reward_model` reward function.

    Attributes:
      path: local directory of the sequence-classification checkpoint.
      arch: without `path`, the architecture of a random-weight reward model (a preset
        name of `r1jax.models.presets` or config.json fields with `model_type`), built with
        `seed` over `tokenizer`: smoke runs of configs that name a reward model. With
        `path`, the architecture `r1jax-fit` assumes when the checkpoint is not on the
        machine it runs on.
      seed: the random-weight model's seed.
      normalize: one of NORMALIZATIONS (see the module docstring).
      scale, shift: used by "affine" and "sigmoid" only.
      prompt_key: the example field shown to the reward model as the user turn.
      label: the head output used as reward (index or name); needed when num_labels > 1.
      tokenizer: directory of the tokenizer; default the checkpoint's own.
      format: "auto", "chat" or "concat" (how prompt and completion become one text).
      dtype: parameter dtype of the reward model.
      max_length: longest rendered prompt + completion, in the reward model's tokens.
      batch_size: rows per device program.
    """

    path: Optional[str] = None
    arch: Union[None, str, Mapping[str, Any]] = None
    seed: int = 0
    normalize: str = "none"
    scale: float = 1.0
    shift: float = 0.0
    prompt_key: str = "question"
    label: Union[None, int, str] = None
    tokenizer: Optional[str] = None
    format: str = "auto"
    dtype: str = "float32"
    max_length: int = 4096
    batch_size: int = 32

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "ModelRewardOptions":
        """Options from a reward function's kwargs.

        Raises:
          ValueError: an unknown or missing key, or an impossible value (the message names
            the key).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"reward '{NAME}': unknown kwarg '{unknown[0]}' (known: "
                             f"{sorted(known)})")
        if kwargs.get("path") is None and kwargs.get("arch") is None:
            raise ValueError(f"reward '{NAME}' needs kwarg 'path' (the reward model's "
                             "directory) or, for a random-weight model, 'arch'")
        if kwargs.get("path") is None and kwargs.get("tokenizer") is None:
            raise ValueError(f"reward '{NAME}': a random-weight model ('arch' without "
                             "'path') needs kwarg 'tokenizer'")
        kwargs = dict(kwargs)
        if isinstance(kwargs.get("arch"), Mapping):
            kwargs["arch"] = dict(kwargs["arch"])
        options = cls(**kwargs)
        options.validate()
        return options

    def validate(self) -> None:
        where = f"reward '{NAME}'"
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"{where}: normalize {self.normalize!r} is not one of "
                             f"{NORMALIZATIONS}")
        if self.normalize in ("none", "group_zscore") and (self.scale, self.shift) != (1.0, 0.0):
            raise ValueError(f"{where}: scale / shift apply to normalize 'affine' or "
                             f"'sigmoid' only, not {self.normalize!r}")
        if not (math.isfinite(self.scale) and math.isfinite(self.shift)):
            raise ValueError(f"{where}: scale and shift must be finite")
        if self.format not in ("auto", "chat", "concat"):
            raise ValueError(f"{where}: format {self.format!r} is not one of "
                             "('auto', 'chat', 'concat')")
        for key in ("max_length", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}: {key} must be >= 1, got {getattr(self, key)}")

    def load_kwargs(self) -> dict:
        """Keyword arguments of `r1jax.models.reward_model.load_reward_model` (add `mesh`);
        only for options with a `path`."""
        return dict(path=self.path, tokenizer=self.tokenizer, label=self.label,
                    dtype=self.dtype, format=self.format, max_length=self.max_length,
                    batch_size=self.batch_size)


def normalize_rewards(raw: np.ndarray, group_ids: Optional[np.ndarray], *, mode: str,
                      scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Normalised rewards [B] float64 (formulas in the module docstring).

    Args:
      raw: [B] scores.
      group_ids: [B] the prompt each row answers (needed by "group_zscore").
      mode: one of NORMALIZATIONS.
    """
    r = np.asarray(raw, np.float64)
    if mode == "none":
        return r
    if mode == "affine":
        return scale * r + shift
    if mode == "sigmoid":
        return 1.0 / (1.0 + np.exp(-(scale * r + shift)))
    if mode != "group_zscore":
        raise ValueError(f"normalize {mode!r} is not one of {NORMALIZATIONS}")
    if group_ids is None or len(group_ids) != len(r):
        raise ValueError("group_zscore needs one group id per row")
    _, inverse = np.unique(np.asarray(group_ids), return_inverse=True)
    count = np.bincount(inverse)
    mean = np.bincount(inverse, r) / count
    std = np.sqrt(np.bincount(inverse, (r - mean[inverse]) ** 2) / count)
    return (r - mean[inverse]) / (std[inverse] + ZSCORE_EPS)


class ModelReward:
    """Scores completions with a reward model and normalises them.

    Args:
      scorer: an object with `score(prompts, completions) -> [B]` (a RewardModel).
      options: the `reward_model` entry's options.
    """

    def __init__(self, scorer: Any, options: ModelRewardOptions):
        options.validate()
        self.scorer = scorer
        self.options = options

    def __call__(self, completions: Sequence[str], examples: Sequence[Mapping[str, Any]],
                 group_ids: Optional[Sequence[int]] = None) -> np.ndarray:
        """Normalised rewards [B] float64.

        Args:
          completions: B completion texts (decoded without special tokens).
          examples: B data examples; the reward model sees `example[prompt_key]` as the user
            turn and `completion_prefix + completion` as the assistant turn.
          group_ids: B group labels for "group_zscore"; default: rows with the same prompt
            (`example[prompt_key]`) form a group.
        Raises:
          ValueError: mismatched lengths, an example without `prompt_key`, or a scorer that
            returns the wrong shape or a non-finite score.
        """
        if len(examples) != len(completions):
            raise ValueError(f"got {len(completions)} completions and {len(examples)} "
                             "examples")
        key = self.options.prompt_key
        missing = [i for i, ex in enumerate(examples) if key not in ex]
        if missing:
            raise ValueError(f"reward '{NAME}': example {missing[0]} has no {key!r} field "
                             f"(prompt_key); its fields: {sorted(examples[missing[0]])}")
        prompts = [ex[key] for ex in examples]
        texts = [ex.get("completion_prefix", "") + c for ex, c in zip(examples, completions)]
        raw = np.asarray(self.scorer.score(prompts, texts), np.float64)
        if raw.shape != (len(completions),) or not np.all(np.isfinite(raw)):
            raise ValueError(f"reward '{NAME}': the reward model returned shape {raw.shape} "
                             f"(expected ({len(completions)},)) or non-finite scores")
        if group_ids is None:
            group_ids = [p if isinstance(p, str) else repr(p) for p in prompts]
        o = self.options
        return normalize_rewards(raw, np.asarray(group_ids), mode=o.normalize, scale=o.scale,
                                 shift=o.shift)


def split_specs(functions: Sequence[Any]) -> tuple[tuple, Optional[Any]]:
    """(the entries a RewardPool runs, the `reward_model` entry or None).

    Args:
      functions: reward function entries with a `.name` (RewardFunctionConfig / RewardSpec).
    Raises:
      ValueError: more than one `reward_model` entry.
    """
    model = [f for f in functions if f.name == NAME]
    if len(model) > 1:
        raise ValueError(f"reward function '{NAME}' appears {len(model)} times")
    return tuple(f for f in functions if f.name != NAME), (model[0] if model else None)


def add_to_result(result: RewardResult, values: np.ndarray, weight: float,
                  name: str = NAME) -> RewardResult:
    """`result` with `weight * values` added to the total and `values` under `name`; NaN
    values (rows the term does not score, in a multi-task pool) add nothing."""
    values = np.asarray(values, np.float64)
    if values.shape != result.total.shape:
        raise ValueError(f"{name}: {values.shape[0]} rewards for {result.total.shape[0]} rows")
    return dataclasses.replace(result, total=result.total + weight * np.nan_to_num(values),
                               per_function={**result.per_function, name: values})


class PoolWithModelReward:
    """A RewardPool whose results also hold the reward model's weighted term.

    `score` takes the pool's arguments and returns its RewardResult with `weight * reward`
    added to `total` and the normalised reward under `per_function["reward_model"]`; rows
    with the same prompt form the groups of "group_zscore". With `task` (a multi-task
    pool), only the rows of that task (`example["task"]`) are scored, the term is logged as
    `"<task>/reward_model"` and is NaN on the other rows. Pools nest: one wrapper per task
    with a reward model. Every other attribute is the pool's.
    """

    def __init__(self, pool: Any, reward: ModelReward, weight: float,
                 task: Optional[str] = None):
        if not math.isfinite(float(weight)):
            raise ValueError(f"reward '{NAME}': weight must be finite, got {weight}")
        self.pool = pool
        self.reward = reward
        self.weight = float(weight)
        self.task = task

    def model_term(self, completions: Sequence[str],
                   examples: Sequence[Mapping[str, Any]]) -> tuple[str, np.ndarray]:
        """(its per_function name, [B] normalised rewards, NaN on rows it does not score)."""
        if self.task is None:
            return NAME, self.reward(completions, examples)
        rows = [i for i, ex in enumerate(examples) if ex.get("task") == self.task]
        values = np.full(len(completions), np.nan)
        if rows:
            values[rows] = self.reward([completions[i] for i in rows],
                                       [examples[i] for i in rows])
        return f"{self.task}/{NAME}", values

    def score(self, completions: Sequence[str], examples: Sequence[Mapping[str, Any]],
              lengths: Optional[Sequence[int]] = None) -> RewardResult:
        result = self.pool.score(completions, examples, lengths)
        name, values = self.model_term(completions, examples)
        return add_to_result(result, values, self.weight, name)

    def __getattr__(self, name: str) -> Any:
        if name == "pool":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.pool, name)

    def __enter__(self) -> "PoolWithModelReward":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.close()

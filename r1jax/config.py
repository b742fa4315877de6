"""The one typed config tree of r1jax.

Config files in `configs/` are ml_collections files (`get_config(arg) -> ConfigDict`); the
command line overrides them in the absl style (`--config.optim.lr=1e-6`). `from_dict` turns
the resulting nested dict into the frozen dataclasses below exactly once, at start-up, and
every error names the offending key by its full dotted path.

Only this module knows the schema; everything else reads typed fields directly.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing
from typing import Any, Literal, Optional, Sequence, Union, get_args, get_origin

DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention_out")
ATTENTION_IMPLS = ("xla", "pallas", "auto", "cudnn")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key."""


# --------------------------------------------------------------------------------------------
# Model architecture (what a Hugging Face config.json describes) and numerics.


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `kind`: "linear" or "llama3" (Llama 3.1 / 3.2)."""

    kind: Literal["linear", "llama3"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def validate(self, path: str) -> None:
        _check(self.factor > 0, path, "factor", "must be > 0")
        if self.kind == "llama3":
            _check(self.high_freq_factor > self.low_freq_factor, path, "high_freq_factor",
                   "must be > low_freq_factor")
            _check(self.original_max_position_embeddings > 0, path,
                   "original_max_position_embeddings", "must be > 0")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer of the Llama 3 / Qwen2 / Qwen2.5 / Qwen3 families.

    Architecture fields mirror a Hugging Face config.json; `param_dtype`, `dtype` (compute),
    `remat`, `attention_impl` and `scan_layers` are r1jax's own.
    """

    family: Literal["llama", "qwen2", "qwen3"]
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 32768
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = "xla"
    scan_layers: bool = True

    def validate(self, path: str = "model") -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings"):
            _check(getattr(self, name) > 0, path, name, "must be > 0")
        _check(self.num_heads % self.num_kv_heads == 0, path, "num_heads",
               f"({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        _check(self.head_dim % 2 == 0, path, "head_dim", "must be even for RoPE")
        _check(self.rope_theta > 0, path, "rope_theta", "must be > 0")
        _check(self.rms_norm_eps > 0, path, "rms_norm_eps", "must be > 0")
        _check(self.param_dtype in DTYPES, path, "param_dtype", f"must be one of {DTYPES}")
        _check(self.dtype in DTYPES, path, "dtype", f"must be one of {DTYPES}")
        _check(self.remat in REMAT_POLICIES, path, "remat", f"must be one of {REMAT_POLICIES}")
        _check(self.attention_impl in ATTENTION_IMPLS, path, "attention_impl",
               f"must be one of {ATTENTION_IMPLS}")
        if self.rope_scaling is not None:
            self.rope_scaling.validate(f"{path}.rope_scaling")

    @property
    def num_params(self) -> int:
        """Parameter count, embeddings included (tied embeddings counted once)."""
        d, f, h, k, dh = (self.hidden_size, self.intermediate_size, self.num_heads,
                          self.num_kv_heads, self.head_dim)
        attn = d * h * dh * 2 + d * k * dh * 2
        attn += (h + 2 * k) * dh if self.qkv_bias else 0
        attn += d if self.o_bias else 0
        attn += 2 * dh if self.qk_norm else 0
        layer = attn + 3 * d * f + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + embed + d


# --------------------------------------------------------------------------------------------
# Generic conversion: nested dict -> frozen dataclasses, with key paths in every error.


def _check(ok: bool, path: str, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{path}.{key}': {msg}")


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _convert(value: Any, tp: Any, path: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{path}': must not be None")
    tp = inner
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        elif hasattr(value, "to_dict"):  # a ConfigDict inside a list (mixture_task)
            value = value.to_dict()
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}': expected a section (dict), got {value!r}")
        return from_dict(tp, value, path)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{path}': {value!r} is not one of {choices}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}': expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}': expected a dict, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at '{path}'")


def from_dict(cls: type, data: dict, path: str = "config") -> Any:
    """Builds dataclass `cls` from a nested dict; unknown or missing keys raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{path}.{unknown[0]}' "
                          f"(known keys of '{path}': {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{path}.{name}")
        elif (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            raise ConfigError(f"missing config key '{path}.{name}'")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path)
    return obj


def to_dict(obj: Any) -> dict:
    """Inverse of `from_dict` (tuples become lists), for saving a config next to a run."""
    def fix(v):
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v
    return fix(dataclasses.asdict(obj))


# --------------------------------------------------------------------------------------------
# The run: every section of a training (or evaluation) job.


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where the policy comes from (exactly one of path / preset / arch) and its numerics.

    path: a local Hugging Face directory (weights + config.json + tokenizer files).
    preset: a named architecture from r1jax.models.presets, randomly initialized.
    arch: a config.json-style dict (model_type, hidden_size, ...), randomly initialized; the
      demo's tiny models are written this way.
    tokenizer: tokenizer directory (default: `path`).
    char_vocab: build a character-level tokenizer over these characters (plus the R1 tags
      and special tokens) instead of loading one; for models trained from scratch.
    rope_theta: a RoPE base replacing the architecture's (long-context SFT raises it, e.g.
      OpenR1-Math's 10k -> 300k for 4k -> 32k tokens); used in training, sampling and
      evaluation, and written to the exported config.json. None: the architecture's own.
    """

    path: Optional[str] = None
    preset: Optional[str] = None
    arch: Optional[dict] = None
    tokenizer: Optional[str] = None
    char_vocab: Optional[str] = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = "xla"
    scan_layers: bool = True
    init_seed: int = 0
    rope_theta: Optional[float] = None

    def numerics(self) -> dict:
        """The ModelConfig fields this section sets over the architecture's."""
        out = dict(param_dtype=self.param_dtype, dtype=self.dtype, remat=self.remat,
                   attention_impl=self.attention_impl, scan_layers=self.scan_layers)
        if self.rope_theta is not None:
            out["rope_theta"] = float(self.rope_theta)
        return out

    def validate(self, path: str) -> None:
        _check(self.rope_theta is None or self.rope_theta > 0, path, "rope_theta",
               "must be > 0 (or None: the architecture's)")
        given = [k for k in ("path", "preset", "arch") if getattr(self, k) is not None]
        _check(len(given) == 1, path, "path",
               f"set exactly one of path / preset / arch (got {given or 'none'})")
        _check(self.tokenizer is None or self.char_vocab is None, path, "char_vocab",
               "set tokenizer or char_vocab, not both")
        _check(self.path is not None or self.tokenizer is not None or bool(self.char_vocab),
               path, "tokenizer", "a model without `path` needs `tokenizer` or `char_vocab`")
        _check(self.param_dtype in DTYPES, path, "param_dtype", f"must be one of {DTYPES}")
        _check(self.dtype in DTYPES, path, "dtype", f"must be one of {DTYPES}")
        _check(self.remat in REMAT_POLICIES, path, "remat", f"must be one of {REMAT_POLICIES}")
        _check(self.attention_impl in ATTENTION_IMPLS, path, "attention_impl",
               f"must be one of {ATTENTION_IMPLS}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes (one may be -1: the rest) and logical-axis rule overrides."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    rules: dict = dataclasses.field(default_factory=dict)

    def validate(self, path: str) -> None:
        sizes = (self.data, self.fsdp, self.tensor)
        _check(all(s == -1 or s >= 1 for s in sizes), path, "fsdp",
               f"mesh sizes must be >= 1 or -1, got {sizes}")
        _check(sizes.count(-1) <= 1, path, "fsdp", "at most one mesh size may be -1")


@dataclasses.dataclass(frozen=True)
class RewardFunctionConfig:
    """One weighted reward function of r1jax.rewards (REWARD_FUNCTIONS name + kwargs)."""

    name: str
    weight: float = 1.0
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MixtureSource:
    """One task of a multi-task mixture: its prompts, template and rewards.

    name: the task's name (metrics `task/<name>/...`, the examples' `task` field).
    source, recipe, limit, num_generated, task_options: as in DataConfig (a benchmark name,
      a file with its recipe, or a generated task).
    template, system_prompt: how this task's questions become prompts.
    weight: the task's share of the prompt slots (relative; `mixture_schedule` overrides).
    functions, accuracy: this task's weighted reward functions and the one whose value > 0
      counts as correct (accuracy metrics, DAPO's group filter).
    """

    name: str
    source: str
    recipe: Optional[str] = None
    template: str = "r1_zero"
    system_prompt: Optional[str] = None
    weight: float = 1.0
    functions: tuple[RewardFunctionConfig, ...] = (RewardFunctionConfig("accuracy", 1.0, {}),)
    accuracy: str = "accuracy"
    limit: Optional[int] = None
    num_generated: int = 10000
    task_options: dict = dataclasses.field(default_factory=dict)

    def validate(self, path: str) -> None:
        _check(bool(self.name) and "/" not in self.name, path, "name",
               "must be a non-empty name without '/'")
        _check(self.weight >= 0, path, "weight", "must be >= 0")
        _check(len(self.functions) > 0, path, "functions", "needs at least one reward")
        names = [f.name for f in self.functions]
        _check(self.accuracy in names, path, "accuracy",
               f"'{self.accuracy}' is not one of the task's reward functions {names}")
        _check(self.num_generated >= 1, path, "num_generated", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class MixtureStage:
    """A curriculum stage: from RL step `from_step` on, the tasks' weights are `weights`
    (one per `data.mixture` entry, in order)."""

    from_step: int
    weights: tuple[float, ...]

    def validate(self, path: str) -> None:
        _check(self.from_step >= 0, path, "from_step", "must be >= 0")
        _check(all(w >= 0 for w in self.weights) and sum(self.weights) > 0, path, "weights",
               f"must be >= 0 and not all 0, got {list(self.weights)}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training prompts.

    source: a benchmark name of r1jax.data (gsm8k_train, math500, ...), a JSONL / Parquet
      path (with `recipe`), or a generated task: "countdown" or "arithmetic".
    template: prompt template (r1_zero, qwen_math, chat, plain).
    max_prompt_tokens: longer prompts are dropped (and counted) at start-up.
    num_generated: examples of a generated task.
    mixture: several tasks, each with its own source, template and rewards (README
      "Multi-task mixtures"); empty: the single source above, scored by `rewards`. With a
      mixture, `source`, `recipe`, `template`, `system_prompt`, `limit`, `num_generated` and
      `task_options` above are unused; `data_dir`, `max_prompt_tokens`, `strict` and `seed`
      apply to every task.
    mixture_schedule: curriculum stages of task weights by RL step (empty: the tasks'
      `weight`s throughout; before the first stage's `from_step`, too).
    pass_rates: a `pass_rates.jsonl` of r1jax-rejection-sample; with it only the examples
      whose pass rate lies in [pass_rate_min, pass_rate_max] are kept (difficulty
      filtering; drops counted as `pass_rate_out_of_range` / `no_pass_rate`).
    """

    source: str = "gsm8k_train"
    recipe: Optional[str] = None
    data_dir: Optional[str] = None
    template: str = "r1_zero"
    system_prompt: Optional[str] = None
    max_prompt_tokens: int = 512
    limit: Optional[int] = None
    strict: bool = False
    seed: int = 0
    num_generated: int = 10000
    task_options: dict = dataclasses.field(default_factory=dict)
    mixture: tuple[MixtureSource, ...] = ()
    mixture_schedule: tuple[MixtureStage, ...] = ()
    pass_rates: Optional[str] = None
    pass_rate_min: float = 0.0
    pass_rate_max: float = 1.0

    def validate(self, path: str) -> None:
        _check(self.max_prompt_tokens >= 1, path, "max_prompt_tokens", "must be >= 1")
        _check(0.0 <= self.pass_rate_min <= self.pass_rate_max <= 1.0, path, "pass_rate_min",
               f"need 0 <= pass_rate_min <= pass_rate_max <= 1, got "
               f"[{self.pass_rate_min}, {self.pass_rate_max}]")
        _check(self.pass_rates is None or not self.mixture, path, "pass_rates",
               "filters the single `source`; a mixture's tasks are not filtered by pass rate")
        _check(self.num_generated >= 1, path, "num_generated", "must be >= 1")
        names = [m.name for m in self.mixture]
        _check(len(set(names)) == len(names), path, "mixture",
               f"task names must be unique, got {names}")
        _check(not self.mixture or sum(m.weight for m in self.mixture) > 0, path, "mixture",
               "the weights must not all be 0")
        _check(not self.mixture_schedule or bool(self.mixture), path, "mixture_schedule",
               "needs a data.mixture")
        starts = [s.from_step for s in self.mixture_schedule]
        _check(starts == sorted(set(starts)), path, "mixture_schedule",
               f"stages must have strictly increasing from_step, got {starts}")
        for i, stage in enumerate(self.mixture_schedule):
            _check(len(stage.weights) == len(self.mixture), path,
                   f"mixture_schedule[{i}].weights",
                   f"has {len(stage.weights)} weights for {len(self.mixture)} tasks")


@dataclasses.dataclass(frozen=True)
class RewardsConfig:
    """The reward is the weighted sum of `functions`; `accuracy` names the function whose
    value > 0 counts as a correct answer (accuracy metrics, solve-all / solve-none)."""

    functions: tuple[RewardFunctionConfig, ...] = (
        RewardFunctionConfig("accuracy", 1.0, {}),)
    accuracy: str = "accuracy"
    num_workers: int = 2
    timeout_s: float = 10.0

    def validate(self, path: str) -> None:
        _check(len(self.functions) > 0, path, "functions", "needs at least one reward")
        names = [f.name for f in self.functions]
        _check(self.accuracy in names, path, "accuracy",
               f"'{self.accuracy}' is not one of the reward functions {names}")
        _check(self.num_workers >= 1, path, "num_workers", "must be >= 1")
        _check(self.timeout_s > 0, path, "timeout_s", "must be > 0")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Sampling of G completions per prompt with the native sampler.

    max_slots: rows that decode at once (the KV cache holds this many sequences); a rollout
      asking for more completions runs them through the slots as others finish (continuous
      batching). None: one static batch of all the step's completions.
    stream_steps: with max_slots, decode steps between two returns to the host, which then
      scores the groups that finished (while the next steps run), tops up the prompt queue
      and stops the rollout once the step has its groups (README "Streaming rollout").
    """

    group_size: int = 8
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    truncate_prompts: bool = False
    recompute_old_logprobs: bool = False
    max_slots: Optional[int] = None
    stream_steps: int = 64

    def validate(self, path: str) -> None:
        _check(self.group_size >= 1, path, "group_size", "must be >= 1")
        _check(self.stream_steps >= 1, path, "stream_steps", "must be >= 1")
        _check(self.max_slots is None or self.max_slots >= 1, path, "max_slots",
               "must be >= 1 (or None)")
        _check(self.max_new_tokens >= 1, path, "max_new_tokens", "must be >= 1")
        _check(self.temperature > 0, path, "temperature",
               "must be > 0 for RL rollouts (greedy rollouts give no exploration)")
        _check(0 < self.top_p <= 1, path, "top_p", "must be in (0, 1]")
        _check(self.top_k >= 0, path, "top_k", "must be >= 0")
        _check(0 <= self.min_p < 1, path, "min_p", "must be in [0, 1)")


ADV_MODES = ("group", "batch", "none", "rloo")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
             "seq-mean-token-sum-norm")


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
    """GRPO / DAPO knobs (formulas in README and r1jax/rl).

    adv: "group" (GRPO), "batch" (batch std), "none" (Dr. GRPO), "rloo".
    num_iterations: mu, policy updates per rollout batch.
    minibatches: optimizer steps per pass over the rollout batch.
    microbatches: gradient-accumulation pieces of each minibatch.
    max_response_len: constant of seq-mean-token-sum-norm (default rollout.max_new_tokens).
    """

    adv: str = "group"
    eps_low: float = 0.2
    eps_high: float = 0.2
    clip_c: Optional[float] = None
    agg: str = "token-mean"
    max_response_len: Optional[int] = None
    ratio_level: str = "token"
    kl_beta: float = 0.0
    kl_kind: str = "k3"
    entropy_coef: float = 0.0
    num_iterations: int = 1
    minibatches: int = 1
    microbatches: int = 1
    dynamic_sampling: bool = False
    max_num_gen_batches: int = 0
    min_train_prompts: Optional[int] = None
    overlong_filter: bool = False
    overlong_buffer_len: int = 0
    overlong_penalty_factor: float = 1.0

    def validate(self, path: str) -> None:
        _check(self.adv in ADV_MODES, path, "adv", f"must be one of {ADV_MODES}")
        _check(self.agg in AGG_MODES, path, "agg", f"must be one of {AGG_MODES}")
        _check(0 <= self.eps_low < 1, path, "eps_low", "must be in [0, 1)")
        _check(self.eps_high >= 0, path, "eps_high", "must be >= 0")
        _check(self.clip_c is None or self.clip_c > 1, path, "clip_c", "must be > 1 or None")
        _check(self.ratio_level in ("token", "sequence"), path, "ratio_level",
               "must be 'token' or 'sequence' (GSPO)")
        _check(self.kl_beta >= 0, path, "kl_beta", "must be >= 0")
        _check(self.kl_kind in ("k1", "k2", "k3"), path, "kl_kind", "must be k1, k2 or k3")
        for key in ("num_iterations", "minibatches", "microbatches"):
            _check(getattr(self, key) >= 1, path, key, "must be >= 1")
        _check(self.max_num_gen_batches >= 0, path, "max_num_gen_batches",
               "must be >= 0 (0 = unlimited)")
        _check(self.overlong_buffer_len >= 0, path, "overlong_buffer_len", "must be >= 0")
        _check(self.overlong_penalty_factor >= 0, path, "overlong_penalty_factor",
               "must be >= 0")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup then constant or cosine decay, and global-norm clipping."""

    lr: float = 1e-6
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0

    def validate(self, path: str) -> None:
        _check(self.lr > 0, path, "lr", "must be > 0")
        _check(self.schedule in ("constant", "cosine"), path, "schedule",
               "must be 'constant' or 'cosine'")
        _check(self.warmup_steps >= 0, path, "warmup_steps", "must be >= 0")
        _check(0 <= self.min_lr_ratio <= 1, path, "min_lr_ratio", "must be in [0, 1]")
        _check(self.grad_clip >= 0, path, "grad_clip", "must be >= 0 (0 = off)")


@dataclasses.dataclass(frozen=True)
class SFTStage:
    """One stage of an SFT curriculum (`sft.stages`): its conversations, passes and filters.

    source: a JSONL / Parquet conversation file (relative to `data.data_dir` when set).
    epochs: passes over the stage's (filtered) conversations before the next stage.
    layout: its conversation layout or recipe (None: `sft.layout`).
    where: field -> [low, high] (inclusive numeric range) or a list of allowed values; a
      conversation is kept when each named top-level field of its row satisfies its test
      (e.g. {"difficulty": [5, 10]}); rows lacking a field are dropped and counted.
    pass_rates, pass_rate_min, pass_rate_max: keep only conversations whose row `id` has a
      pass rate in the range in this `pass_rates.jsonl` (r1jax-rejection-sample).
    """

    source: str
    epochs: int = 1
    layout: Optional[str] = None
    where: dict = dataclasses.field(default_factory=dict)
    pass_rates: Optional[str] = None
    pass_rate_min: float = 0.0
    pass_rate_max: float = 1.0

    def validate(self, path: str) -> None:
        _check(self.epochs >= 1, path, "epochs", "must be >= 1")
        _check(0.0 <= self.pass_rate_min <= self.pass_rate_max <= 1.0, path, "pass_rate_min",
               f"need 0 <= pass_rate_min <= pass_rate_max <= 1, got "
               f"[{self.pass_rate_min}, {self.pass_rate_max}]")
        for field, test in self.where.items():
            ok = isinstance(test, (list, tuple)) and len(test) > 0
            _check(ok, path, f"where.{field}", "must be [low, high] or a list of values")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning: `r1jax-sft`'s run, and the RL trainer's warm start.

    r1jax-train's warm start ("cold start" in R1): `steps` steps of `batch_size` examples
    with a `solution` field (the response after the prompt), lr / warmup_steps below; steps
    0 skips it.

    r1jax-sft (README "The R1 pipeline"): conversations from `data.source` in `layout`
    (`r1jax.data.conversations`: a layout or a recipe name; `fields` maps a prompt /
    response layout's field names), `batch_size` conversations per optimizer step packed
    into rows of `max_len` tokens; `steps` steps, or with steps 0 `epochs` passes over the
    data; an example longer than max_len is cut ("truncate") or left out ("drop"), and
    counted; `microbatches` gradient-accumulation pieces; the optimizer is the `optim`
    section. `stages`: a curriculum of SFTStage entries trained one after the other, each for
    its own epochs (then `data.source` and `epochs` are unused; with steps 0 the run ends
    with the last stage).
    """

    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 0
    num_examples: Optional[int] = None
    seed: int = 1
    epochs: int = 0
    max_len: int = 2048
    overflow: str = "truncate"
    layout: str = "auto"
    fields: dict = dataclasses.field(default_factory=dict)
    microbatches: int = 1
    stages: tuple[SFTStage, ...] = ()

    def validate(self, path: str) -> None:
        _check(self.steps >= 0, path, "steps", "must be >= 0")
        _check(self.batch_size >= 1, path, "batch_size", "must be >= 1")
        _check(self.lr > 0, path, "lr", "must be > 0")
        _check(self.epochs >= 0, path, "epochs", "must be >= 0")
        _check(self.max_len >= 2, path, "max_len", "must be >= 2")
        _check(self.overflow in ("truncate", "drop"), path, "overflow",
               "must be 'truncate' or 'drop'")
        _check(self.microbatches >= 1, path, "microbatches", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """Preference optimisation: `r1jax-dpo` (`r1jax.dpo`, README "Preference optimisation").

    Pairs from `data.source` in `layout` (`r1jax.data.preference`: "auto", "preference",
    "sharegpt_ranking", "samples" or a recipe such as "light_r1_dpo"); `batch_size` pairs
    per optimizer step packed into rows of `max_len` tokens (a pair's two sequences in one
    row when they fit, with `pair_in_one_row`), `steps` steps or with steps 0 `epochs`
    passes; `overflow` and `microbatches` as in `sft`; the optimizer is the `optim` section.
    The loss: `loss_type` ("sigmoid" = DPO, "ipo", "nca_pair") with strength `beta` and, for
    "sigmoid", conservative-DPO `label_smoothing`; `sft_weight` > 0 adds that multiple of the
    chosen responses' negative log-likelihood per token (RPO; TRL's loss_type [..., "sft"]
    with loss_weights [1, sft_weight]); the reference is the starting policy
    ("policy") or the pairs' stored `ref_chosen_logps` / `ref_rejected_logps`
    ("precomputed"). `sample_chosen` / `sample_rejected`: how the "samples" layout picks a
    pair from one prompt's completions (`r1jax.data.preference.select_pair`).
    """

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    reference: str = "policy"
    layout: str = "auto"
    batch_size: int = 8
    steps: int = 0
    epochs: int = 1
    max_len: int = 2048
    overflow: str = "truncate"
    microbatches: int = 1
    pair_in_one_row: bool = False
    seed: int = 1
    sample_chosen: str = "shortest"
    sample_rejected: str = "random"

    def validate(self, path: str) -> None:
        _check(self.beta > 0, path, "beta", "must be > 0")
        _check(self.loss_type in ("sigmoid", "ipo", "nca_pair"), path, "loss_type",
               "must be 'sigmoid', 'ipo' or 'nca_pair'")
        _check(0 <= self.label_smoothing < 0.5, path, "label_smoothing", "must be in [0, 0.5)")
        _check(self.label_smoothing == 0 or self.loss_type == "sigmoid", path,
               "label_smoothing", f"applies to loss_type 'sigmoid' only, not {self.loss_type!r}")
        _check(self.sft_weight >= 0, path, "sft_weight", "must be >= 0")
        _check(self.reference in ("policy", "precomputed"), path, "reference",
               "must be 'policy' or 'precomputed'")
        _check(self.batch_size >= 1, path, "batch_size", "must be >= 1")
        _check(self.steps >= 0, path, "steps", "must be >= 0")
        _check(self.epochs >= 0, path, "epochs", "must be >= 0")
        _check(self.max_len >= 2, path, "max_len", "must be >= 2")
        _check(self.overflow in ("truncate", "drop"), path, "overflow",
               "must be 'truncate' or 'drop'")
        _check(self.microbatches >= 1, path, "microbatches", "must be >= 1")
        _check(self.sample_chosen in ("shortest", "random"), path, "sample_chosen",
               "must be 'shortest' or 'random'")
        _check(self.sample_rejected in ("random", "longest", "shortest"), path,
               "sample_rejected", "must be 'random', 'longest' or 'shortest'")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: before RL, every `every` steps, and at the end."""

    source: Optional[str] = None
    recipe: Optional[str] = None
    limit: Optional[int] = None
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None
    every: int = 0
    seed: int = 1234

    def validate(self, path: str) -> None:
        _check(self.n >= 1, path, "n", "must be >= 1")
        _check(self.temperature >= 0, path, "temperature", "must be >= 0")
        _check(self.every >= 0, path, "every", "must be >= 0 (0 = only before and after)")


WANDB_MODES = ("online", "offline", "disabled")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop: steps, batch, where the run lives, checkpoints and logs.

    wandb_project: also log metrics (and this config) to Weights & Biases under this project
      (needs `pip install r1jax[wandb]`); None: off.
    wandb_mode: "offline" (files under run_dir/wandb, `wandb sync` uploads them later),
      "online" or "disabled".
    wandb_run_name: the W&B run's display name (default: W&B picks one).
    """

    steps: int = 100
    prompts_per_step: int = 16
    gen_prompts_per_batch: Optional[int] = None
    run_dir: str = "runs/default"
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    resume: bool = True
    max_consecutive_skips: int = 5
    export_hf: bool = True
    tensorboard: bool = True
    progress_bar: bool = True
    wandb_project: Optional[str] = None
    wandb_mode: str = "offline"
    wandb_run_name: Optional[str] = None

    def validate(self, path: str) -> None:
        _check(self.steps >= 0, path, "steps", "must be >= 0")
        _check(self.prompts_per_step >= 1, path, "prompts_per_step", "must be >= 1")
        _check(self.gen_prompts_per_batch is None or self.gen_prompts_per_batch >= 1, path,
               "gen_prompts_per_batch", "must be >= 1")
        _check(self.checkpoint_every >= 0, path, "checkpoint_every", "must be >= 0")
        _check(self.keep_checkpoints >= 1, path, "keep_checkpoints", "must be >= 1")
        _check(self.max_consecutive_skips >= 1, path, "max_consecutive_skips", "must be >= 1")
        _check(self.wandb_mode in WANDB_MODES, path, "wandb_mode",
               f"must be one of {WANDB_MODES}")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How the processes of a multi-host job find each other (`jax.distributed.initialize`).

    coordinator_address: "host:port" of process 0's coordinator; "" = not given (auto
      detection, or one process).
    num_processes / process_id: 0 / -1 = detected (TPU pod slice, SLURM) or one process.
    local_device_ids: the devices this process drives, e.g. "0,1,2,3"; "" = all it sees.
    auto: without a coordinator address, initialize when the environment is a multi-host
      TPU slice or a SLURM job of more than one task (JAX detects both); False = one process
      unless a coordinator address is given.
    initialization_timeout_s: how long a process waits for the others to join.
    heartbeat_timeout_s: a process that stops answering for this long is declared lost and
      every other process exits with an error naming it.
    shutdown_timeout_s: how long the processes wait for each other at exit.
    """

    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    local_device_ids: str = ""
    auto: bool = True
    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 100
    shutdown_timeout_s: int = 300

    def validate(self, path: str) -> None:
        _check(self.num_processes >= 0, path, "num_processes", "must be >= 0 (0: detect)")
        _check(self.process_id >= -1, path, "process_id", "must be >= 0, or -1 (detect)")
        _check(self.num_processes == 0 or self.process_id < self.num_processes, path,
               "process_id", f"must be < num_processes ({self.num_processes})")
        _check(not self.coordinator_address or ":" in self.coordinator_address, path,
               "coordinator_address", "must be host:port")
        _check(all(x.strip().isdigit() for x in self.local_device_ids.split(",")
                   if self.local_device_ids), path, "local_device_ids",
               "must be comma-separated device numbers, e.g. '0,1,2,3'")
        for key in ("initialization_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
            _check(getattr(self, key) >= 1, path, key, "must be >= 1 second")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; configs/*.py files produce it."""

    model: ModelSpec
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()
    rewards: RewardsConfig = RewardsConfig()
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    optim: OptimConfig = OptimConfig()
    sft: SFTConfig = SFTConfig()
    dpo: DPOConfig = DPOConfig()
    eval: EvalConfig = EvalConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()

    def validate(self, path: str) -> None:
        if self.algo.agg == "seq-mean-token-sum-norm" and self.algo.max_response_len:
            _check(self.algo.max_response_len >= self.rollout.max_new_tokens, path,
                   "algo.max_response_len", "must be >= rollout.max_new_tokens")
        if self.algo.overlong_buffer_len:
            _check(self.algo.overlong_buffer_len <= self.rollout.max_new_tokens, path,
                   "algo.overlong_buffer_len", "must be <= rollout.max_new_tokens")
        if self.algo.min_train_prompts is not None:
            _check(1 <= self.algo.min_train_prompts <= self.train.prompts_per_step, path,
                   "algo.min_train_prompts", "must be in [1, train.prompts_per_step]")
        if not self.algo.dynamic_sampling:
            _check(self.train.gen_prompts_per_batch in (None, self.train.prompts_per_step),
                   path, "train.gen_prompts_per_batch",
                   "differs from prompts_per_step only with algo.dynamic_sampling")
        _check(self.train.prompts_per_step % self.algo.minibatches == 0, path,
               "algo.minibatches", "must divide train.prompts_per_step")
        if self.data.mixture:
            _check(self.sft.steps == 0, path, "sft.steps",
                   "a warm start needs one data source; data.mixture has several")
            _check(self.eval.source is None, path, "eval.source",
                   "with data.mixture, evaluate each benchmark with r1jax-eval")


def base_config() -> Any:
    """An ml_collections ConfigDict holding every RunConfig field at its default.

    Config files start from it and set what they change, so that the command line can
    override any field (absl-style overrides can only set keys that exist, and parse the
    value by the type the key holds). A field whose default is None holds a typed
    placeholder (`ml_collections.config_dict.placeholder`), so `--config.algo.clip_c=3.0`
    parses a float and a config file may still assign a value or None to it; an optional
    dict (`model.arch`) takes a Python literal. The reward functions are a tuple of dicts:
    the command line replaces the whole list (a Python literal) or sets a key of one element
    (`rewards.functions[0].weight=2.0`).
    """
    from ml_collections import ConfigDict
    defaults = {}
    for f in dataclasses.fields(RunConfig):
        section = typing.get_type_hints(RunConfig)[f.name]
        default = None if f.default is dataclasses.MISSING else f.default
        defaults[f.name] = _config_section(section, default)
    return ConfigDict(defaults)


_PLACEHOLDER_TYPES = (bool, int, float, str)


def _config_section(cls: type, default: Any) -> dict:
    """The ConfigDict entries of one section: defaults, typed placeholders for None."""
    from ml_collections import config_dict
    hints = typing.get_type_hints(cls)
    entries = {}
    for f in dataclasses.fields(cls):
        if default is not None:
            value = getattr(default, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        tp = _is_optional(hints[f.name])[1]
        if value is None:
            # Any other optional type (a dict) takes a literal: {...} or None.
            entries[f.name] = config_dict.placeholder(
                tp if tp in _PLACEHOLDER_TYPES else object)
        elif isinstance(value, tuple):
            entries[f.name] = tuple(to_dict(v) if dataclasses.is_dataclass(v) else v
                                    for v in value)
        elif dataclasses.is_dataclass(value):
            entries[f.name] = to_dict(value)
        else:
            # A float field keeps a float even if written `= 1`: the command line parses by it.
            entries[f.name] = float(value) if tp is float else value
    return entries


def mixture_task(**values: Any) -> Any:
    """One `data.mixture` entry for a config file: a ConfigDict holding every MixtureSource
    field (typed placeholders for None), so the command line can set any of its keys
    (`--config.data.mixture[1].recipe=mbpp`)."""
    from ml_collections import ConfigDict
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(MixtureSource)})
    if unknown:
        raise ConfigError(f"unknown config key 'data.mixture[].{unknown[0]}'")
    entry = ConfigDict(_config_section(MixtureSource, None))
    for key, value in values.items():
        entry[key] = float(value) if key == "weight" else value
    return entry


def sft_stage(**values: Any) -> Any:
    """One `sft.stages` entry for a config file (every SFTStage field present, so the
    command line can set any of its keys: `--config.sft.stages[1].epochs=3`)."""
    from ml_collections import ConfigDict
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(SFTStage)})
    if unknown:
        raise ConfigError(f"unknown config key 'sft.stages[].{unknown[0]}'")
    entry = ConfigDict(_config_section(SFTStage, None))
    for key, value in values.items():
        entry[key] = float(value) if key.startswith("pass_rate_") else value
    return entry


def config_args(argv: Sequence[str], tool: str,
                example: str = "configs/FILE.py") -> tuple[Optional[str], list[str]]:
    """(config spec, overrides) of a `TOOL --config=FILE[:ARG] [--config.KEY=VALUE ...]`
    command line (argv with the program name); (None, []) after printing the usage when
    --config is missing."""
    spec = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    if not spec:
        print(f"usage: {tool} --config={example}[:ARG] [--config.KEY=VALUE ...]",
              file=sys.stderr)
        return None, []
    return spec[-1], [a[len("--config."):] for a in argv[1:] if a.startswith("--config.")]


def load_config(spec: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Loads `configs/x.py[:arg]` with absl-style overrides (`"optim.lr=1e-6"`).

    The same path the command-line tools take (`--config=configs/x.py:arg
    --config.optim.lr=1e-6`), for tests and notebooks. Values parse by the field's type;
    `key=None` sets an optional field back to None.
    """
    from absl import flags
    from ml_collections import config_flags
    from ml_collections.config_flags import config_path
    path = spec.split(":", 1)[0]
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    native, to_none = [], []
    for override in overrides:
        key, _, text = override.partition("=")
        optional = _is_optional(check_key(key))[0]
        if key in to_none:
            to_none.remove(key)
        if optional and text == "None":
            to_none.append(key)  # absl's int / float / str parsers cannot say None
        else:
            native.append(override)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "run config", flag_values=fv,
                                    lock_config=True)
    argv = ["r1jax", f"--config={spec}"] + [f"--config.{o}" for o in native]
    # config_flags reads the override list from sys.argv, not from the argv it is given.
    saved, sys.argv = sys.argv, argv
    try:
        fv(argv)
        for key in to_none:
            config_path.set_value(key, fv.config, None)
    except (flags.Error, KeyError, AttributeError, IndexError, ValueError, TypeError) as e:
        raise ConfigError(f"config {spec}: {e}") from None
    finally:
        sys.argv = saved
    return run_config_from(fv.config)


# What a resumed run may change (`check_resume`): dotted fields, or a section for all of its
# fields. The context may grow across resumed runs (DeepScaleR: 8k -> 16k -> 24k) with the
# settings tied to it; the run may move to another slice or machine (mesh, slots,
# microbatches, kernels, remat, paths) and train longer; evaluation and logging are free.
# Everything else (the data, the model, the algorithm, the optimizer) would make the
# continuation a different run than the one checkpointed.
RESUME_MAY_CHANGE = (
    "rollout.max_new_tokens", "algo.overlong_buffer_len", "algo.max_response_len",
    "rollout.max_slots", "rollout.stream_steps", "algo.microbatches", "sft.steps",
    "sft.microbatches", "dpo.steps", "dpo.microbatches", "mesh", "model.remat",
    "model.attention_impl",
    "model.path", "model.tokenizer", "data.source", "data.data_dir", "rewards.num_workers",
    "train.steps", "train.run_dir", "train.checkpoint_every", "train.keep_checkpoints",
    "train.async_checkpoint", "train.resume", "train.max_consecutive_skips", "train.export_hf",
    "train.tensorboard", "train.progress_bar", "train.wandb_project", "train.wandb_mode",
    "train.wandb_run_name", "eval", "distributed",
)


def resume_changes(saved: dict, current: dict) -> list[str]:
    """The `section.field` names whose values differ between two `to_dict` configs (fields
    present in both; a field the saved config predates is not compared)."""
    changed = []
    for section in sorted(set(saved) & set(current)):
        a, b = saved[section], current[section]
        if not (isinstance(a, dict) and isinstance(b, dict)):
            changed += [section] if a != b else []
            continue
        changed += [f"{section}.{k}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return changed


def check_resume(saved: Optional[dict], current: RunConfig) -> list[str]:
    """Refuses to resume a checkpoint whose config differs in a field not in
    `RESUME_MAY_CHANGE`; returns the allowed fields that changed.

    Args:
      saved: the config stored with the checkpoint (`to_dict` form); None (a checkpoint
        without one) checks nothing.
      current: the config of the run resuming it.

    Raises:
      ConfigError: naming each field that may not change, with both values.
    """
    if saved is None:
        return []
    now = to_dict(current)
    changed = resume_changes(saved, now)
    allowed = lambda name: name in RESUME_MAY_CHANGE or name.split(".")[0] in RESUME_MAY_CHANGE
    refused = [c for c in changed if not allowed(c)]
    if refused:
        def value(tree, name):
            for part in name.split("."):
                tree = tree[part]
            return tree
        detail = "; ".join(f"{name}: checkpoint {value(saved, name)!r}, now "
                           f"{value(now, name)!r}" for name in refused)
        raise ConfigError(f"cannot resume this checkpoint with a different {detail}. A "
                          f"resumed run may change only {', '.join(RESUME_MAY_CHANGE)}; start "
                          "a new run directory (or set train.resume=False) for the rest")
    return changed


def check_key(dotted: str) -> Any:
    """Raises ConfigError unless `dotted` (e.g. "optim.lr") names a RunConfig field.

    Keys below a dict-valued field (model.arch, data.task_options, mesh.rules) are free; an
    element of a tuple of sections is indexed: "rewards.functions[0].weight".

    Returns:
      The field's type hint (`Any` for a key below a dict-valued field).
    """
    cls: Any = RunConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        name, index = re.fullmatch(r"(.*?)(\[\d+\])?", part).groups()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name not in fields:
            where = ".".join(parts[:i]) or "config"
            raise ConfigError(f"unknown config key '{dotted}' ('{where}' has no '{name}'; "
                              f"known: {', '.join(sorted(fields))})")
        hint = typing.get_type_hints(cls)[name]
        tp = _is_optional(hint)[1]
        if index is not None:
            items = get_args(tp) if get_origin(tp) is tuple else ()
            if not (items and dataclasses.is_dataclass(items[0])):
                raise ConfigError(f"unknown config key '{dotted}' ('{name}' is not a list "
                                  "of sections)")
            hint = tp = items[0]
        if i == len(parts) - 1:
            return hint
        if dataclasses.is_dataclass(tp):
            cls = tp
        elif tp is dict or get_origin(tp) is dict:
            return Any
        else:
            raise ConfigError(f"unknown config key '{dotted}' ('{'.'.join(parts[:i + 1])}' "
                              "is not a section)")
    return cls


def run_config_from(config_dict: Any) -> RunConfig:
    """The typed RunConfig of an ml_collections ConfigDict (or a plain nested dict)."""
    data = config_dict.to_dict() if hasattr(config_dict, "to_dict") else dict(config_dict)
    return from_dict(RunConfig, data, "config")

"""The one typed config tree of r1jax.

Config files in `configs/` are ml_collections files (`get_config(arg) -> ConfigDict`); the
command line overrides them in the absl style (`--config.optim.lr=1e-6`). `from_dict` turns
the resulting nested dict into the frozen dataclasses below exactly once, at start-up, and
every error names the offending key by its full dotted path.

Only this module knows the schema; everything else reads typed fields directly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Optional, Union, get_args, get_origin

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
    if origin is dict:
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

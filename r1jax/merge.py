"""`r1jax-merge`: merges Hugging Face model directories tensor by tensor.

    r1jax-merge --method linear --models runs/a/export runs/b/export --weights 0.7 0.3 \\
        --out merged/avg
    r1jax-merge --method ties --base /models/Qwen2.5-Math-1.5B --models rl/export sft/export \\
        --density 0.2 --lambda 1.0 --out merged/ties
    r1jax-merge --method dare --base /models/Qwen2.5-Math-1.5B --models rl/export \\
        --drop_rate 0.9 --seed 0 --out merged/dare
    r1jax-merge --recipe=configs/merge/light_r1_merge.py     # a recipe file; flags override

A recipe (`--recipe FILE.py[:ARG]`) is a Python file whose `get_config(ARG)` returns the
settings as a dict (keys: RECIPE_KEYS, the option names below); options given on the
command line override them.

Methods (per tensor; theta_i are the models, theta_0 the base, tau_i = theta_i - theta_0 their
task vectors, w_i the weights, lambda the scale):

- `linear`: sum_i w_i theta_i / sum_i w_i (with `--no_normalize`: sum_i w_i theta_i).
- `task_arithmetic`: theta_0 + lambda sum_i w_i tau_i.
- `ties` (TIES-Merging, Yadav et al. 2023): trim each tau_i to its top `density` fraction by
  magnitude, elect a sign per entry, sign(sum_i w_i trim(tau_i)), and add lambda times the
  w-weighted mean of the trimmed entries that carry the elected sign (the disjoint mean).
- `dare` (DARE, Yu et al. 2023): drop each entry of each tau_i with probability p
  (`--drop_rate`), scale the kept ones by 1 / (1 - p), then combine as `task_arithmetic`.
- `dare_ties`: DARE's drop-and-rescale in place of TIES' magnitude trim, then TIES' sign
  election and disjoint mean.

Everything is computed in float32 and cast back to the base model's dtype of each tensor (or
`--dtype`). Tensors are read one at a time with plain file reads (no memory map), so host
memory holds about one tensor per input model, never a whole model; the output is written
into a temporary sibling directory and renamed into place when complete, with config.json,
generation_config.json, the tokenizer files of the base model (the first model for
`linear`) and `merge.json`, a record of the method, inputs and parameters.

This module uses numpy only; it does not import jax itself (the `r1jax` package, imported
for the safetensors helpers, does).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterable, Optional, Sequence

import ml_dtypes
import numpy as np

from r1jax.models import safetensors_io as st
from r1jax.models.hf_io import TOKENIZER_FILES, _replace_dir, read_hf_config

log = logging.getLogger("r1jax.merge")

METHODS = ("linear", "task_arithmetic", "ties", "dare", "dare_ties")
OUT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}
# config.json fields that must agree for tensors of the same name to mean the same thing.
ARCHITECTURE_FIELDS = ("model_type", "architectures", "vocab_size", "hidden_size",
                       "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "tie_word_embeddings",
                       "num_experts", "num_local_experts", "moe_intermediate_size")
MERGE_RECORD = "merge.json"


class MergeError(ValueError):
    """Inputs that cannot be merged or options that do not fit together; names the culprit."""


# ---------------------------------------------------------------------------------------------
# The formulas: pure functions of float32 arrays. Shapes: N = number of merged models, [*]
# = the shape of the tensor being merged (any shape, the same for every input).
# ---------------------------------------------------------------------------------------------

def linear(tensors: Iterable[np.ndarray], weights: Sequence[float], *,
           normalize: bool = True) -> np.ndarray:
    """sum_i w_i x_i / sum_i w_i (normalize) or sum_i w_i x_i.

    Args:
      tensors: N float arrays [*], consumed one at a time (a generator keeps one in memory).
      weights: N weights.
      normalize: divide by the sum of the weights.
    Returns:
      float32 [*].
    """
    total = None
    for w, x in zip(weights, tensors, strict=True):
        term = np.multiply(x, np.float32(w), dtype=np.float32)
        total = term if total is None else np.add(total, term, out=total)
    if normalize:
        total /= np.float32(sum(weights))
    return total


def task_arithmetic(base: np.ndarray, deltas: Iterable[np.ndarray], weights: Sequence[float],
                    *, scale: float) -> np.ndarray:
    """theta_0 + lambda sum_i w_i tau_i.

    Args:
      base: theta_0 [*].
      deltas: N task vectors tau_i [*] (float32), consumed one at a time.
      weights: N weights w_i.
      scale: lambda.
    Returns:
      float32 [*].
    """
    summed = linear(deltas, weights, normalize=False)
    summed *= np.float32(scale)
    return np.add(summed, base, out=summed, dtype=np.float32)


def trim_to_density(delta: np.ndarray, density: float) -> np.ndarray:
    """TIES trim: keeps the k = floor(density n + 1/2) entries of largest |delta|, zeros the rest.

    Entries whose magnitude equals the k-th largest are all kept, so with ties at the cut
    slightly more than k survive (e.g. zeros, when fewer than k entries are non-zero).

    Args:
      delta: float32 [*], n entries.
      density: fraction kept, in (0, 1].
    Returns:
      float32 [*].
    """
    n = delta.size
    k = int(density * n + 0.5)
    if k >= n:
        return delta
    if k == 0:
        return np.zeros_like(delta)
    magnitude = np.abs(delta)
    threshold = np.partition(magnitude.reshape(-1), n - k)[n - k]
    keep = magnitude >= threshold
    del magnitude
    return np.where(keep, delta, np.float32(0))


def elect_sign(deltas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """TIES sign election: gamma = sign(sum_i w_i tau_i) per entry (the sign of the larger mass).

    Args:
      deltas: N (trimmed) task vectors [*].
      weights: N weights.
    Returns:
      float32 [*] of -1, 0, +1.
    """
    return np.sign(linear(deltas, weights, normalize=False))


def disjoint_mean(deltas: Sequence[np.ndarray], weights: Sequence[float],
                  sign: np.ndarray) -> np.ndarray:
    """TIES disjoint merge: per entry, sum_{i in A} w_i tau_i / sum_{i in A} w_i, where A holds
    the models whose entry is non-zero with the elected sign; 0 where A is empty.

    Args:
      deltas: N (trimmed) task vectors [*].
      weights: N positive weights (all 1: the paper's plain mean).
      sign: elected sign [*].
    Returns:
      float32 [*].
    """
    numerator = np.zeros(sign.shape, np.float32)
    denominator = np.zeros(sign.shape, np.float32)
    for w, delta in zip(weights, deltas, strict=True):
        # Where no sign is elected (0), only zero entries "agree": they add 0, so the
        # result there is 0 as the definition asks.
        agree = np.sign(delta) == sign
        np.add(numerator, delta * np.float32(w), out=numerator, where=agree)
        np.add(denominator, np.float32(w), out=denominator, where=agree)
    np.divide(numerator, denominator, out=numerator, where=denominator > 0)
    numerator[denominator == 0] = 0
    return numerator


def ties(base: np.ndarray, deltas: list[np.ndarray], weights: Sequence[float], *,
         density: Optional[float], scale: float) -> np.ndarray:
    """theta_0 + lambda disjoint_mean(trim(tau_i)) with the elected sign (TIES-Merging).

    Args:
      base: theta_0 [*].
      deltas: N task vectors [*] (float32); the list's entries are replaced by their trimmed
        versions to free memory as it goes.
      weights: N positive weights.
      density: fraction kept by the magnitude trim; None skips the trim (dare_ties, whose
        deltas are already sparse).
      scale: lambda.
    Returns:
      float32 [*].
    """
    if density is not None:
        for i in range(len(deltas)):
            deltas[i] = trim_to_density(deltas[i], density)
    merged = disjoint_mean(deltas, weights, elect_sign(deltas, weights))
    merged *= np.float32(scale)
    return np.add(merged, base, out=merged, dtype=np.float32)


def dare_drop(delta: np.ndarray, drop_rate: float, rng: np.random.Generator) -> np.ndarray:
    """DARE: zeros each entry with probability p and scales the kept ones by 1 / (1 - p), so
    the expectation of every entry is unchanged.

    Args:
      delta: float32 task vector [*].
      drop_rate: p in [0, 1).
      rng: the source of the drop mask (`dare_rng`).
    Returns:
      float32 [*].
    """
    keep = rng.random(delta.shape, dtype=np.float32) >= np.float32(drop_rate)
    return np.where(keep, delta * np.float32(1.0 / (1.0 - drop_rate)), np.float32(0))


def dare_rng(seed: int, model_index: int, name: str) -> np.random.Generator:
    """The generator of the drop mask of model `model_index`'s tensor `name`.

    Seeded by (seed, model_index, the first 128 bits of sha256(name)), so a mask depends on
    neither the order the tensors are stored or visited in nor on the other tensors.
    """
    digest = hashlib.sha256(name.encode()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, model_index, *words]))


# ---------------------------------------------------------------------------------------------
# Options, inputs and checks.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MergeSpec:
    """What to merge and how (see the module docstring for the formulas).

    `weights` default to 1 for every model; `density` is TIES' kept fraction, `drop_rate`
    DARE's p, `scale` lambda, `seed` DARE's seed, `normalize` only applies to `linear`, and
    `dtype` (None: each tensor's base dtype) is the dtype of the merged float tensors.
    """

    method: str
    models: tuple[str, ...]
    base: Optional[str] = None
    weights: Optional[tuple[float, ...]] = None
    density: Optional[float] = None
    drop_rate: Optional[float] = None
    scale: Optional[float] = None
    seed: Optional[int] = None
    normalize: bool = True
    dtype: Optional[str] = None


def validate(spec: MergeSpec) -> MergeSpec:
    """Checks that the options fit the method; returns the spec with defaults filled in."""
    m = spec.method
    if m not in METHODS:
        raise MergeError(f"unknown --method '{m}'; choose one of {', '.join(METHODS)}")
    if m == "linear":
        if spec.base is not None:
            raise MergeError("--base is not used by linear (it averages --models); drop it "
                             "or use task_arithmetic / ties / dare")
        if len(spec.models) < 2:
            raise MergeError("linear needs at least two --models")
    elif spec.base is None:
        raise MergeError(f"{m} needs --base (the model the task vectors are taken from)")
    if not spec.models:
        raise MergeError("--models lists no model")
    unused = [flag for flag, value, used in (
        ("--density", spec.density, m == "ties"),
        ("--drop_rate", spec.drop_rate, m in ("dare", "dare_ties")),
        ("--seed", spec.seed, m in ("dare", "dare_ties")),
        ("--lambda", spec.scale, m != "linear"),
        ("--no_normalize", None if spec.normalize else True, m == "linear")) if
        value is not None and not used]
    if unused:
        raise MergeError(f"{unused[0]} does not apply to --method {m}")
    if m == "ties" and spec.density is None:
        raise MergeError("ties needs --density (the fraction of each task vector kept)")
    if spec.density is not None and not 0 < spec.density <= 1:
        raise MergeError(f"--density {spec.density} is not in (0, 1]")
    if m in ("dare", "dare_ties") and spec.drop_rate is None:
        raise MergeError(f"{m} needs --drop_rate (the probability p of dropping an entry)")
    if spec.drop_rate is not None and not 0 <= spec.drop_rate < 1:
        raise MergeError(f"--drop_rate {spec.drop_rate} is not in [0, 1)")
    if spec.seed is not None and spec.seed < 0:
        raise MergeError(f"--seed {spec.seed} is negative")
    if spec.dtype is not None and spec.dtype not in OUT_DTYPES:
        raise MergeError(f"--dtype '{spec.dtype}' is not one of {', '.join(OUT_DTYPES)}")
    scale = (None if m == "linear" else 1.0) if spec.scale is None else spec.scale
    seed = (0 if m in ("dare", "dare_ties") else None) if spec.seed is None else spec.seed
    return dataclasses.replace(spec, weights=_weights(spec), scale=scale, seed=seed)


def _weights(spec: MergeSpec) -> tuple[float, ...]:
    weights = spec.weights or tuple(1.0 for _ in spec.models)
    if len(weights) != len(spec.models):
        raise MergeError(f"--weights has {len(weights)} values for {len(spec.models)} --models")
    if not all(math.isfinite(w) for w in weights):
        raise MergeError(f"--weights {list(weights)} are not all finite")
    if spec.method in ("ties", "dare_ties") and min(weights) <= 0:
        raise MergeError(f"{spec.method} needs positive --weights (got {list(weights)})")
    if spec.method == "linear" and spec.normalize and sum(weights) == 0:
        raise MergeError("linear --weights sum to 0 and cannot be normalised; use "
                         "--no_normalize or other weights")
    return tuple(float(w) for w in weights)


def check_configs(configs: dict[str, dict]) -> None:
    """Refuses model directories whose config.json architectures differ (names the field)."""
    (ref_dir, ref), *others = configs.items()
    for path, cfg in others:
        for field in ARCHITECTURE_FIELDS:
            if ref.get(field) != cfg.get(field):
                raise MergeError(f"config.json field '{field}' differs: {ref.get(field)!r} in "
                                 f"{ref_dir}, {cfg.get(field)!r} in {path}; these models "
                                 f"cannot be merged")


def check_tensors(infos: dict[str, dict[str, st.TensorInfo]]) -> None:
    """Refuses checkpoints whose tensor names or shapes differ (names the tensor)."""
    (ref_dir, ref), *others = infos.items()
    for path, these in others:
        missing = sorted(set(ref) - set(these))
        if missing:
            raise MergeError(f"tensor '{missing[0]}' of {ref_dir} is missing from {path}")
        extra = sorted(set(these) - set(ref))
        if extra:
            raise MergeError(f"tensor '{extra[0]}' of {path} is not in {ref_dir}")
        for name, info in these.items():
            if info.shape != ref[name].shape:
                raise MergeError(f"tensor '{name}' has shape {list(info.shape)} in {path} but "
                                 f"{list(ref[name].shape)} in {ref_dir}")
            if (info.dtype in st.FLOAT_DTYPES) != (ref[name].dtype in st.FLOAT_DTYPES):
                raise MergeError(f"tensor '{name}' is {info.dtype} in {path} but "
                                 f"{ref[name].dtype} in {ref_dir}")


def read_tensor(info: st.TensorInfo) -> np.ndarray:
    """One tensor, read with a plain file read: no memory map, whose pages would stay in the
    process's resident set, only a buffer the size of the tensor."""
    dtype = st.DTYPES[info.dtype]
    return np.fromfile(info.file, dtype=dtype, count=math.prod(info.shape),
                       offset=info.offset).reshape(info.shape)


# ---------------------------------------------------------------------------------------------
# Merging and writing.
# ---------------------------------------------------------------------------------------------

def merge_tensor(spec: MergeSpec, name: str, base: Optional[st.TensorInfo],
                 models: Sequence[st.TensorInfo]) -> np.ndarray:
    """The merged float32 value of tensor `name` (spec validated)."""
    if spec.method == "linear":
        return linear((read_tensor(i) for i in models), spec.weights,
                      normalize=spec.normalize)
    theta0 = read_tensor(base).astype(np.float32, copy=False)

    def deltas() -> Iterable[np.ndarray]:
        for i, info in enumerate(models):
            delta = read_tensor(info).astype(np.float32, copy=False)  # a fresh buffer
            delta -= theta0
            if spec.method in ("dare", "dare_ties"):
                delta = dare_drop(delta, spec.drop_rate, dare_rng(spec.seed, i, name))
            yield delta

    if spec.method in ("task_arithmetic", "dare"):
        return task_arithmetic(theta0, deltas(), spec.weights, scale=spec.scale)
    density = spec.density if spec.method == "ties" else None
    return ties(theta0, list(deltas()), spec.weights, density=density, scale=spec.scale)


def _produce(spec: MergeSpec, name: str, ref: st.TensorInfo, base: Optional[st.TensorInfo],
             models: Sequence[st.TensorInfo], out_dtype: np.dtype) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        if ref.dtype not in st.FLOAT_DTYPES:  # integer buffers are copied, never averaged
            value = read_tensor(ref)
            for info in (base, *models):
                if info is not None and not np.array_equal(read_tensor(info), value):
                    raise MergeError(f"tensor '{name}' ({ref.dtype}) differs between "
                                     f"{ref.file} and {info.file}; non-float tensors must "
                                     f"be equal to be merged")
            return value
        return merge_tensor(spec, name, base, models).astype(out_dtype, copy=False)
    return produce


def _output_config(cfg: dict, dtype: Optional[str]) -> dict:
    cfg = dict(cfg)
    if dtype is not None:
        keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]
        cfg.update({k: dtype for k in keys})
    return cfg


def merge(spec: MergeSpec, out_dir: str, *, max_shard_bytes: int = 5 * 2**30,
          overwrite: bool = False) -> str:
    """Merges the model directories of `spec` into a new Hugging Face directory `out_dir`.

    Args:
      spec: method, inputs and parameters.
      out_dir: destination; written in a temporary sibling directory and renamed into place,
        so a failure leaves nothing (or, with `overwrite`, the previous directory intact).
      max_shard_bytes: size limit of one output safetensors file (an index is written when
        there is more than one).
      overwrite: replace an existing `out_dir` once the new one is complete.
    Returns:
      The absolute output directory.
    Raises:
      MergeError: bad options, mismatched architectures, tensor names, shapes or dtypes.
      FileNotFoundError, CheckpointError: a missing or unreadable input.
    """
    spec = validate(spec)
    if max_shard_bytes <= 0:
        raise MergeError(f"--max_shard_bytes {max_shard_bytes} must be positive")
    inputs = ([spec.base] if spec.base else []) + list(spec.models)
    out_dir = os.path.abspath(out_dir)
    if out_dir in {os.path.abspath(p) for p in inputs}:
        raise MergeError(f"--out {out_dir} is one of the input models")
    if os.path.exists(out_dir) and not overwrite:
        raise MergeError(f"--out {out_dir} exists; pass --overwrite to replace it")
    configs = {path: read_hf_config(path) for path in inputs}
    check_configs(configs)
    infos = {path: st.TensorReader(path).infos for path in inputs}
    check_tensors(infos)
    ref_dir = inputs[0]  # the base, or the first model for linear
    plan = _plan(spec, infos, ref_dir)
    log.info("merging %d tensors of %d models with %s into %s", len(plan), len(inputs),
             spec.method, out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        files = st.write_sharded(tmp, plan, max_shard_bytes)
        _write_side_files(tmp, spec, configs[ref_dir], ref_dir, files, len(plan))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _plan(spec: MergeSpec, infos: dict[str, dict[str, st.TensorInfo]], ref_dir: str) -> list:
    """(name, shape, dtype, produce) of every output tensor, in name order."""
    ref = infos[ref_dir]
    plan = []
    for name in sorted(ref):
        out_dtype = st.DTYPES[ref[name].dtype]
        if spec.dtype and ref[name].dtype in st.FLOAT_DTYPES:
            out_dtype = OUT_DTYPES[spec.dtype]
        base = infos[spec.base][name] if spec.base else None
        models = [infos[path][name] for path in spec.models]
        plan.append((name, ref[name].shape, out_dtype,
                     _produce(spec, name, ref[name], base, models, out_dtype)))
    return plan


def _write_side_files(tmp: str, spec: MergeSpec, config: dict, ref_dir: str,
                      files: list[str], tensors: int) -> None:
    """config.json, the reference model's tokenizer and generation config, merge.json."""
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(_output_config(config, spec.dtype), f, indent=2, sort_keys=True)
    for name in TOKENIZER_FILES:  # includes generation_config.json
        if os.path.exists(os.path.join(ref_dir, name)):
            shutil.copy2(os.path.join(ref_dir, name), os.path.join(tmp, name))
    record = {"method": spec.method, "base": _abs(spec.base),
              "models": [_abs(p) for p in spec.models], "weights": list(spec.weights),
              "params": {"density": spec.density, "drop_rate": spec.drop_rate,
                         "lambda": spec.scale, "seed": spec.seed,
                         "normalize": spec.normalize if spec.method == "linear" else None},
              "dtype": spec.dtype, "tensors": tensors, "files": files}
    with open(os.path.join(tmp, MERGE_RECORD), "w") as f:
        json.dump(record, f, indent=2)


def _abs(path: Optional[str]) -> Optional[str]:
    return None if path is None else os.path.abspath(path)


RECIPE_KEYS = ("method", "models", "base", "weights", "normalize", "density", "drop_rate",
               "scale", "seed", "dtype", "out")


def load_recipe(spec: str) -> dict:
    """The settings of a merge recipe `FILE.py[:ARG]`: its `get_config(ARG)` (a dict or
    ConfigDict) with keys among RECIPE_KEYS. Raises MergeError for a missing file or an
    unknown key."""
    import importlib.util
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise MergeError(f"merge recipe not found: {path}")
    module_spec = importlib.util.spec_from_file_location("r1jax_merge_recipe", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    recipe = dict(module.get_config(arg))
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise MergeError(f"merge recipe {spec}: unknown keys {unknown}; "
                         f"known: {list(RECIPE_KEYS)}")
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in recipe.items()}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1jax-merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", metavar="FILE[:ARG]",
                   help="a merge recipe (configs/merge/*.py): its settings, which the "
                   "options given here override")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--models", nargs="+", metavar="DIR",
                   help="Hugging Face model directories to merge")
    p.add_argument("--base", metavar="DIR", help="the model task vectors are taken from "
                   "(task_arithmetic, ties, dare, dare_ties)")
    p.add_argument("--weights", nargs="+", type=float, metavar="W",
                   help="one weight per --models entry (default: 1 each)")
    p.add_argument("--no_normalize", dest="normalize", action="store_false", default=None,
                   help="linear: sum_i w_i theta_i instead of dividing by sum_i w_i")
    p.add_argument("--density", type=float, help="ties: fraction of each task vector kept")
    p.add_argument("--drop_rate", type=float, help="dare, dare_ties: drop probability p")
    p.add_argument("--lambda", "--scale", dest="scale", type=float,
                   help="scale of the merged task vector (default 1)")
    p.add_argument("--seed", type=int, help="dare, dare_ties: seed of the drop masks "
                   "(default 0)")
    p.add_argument("--dtype", choices=tuple(OUT_DTYPES),
                   help="dtype of the merged tensors (default: the base's, per tensor)")
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--max_shard_bytes", type=int, default=5 * 2**30,
                   help="size limit of one output safetensors file (default 5 GiB)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `r1jax-merge`; returns the exit status (2 for bad options or inputs)."""
    parser = make_parser()
    a = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        settings = load_recipe(a.recipe) if a.recipe else {}
    except MergeError as e:
        print(f"r1jax-merge: error: {e}", file=sys.stderr)
        return 2
    for key in RECIPE_KEYS:
        value = getattr(a, key)
        if value is not None:
            settings[key] = tuple(value) if isinstance(value, list) else value
    missing = [f"--{k}" for k in ("method", "models", "out") if not settings.get(k)]
    if missing:
        parser.error(f"{', '.join(missing)} required (on the command line or in --recipe)")
    if settings["method"] not in METHODS:
        parser.error(f"method must be one of {METHODS}, got {settings['method']!r}")
    spec = MergeSpec(method=settings["method"], models=tuple(settings["models"]),
                     base=settings.get("base"), weights=settings.get("weights"),
                     density=settings.get("density"), drop_rate=settings.get("drop_rate"),
                     scale=settings.get("scale"), seed=settings.get("seed"),
                     normalize=settings.get("normalize", True), dtype=settings.get("dtype"))
    try:
        out = merge(spec, settings["out"], max_shard_bytes=a.max_shard_bytes,
                    overwrite=a.overwrite)
    except (MergeError, FileNotFoundError, st.CheckpointError) as e:
        print(f"r1jax-merge: error: {e}", file=sys.stderr)
        return 2
    print(f"merged {len(spec.models)} model(s) with {spec.method} into {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

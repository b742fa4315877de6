"""Builds what a run config names: mesh, tokenizer, policy, data sources, reward pool."""

from __future__ import annotations

import os
from typing import Any, Optional

from flax import nnx

from r1jax.config import DataConfig, EvalConfig, MeshConfig, ModelSpec, RewardsConfig
from r1jax.models import Decoder, load_hf, load_tokenizer, model_config_from_hf, preset_config
from r1jax.models.char_tokenizer import make_char_tokenizer
from r1jax.sharding import Sharding, make_mesh, merge_rules


def build_sharding(cfg: MeshConfig) -> Sharding:
    return Sharding(make_mesh(cfg.data, cfg.fsdp, cfg.tensor), merge_rules(cfg.rules))


def build_tokenizer(spec: ModelSpec, run_dir: Optional[str] = None) -> Any:
    """The tokenizer of `spec`; a character tokenizer is also saved under run_dir/tokenizer."""
    if spec.char_vocab:
        tok = make_char_tokenizer(spec.char_vocab)
        if run_dir is not None:
            import jax
            if jax.process_index() == 0:
                tok.save_pretrained(os.path.join(run_dir, "tokenizer"))
        return tok
    return load_tokenizer(spec.tokenizer or spec.path)


def build_policy(spec: ModelSpec, sharding: Sharding, tokenizer: Any = None) -> Decoder:
    """The policy: loaded from `spec.path`, or randomly initialized from a preset / arch.

    For `arch` models the vocabulary defaults to the tokenizer's size.
    """
    numerics = spec.numerics()
    if spec.path is not None:
        options = {k: v for k, v in numerics.items() if k not in ("param_dtype", "dtype")}
        return load_hf(spec.path, dtype=spec.param_dtype, compute_dtype=spec.dtype,
                       mesh=sharding, **options)
    if spec.preset is not None:
        cfg = preset_config(spec.preset, **numerics)
    else:
        arch = dict(spec.arch)
        if "vocab_size" not in arch:
            if tokenizer is None:
                raise ValueError("model.arch has no vocab_size and there is no tokenizer")
            arch["vocab_size"] = len(tokenizer)
        cfg = model_config_from_hf(arch, **numerics)
    if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's "
                         f"vocab_size {cfg.vocab_size}")
    return Decoder(cfg, rngs=nnx.Rngs(spec.init_seed), sharding=sharding)


def build_source(source: str, *, recipe: Optional[str], data_dir: Optional[str],
                 limit: Optional[int], strict: bool, seed: int, num_generated: int,
                 task_options: dict, split: str = "train") -> Any:
    """A PromptSource: a generated task ("countdown", "arithmetic", "knights_knaves") or a
    dataset."""
    from r1jax import data
    from r1jax.data.arithmetic import generate_arithmetic
    if source == "countdown":
        return data.generate_countdown(num_generated, seed + (0 if split == "train" else 7919),
                                       **task_options)
    if source == "arithmetic":
        return generate_arithmetic(num_generated, split=split, **task_options)
    if source == "knights_knaves":
        from r1jax.data.knights_knaves import generate_knights_knaves
        return generate_knights_knaves(num_generated, split=split, seed=seed, **task_options)
    return data.load_source(source, recipe=recipe, data_dir=data_dir, strict=strict,
                            limit=limit)


def build_train_source(cfg: DataConfig) -> Any:
    """The training prompts; with `data.pass_rates`, only those in the pass-rate range."""
    source = build_source(cfg.source, recipe=cfg.recipe, data_dir=cfg.data_dir,
                          limit=cfg.limit, strict=cfg.strict, seed=cfg.seed,
                          num_generated=cfg.num_generated, task_options=cfg.task_options,
                          split="train")
    if cfg.pass_rates is not None:
        from r1jax.data.pass_rates import filter_by_pass_rate
        source = filter_by_pass_rate(source, cfg.pass_rates, cfg.pass_rate_min,
                                     cfg.pass_rate_max)
    return source


def build_eval_source(cfg: EvalConfig, data_cfg: DataConfig) -> Optional[Any]:
    """Held-out problems; generated tasks use their test split."""
    if cfg.source is None:
        return None
    limit = cfg.limit if cfg.limit is not None else data_cfg.num_generated
    return build_source(cfg.source, recipe=cfg.recipe, data_dir=data_cfg.data_dir,
                        limit=cfg.limit, strict=data_cfg.strict, seed=data_cfg.seed,
                        num_generated=limit, task_options=data_cfg.task_options,
                        split="test")


def build_reward_pool(cfg: RewardsConfig, data_cfg: Optional[DataConfig] = None,
                      sharding: Optional[Sharding] = None) -> Any:
    """The reward pool: `cfg.functions`, or with a data mixture each task's own functions
    (one pool routing every completion to its task's; `cfg` gives workers and timeout).

    A `reward_model` entry among `cfg.functions` (or a mixture task's functions) loads that
    sequence-classification model on `sharding`'s mesh and adds its weighted, normalised
    score to every result (`per_function["reward_model"]`, or `"<task>/reward_model"` on
    that task's rows); the worker pool runs the other functions.
    """
    from r1jax.rewards import RewardPool
    from r1jax.rewards import model_reward
    if data_cfg is not None and data_cfg.mixture:
        split = {m.name: model_reward.split_specs(m.functions) for m in data_cfg.mixture}
        specs = {task: [(f.name, f.weight, dict(f.kwargs)) for f in rules]
                 for task, (rules, _) in split.items()}
        learned = {task: entry for task, (_, entry) in split.items() if entry is not None}
    else:
        rules, entry = model_reward.split_specs(cfg.functions)
        specs = [(f.name, f.weight, dict(f.kwargs)) for f in rules]
        learned = {None: entry} if entry is not None else {}
    pool = RewardPool(specs, num_workers=cfg.num_workers, timeout_s=cfg.timeout_s)
    if not learned:
        return pool
    from r1jax.models.reward_model import load_reward_model, random_reward_model
    try:
        for task, entry in learned.items():
            options = model_reward.ModelRewardOptions.from_kwargs(entry.kwargs)
            if options.path is not None:
                scorer = load_reward_model(**options.load_kwargs(), mesh=sharding)
            else:
                scorer = random_reward_model(
                    options.arch, options.tokenizer, seed=options.seed, mesh=sharding,
                    dtype=options.dtype, format=options.format,
                    max_length=options.max_length, batch_size=options.batch_size)
            pool = model_reward.PoolWithModelReward(
                pool, model_reward.ModelReward(scorer, options), entry.weight, task)
    except BaseException:
        pool.close()
        raise
    return pool


def accuracy_names(cfg: RewardsConfig, data_cfg: DataConfig) -> "str | dict":
    """The accuracy function: `rewards.accuracy`, or with a mixture task -> its own."""
    if data_cfg.mixture:
        return {m.name: m.accuracy for m in data_cfg.mixture}
    return cfg.accuracy


def build_mixture_iterator(cfg: DataConfig, tokenizer: Any, batch_size: int,
                           shard_index: int = 0, shard_count: int = 1) -> Any:
    """The weighted multi-task prompt stream of `cfg.mixture` (r1jax.data.mixture)."""
    from r1jax.data.mixture import MixtureIterator, Task
    from r1jax.data.templates import make_template
    tasks = [Task(m.name, build_source(m.source, recipe=m.recipe, data_dir=cfg.data_dir,
                                       limit=m.limit, strict=cfg.strict, seed=cfg.seed,
                                       num_generated=m.num_generated,
                                       task_options=m.task_options),
                  make_template(m.template, m.system_prompt), m.weight)
             for m in cfg.mixture]
    schedule = [(s.from_step, s.weights) for s in cfg.mixture_schedule]
    return MixtureIterator(tasks, tokenizer, batch_size, cfg.seed, schedule, shard_index,
                           shard_count, cfg.max_prompt_tokens)

"""The programs `r1jax-fit` compiles: the trainer's and sampler's own functions, at a run
config's shapes, from sharded `jax.ShapeDtypeStruct`s (nothing is allocated).

- `prefill`: `sampler._prefill` over [P, Sp] prompts, Sp = data.max_prompt_tokens, P = the
  mesh's batch parallelism (the prompts the continuous-batching engine admits at a time), or
  with rollout.max_slots None the static batch's prompts (padded to the batch parallelism);
- `decode`: one `sampler._decode_step` plus `sample` at N = rollout.max_slots rows (None: the
  static batch, gen_prompts_per_batch x G rows) against a KV cache of S = Sp + T slots,
  T = rollout.max_new_tokens, donated as the decode loop updates it in place;
- `rollout`: the sampler's whole program for one generation batch of gen_prompts_per_batch
  prompts of Sp tokens, as the trainer's `Sampler` jits it (the continuous-batching engine
  with rollout.max_slots, else one static batch): prefill and decode loop together with the
  loop's state (KV cache, staging buffer, every row's outputs), so its figure, not the two
  pieces above, is what a rollout needs;
- `logprobs`: `make_logprob_fn` (old / reference log-probs) over one update microbatch,
  prompts_per_step x G / minibatches / microbatches rows of Sp + T tokens;
- `update`: `make_update_fn` over one minibatch (split into microbatches inside), the train
  state {params in param_dtype, AdamW state sharded like them, step} donated, as `RLSteps`.

- `reward_model` (when a `reward_model` reward is configured): its scoring program
  (`reward_model.sequence_scores`) over one batch of batch_size x max_length tokens.
Beside its own buffers, each program counts the arrays that stay in HBM while it runs
without being its arguments ("resident"): the train state during the rollout (the decode
loop reads a compute-dtype copy of the weights), the frozen reference policy when
kl_beta > 0, the reward models' weights, and the step's whole rollout batch while its
pieces are updated on.

Glossary: P prompts, N decode rows, Sp prompt tokens, T new tokens, S = Sp + T, G group size.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time
import types
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.config import ModelConfig, RunConfig
from r1jax.models import attention as attn_lib
from r1jax.models import decoder
from r1jax.models.hf_config import model_config_from_hf
from r1jax.models.hf_io import read_hf_config
from r1jax.models.presets import PRESETS, preset_config, preset_for_path
from r1jax.rl.steps import like_params
from r1jax.rl.update import RLBatch, make_logprob_fn, make_optimizer, make_update_fn
from r1jax.sampling import sampler as sampler_lib
from r1jax.sampling.processors import SamplingParams, sample
from r1jax.sharding import Sharding, make_mesh, merge_rules

RL_PROGRAMS = ("prefill", "decode", "rollout", "logprobs", "update")  # r1jax-train's
# "reward_model": one scoring batch of the run's reward model (added to RL_PROGRAMS when
# the config has one); "sft": one r1jax-sft step.
PROGRAMS = RL_PROGRAMS + ("reward_model", "sft", "dpo")


def reward_model_entries(cfg: RunConfig) -> list:
    """The `reward_model` entries among the run's reward functions (mixture tasks too)."""
    functions = list(cfg.rewards.functions) + [f for m in cfg.data.mixture for f in m.functions]
    return [f for f in functions if f.name == "reward_model"]


class FitUsageError(ValueError):
    """A run r1jax-fit cannot measure (no architecture, a mesh the slice cannot hold, ...);
    the message says why."""


@dataclasses.dataclass(frozen=True)
class ProgramFit:
    """One compiled program's bytes per chip and cost.

    Attributes:
      name: "prefill", "decode", "logprobs" or "update".
      shapes: what it was compiled for, in words ("[8, 2048] prompts").
      argument_bytes, output_bytes, temp_bytes, alias_bytes, code_bytes: XLA's
        memory_analysis() per chip; alias = output bytes living in donated arguments.
      resident_bytes: per chip, arrays in HBM while the program runs that are not its
        arguments (name -> bytes).
      flops: the compiler's FLOP count (per chip); None when not reported.
      seconds: the compiler's time estimate ("optimal_seconds"); None when not reported.
      compile_seconds: wall time of lowering + compiling here.
      largest: the biggest argument / output / resident arrays, (name, bytes per chip),
        largest first.
      error: XLA's out-of-memory message when it refused to compile the program (then
        temp_bytes holds the temporaries it asked for), or COMPILE_FAILED and XLA's message
        when compiling failed otherwise; there is no cost analysis then.
    """

    name: str
    shapes: str
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    code_bytes: int
    resident_bytes: dict
    flops: Optional[float]
    seconds: Optional[float]
    compile_seconds: float
    largest: tuple
    error: Optional[str] = None

    @property
    def program_bytes(self) -> int:
        """What the program itself needs: arguments + outputs + temporaries - aliased + code."""
        return (self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes
                + self.code_bytes)

    @property
    def total_bytes(self) -> int:
        return self.program_bytes + sum(self.resident_bytes.values())

    def fits(self, hbm_bytes: int) -> bool:
        return self.error is None and self.total_bytes <= hbm_bytes


def resolve_model(cfg: RunConfig, preset: Optional[str] = None) -> tuple[ModelConfig, str]:
    """The run's architecture (with its numerics) and where it came from, in words.

    Order: model.path's config.json when it exists, `preset`, model.preset / model.arch, the
    preset named by model.path's last component.

    Raises:
      FitUsageError: none of these gives an architecture, or `preset` is unknown.
    """
    spec = cfg.model
    numerics = spec.numerics()
    if spec.path is not None and os.path.exists(os.path.join(spec.path, "config.json")):
        hf = read_hf_config(spec.path)
        return model_config_from_hf(hf, **numerics), os.path.join(spec.path, "config.json")
    name = preset or spec.preset
    origin = f"preset {name}"
    if name is None and spec.arch is not None:
        from r1jax import builder
        arch = dict(spec.arch)
        if "vocab_size" not in arch:
            arch["vocab_size"] = len(builder.build_tokenizer(spec))
        return model_config_from_hf(arch, **numerics), "model.arch"
    if name is None and spec.path is not None:
        name = preset_for_path(spec.path)
        origin = f"preset {name} (named by {spec.path}; it has no config.json here)"
    if name is None:
        raise FitUsageError(f"model.path {spec.path} has no config.json here and names no "
                            f"preset: pass --preset NAME (known: {', '.join(sorted(PRESETS))})")
    if name not in PRESETS:
        raise FitUsageError(f"unknown preset '{name}' (known: {', '.join(sorted(PRESETS))})")
    return preset_config(name, **numerics), origin


def chip_bytes(tree: Any) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (its shards)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def _sds(shape: Sequence[int], dtype: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def _abstract(shapes: Any, shardings: Any) -> Any:
    """A tree of shapes (eval_shape's) with a tree of shardings as ShapeDtypeStructs."""
    return jax.tree.map(lambda s, sh: _sds(s.shape, s.dtype, sh), shapes, shardings)


@dataclasses.dataclass
class Program:
    """A jitted function, its abstract arguments (a name for each), what it was built for
    in words, and the resident arrays beside it (name -> bytes per chip)."""

    name: str
    jitted: Any
    args: tuple
    arg_names: tuple
    shapes: str
    resident: dict


class RunPrograms:
    """The programs of a run (`PROGRAMS`, one method each), from the trainer's and the
    sampler's own functions, over abstract parameters and optimizer state."""

    def __init__(self, cfg: RunConfig, model: ModelConfig, sharding: Sharding):
        self.cfg, self.model, self.sharding = cfg, model, sharding
        self.replicated = NamedSharding(sharding.mesh, P())
        self.batch_sharding = NamedSharding(sharding.mesh, P(sharding.batch_axes or None))
        param_sharding = decoder.param_shardings(model, sharding)
        shapes = decoder.abstract_params(model)
        self.params = _abstract(shapes, param_sharding)
        # As RLSteps.__init__ / reset_optimizer: AdamW, its state sharded like the params.
        algo = cfg.algo
        self.tx = make_optimizer(
            cfg.optim, max(cfg.train.steps * algo.num_iterations * algo.minibatches, 1))
        opt = jax.eval_shape(self.tx.init, shapes)
        self.opt_state = _abstract(opt, like_params(opt, param_sharding, self.replicated))
        self.rows = cfg.train.prompts_per_step * cfg.rollout.group_size
        self.width = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
        params_bytes = chip_bytes(self.params)
        self.reward_models = [self._reward_model(e) for e in reward_model_entries(cfg)]
        self.bytes = {"params": params_bytes, "opt_state": chip_bytes(self.opt_state),
                      "reference": params_bytes if algo.kl_beta > 0 else 0,
                      "reward models": sum(chip_bytes(rm[1:3]) for rm in self.reward_models),
                      "rollout batch": chip_bytes(self.batch(self.rows))}

    def _reward_model(self, entry: Any) -> tuple:
        """(its options, abstract decoder params, abstract score head, ModelConfig) of a
        `reward_model` entry, from the config.json in its `path`."""
        from r1jax.models import reward_model
        from r1jax.rewards.model_reward import ModelRewardOptions
        options = ModelRewardOptions.from_kwargs(entry.kwargs)
        if options.path is not None and os.path.exists(os.path.join(options.path,
                                                                    "config.json")):
            hf, where = read_hf_config(options.path), options.path
        elif options.arch is not None:
            try:
                hf, where = reward_model.arch_config(options.arch), "its arch"
            except reward_model.UnsupportedModelError as e:
                raise FitUsageError(str(e)) from None
        else:
            raise FitUsageError(f"reward_model path {options.path!r} has no config.json here "
                                "(r1jax-fit reads the reward model's architecture from it, "
                                "or from the entry's 'arch')")
        model, head = reward_model.reward_model_config(hf, where, options.dtype)
        sh = self.sharding
        params = _abstract(decoder.abstract_params(model), decoder.param_shardings(model, sh))
        head = _sds(head.shape, jnp.dtype(model.param_dtype), sh.named(head.axes, head.shape))
        return options, params, head, model

    def _resident(self, *names: str) -> dict:
        return {n: self.bytes[n] for n in names if self.bytes[n]}

    def batch(self, rows: int) -> RLBatch:
        """An abstract RLBatch of `rows` rows: tokens [rows, S], completion arrays [rows, T]."""
        t, s = self.cfg.rollout.max_new_tokens, self.width
        arr = lambda dtype, *cols: _sds((rows, *cols), dtype, self.batch_sharding)
        return RLBatch(tokens=arr(jnp.int32, s), positions=arr(jnp.int32, s),
                       segment_ids=arr(jnp.int32, s), mask=arr(jnp.float32, t),
                       adv=arr(jnp.float32), old_logp=arr(jnp.float32, t),
                       ref_logp=arr(jnp.float32, t), valid_rows=arr(jnp.float32))

    def rollout_rows(self) -> tuple[int, int]:
        """(prefill prompts, decode rows): the engine's admission and slots, or with
        max_slots None the static batch (prompts padded to the batch parallelism)."""
        par = self.sharding.batch_parallelism
        if self.cfg.rollout.max_slots is not None:
            return par, self.cfg.rollout.max_slots
        prompts = self.cfg.train.gen_prompts_per_batch or self.cfg.train.prompts_per_step
        prompts = -(-prompts // par) * par
        return prompts, prompts * self.cfg.rollout.group_size

    # ------------------------------------------------------------------------------------
    def prefill(self) -> Program:
        rows, _ = self.rollout_rows()
        width = self.cfg.data.max_prompt_tokens
        tokens = _sds((rows, width), jnp.int32,
                      self.sharding.named(("act_batch", "act_seq"), (rows, width)))
        lens = _sds((rows,), jnp.int32, self.sharding.named(("act_batch",), (rows,)))

        def prefill(params, tokens, lens):
            return sampler_lib._prefill(params, tokens, lens, self.model, self.sharding)

        return Program("prefill", jax.jit(prefill), (self.params, tokens, lens),
                       ("params", "prompts", "lengths"), f"[{rows}, {width}] prompts",
                       self._resident("opt_state", "reference", "reward models"))

    def decode(self) -> Program:
        m, sh = self.model, self.sharding
        _, rows = self.rollout_rows()
        keys_t = attn_lib.transposed_key_cache(m.attention_impl, sh)
        # The weights as `_generate` hands them to the loop: cast once, sliced per layer.
        specs = decoder.param_specs(m)
        layer = {k: _sds(s.shape[1:], m.dtype, sh.named(s.axes[1:], s.shape[1:]))
                 for k, s in specs["layers"].items()}
        head = {k: _sds(s.shape, m.dtype, sh.named(s.axes, s.shape))
                for k, s in specs.items() if k != "layers"}
        # Per layer: values [N, K, S, Dh], keys the same or [N, K, Dh, S] (`_init_cache`).
        kv = (rows, m.num_kv_heads, self.width, m.head_dim)
        keys = (rows, m.num_kv_heads, m.head_dim, self.width) if keys_t else kv
        key_axes = sampler_lib.KEY_CACHE_T_AXES if keys_t else sampler_lib.CACHE_AXES
        cache = (tuple(_sds(keys, m.dtype, sh.named(key_axes, keys))
                       for _ in range(m.num_layers)),
                 tuple(_sds(kv, m.dtype, sh.named(sampler_lib.CACHE_AXES, kv))
                       for _ in range(m.num_layers)))
        sp = self._sampling()

        def step(layer_params, head_params, cache, tokens, pos, rope_table, seed):
            logits, cache = sampler_lib._decode_step(layer_params, head_params, cache,
                                                     tokens, pos, rope_table, m, sh, keys_t)
            tok, logp, _ = sample(logits, jax.random.key(seed), sp)
            return tok, logp, cache

        row = _sds((rows,), jnp.int32, sh.named(("act_batch",), (rows,)))
        # `sampler._rope_table`: cos and sin [S, Dh / 2] of every cache position.
        rope = (_sds((self.width, m.head_dim // 2), jnp.float32, self.replicated),) * 2
        args = ([layer] * m.num_layers, head, cache, row, row, rope,
                _sds((), jnp.uint32, self.replicated))
        return Program("decode", jax.jit(step, donate_argnums=2), args,
                       (f"weights ({m.dtype})", f"lm head + embedding ({m.dtype})",
                        "kv cache", "tokens", "positions", "rope table", "seed"),
                       f"{rows} rows x {self.width} cache slots",
                       self._resident("params", "opt_state", "reference", "reward models"))

    def rollout(self) -> Program:
        """The sampler's program for one generation batch, as the trainer's Sampler builds
        it: with slots, the engine's state made and one segment run over a queue of the
        batch's prompts (a static batch: prefill and the whole decode loop); prompts at the
        full Sp tokens."""
        r = self.cfg.rollout
        width = self.cfg.data.max_prompt_tokens
        holder = types.SimpleNamespace(config=self.model, sharding=self.sharding, params=None)
        smp = sampler_lib.Sampler(holder, max_prompt_len=width, max_new_tokens=r.max_new_tokens,
                                  max_slots=r.max_slots)
        prompts = self.cfg.train.gen_prompts_per_batch or self.cfg.train.prompts_per_step
        tokens, _, _ = smp._pack([[0] * width] * prompts)
        sp, stops = self._sampling(), (0,)
        if r.max_slots is None:
            fn = smp._program(tokens.shape, r.group_size, r.max_new_tokens, sp, stops)
        else:
            stream = sampler_lib.RolloutStream.layout(smp, r.group_size)
            init, run = smp._engine_programs(stream["width"], tokens.shape[0], r.group_size,
                                             r.max_new_tokens, sp, stops,
                                             stream["done_rows"], True)

            def fn(params, queue, lens, count, key):
                return run(params, init(params), queue, lens, count, jnp.int32(0), key,
                           jnp.int32(r.stream_steps))
            fn = jax.jit(fn)
        key = jax.eval_shape(lambda: jax.random.key(0))
        args = (self.params, _sds(tokens.shape, jnp.int32, self.replicated),
                _sds(tokens.shape[:1], jnp.int32, self.replicated),
                _sds((), jnp.int32, self.replicated),
                jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=self.replicated))
        slots = f"{r.max_slots} slots" if r.max_slots else "one static batch"
        return Program("rollout", fn, args, ("params", "prompts", "lengths", "count", "seed"),
                       f"{prompts} prompts x {r.group_size}, {slots}",
                       self._resident("opt_state", "reference", "reward models"))

    def _sampling(self) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                              min_p=r.min_p)

    def logprobs(self) -> Program:
        algo = self.cfg.algo
        rows = self.rows // algo.minibatches // algo.microbatches
        fn = jax.jit(make_logprob_fn(self.model, self.sharding, 1.0))
        return Program("logprobs", fn, (self.params, self.batch(rows)),
                       ("params", "microbatch"), f"[{rows}, {self.width}] microbatch",
                       self._resident("opt_state", "reference", "reward models",
                                      "rollout batch"))

    def update(self) -> Program:
        algo = self.cfg.algo
        rows = self.rows // algo.minibatches
        max_response_len = algo.max_response_len or self.cfg.rollout.max_new_tokens
        fn = make_update_fn(self.model, algo, self.tx, self.sharding, 1.0, max_response_len)
        state = {"params": self.params, "opt_state": self.opt_state,
                 "step": _sds((), jnp.int32, self.replicated)}
        shardings = jax.tree.map(lambda x: x.sharding, state)
        jitted = jax.jit(fn, donate_argnums=0, out_shardings=(shardings, None))
        return Program("update", jitted, (state, self.batch(rows)),
                       ("params + opt_state", "minibatch"),
                       f"[{rows}, {self.width}] minibatch in {algo.microbatches} "
                       "microbatches", self._resident("reference", "reward models",
                                                      "rollout batch"))


    def reward_model(self) -> Program:
        """One scoring batch of the (largest) reward model: batch_size rows of max_length
        tokens, as `RewardModel.score` runs them right after the rollout."""
        from r1jax.models.reward_model import sequence_scores
        if not self.reward_models:
            raise FitUsageError("program 'reward_model': the config has no reward_model "
                                "reward function")
        options, params, head, model = max(self.reward_models,
                                           key=lambda rm: chip_bytes(rm[1:3]))
        par = self.sharding.batch_parallelism
        rows = -(-options.batch_size // par) * par
        ids = _sds((rows, options.max_length), jnp.int32, self.batch_sharding)
        last = _sds((rows,), jnp.int32, self.batch_sharding)
        fn = jax.jit(functools.partial(sequence_scores, cfg=model, sharding=self.sharding))
        others = chip_bytes([rm[1:3] for rm in self.reward_models]) - chip_bytes((params, head))
        resident = self._resident("params", "opt_state", "reference", "rollout batch")
        if others:
            resident["other reward models"] = others
        return Program("reward_model", fn, (params, head, ids, ids, last),
                       ("reward model", "score head", "tokens", "segment ids", "last"),
                       f"[{rows}, {options.max_length}] scored rows", resident)

    def sft(self) -> Program:
        """One r1jax-sft optimizer step (`SFTRun`): `sft.batch_size` conversations packed
        into rows of `sft.max_len` tokens, taken at one per row (long chains of thought fill
        a row each) and padded as the run pads them, in `sft.microbatches` microbatches;
        the state donated."""
        from r1jax.sft import SFTBatch, make_packed_sft_update, padded_rows
        s = self.cfg.sft
        rows = padded_rows(s.batch_size, s.microbatches * self.sharding.batch_parallelism)
        fn = make_packed_sft_update(self.model, self.tx, self.sharding, s.microbatches)
        ids = _sds((rows, s.max_len), jnp.int32, self.batch_sharding)
        batch = SFTBatch(tokens=ids, positions=ids, segment_ids=ids, targets=ids,
                         weights=_sds((rows, s.max_len), jnp.float32, self.batch_sharding))
        return self._train_step("sft", fn, batch,
                                f"[{rows}, {s.max_len}] rows in {s.microbatches} microbatches")

    def _train_step(self, name: str, fn: Any, batch: Any, shapes: str,
                    resident: Optional[dict] = None) -> Program:
        """A program `fn(state, batch) -> (state, metrics)` over the train state (params,
        AdamW state, step), the state donated."""
        state = {"params": self.params, "opt_state": self.opt_state,
                 "step": _sds((), jnp.int32, self.replicated)}
        shardings = jax.tree.map(lambda x: x.sharding, state)
        jitted = jax.jit(fn, donate_argnums=0, out_shardings=(shardings, None))
        return Program(name, jitted, (state, batch), ("params + opt_state", "rows"), shapes,
                       resident or {})

    def dpo(self) -> Program:
        """One r1jax-dpo optimizer step (`DPORun`): `dpo.batch_size` pairs with each
        sequence in a row of its own (the most rows the packer makes: long chains of
        thought fill a row each), padded as the run pads them (per microbatch, a power of
        two times the batch parallelism), in `dpo.microbatches` microbatches, reference
        log-probs given; with `dpo.reference="policy"` the frozen reference weights stay
        resident (the forward-only reference pass over the same rows needs less than this
        update); the state donated."""
        from r1jax import dpo
        from r1jax.sft import padded_rows
        o = self.cfg.dpo
        per = -(-o.batch_size // o.microbatches)
        rows = o.microbatches * padded_rows(2 * per, self.sharding.batch_parallelism)
        fn = dpo.make_dpo_update(self.model, self.tx, self.sharding, beta=o.beta,
                                 loss_type=o.loss_type, label_smoothing=o.label_smoothing,
                                 sft_weight=o.sft_weight, microbatches=o.microbatches)
        ids = _sds((rows, o.max_len), jnp.int32, self.batch_sharding)
        pairs = _sds((o.microbatches * per,), jnp.float32, self.replicated)
        batch = dpo.DPOBatch(tokens=ids, positions=ids, segment_ids=ids, targets=ids,
                             weights=_sds((rows, o.max_len), jnp.float32, self.batch_sharding),
                             sequence_ids=ids, ref_chosen_logps=pairs,
                             ref_rejected_logps=pairs, pair_weights=pairs)
        resident = {"reference": self.bytes["params"]} if o.reference == "policy" else {}
        return self._train_step("dpo", fn, batch, f"[{rows}, {o.max_len}] rows "
                                f"({o.batch_size} pairs) in {o.microbatches} microbatches",
                                resident)


def _argument_groups(prog: Program) -> dict:
    groups = dict(zip(prog.arg_names, map(chip_bytes, prog.args)))
    if prog.name in ("update", "sft", "dpo"):  # name the state's parts
        state = prog.args[0]
        groups.pop("params + opt_state")
        groups.update(params=chip_bytes(state["params"]),
                      opt_state=chip_bytes(state["opt_state"]))
    return groups


# XLA:TPU refuses a program whose temporaries exceed HBM: "Ran out of memory on HBM, the
# total memory required for HLO temporaries (1.00T) exceeds available HBM (95.74G)".
_OOM_TEMPORARIES = re.compile(r"HLO temporaries \(([\d.]+)([KMGTP]?)\)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# Lower optimization effort: about 3x faster TPU compiles, memory within a few percent.
FAST_OPTIONS = {"exec_time_optimization_effort": -1.0}
COMPILE_FAILED = "XLA failed to compile it"


def compile_program(prog: Program, fast: bool = False) -> ProgramFit:
    """Lowers and compiles one program for its mesh's devices; reads memory and cost.

    A program XLA refuses for lack of HBM, or fails to compile at all, comes back with
    `error` set (and for lack of HBM the temporaries the compiler asked for).
    """
    start = time.perf_counter()
    named = _argument_groups(prog)
    named.update(prog.resident)
    try:
        compiled = prog.jitted.lower(*prog.args).compile(FAST_OPTIONS if fast else None)
    except jax.errors.JaxRuntimeError as e:
        message = str(e).strip().splitlines()[0]
        match = _OOM_TEMPORARIES.search(message)
        temp = round(float(match[1]) * _UNITS[match[2]]) if match else 0
        if "RESOURCE_EXHAUSTED" not in message:
            message = f"{COMPILE_FAILED}: {message[:300]}"
        return ProgramFit(
            name=prog.name, shapes=prog.shapes, argument_bytes=chip_bytes(prog.args),
            output_bytes=0, temp_bytes=temp, alias_bytes=0, code_bytes=0,
            resident_bytes=dict(prog.resident), flops=None, seconds=None,
            compile_seconds=time.perf_counter() - start, largest=_largest(named),
            error=message)
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    named["outputs"] = max(0, mem.output_size_in_bytes - mem.alias_size_in_bytes)
    flops, est = cost.get("flops"), cost.get("optimal_seconds")
    return ProgramFit(
        name=prog.name, shapes=prog.shapes, argument_bytes=mem.argument_size_in_bytes,
        output_bytes=mem.output_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
        alias_bytes=mem.alias_size_in_bytes, code_bytes=mem.generated_code_size_in_bytes,
        resident_bytes=dict(prog.resident), flops=None if flops is None else float(flops),
        seconds=None if est is None or est <= 0 else float(est),
        compile_seconds=seconds, largest=_largest(named))


def _largest(named: dict) -> tuple:
    return tuple(sorted(((n, b) for n, b in named.items() if b), key=lambda x: -x[1]))


def build_sharding(cfg: RunConfig, devices: Sequence[Any]) -> Sharding:
    """`cfg.mesh` over `devices`, ordered along the slice's torus when mesh_utils can."""
    from jax.experimental import mesh_utils
    m = cfg.mesh
    sizes = [m.data, m.fsdp, m.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if sizes.count(-1) == 1 and len(devices) % known == 0:
        sizes[sizes.index(-1)] = len(devices) // known
    try:
        devices = list(mesh_utils.create_device_mesh(sizes, list(devices)).flat)
    except (ValueError, AssertionError, NotImplementedError):
        pass  # the sizes do not follow the torus: plain device order (make_mesh checks them)
    return Sharding(make_mesh(*sizes, devices=devices), merge_rules(m.rules))

"""The native JAX sampler: jitted prefill + decode loop over a preallocated KV cache.

One jitted program per (batch, prompt bucket, max_new_tokens, sampling params):

1. prefill: the P distinct prompts, left-aligned (row p holds its prompt in slots
   [0, len_p) and padding after), run through the decoder once; their K/V fill the cache;
2. group sampling: the cache rows and the last-token logits are repeated n times, so a prompt
   is prefilled once however many completions it gets (rows b = p * n + i);
3. decode: a `lax.while_loop` feeds each row's newest token at position len_b, writes its K/V
   at slot len_b, attends to slots [0, len_b] through the model's decode-attention switch, and
   samples the next token; it exits as soon as every row has stopped.

With `max_slots=N` the same steps run as a continuous-batching engine (`_generate_slots`):
the KV cache holds N rows (slots); the next prompts are prefilled (a few at a time, once per
group) into a staging buffer whose n rows per prompt take slots as they free up; every decode
step advances all occupied slots, each at its own position, and a row that stops frees its
slot at once. Rows come back in the same order whatever N is.

Budget forcing (`budget_forcing=BudgetForcing(...)`, see `r1jax.sampling.budget`): each row
(or slot, reset when a row enters it) also carries a few counters, and the token written at a
position may be a forced one instead of the sampled one, inside the same loops.

Randomness: the token at position t of sample i of prompt p is drawn with the key
fold_in(fold_in(fold_in(key(seed), p), i), t), so a completion never depends on N, on which
rows share its batch, or on the mesh.

Only [B, V] logits exist at any time (never [B, T, V]). The policy log-probability of each
sampled token (temperature 1, what the RL loss uses as old log-probs) and its log-probability
under the sampling distribution are recorded as the loop goes.

Glossary: P prompts, n completions per prompt, B = P * n rows, Sp prompt bucket, T max new
tokens, S = Sp + T cache positions per row, N slots (rows of the engine's cache), L layers,
K KV heads, Dh head dim, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from r1jax.config import ModelConfig
from r1jax.distributed import to_host
from r1jax.models import attention as attn_lib
from r1jax.models import decoder
from r1jax.models.layers import rms_norm
from r1jax.sampling import budget as budget_lib
from r1jax.sampling import threefry
from r1jax.sampling.budget import BudgetForcing
from r1jax.sampling.processors import SamplingParams, sample
from r1jax.sharding import Sharding, constrain

STOP, LENGTH = 0, 1
FINISH_REASONS = ("stop", "length")
CACHE_AXES = ("cache_batch", "act_kv_heads", "cache_seq", None)
KEY_CACHE_T_AXES = ("cache_batch", "act_kv_heads", None, "cache_seq")  # keys [B, K, Dh, S]


@dataclasses.dataclass
class SampleOutput:
    """Completions of a `generate` call; rows b = prompt * n + sample.

    Attributes:
      tokens: [B, T] int32 completion tokens; after a row stops, `pad_id`.
      lengths: [B] completion lengths, the stop token included.
      finish_reason: [B] int, 0 = a stop token was produced, 1 = max_new_tokens reached.
      logprobs: [B, T] float32 log-probability of each token under the policy at temperature
        1 (0 after the row stops).
      sampling_logprobs: [B, T] float32 log-probability under the distribution the token was
        drawn from (temperature and filters applied; 0 for greedy and after the row stops).
      prompt_index: [B] index of the prompt each row continues.
      prompt_ids: the prompts as used (after any truncation), one list per prompt.
      stats: counts and timings: prompts, rows, truncated_prompts, generated_tokens,
        decode_steps, seconds; with slots also slots, slot_steps (occupied slot-steps of the
        decode loop), slot_utilization (slot_steps / (decode_steps x slots)), prefills; with
        budget forcing also waits ([B] int, end delimiters each row had replaced).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    finish_reason: np.ndarray
    logprobs: np.ndarray
    sampling_logprobs: np.ndarray
    prompt_index: np.ndarray
    prompt_ids: list[list[int]]
    stats: dict[str, Any]

    @property
    def mask(self) -> np.ndarray:
        """[B, T] 1.0 on completion tokens, 0.0 on padding."""
        return (np.arange(self.tokens.shape[1])[None] < self.lengths[:, None]).astype(
            np.float32)

    def completions(self) -> list[list[int]]:
        """Completion token lists (stop token included), one per row."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]


def _bucket(n: int, multiple: int, cap: int) -> int:
    """Rounds n up to a power of two >= multiple, then to a multiple of `multiple`, <= cap."""
    size = max(multiple, 1 << max(n - 1, 0).bit_length())
    size = -(-size // multiple) * multiple
    return max(n, min(size, cap))


class Sampler:
    """Samples completions from a Decoder's (or given) parameters.

    Args:
      model: an `r1jax.Decoder` (its config and sharding are used; its params are the default).
      max_prompt_len: prompts longer than this raise ValueError, or are left-truncated (keeping
        their end) when `truncate_prompts` is set; truncations are counted in `stats`.
      max_new_tokens: default and upper bound of `generate(max_new_tokens=...)`; with
        max_prompt_len it sizes the KV cache.
      eos_token_ids: token ids that end a completion (the tokenizer's EOS, <|im_end|>, ...).
      pad_id: written after a completion stops.
      truncate_prompts: left-truncate instead of raising.
      cache_dtype: KV cache dtype; default the model's compute dtype.
      max_slots: rows decoded at once (continuous batching, see the module docstring); a
        multiple of the mesh's batch parallelism. None: each call is one static batch of all
        its rows.
    """

    def __init__(self, model: Any, *, max_prompt_len: int = 1024, max_new_tokens: int = 1024,
                 eos_token_ids: Sequence[int] = (), pad_id: int = 0,
                 truncate_prompts: bool = False, cache_dtype: Optional[str] = None,
                 max_slots: Optional[int] = None):
        if max_prompt_len < 1 or max_new_tokens < 1:
            raise ValueError("max_prompt_len and max_new_tokens must be >= 1")
        par = model.sharding.batch_parallelism if model.sharding is not None else 1
        if max_slots is not None and (isinstance(max_slots, bool) or max_slots < 1
                                      or max_slots % par):
            raise ValueError(f"max_slots must be a positive multiple of the batch "
                             f"parallelism {par}, got {max_slots}")
        self.max_slots = max_slots
        self.model = model
        self.config: ModelConfig = model.config
        self.sharding: Optional[Sharding] = model.sharding
        self.max_prompt_len = max_prompt_len
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.pad_id = int(pad_id)
        self.truncate_prompts = truncate_prompts
        self.cache_dtype = cache_dtype or self.config.dtype
        self._compiled: dict[tuple, Any] = {}
        self._queue_sizes: dict[tuple, int] = {}  # a stream program's queue rows so far

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, n: int = 1,
                 max_new_tokens: Optional[int] = None, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, seed: int = 0,
                 stop_token_ids: Sequence[int] = (), params: Any = None,
                 budget_forcing: Optional[BudgetForcing] = None) -> SampleOutput:
        """Samples `n` completions for each prompt.

        Args:
          prompt_ids: one sequence of token ids per prompt (ragged lengths; no padding).
          n: completions per prompt (the GRPO group size).
          max_new_tokens: completion budget (<= the sampler's max_new_tokens).
          temperature, top_p, top_k, min_p: see `SamplingParams` (temperature 0 = greedy).
          seed: the same seed gives the same completions, on one device or a mesh.
          stop_token_ids: extra stop tokens besides the sampler's eos_token_ids.
          params: parameters to sample from (the trainer's live params); default the model's.
          budget_forcing: a thinking budget enforced in the decode loop (`BudgetForcing`);
            None: none. Forced tokens are recorded and counted like sampled ones.
        Raises:
          ValueError: empty prompts, invalid sampling parameters, n < 1, too long prompts
            (unless truncating), budget-forcing ids outside the vocabulary - all before
            anything is compiled.
        """
        sp, max_new, stops = self._call_args(n, max_new_tokens, temperature, top_p, top_k,
                                             min_p, stop_token_ids)
        bf = budget_lib.check(budget_forcing, self.config.vocab_size)
        prompts, truncated = self._prepare_prompts(prompt_ids)
        params = self.model.params if params is None else params
        start = time.perf_counter()
        tokens, lens, num_prompts = self._pack(prompts)
        rows = num_prompts * n
        if self.max_slots is None:
            fn = self._program(tokens.shape, n, max_new, sp, stops, bf)
            out = fn(params, tokens, lens, jnp.int32(num_prompts), jax.random.key(seed))
            out = to_host(out)
            out = {k: out[k][:rows] for k in _fields(out)} | {"steps": int(out["steps"])}
        else:
            out = self._generate_engine(params, tokens, lens, num_prompts, n, max_new, sp,
                                        stops, seed, bf)
        seconds = time.perf_counter() - start
        res = SampleOutput(
            tokens=out["tokens"], lengths=out["lengths"], finish_reason=out["finish"],
            logprobs=out["logp"], sampling_logprobs=out["sample_logp"],
            prompt_index=np.repeat(np.arange(num_prompts), n), prompt_ids=prompts,
            stats={})
        res.stats = {"prompts": num_prompts, "rows": rows, "truncated_prompts": truncated,
                     "prompt_tokens": int(sum(map(len, prompts))),
                     "generated_tokens": int(res.lengths.sum()),
                     "decode_steps": out["steps"], "seconds": seconds}
        if self.max_slots is not None:
            res.stats.update(_slot_stats(out["steps"], out["slot_steps"], self.max_slots),
                             prefills=out["prefills"])
        if "waits" in out:
            res.stats["waits"] = out["waits"]
        return res

    def stream(self, *, n: int = 1, max_new_tokens: Optional[int] = None,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               min_p: float = 0.0, seed: int = 0, stop_token_ids: Sequence[int] = (),
               params: Any = None, segment_steps: int = 64,
               budget_forcing: Optional[BudgetForcing] = None) -> "RolloutStream":
        """A `RolloutStream` on this sampler's engine (needs `max_slots`): prompts are added
        as they are drawn and groups come back as their n rows finish. Arguments as for
        `generate`; `segment_steps` decode steps run between two returns to the host.
        A completion is the same as `generate` gives for the same seed, prompt index and
        sample index."""
        if self.max_slots is None:
            raise ValueError("Sampler.stream needs the continuous-batching engine: construct "
                             "the Sampler with max_slots (config rollout.max_slots)")
        sp, max_new, stops = self._call_args(n, max_new_tokens, temperature, top_p, top_k,
                                             min_p, stop_token_ids)
        bf = budget_lib.check(budget_forcing, self.config.vocab_size)
        if isinstance(segment_steps, bool) or not isinstance(segment_steps, int) \
                or segment_steps < 1:
            raise ValueError(f"segment_steps must be an integer >= 1, got {segment_steps}")
        return RolloutStream(self, n=n, max_new=max_new, sp=sp, stops=stops, seed=seed,
                             params=self.model.params if params is None else params,
                             segment_steps=segment_steps, budget_forcing=bf)

    # ------------------------------------------------------------------------------------
    def _call_args(self, n, max_new_tokens, temperature, top_p, top_k, min_p,
                   stop_token_ids) -> tuple[SamplingParams, int, tuple]:
        """(sampling params, max new tokens, stop ids) of a call, validated."""
        sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
        sp.validate()
        max_new = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= max_new <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in [1, {self.max_new_tokens}], "
                             f"got {max_new}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n}")
        stops = tuple(sorted(set(self.eos_token_ids) | {int(t) for t in stop_token_ids}))
        return sp, max_new, stops

    def _prepare_prompts(self, prompt_ids) -> tuple[list[list[int]], int]:
        prompts = [[int(t) for t in p] for p in prompt_ids]
        if not prompts:
            raise ValueError("generate() needs at least one prompt")
        truncated = 0
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            bad = [t for t in p if not 0 <= t < self.config.vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary "
                                 f"[0, {self.config.vocab_size})")
            if len(p) > self.max_prompt_len:
                if not self.truncate_prompts:
                    raise ValueError(f"prompt {i} has {len(p)} tokens, more than "
                                     f"max_prompt_len={self.max_prompt_len} (set "
                                     "truncate_prompts to keep its last tokens instead)")
                prompts[i] = p[-self.max_prompt_len:]
                truncated += 1
        return prompts, truncated

    @property
    def _parallelism(self) -> int:
        return self.sharding.batch_parallelism if self.sharding is not None else 1

    def _pack(self, prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, int]:
        """Left-aligned [P', Sp] prompts and lengths. Static batches pad P' to the batch
        parallelism; the engine to a whole number of prefill batches plus one more (its
        prefill reads a full batch from any prompt on)."""
        par = self._parallelism
        num = len(prompts)
        rows = -(-num // par) * par + (par if self.max_slots is not None else 0)
        width = _bucket(max(map(len, prompts)), 16, self.max_prompt_len)
        tokens = np.full((rows, width), self.pad_id, np.int32)
        lens = np.ones((rows,), np.int32)  # padding rows: one pad token, results dropped
        for i, p in enumerate(prompts):
            tokens[i, :len(p)] = p
            lens[i] = len(p)
        return tokens, lens, num

    def _program(self, shape, n, max_new, sp, stops, bf=None):
        """The static-batch program (`max_slots=None`); `bf` (budget forcing) is static."""
        key = ("static", shape, n, max_new, sp, stops, bf)
        if key not in self._compiled:
            self._compiled[key] = jax.jit(functools.partial(
                _generate, cfg=self.config, sharding=self.sharding, n=n, max_new=max_new, sp=sp,
                stops=stops, pad_id=self.pad_id, cache_dtype=self.cache_dtype, bf=bf))
        return self._compiled[key]

    def _engine_programs(self, width, queue, n, max_new, sp, stops, done_rows, bounded,
                         bf=None):
        """(init, run): the engine's jitted programs for cache width Sp + max_new, a queue of
        `queue` prompts and a done buffer of `done_rows` rows; run donates the state. With
        `bf` (budget forcing, static) the state also holds the per-slot forcing counters."""
        common = dict(cfg=self.config, sharding=self.sharding, slots=self.max_slots,
                      prefill_rows=self._parallelism, pad_id=self.pad_id)
        forcing = bf is not None
        init_key = ("init", width, max_new, forcing)
        if init_key not in self._compiled:
            self._compiled[init_key] = jax.jit(functools.partial(
                _engine_init, width=width, max_new=max_new, cache_dtype=self.cache_dtype,
                forcing=forcing, **common))
        run_key = ("run", width, queue, n, max_new, sp, stops, done_rows, bounded, bf)
        if run_key not in self._compiled:
            self._compiled[run_key] = jax.jit(functools.partial(
                _engine_run, n=n, max_new=max_new, sp=sp, stops=stops, done_rows=done_rows,
                bounded=bounded, bf=bf, **common), donate_argnums=1)
        return self._compiled[init_key], self._compiled[run_key]

    def _generate_engine(self, params, tokens, lens, num_prompts, n, max_new, sp, stops, seed,
                         bf=None):
        """One engine run over all of a `generate` call's prompts; rows back in order."""
        done_rows = tokens.shape[0] * n
        init, run = self._engine_programs(tokens.shape[1], tokens.shape[0], n, max_new, sp,
                                          stops, done_rows, False, bf)
        state, done, _, steps = run(params, init(params), tokens, lens, jnp.int32(num_prompts),
                                    jnp.int32(0), jax.random.key(seed),
                                    jnp.int32(np.iinfo(np.int32).max))
        done, counters = to_host((done, {k: state[k] for k in ("slot_steps",
                                                                      "prefills")}))
        rows = num_prompts * n
        count = int(done["count"])
        order = np.asarray(done["row"][:count])
        if count != rows or sorted(order.tolist()) != list(range(rows)):
            raise RuntimeError(f"the engine finished {count} rows for {rows} completions")
        out = {k: np.empty_like(np.asarray(done[k][:rows])) for k in _fields(done)}
        for k in out:
            out[k][order] = np.asarray(done[k][:count])
        return out | {"steps": int(steps), "slot_steps": int(counters["slot_steps"]),
                      "prefills": int(counters["prefills"])}


class RolloutStream:
    """Prompts in, finished groups out, on one engine state (`Sampler.stream`).

        stream = sampler.stream(n=16, max_new_tokens=T, seed=s, params=params)
        stream.add(prompts)                 # any time; they queue behind earlier ones
        stream.dispatch()                   # starts up to segment_steps decode steps
        for prompt, out in stream.collect():  # waits for them; groups whose rows all ended
            ...                             # out: a SampleOutput of prompt's n rows

    `dispatch` returns at once (JAX runs the segment asynchronously), so the host can score
    the groups of the previous `collect` while the device decodes. Prompt p (in order of
    `add`) gets rows p * n + i and the keys `generate` would give prompt p, so a completion
    does not depend on the segment length, the slot count or when prompts were added.
    Rows still decoding when the stream is dropped are simply discarded.

    Attributes:
      waiting: prompts added and not yet prefilled.
      in_flight: prompts prefilled whose group has not finished.
      stats: decode_steps, slot_steps, slots, slot_utilization, prefills, segments.
    """

    def __init__(self, sampler: Sampler, *, n, max_new, sp, stops, seed, params,
                 segment_steps, budget_forcing=None):
        self._sampler = sampler
        self.n = n
        self.max_new = max_new
        self._sp, self._stops, self._params = sp, stops, params
        self._bf = budget_forcing
        self._key = jax.random.key(seed)
        self.segment_steps = segment_steps
        layout = self.layout(sampler, n)
        self.width, self._done_rows = layout["width"], layout["done_rows"]
        slots = sampler.max_slots
        init, _ = sampler._engine_programs(self.width, 0, n, max_new, sp, stops,
                                           self._done_rows, True, budget_forcing)
        self._state = init(params)
        self._prompts: list[list[int]] = []
        self._taken = 0  # prompts handed to the engine
        self._rows: dict[int, list[tuple]] = {}  # prompt -> its finished rows so far
        self._pending = None  # the dispatched segment's (done, taken, steps)
        self._finished = 0  # groups returned by collect
        self.truncated_prompts = 0
        self.stats = {"decode_steps": 0, "slot_steps": 0, "prefills": 0, "segments": 0,
                      "slots": slots}

    @staticmethod
    def layout(sampler: Sampler, n: int) -> dict:
        """The stream's fixed shapes: cache prompt width Sp (max_prompt_len rounded up to 16)
        and done-buffer rows (the slots plus one admission's rows: what one step can end)."""
        return {"width": _bucket(sampler.max_prompt_len, 16, sampler.max_prompt_len),
                "done_rows": sampler.max_slots + min(sampler._parallelism * n,
                                                     sampler.max_slots)}

    @property
    def waiting(self) -> int:
        return len(self._prompts) - self._taken

    @property
    def in_flight(self) -> int:
        return self._taken - self._finished

    def add(self, prompt_ids: Sequence[Sequence[int]]) -> list[int]:
        """Queues prompts (validated and truncated as by `generate`); returns their indices."""
        if self._pending is not None:
            raise RuntimeError("RolloutStream.add while a segment is dispatched: collect() "
                               "first")
        prompts, truncated = self._sampler._prepare_prompts(prompt_ids)
        self.truncated_prompts += truncated
        first = len(self._prompts)
        self._prompts.extend(prompts)
        return list(range(first, len(self._prompts)))

    def dispatch(self) -> bool:
        """Starts the next segment; False (and nothing runs) when no prompt is waiting or
        decoding."""
        if self._pending is not None:
            raise RuntimeError("RolloutStream.dispatch twice without collect()")
        if not self.waiting and not self.in_flight:
            return False
        smp = self._sampler
        par = smp._parallelism
        count = self.waiting
        # The queue's rows only pad (nothing computes over them), so its size only grows:
        # after the first dispatches every later one of this sampler's streams reuses the
        # compiled program, whatever number of prompts waits.
        floor_key = (self.width, self.n, self.max_new, self._sp, self._stops, self._bf)
        queue = max(_bucket(count, par, 1 << 30) + par if count else par,
                    smp._queue_sizes.get(floor_key, 0))
        smp._queue_sizes[floor_key] = queue
        tokens = np.full((queue, self.width), smp.pad_id, np.int32)
        lens = np.ones((queue,), np.int32)
        for i, p in enumerate(self._prompts[self._taken:]):
            tokens[i, :len(p)] = p
            lens[i] = len(p)
        _, run = smp._engine_programs(self.width, queue, self.n, self.max_new, self._sp,
                                      self._stops, self._done_rows, True, self._bf)
        self._state, done, taken, steps = run(
            self._params, self._state, tokens, lens, jnp.int32(count),
            jnp.int32(self._taken), self._key, jnp.int32(self.segment_steps))
        self._pending = (done, taken, steps)
        return True

    def collect(self) -> list[tuple[int, SampleOutput]]:
        """Waits for the dispatched segment; returns (prompt index, its n rows) for each
        group that finished in it, in prompt order ([] when nothing was dispatched)."""
        if self._pending is None:
            return []
        done, taken, steps = to_host(self._pending)
        counters = to_host({k: self._state[k] for k in ("slot_steps", "prefills")})
        self._pending = None
        self._taken += int(taken)
        st = self.stats
        st["decode_steps"] += int(steps)
        st["segments"] += 1
        st["slot_steps"], st["prefills"] = int(counters["slot_steps"]), int(counters["prefills"])
        st.update(_slot_stats(st["decode_steps"], st["slot_steps"], st["slots"]))
        finished = []
        names = _fields(done)
        for i in range(int(done["count"])):
            row = int(done["row"][i])
            rows = self._rows.setdefault(row // self.n, [])
            rows.append((row % self.n,) + tuple(np.asarray(done[k][i]) for k in names))
            if len(rows) == self.n:
                finished.append(row // self.n)
        groups = []
        for p in sorted(finished):
            rows = sorted(self._rows.pop(p), key=lambda r: r[0])
            fields = {k: np.stack([r[1 + j] for r in rows]) for j, k in enumerate(names)}
            out = SampleOutput(tokens=fields["tokens"], lengths=fields["lengths"],
                               finish_reason=fields["finish"], logprobs=fields["logp"],
                               sampling_logprobs=fields["sample_logp"],
                               prompt_index=np.zeros(self.n, np.int64),
                               prompt_ids=[self._prompts[p]],
                               stats={"waits": fields["waits"]} if "waits" in fields else {})
            groups.append((p, out))
        self._finished += len(groups)
        return groups


def _slot_stats(steps: int, slot_steps: int, slots: int) -> dict:
    return {"slots": slots, "slot_steps": slot_steps,
            "slot_utilization": slot_steps / (max(steps, 1) * slots)}


FIELDS = ("tokens", "lengths", "finish", "logp", "sample_logp")


def _fields(out: dict) -> tuple[str, ...]:
    """The per-row result fields of `out`: FIELDS, plus waits under budget forcing."""
    return FIELDS + (("waits",) if "waits" in out else ())


# ----------------------------------------------------------------------------------------
# The jitted program.


def _prefill(params, tokens, lens, cfg, sharding):
    """Prompt K/V [L, P, Sp, K, Dh] each and next-token logits [P, V]."""
    width = tokens.shape[1]
    segment_ids = (jnp.arange(width)[None, :] < lens[:, None]).astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), tokens.shape)
    h, (k, v) = decoder.final_hidden(params, tokens, cfg, positions=positions,
                                     segment_ids=segment_ids, sharding=sharding,
                                     return_kv=True)
    last = jnp.take_along_axis(h, (lens - 1)[:, None, None], axis=1)[:, 0]
    return k, v, decoder.logits_from_hidden(params, last, cfg)


def _init_cache(k, v, n, size, dtype, sharding, keys_t):
    """Per-layer caches, prompt K/V in slots [0, Sp), each prompt repeated n: values
    [B, K, S, Dh], keys the same or [B, K, Dh, S] when `keys_t`."""
    def one(x, transposed):
        x = jnp.repeat(x.astype(dtype), n, axis=0).transpose(0, 2, 1, 3)  # [B, K, Sp, Dh]
        pad = ((0, 0), (0, 0), (0, size - x.shape[2]), (0, 0))
        if transposed:
            x, pad = jnp.swapaxes(x, 2, 3), (pad[0], pad[1], pad[3], pad[2])
        return constrain(jnp.pad(x, pad), KEY_CACHE_T_AXES if transposed else CACHE_AXES,
                         sharding)
    return (tuple(one(k[i], keys_t) for i in range(k.shape[0])),
            tuple(one(v[i], False) for i in range(v.shape[0])))


def _via_bits(sharding: Optional[Sharding]) -> bool:
    """Whether cache writes of 16-bit floats go through their raw bits (XLA:CPU only, see
    `_write_slots`); other backends scatter 16-bit floats natively."""
    return attn_lib.backend(sharding) == "cpu"


def _write_slots(cache: jax.Array, pos: jax.Array, values: jax.Array, via_bits: bool,
                 seq_axis: int = 2) -> jax.Array:
    """cache [B, ...] with values[b] ([B, ...], cache's shape less `seq_axis`) written at
    position pos[b] of row b's `seq_axis`.

    One dynamic-update-slice per row, vmapped: a scatter whose row index is a batching
    dimension, which the SPMD partitioner keeps on each row's own shard. (Indexing
    `cache.at[arange(B), :, pos]` instead makes the rows an index like any other: the
    partitioner then all-gathers indices and values, 4 collectives per write, 2 writes per
    layer per decode step.) With `via_bits`, 16-bit floats are written as their raw bits:
    XLA:CPU scatters bf16 by converting the whole cache to f32 and back on every call
    (measured: 5.7 of ~19 thread-seconds of a small-model bf16 rollout), a uint16 scatter
    writes only the slots."""
    values = values.astype(cache.dtype)
    if via_bits and cache.dtype in (jnp.bfloat16, jnp.float16):
        bits = lambda x: jax.lax.bitcast_convert_type(x, jnp.uint16)
        return jax.lax.bitcast_convert_type(
            _write_slots(bits(cache), pos, bits(values), False, seq_axis), cache.dtype)
    axis = seq_axis - 1  # within one row

    def one(row, value, p):
        start = [jnp.int32(0)] * row.ndim
        start[axis] = p
        return lax.dynamic_update_slice(row, jnp.expand_dims(value, axis), start)
    return jax.vmap(one)(cache, values, pos)


def _rope_table(size: int, cfg) -> decoder.Rope:
    """RoPE cos and sin [S, Dh / 2] of every cache position, computed once per program
    outside the decode loop; each step gathers its rows' entries (`_decode_step`). Computed
    inside the step, XLA:CPU fused the cos / sin into every layer's query and key rotation,
    8 fusions per step of a 4-layer model each evaluating them again per head (~15% of a
    small model's step)."""
    cos, sin = decoder.rope_tables(jnp.arange(size, dtype=jnp.int32)[None], cfg)
    return cos[0], sin[0]


def _decode_step(layer_params, embed_params, cache, tokens, pos, rope_table, cfg, sharding,
                 keys_t):
    """Feeds tokens [B] at positions pos [B] (their RoPE angles looked up in `rope_table`,
    `_rope_table`); returns next logits [B, V] and the new cache."""
    cache_k, cache_v = cache
    via_bits = _via_bits(sharding)
    x = decoder.embed_tokens(embed_params, tokens[:, None], cfg, sharding)
    rope = tuple(jnp.take(t, pos, axis=0, mode="clip")[:, None] for t in rope_table)
    new_k, new_v = [], []
    for i, p in enumerate(layer_params):
        def attend(q, k, v, i=i):
            # k[:, 0], v[:, 0]: [B, K, Dh], written at slot pos[b] of row b.
            ck = _write_slots(cache_k[i], pos, k[:, 0], via_bits, 3 if keys_t else 2)
            cv = _write_slots(cache_v[i], pos, v[:, 0], via_bits)
            o = attn_lib.decode_attention(q[:, 0], ck, cv, pos + 1,
                                          sm_scale=cfg.head_dim ** -0.5,
                                          impl=cfg.attention_impl, sharding=sharding,
                                          keys_transposed=keys_t)
            return o[:, None], (ck, cv)
        x, (ck, cv) = decoder.block(p, x, rope, attend, cfg, sharding)
        new_k.append(ck)
        new_v.append(cv)
    h = rms_norm(x[:, 0], embed_params["final_norm"], cfg.rms_norm_eps)
    return decoder.logits_from_hidden(embed_params, h, cfg), (tuple(new_k), tuple(new_v))


def _row_keys(key: jax.Array, rows: jax.Array, n: int) -> jax.Array:
    """[R] keys of completion rows `rows` (= prompt * n + sample): fold_in(fold_in(key,
    prompt), sample). Position t's key is `_at(keys, t)`."""
    fold = jax.random.fold_in
    return jax.vmap(lambda r: fold(fold(key, r // n), r % n))(rows)


def _at(keys: jax.Array, t: jax.Array) -> jax.Array:
    """[R] keys fold_in(keys[r], t[r]) (t [R] or a scalar), without XLA:CPU's rolled
    threefry loop (r1jax/sampling/threefry.py)."""
    return threefry.fold_in(keys, t)


def _empty_outputs(rows: int, max_new: int, pad_id: int) -> dict:
    """Per-row results before any token: tokens / logp / sample_logp [R, T], lengths and
    finish [R] (finish LENGTH until a stop token is drawn)."""
    return {"tokens": jnp.full((rows, max_new), pad_id, jnp.int32),
            "logp": jnp.zeros((rows, max_new), jnp.float32),
            "sample_logp": jnp.zeros((rows, max_new), jnp.float32),
            "lengths": jnp.zeros((rows,), jnp.int32),
            "finish": jnp.full((rows,), LENGTH, jnp.int32)}


def _weights(params, cfg):
    """Compute-dtype weights, cast and sliced per layer once, outside the decode loop: the
    loop body then reads each layer's weights in place, with no per-step slicing or casting."""
    compute = decoder.cast(params, cfg.dtype)
    layer_params = [decoder.layer_slice(compute["layers"], i) for i in range(cfg.num_layers)]
    head_params = {key_: compute[key_] for key_ in compute if key_ != "layers"}
    return layer_params, head_params


def _generate(params, tokens, lens, num_prompts, key, *, cfg, sharding, n, max_new, sp, stops,
              pad_id, cache_dtype, bf=None):
    del num_prompts  # padding rows run and are dropped by the caller
    keys_t = attn_lib.transposed_key_cache(cfg.attention_impl, sharding)  # at trace time
    k, v, logits = _prefill(params, tokens, lens, cfg, sharding)
    cache = _init_cache(k, v, n, tokens.shape[1] + max_new, cache_dtype, sharding, keys_t)
    logits = jnp.repeat(logits, n, axis=0)
    pos = jnp.repeat(lens, n)  # next free cache slot = position of the next token
    rows = logits.shape[0]
    layer_params, head_params = _weights(params, cfg)
    rope_table = _rope_table(tokens.shape[1] + max_new, cfg)
    stop_ids = jnp.asarray(stops if stops else (-1,), jnp.int32)
    row_keys = _row_keys(key, jnp.arange(rows, dtype=jnp.int32), n)

    def record(state, logits, step):
        tok, logp, slogp = sample(logits, _at(row_keys, step), sp)
        state = dict(state)
        if bf is not None:  # budget forcing: the written token may be a forced one
            old = {k: state[k] for k in budget_lib.STATE_KEYS}
            tok, logp, slogp, new = budget_lib.force(bf, old, step, tok, logits, logp, slogp)
            state.update({k: jnp.where(state["done"], old[k], new[k]) for k in new})
        done = state["done"]
        tok = jnp.where(done, pad_id, tok)
        live = ~done
        stopped = live & jnp.isin(tok, stop_ids)
        state["tokens"] = state["tokens"].at[:, step].set(tok)
        state["logp"] = state["logp"].at[:, step].set(jnp.where(live, logp, 0.0))
        state["sample_logp"] = state["sample_logp"].at[:, step].set(
            jnp.where(live, slogp, 0.0))
        state["lengths"] = state["lengths"] + live.astype(jnp.int32)
        state["finish"] = jnp.where(stopped, STOP, state["finish"])
        state["done"] = done | stopped
        return state, tok

    state = dict(_empty_outputs(rows, max_new, pad_id), done=jnp.zeros((rows,), bool))
    if bf is not None:
        state.update(budget_lib.init_state(rows))
    state, tok = record(state, logits, 0)

    def cond(carry):
        state, _, _, step = carry
        return (step < max_new) & ~jnp.all(state["done"])

    def body(carry):
        state, cache, tok, step = carry
        logits, cache = _decode_step(layer_params, head_params, cache, tok,
                                     pos + step - 1, rope_table, cfg, sharding, keys_t)
        state, tok = record(state, logits, step)
        return state, cache, tok, step + 1

    state, _, _, steps = lax.while_loop(cond, body, (state, cache, tok, jnp.int32(1)))
    out = {"tokens": state["tokens"], "lengths": state["lengths"], "finish": state["finish"],
           "logp": state["logp"], "sample_logp": state["sample_logp"], "steps": steps}
    if bf is not None:
        out["waits"] = state["bf_waits"]
    return out


# ----------------------------------------------------------------------------------------
# The continuous-batching engine.


def _empty_cache(cfg, slots, size, dtype, sharding, keys_t):
    """Per-layer zero caches of `slots` rows: values [N, K, S, Dh], keys the same or
    [N, K, Dh, S] when `keys_t`."""
    shape = (slots, cfg.num_kv_heads, size, cfg.head_dim)
    def one(transposed):
        s = (shape[0], shape[1], shape[3], shape[2]) if transposed else shape
        return constrain(jnp.zeros(s, dtype), KEY_CACHE_T_AXES if transposed else CACHE_AXES,
                         sharding)
    return (tuple(one(keys_t) for _ in range(cfg.num_layers)),
            tuple(one(False) for _ in range(cfg.num_layers)))


def _insert_prompts(cache, k, v, prompt, slot_ids, count, keys_t):
    """Writes the K/V of prompt[j] (k, v [L, P, Sp, K, Dh], one prompt per row) into
    positions [0, Sp) of cache row slot_ids[j], for the first `count` (a traced scalar) j.

    One dynamic-update-slice per placed row, in a loop: XLA updates the cache in place, a
    step that frees one slot writes one row, and no [M, Sp] copy of the buffer is gathered.
    (A single scatter of all rows into a row-sharded cache fails XLA:TPU's HLO verifier at
    512 slots, a RET_CHECK on the scatter's partitioned indices.)"""
    cache_k, cache_v = cache

    def put(c, x, transposed):
        def one(j, c):
            row = lax.dynamic_index_in_dim(x, prompt[j], keepdims=True)  # [1, Sp, K, Dh]
            row = row.transpose(0, 2, 3, 1) if transposed else row.transpose(0, 2, 1, 3)
            return lax.dynamic_update_slice(c, row.astype(c.dtype), (slot_ids[j], 0, 0, 0))

        return lax.fori_loop(0, count, one, c)
    return (tuple(put(c, k[i], keys_t) for i, c in enumerate(cache_k)),
            tuple(put(c, v[i], False) for i, c in enumerate(cache_v)))


_BUFFER_AXES = {"buf_k": (None, "cache_batch", "cache_seq", "act_kv_heads", None),
                "buf_v": (None, "cache_batch", "cache_seq", "act_kv_heads", None),
                "buf_logits": ("cache_batch", "act_vocab"), "buf_lens": ("cache_batch",)}


def _place_state(state: dict, sharding: Optional[Sharding]) -> dict:
    """The engine state with every array's sharding fixed by logical names: the staging
    buffer by `_BUFFER_AXES`, the cache by its axes, per-slot arrays ([N, ...]) on
    "cache_batch", scalars replicated. `_engine_init` and the end of `_engine_run` both apply
    it, so a run's state comes out placed as it went in and the next run (a stream's next
    segment) reuses the compiled program instead of compiling one for the new placement."""
    out = {}
    for name, x in state.items():
        if name == "cache":
            out[name] = x
        elif name in _BUFFER_AXES:
            out[name] = constrain(x, _BUFFER_AXES[name], sharding)
        else:
            out[name] = constrain(x, (("cache_batch",) if x.ndim else ())
                                  + (None,) * max(x.ndim - 1, 0), sharding)
    return out


def _engine_init(params, *, cfg, sharding, slots, prefill_rows, width, max_new, pad_id,
                 cache_dtype, forcing=False):
    """The engine's state before any prompt: an empty cache of `slots` rows, an empty staging
    buffer of `prefill_rows` prompts, free slots, and per-slot outputs [N, T]; with `forcing`
    also the per-slot budget-forcing counters [N] (`budget.STATE_KEYS`)."""
    keys_t = attn_lib.transposed_key_cache(cfg.attention_impl, sharding)
    pp = prefill_rows
    shapes = jax.eval_shape(lambda t, l: _prefill(params, t, l, cfg, sharding),
                            jax.ShapeDtypeStruct((pp, width), jnp.int32),
                            jax.ShapeDtypeStruct((pp,), jnp.int32))
    zero = jnp.int32(0)
    forced = budget_lib.init_state(slots) if forcing else {}
    return _place_state(forced | {
        "cache": _empty_cache(cfg, slots, width + max_new, cache_dtype, sharding, keys_t),
        "buf_k": jnp.zeros(shapes[0].shape, cache_dtype),  # [L, pp, Sp, K, Dh]
        "buf_v": jnp.zeros(shapes[1].shape, cache_dtype),
        "buf_logits": jnp.zeros(shapes[2].shape, shapes[2].dtype),  # [pp, V]
        "buf_lens": jnp.ones((pp,), jnp.int32),
        "buf_prompt": zero,  # prompt index of the buffer's first prompt
        "buf_next": zero, "buf_total": zero,  # rows of the buffer placed / held
        "row": jnp.full((slots,), -1, jnp.int32),  # completion row, or -1: free
        "pos": jnp.zeros((slots,), jnp.int32),  # cache position fed next
        "t": jnp.zeros((slots,), jnp.int32),  # completion tokens so far
        "tok": jnp.full((slots,), pad_id, jnp.int32),  # token fed next
        "key": _row_keys(jax.random.key(0), jnp.zeros((slots,), jnp.int32), 1),
        "tokens": jnp.full((slots, max_new), pad_id, jnp.int32),
        "logp": jnp.zeros((slots, max_new), jnp.float32),
        "sample_logp": jnp.zeros((slots, max_new), jnp.float32),
        "finish": jnp.full((slots,), LENGTH, jnp.int32),
        "steps": zero, "slot_steps": zero, "prefills": zero,  # since the state was made
    }, sharding)


def _engine_run(params, state, queue, queue_lens, queue_count, queue_base, key, max_steps, *,
                cfg, sharding, n, max_new, sp, stops, pad_id, slots, prefill_rows, done_rows,
                bounded, bf=None):
    """Runs the engine from `state` for at most `max_steps` decode steps.

    Every step first moves rows of prefilled prompts into free slots (prefilling the next
    `prefill_rows` queued prompts whenever the staging buffer is empty), then advances every
    occupied slot by one token. A row that stops is copied to the done buffer and frees its
    slot at once. The run ends when no row is decoding and no prompt waits, after
    `max_steps`, or (when `bounded`) when the done buffer might not hold one more step's
    finished rows; rows still decoding and prompts still buffered stay in the state.

    Args:
      state: `_engine_init`'s dict (donated).
      queue: [Q, Sp] left-aligned prompts waiting; Q >= queue_count + prefill_rows.
      queue_lens: [Q] their lengths.
      queue_count: scalar int32, the real prompts in `queue`.
      queue_base: scalar int32, the prompt index of queue[0] (rows are prompt * n + sample).
      key: the stream's PRNG key.
      max_steps: scalar int32.
      done_rows: D, rows of the done buffer; without `bounded`, D must be at least the rows
        the run can finish (all of a `generate` call's).
      bf: budget forcing (static; the state must hold its counters), or None.
    Returns:
      (state, done, taken, steps): done = {row [D], tokens / logp / sample_logp [D, T],
      lengths [D], finish [D], count, and waits [D] with `bf`}, rows [count:] unused;
      taken = prompts of the queue prefilled (they are the engine's now); steps = decode
      steps run.
    """
    keys_t = attn_lib.transposed_key_cache(cfg.attention_impl, sharding)
    pp = prefill_rows
    m = min(pp * n, slots)  # most rows one admission can place
    big_n, big_d = slots, done_rows
    layer_params, head_params = _weights(params, cfg)
    rope_table = _rope_table(state["cache"][1][0].shape[2], cfg)  # values [N, K, S, Dh]
    stop_ids = jnp.asarray(stops if stops else (-1,), jnp.int32)
    prefill = lambda t, l: _prefill(params, t, l, cfg, sharding)
    rep = lambda x: constrain(x, (None,) * x.ndim, sharding)
    done = {"row": rep(jnp.full((big_d,), -1, jnp.int32)),
            "tokens": rep(jnp.full((big_d, max_new), pad_id, jnp.int32)),
            "logp": rep(jnp.zeros((big_d, max_new), jnp.float32)),
            "sample_logp": rep(jnp.zeros((big_d, max_new), jnp.float32)),
            "lengths": rep(jnp.zeros((big_d,), jnp.int32)),
            "finish": rep(jnp.full((big_d,), LENGTH, jnp.int32)),
            "count": jnp.int32(0)}
    if bf is not None:
        done["waits"] = rep(jnp.zeros((big_d,), jnp.int32))
    local = {"taken": jnp.int32(0), "steps": jnp.int32(0)}
    cols = jnp.arange(max_new, dtype=jnp.int32)
    slot_ids_all = jnp.arange(big_n, dtype=jnp.int32)

    def room(done):
        return jnp.bool_(True) if not bounded else done["count"] + m + big_n <= big_d

    def waiting(st, lc):
        return (st["buf_next"] < st["buf_total"]) | (lc["taken"] < queue_count)

    def record(st, slot_ids, keys, t, logits, live, forced):
        """Samples position t ([M] or scalar) of the rows in `slot_ids` ([M], those where
        `live` is False skipped) into their slots' outputs; `forced` is the rows'
        budget-forcing state ([M] each; None without `bf`). slot_ids None means every slot
        in order (the decode step): each row is written on its own shard, free slots
        included, since `retire` reads a slot's outputs only for a row it holds and only
        below that row's length, all written while the row was live. Returns (state,
        tokens [M], stopped-or-full [M], the rows' budget-forcing state after this
        position)."""
        tok, logp, slogp = sample(logits, _at(keys, t), sp)
        if bf is not None:
            tok, logp, slogp, forced = budget_lib.force(bf, forced, t, tok, logits, logp,
                                                        slogp)
        stopped = jnp.isin(tok, stop_ids)
        # int32, not weakly typed: the state must leave the run with the avals it entered
        # with, or the stream's next dispatch compiles the run again.
        finish = jnp.where(stopped, STOP, LENGTH).astype(jnp.int32)
        st = dict(st)
        if slot_ids is None:  # a free slot's t may lie past the end: the write clamps it
            put = jax.vmap(lambda row, x, i: lax.dynamic_update_slice(row, x[None], (i,)))
            for name, value in (("tokens", tok), ("logp", logp), ("sample_logp", slogp)):
                st[name] = put(st[name], value, t)
            st["finish"] = finish
        else:
            target = jnp.where(live, slot_ids, big_n)  # out of range: dropped
            st["tokens"] = st["tokens"].at[target, t].set(tok, mode="drop")
            st["logp"] = st["logp"].at[target, t].set(logp, mode="drop")
            st["sample_logp"] = st["sample_logp"].at[target, t].set(slogp, mode="drop")
            st["finish"] = st["finish"].at[target].set(finish, mode="drop")
        return st, tok, stopped | (t + 1 >= max_new), forced

    def retire(st, done, finished):
        """Copies the rows of the slots where `finished` ([N]) to the done buffer (padding
        after each row's length) and frees those slots. Each row is picked out of the
        slot-sharded outputs by a masked sum over slots, which partitions like any reduction
        (a dynamic index into the sharded axis would gather the whole array)."""
        count = jnp.sum(finished).astype(jnp.int32)
        ids = jnp.nonzero(finished, size=big_n, fill_value=0)[0]

        def one(j, done):
            sel = slot_ids_all == ids[j]
            pick = lambda x: jnp.sum(jnp.where(sel.reshape((-1,) + (1,) * (x.ndim - 1)), x,
                                               jnp.zeros((), x.dtype)), axis=0)
            length = pick(st["t"])
            keep = cols < length
            idx = done["count"] + j
            done = dict(done)
            for name, fill in (("tokens", pad_id), ("logp", 0.0), ("sample_logp", 0.0)):
                row = jnp.where(keep, pick(st[name]), jnp.asarray(fill, st[name].dtype))
                done[name] = lax.dynamic_update_slice(done[name], row[None], (idx, 0))
            scalars = (("row", pick(st["row"])), ("lengths", length),
                       ("finish", pick(st["finish"])))
            if bf is not None:
                scalars += (("waits", pick(st["bf_waits"])),)
            for name, value in scalars:
                done[name] = lax.dynamic_update_slice(done[name], value[None], (idx,))
            return done

        done = lax.fori_loop(0, count, one, done)
        done = dict(done, count=done["count"] + count)
        st = dict(st, row=jnp.where(finished, -1, st["row"]))
        return st, done

    def can_admit(carry):
        st, done, lc = carry
        return jnp.any(st["row"] < 0) & waiting(st, lc) & room(done)

    def refill(args):
        """Prefills the next min(pp, waiting) queued prompts into the (empty) buffer."""
        st, lc = args
        count = jnp.minimum(pp, queue_count - lc["taken"])
        batch_lens = lax.dynamic_slice_in_dim(queue_lens, lc["taken"], pp)
        k, v, logits = prefill(lax.dynamic_slice_in_dim(queue, lc["taken"], pp), batch_lens)
        st = dict(st, buf_k=k.astype(st["buf_k"].dtype), buf_v=v.astype(st["buf_v"].dtype),
                  buf_logits=logits.astype(st["buf_logits"].dtype), buf_lens=batch_lens,
                  buf_prompt=queue_base + lc["taken"], buf_next=jnp.int32(0),
                  buf_total=count * n, prefills=st["prefills"] + 1)
        return st, dict(lc, taken=lc["taken"] + count)

    def admit(carry):
        """Moves min(free slots, buffered rows) rows from the buffer into free slots."""
        st, done, lc = carry
        st, lc = lax.cond(st["buf_next"] >= st["buf_total"], refill, lambda a: a, (st, lc))
        free = st["row"] < 0
        count = jnp.minimum(jnp.sum(free), st["buf_total"] - st["buf_next"])
        j = jnp.arange(m, dtype=jnp.int32)
        placed = j < count
        slot_ids = jnp.where(placed, jnp.nonzero(free, size=m, fill_value=big_n)[0], big_n)
        local_row = st["buf_next"] + j  # row within the buffer
        prompt = jnp.minimum(local_row // n, pp - 1)
        st = dict(st, cache=_insert_prompts(st["cache"], st["buf_k"], st["buf_v"], prompt,
                                            slot_ids, count, keys_t))
        rows = st["buf_prompt"] * n + local_row
        keys = _row_keys(key, rows, n)
        fresh = budget_lib.init_state(m) if bf is not None else None
        st, tok, fin, forced = record(st, slot_ids, keys, jnp.int32(0),
                                      st["buf_logits"][prompt], placed, fresh)
        for name, value in (("row", rows), ("key", keys), ("pos", st["buf_lens"][prompt]),
                            ("t", jnp.ones_like(rows)), ("tok", tok)) + tuple(
                                (forced or {}).items()):
            st[name] = st[name].at[slot_ids].set(value, mode="drop")
        st["buf_next"] = st["buf_next"] + count
        finished = jnp.zeros((big_n,), bool).at[slot_ids].set(fin, mode="drop")
        st, done = retire(st, done, finished)
        return st, done, lc

    def cond(carry):
        st, done, lc = carry
        work = jnp.any(st["row"] >= 0) | waiting(st, lc)
        return work & (lc["steps"] < max_steps) & room(done)

    def body(carry):
        st, done, lc = lax.while_loop(can_admit, admit, carry)
        live = st["row"] >= 0
        pos = jnp.where(live, st["pos"], 0)  # free slots write position 0, later overwritten
        logits, cache = _decode_step(layer_params, head_params, st["cache"], st["tok"], pos,
                                     rope_table, cfg, sharding, keys_t)
        st = dict(st, cache=cache)
        forced = {k: st[k] for k in budget_lib.STATE_KEYS} if bf is not None else None
        st, tok, fin, forced = record(st, None, st["key"], st["t"], logits, live, forced)
        st.update(pos=st["pos"] + 1, t=st["t"] + 1, tok=tok, steps=st["steps"] + 1,
                  slot_steps=st["slot_steps"] + jnp.sum(live).astype(jnp.int32))
        st.update(forced or {})  # free slots' counters are reset when a row enters
        st, done = retire(st, done, live & fin)
        return st, done, dict(lc, steps=lc["steps"] + 1)

    state, done, local = lax.while_loop(cond, body, (state, done, local))
    return _place_state(state, sharding), done, local["taken"], local["steps"]

"""The trainer's device side: train state, jitted update / log-prob programs, batch assembly.

`RLSteps` owns the state `{"params", "opt_state", "step"}` with explicit shardings (parameters
by the logical rules, optimizer moments like their parameters) and donates it to every
update, so one copy of the weights exists; the sampler reads `RLSteps.params`.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.config import ModelConfig, RunConfig, SFTConfig
from r1jax.distributed import to_host
from r1jax.models.decoder import param_shardings
from r1jax.rl import advantages
from r1jax.rl.rollout import LENGTH, bucket, pack_sequences
from r1jax.rl.update import (RLBatch, make_logprob_fn, make_optimizer, make_schedule,
                             make_update_fn)
from r1jax.sharding import Sharding

ADV_ARGS = {"group": ("group", "mean"), "batch": ("batch", "mean"), "none": ("none", "mean"),
            "rloo": ("none", "rloo")}


def sft_optimizer(cfg: SFTConfig) -> optax.GradientTransformation:
    sched = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps) if cfg.warmup_steps else \
        cfg.lr
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.0))


def _key_names(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def like_params(tree: Any, params_sharding: Any, replicated: NamedSharding) -> Any:
    """Shardings for an optimizer state: leaves shaped like a parameter (matched by the
    trailing dict keys of their path) get that parameter's sharding, others are replicated."""
    by_path = {_key_names(p): s for p, s in
               jax.tree_util.tree_flatten_with_path(params_sharding)[0]}

    def pick(path, leaf):
        names = _key_names(path)
        for i in range(len(names)):
            if names[i:] in by_path:
                return by_path[names[i:]]
        return replicated
    return jax.tree_util.tree_map_with_path(pick, tree)


class RLSteps:
    """Train state plus the jitted programs that read and write it."""

    def __init__(self, model_cfg: ModelConfig, cfg: RunConfig, sharding: Sharding,
                 params: Any):
        self.model_cfg = model_cfg
        self.cfg = cfg
        self.sharding = sharding
        algo = cfg.algo
        self.max_response_len = algo.max_response_len or cfg.rollout.max_new_tokens
        total = cfg.train.steps * algo.num_iterations * algo.minibatches
        self.tx = make_optimizer(cfg.optim, max(total, 1))
        self.schedule = make_schedule(cfg.optim, max(total, 1))
        self.batch_sharding = NamedSharding(sharding.mesh, P(sharding.batch_axes or None))
        self.param_sharding = param_shardings(model_cfg, sharding)
        self.state = {"params": params}
        self.ref_params = None
        self.reset_optimizer()
        update = make_update_fn(model_cfg, algo, self.tx, sharding, 1.0,
                                self.max_response_len)
        self._update = jax.jit(update, donate_argnums=0,
                               out_shardings=(self.state_sharding, None))
        logprob_fn = make_logprob_fn(model_cfg, sharding, 1.0)
        self._logprobs = jax.jit(logprob_fn)

        def chunk_logprobs(params, batch, start, *, size):
            rows = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size), batch)
            return logprob_fn(params, rows)
        self._chunk_logprobs = jax.jit(chunk_logprobs, static_argnames="size")
        self._rows = jax.jit(
            lambda batch, start, size: jax.tree.map(
                lambda x: jax.lax.dynamic_slice_in_dim(x, start, size), batch),
            static_argnums=2)

    @property
    def params(self) -> Any:
        return self.state["params"]

    def checkpoint_tree(self) -> dict:
        """The device state a checkpoint holds: the train state and, with kl_beta > 0, the
        frozen reference (`"reference"`), so that a resumed run keeps the same reference."""
        tree = dict(self.state)
        if self.ref_params is not None:
            tree["reference"] = self.ref_params
        return tree

    def load_checkpoint_tree(self, tree: dict) -> None:
        """Inverse of `checkpoint_tree` (arrays already in this run's shardings)."""
        tree = dict(tree)
        self.ref_params = tree.pop("reference", None)
        self.state = tree

    def reset_optimizer(self) -> None:
        """Fresh optimizer state (and update counter) for the current parameters.

        With kl_beta > 0 the current parameters also become the frozen reference policy
        (the policy RL starts from: after the warm start when there is one). The copy is
        taken before the optimizer initialisation donates the parameters.
        """
        if self.cfg.algo.kl_beta > 0:
            self.ref_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                      out_shardings=self.param_sharding)(self.state["params"])
        replicated = NamedSharding(self.sharding.mesh, P())
        abstract = jax.eval_shape(self.tx.init, self.state["params"])
        opt_sharding = like_params(abstract, self.param_sharding, replicated)
        self.state_sharding = {"params": self.param_sharding, "opt_state": opt_sharding,
                               "step": replicated}
        init = jax.jit(lambda p: {"params": p, "opt_state": self.tx.init(p),
                                  "step": jnp.int32(0)},
                       out_shardings=self.state_sharding, donate_argnums=0)
        self.state = init(self.state["params"])

    # ------------------------------------------------------------------------------------
    def make_batch(self, groups: list, pad_id: int) -> RLBatch:
        """RLBatch of the step's groups, padded with empty rows to prompts_per_step x G."""
        cfg = self.cfg
        g = cfg.rollout.group_size
        prompts, completions, finish, logp, rewards = [], [], [], [], []
        for grp in groups:
            for i in range(g):
                prompts.append(grp["prompt"])
                completions.append(grp["completions"][i])
            finish.append(grp["finish"])
            logp.append(grp["logp"])
            rewards.append(grp["rewards"])
        real = len(prompts)
        rows = cfg.train.prompts_per_step * g
        scale, baseline = ADV_ARGS[cfg.algo.adv]
        adv = np.asarray(advantages.group_advantages(
            jnp.asarray(np.concatenate(rewards), jnp.float32), g, scale, baseline=baseline))
        longest = max(len(c) for c in completions) if completions else 1
        width = bucket(max(longest, 1), 16, cfg.rollout.max_new_tokens)
        pw = bucket(max(len(p) for p in prompts), 16, cfg.data.max_prompt_tokens)
        pad_rows = rows - real
        packed = pack_sequences(prompts + [[pad_id]] * pad_rows,
                                completions + [[]] * pad_rows, prompt_width=pw,
                                completion_width=width, pad_id=pad_id)
        mask = packed["completion_mask"]
        finish = np.concatenate(finish + [np.zeros(pad_rows, np.int32)])
        if cfg.algo.overlong_filter:
            mask = mask * (finish != LENGTH)[:, None]
        old = np.zeros((rows, width), np.float32)
        old[:real] = np.concatenate(logp)[:, :width]
        adv_full = np.zeros((rows,), np.float32)
        adv_full[:real] = adv
        valid = np.zeros((rows,), np.float32)
        valid[:real] = 1.0
        arrays = RLBatch(tokens=packed["tokens"], positions=packed["positions"],
                         segment_ids=packed["segment_ids"], mask=mask.astype(np.float32),
                         adv=adv_full, old_logp=old * mask, ref_logp=np.zeros_like(old),
                         valid_rows=valid)
        return jax.device_put(arrays, self.batch_sharding)

    def update(self, batch: RLBatch) -> dict:
        """mu passes of `minibatches` optimizer steps over the batch; averaged metrics."""
        algo = self.cfg.algo
        mismatch = {}
        if self.cfg.rollout.recompute_old_logprobs or algo.num_iterations > 1:
            recomputed = self.logprobs(self.params, batch) * batch.mask
            mismatch = to_host(_logprob_mismatch(batch.old_logp, recomputed,
                                                        batch.mask))
            batch.old_logp = recomputed
        if self.ref_params is not None:
            batch.ref_logp = self.logprobs(self.ref_params, batch)
        rows = batch.tokens.shape[0] // algo.minibatches
        collected = []
        for _ in range(algo.num_iterations):
            for m in range(algo.minibatches):
                lr = float(self.schedule(int(self.state["step"])))
                self.state, metrics = self._update(
                    self.state, self._rows(batch, jnp.int32(m * rows), rows))
                _wait_on_cpu(metrics)
                collected.append(dict(metrics, lr=lr))
        out = summarize_updates(to_host(collected), algo.minibatches,
                                float(jnp.sum(batch.valid_rows)))
        out.update({f"logprob_mismatch/{k}": float(v) for k, v in mismatch.items()})
        return out

    def logprobs(self, params: Any, batch: RLBatch) -> jax.Array:
        """[B, T] log-probs of the batch's completions, computed in row chunks of one update
        microbatch (B / minibatches / microbatches rows), so that the pass never holds the
        activations of the whole step batch."""
        algo = self.cfg.algo
        rows = batch.tokens.shape[0]
        chunk = max(rows // (algo.minibatches * algo.microbatches), 1)
        if chunk >= rows:
            return self._logprobs(params, batch)
        # One program per chunk (the rows are sliced inside it), see `_wait_on_cpu`.
        out = []
        for a in range(0, rows, chunk):
            out.append(_wait_on_cpu(self._chunk_logprobs(params, batch, jnp.int32(a),
                                                         size=chunk)))
        return jnp.concatenate(out, axis=0)

    def sft_program(self, cfg: SFTConfig) -> tuple[Any, Any, Any]:
        """(init, update, state shardings) of the warm start's own optimizer."""
        from r1jax.sft import make_packed_sft_update
        tx = sft_optimizer(cfg)
        replicated = NamedSharding(self.sharding.mesh, P())
        abstract = jax.eval_shape(tx.init, self.state["params"])
        shardings = {"params": self.param_sharding,
                     "opt_state": like_params(abstract, self.param_sharding, replicated),
                     "step": replicated}
        init = jax.jit(lambda p: {"params": p, "opt_state": tx.init(p), "step": jnp.int32(0)},
                       donate_argnums=0, out_shardings=shardings)
        update = jax.jit(make_packed_sft_update(self.model_cfg, tx, self.sharding),
                         donate_argnums=0, out_shardings=(shardings, None))
        return init, update, shardings

    def abstract_sft_state(self, cfg: SFTConfig) -> Any:
        """ShapeDtypeStructs (with shardings) of the warm start's state, for a restore."""
        init, _, shardings = self.sft_program(cfg)
        shapes = jax.eval_shape(init, self.state["params"])
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, shardings)

    def run_sft(self, iterator, cfg: SFTConfig, tokenizer, eos_id: int, pad_id: int,
                max_completion: int, *, start: int = 0, state: Any = None,
                stop: Optional[Any] = None) -> tuple[dict, Optional[Any]]:
        """Supervised steps `start` .. `cfg.steps - 1` on (prompt, solution) batches.

        Args:
          state: the warm start's state to continue from (a restored checkpoint), else a
            fresh one over the current parameters.
          stop: a callable asked after every step; when it says True the loop ends there.

        Returns:
          (metrics, None) when all steps ran: the policy parameters are the result and the
          SFT optimizer state is dropped (`reset_optimizer` starts RL's); or (metrics,
          state) when `stop` ended it early, `metrics["steps"]` being the steps done, for
          the caller to save.
        """
        from r1jax import sft
        init, sft_update, _ = self.sft_program(cfg)
        sft_state = init(self.state["params"]) if state is None else state
        losses, started, step = [], time.perf_counter(), start
        max_len = self.cfg.data.max_prompt_tokens + max_completion
        par = self.sharding.batch_parallelism
        while step < cfg.steps:
            # Prompt + solution + EOS, several to a row.
            batch, _ = sft.pack_batch(
                sft.warm_start_examples(next(iterator), tokenizer, eos_id), max_len,
                row_unit=par, pad_id=pad_id)
            sft_state, metrics = sft_update(sft_state,
                                            jax.device_put(batch, self.batch_sharding))
            losses.append(metrics["sft/loss"])
            step += 1
            if stop is not None and step < cfg.steps and stop():
                break
        losses = [float(x) for x in to_host(losses)] or [float("nan")]
        out = {"loss": losses[-1], "first_loss": losses[0], "steps": step,
               "seconds": time.perf_counter() - started}
        self.state = {"params": sft_state["params"]}
        return out, (sft_state if step < cfg.steps else None)


@jax.jit
def _logprob_mismatch(sampler_logp: jax.Array, trainer_logp: jax.Array,
                      mask: jax.Array) -> dict:
    """How far the sampler's log-probs of the sampled tokens are from the trainer's.

    Args:
      sampler_logp, trainer_logp, mask: [B, T] (mask 1 on the tokens that count).
    Returns:
      mean_abs, max_abs: of |sampler - trainer| per token; kl: the k3 estimate of
      KL(sampler || trainer), mean over tokens of r - 1 - log r with r = p_trainer / p_sampler
      (the tokens were drawn from the sampler).
    """
    d = (trainer_logp - sampler_logp) * mask
    count = jnp.maximum(mask.sum(), 1.0)
    return {"mean_abs": jnp.abs(d).sum() / count, "max_abs": jnp.abs(d).max(),
            "kl": ((jnp.exp(d) - 1.0 - d) * mask).sum() / count}


def summarize_updates(host: list[dict], minibatches: int, rows: float) -> dict:
    """The step's update metrics from each optimizer step's (host) metrics, in order.

    `policy/*` and `grad_norm` average the minibatches that had valid tokens (an empty one
    changes nothing and is counted in `empty_minibatches`); `batch/tokens` is the number of
    valid tokens of the whole batch (one pass); `lr` the last optimizer step's.
    """
    used = [c for c in host if not c["empty"]] or host
    out = {f"policy/{k}": float(np.mean([c[k] for c in used])) for k in host[0]
           if k not in ("skipped", "empty", "tokens", "sequences", "lr", "grad_norm")}
    out["grad_norm"] = float(np.mean([c["grad_norm"] for c in used]))
    out["lr"] = host[-1]["lr"]
    out["skipped_updates"] = float(sum(c["skipped"] for c in host))
    out["empty_minibatches"] = float(sum(c["empty"] for c in host))
    out["batch/tokens"] = float(sum(c["tokens"] for c in host[:minibatches]))
    out["batch/rows"] = rows
    return out


def rollout_metrics(gens: list, ds_stats: Optional[Any]) -> dict:
    """Metrics of all generation batches of a step (README "Metrics" defines each)."""
    rewards = np.concatenate([g.rewards for g in gens])
    lengths = np.concatenate([g.output.lengths for g in gens])
    finish = np.concatenate([g.output.finish_reason for g in gens])
    correct = np.concatenate([g.correct for g in gens])
    out = {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()),
           "accuracy": float(correct.mean()),
           "response_length/mean": float(lengths.mean()),
           "response_length/max": float(lengths.max()),
           "response_length/min": float(lengths.min()),
           "response_length/clip_ratio": float((finish == LENGTH).mean())}
    tasks = None if gens[0].tasks is None else np.concatenate([g.tasks for g in gens])
    for name in gens[0].parts:
        if tasks is not None and "/" in name:  # "<task>/<fn>": in the task's own metrics
            continue
        vals = np.concatenate([g.parts[name] for g in gens])
        out[f"reward/{name}/mean"] = float(vals.mean())
        out[f"reward/{name}/std"] = float(vals.std())
    if tasks is not None:
        names = sorted(set().union(*(g.parts for g in gens)))
        parts = {k: np.concatenate([g.parts.get(k, np.full(len(g.rewards), np.nan))
                                    for g in gens]) for k in names}
        out.update(task_metrics(tasks, rewards, correct, lengths, parts))
        if ds_stats is not None:
            out.update(task_filter_metrics(gens))
    for kind in ("timeouts", "crashes", "exceptions"):
        out[f"reward/failures/{kind}"] = float(sum(getattr(g.failures, kind) for g in gens))
    rollout_s = sum(g.seconds["rollout"] for g in gens)
    out["time/rollout_s"] = rollout_s
    out["time/reward_s"] = sum(g.seconds["reward"] for g in gens)
    out["perf/generated_tokens"] = float(lengths.sum())
    out["perf/generated_tokens_per_s"] = float(lengths.sum()) / max(rollout_s, 1e-9)
    stats = [getattr(g.output, "stats", None) or {} for g in gens]
    if all("slot_steps" in s for s in stats):  # the continuous-batching engine
        slot_steps = sum(s["slot_steps"] for s in stats)
        capacity = sum(s["decode_steps"] * s["slots"] for s in stats)
        out["perf/slot_utilization"] = slot_steps / max(capacity, 1)
    if ds_stats is not None:
        for k, v in ds_stats.as_dict().items():
            out[f"dynamic_sampling/{k}"] = float(v)
    return out


def task_metrics(tasks: np.ndarray, rewards: np.ndarray, correct: np.ndarray,
                 lengths: np.ndarray, parts: dict) -> dict:
    """`task/<name>/...` metrics of a multi-task step, for each task that drew prompts.

    Args:
      tasks, rewards, correct, lengths: [B] per completion (all generation batches).
      parts: "<task>/<fn>" -> [B] reward function values (NaN on other tasks' rows).
    """
    out = {}
    for task in sorted(set(tasks)):
        rows = tasks == task
        prefix = f"task/{task}/"
        out[prefix + "reward/mean"] = float(rewards[rows].mean())
        out[prefix + "accuracy"] = float(correct[rows].mean())
        out[prefix + "response_length/mean"] = float(lengths[rows].mean())
        out[prefix + "completions"] = float(rows.sum())
        for name, vals in parts.items():
            if name.startswith(task + "/"):
                out[f"{prefix}reward/{name[len(task) + 1:]}/mean"] = float(vals[rows].mean())
    return out


def task_filter_metrics(gens: list) -> dict:
    """Per task, the groups DAPO's dynamic sampling kept (accuracy std > 0: each group is
    filtered on its own task's accuracy) and dropped, over the step's generation batches."""
    from r1jax.rl.dapo import keep_groups
    out = {}
    for gen in gens:
        group_size = len(gen.texts) // len(gen.examples)
        keep = keep_groups(gen.accuracy, group_size)
        for task, kept in zip(gen.tasks[::group_size], keep):
            key = f"task/{task}/dynamic_sampling/groups_{'kept' if kept else 'dropped'}"
            other = f"task/{task}/dynamic_sampling/groups_{'dropped' if kept else 'kept'}"
            out[key] = out.get(key, 0.0) + 1.0
            out.setdefault(other, 0.0)
    return out


def _wait_on_cpu(x: Any) -> Any:
    """`x` once computed when the backend is a multi-device CPU, else `x` at once.

    XLA:CPU runs a multi-device program as one thread per device, and with several
    collective programs in flight at once on an oversubscribed host their participants have
    been seen to deadlock in a collective rendezvous (7 of 8 waiting in an all-reduce, the
    8th waiting for an execution slot). The step's chunked passes run one after the other
    on any backend, so waiting for each costs only the dispatch overlap, and only on CPU.
    """
    if jax.device_count() > 1 and jax.devices()[0].platform == "cpu":
        jax.block_until_ready(x)
    return x

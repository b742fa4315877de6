"""The jitted policy update: chunked log-probs -> clipped loss -> accumulated grads -> AdamW.

State is a plain pytree `{"params", "opt_state", "step"}`; the params are the very arrays the
sampler reads (one set of weights, no copy between rollout and update). One optimizer step
takes a minibatch split into `microbatches` pieces; each piece divides its loss by the
denominator of the WHOLE minibatch (`losses.loss_denominator`), so the summed gradient equals
the whole-batch gradient in every aggregation mode. A non-finite loss or gradient skips the
update (params and optimizer state unchanged) and reports `skipped = 1`; so does a minibatch
without a valid token (`empty = 1`), which dynamic sampling short of its target can leave.

A batch (`RLBatch`) holds prompt + completion sequences laid out as
`[left-padded prompt (width Pw) | completion right-padded to T]`, so that the hidden states
predicting completion token t sit at column Pw - 1 + t for every row.

Glossary: B rows, Pw prompt width, T completion length, S = Pw + T, D model dim, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from r1jax.config import AlgoConfig, ModelConfig, OptimConfig
from r1jax.models import decoder
from r1jax.rl import losses
from r1jax.rl.logprobs import token_logprobs
from r1jax.sharding import Sharding

State = dict[str, Any]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RLBatch:
    """Device arrays of one rollout batch (see module docstring for the layout).

    tokens [B, S] int32; positions [B, S] int32; segment_ids [B, S] int32 (1 = token,
    0 = padding); mask [B, T] float32 (completion tokens that count in the loss); adv [B]
    float32; old_logp [B, T] float32; ref_logp [B, T] float32 (zeros when beta = 0);
    valid_rows [B] float32 (0 on rows that only pad the batch to its fixed size).
    """

    tokens: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    mask: jax.Array
    adv: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array
    valid_rows: jax.Array

    @property
    def completion_len(self) -> int:
        return self.mask.shape[1]

    def rows(self, start: int, stop: int) -> "RLBatch":
        return jax.tree.map(lambda x: x[start:stop], self)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup then constant or cosine decay, after global-norm clipping."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(make_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay))


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    else:
        decay = max(total_steps - cfg.warmup_steps, 1)
        after = optax.cosine_decay_schedule(cfg.lr, decay, alpha=cfg.min_lr_ratio)
    if cfg.warmup_steps == 0:
        return after
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def completion_logprobs(params: Any, batch: RLBatch, cfg: ModelConfig,
                        sharding: Optional[Sharding], temperature: float,
                        with_entropy: bool) -> tuple[jax.Array, Optional[jax.Array]]:
    """Per-token log-probs [B, T] (and entropies) of the completion tokens, never forming
    [B, T, V] logits."""
    t = batch.completion_len
    width = batch.tokens.shape[1] - t
    h = decoder.final_hidden(params, batch.tokens, cfg, positions=batch.positions,
                             segment_ids=batch.segment_ids, sharding=sharding)
    h = h[:, width - 1:width - 1 + t]
    return token_logprobs(h, decoder.lm_head_kernel(params, cfg), batch.tokens[:, width:],
                          temperature=temperature, return_entropy=with_entropy)


def _piece_loss(params, batch: RLBatch, denominator, cfg: ModelConfig, algo: AlgoConfig,
                sharding, temperature, max_response_len):
    logp, ent = completion_logprobs(params, batch, cfg, sharding, temperature,
                                    with_entropy=True)
    return losses.policy_loss(
        logp, batch.old_logp, batch.adv, batch.mask, eps_low=algo.eps_low,
        eps_high=algo.eps_high, clip_c=algo.clip_c, agg=algo.agg,
        max_response_len=max_response_len, denominator=denominator,
        ratio_level=algo.ratio_level,
        ref_logp=batch.ref_logp if algo.kl_beta else None, beta=algo.kl_beta,
        kl_kind=algo.kl_kind, entropy=ent, entropy_coef=algo.entropy_coef)


def accumulate_grads(loss_fn, params: Any, batch: Any, microbatches: int):
    """Sum of loss, metric sums and gradients over `microbatches` equal pieces of `batch`.

    `loss_fn(params, piece) -> (loss, metric_sums)` must already divide by whole-batch
    denominators, so the sums equal the whole-batch values.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
        (loss, sums), grads = grad_fn(params, batch)
        return loss, sums, grads
    pieces = jax.tree.map(lambda x: x.reshape(microbatches, -1, *x.shape[1:]), batch)

    def body(carry, piece):
        (loss, sums), grads = grad_fn(params, piece)
        return jax.tree.map(jnp.add, carry, (loss, sums, grads)), None

    zero_grads = jax.tree.map(jnp.zeros_like, params)
    first = jax.tree.map(lambda x: x[0], pieces)
    shapes = jax.eval_shape(lambda: grad_fn(params, first))
    zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[0][1])
    init = (jnp.float32(0), zero_sums, zero_grads)
    (loss, sums, grads), _ = jax.lax.scan(body, init, pieces)
    return loss, sums, grads


def apply_update(state: State, grads: Any, loss: jax.Array, tx: optax.GradientTransformation,
                 tokens: Optional[jax.Array] = None) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer step, or none: the state is returned bitwise unchanged (parameters,
    optimizer moments and counts, `step`) when the loss or gradient is non-finite
    (`skipped` = 1) or when the minibatch has no valid token (`tokens` = 0, `empty` = 1):
    a zero gradient would still move AdamW's momentum and advance the schedule."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    nonempty = jnp.bool_(True) if tokens is None else tokens > 0
    ok = finite & nonempty
    safe = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads)
    updates, opt_state = tx.update(safe, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = {"params": keep(params, state["params"]),
                 "opt_state": keep(opt_state, state["opt_state"]),
                 "step": state["step"] + ok.astype(jnp.int32)}
    return new_state, {"grad_norm": grad_norm, "skipped": 1.0 - finite.astype(jnp.float32),
                       "empty": 1.0 - nonempty.astype(jnp.float32)}


def make_update_fn(cfg: ModelConfig, algo: AlgoConfig, tx: optax.GradientTransformation,
                   sharding: Optional[Sharding], temperature: float, max_response_len: int):
    """`update(state, batch) -> (state, metrics)`: one optimizer step on one minibatch."""

    def update(state: State, batch: RLBatch):
        if algo.agg == "seq-mean-token-sum-norm":
            # Dr. GRPO's constant: rows x max_response_len, counting real rows only.
            denominator = jnp.sum(batch.valid_rows) * max_response_len
        else:
            denominator = losses.loss_denominator(batch.mask, algo.agg, max_response_len)
        loss_fn = lambda p, piece: _piece_loss(p, piece, denominator, cfg, algo, sharding,
                                               temperature, max_response_len)
        loss, sums, grads = accumulate_grads(loss_fn, state["params"], batch,
                                             algo.microbatches)
        sums = dict(sums, loss=loss)
        state, opt_metrics = apply_update(state, grads, loss, tx, tokens=sums["tokens"])
        metrics = dict(losses.summarize_metrics(sums), **opt_metrics)
        return state, metrics

    return update


def make_logprob_fn(cfg: ModelConfig, sharding: Optional[Sharding], temperature: float):
    """`logprobs(params, batch) -> [B, T]`: old or reference log-probs, no gradient."""
    def fn(params, batch: RLBatch):
        logp, _ = completion_logprobs(params, batch, cfg, sharding, temperature, False)
        return logp
    return fn

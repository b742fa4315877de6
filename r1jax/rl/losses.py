"""Clipped policy-gradient losses (PPO / GRPO / DAPO / GSPO), KL penalties and loss aggregation.

Notation: rows b (B = prompts x G), completion tokens t (T), mask m[b, t] = 1 on tokens that
count (0 on padding, on the prompt and on overlong-filtered completions), n_b = sum_t m[b, t].

Per token (`policy_loss`):

    r    = exp(clamp(logp - old_logp, -20, 20))                  (ratio_level="token")
    r    = exp(logp - sg(logp) + sg(clamp(log s_b, -20, 20)))     (ratio_level="sequence", GSPO)
           with log s_b = sum_t m (logp - old_logp) / n_b
    pg1  = -A r
    pg2  = -A clip(r, 1 - eps_low, 1 + eps_high)
    L    = max(pg1, pg2)
    L    = min(L, -A c)   where A < 0, when clip_c = c is given (dual clip, c > 1)
    L'   = L + beta k(logp, ref_logp) - entropy_coef H

and the loss is `aggregate(L', m, agg)`. `sg` is stop-gradient. Where the clip is active the
loss is the constant-ratio branch and its gradient is exactly zero.

Aggregation modes (`aggregate`), with D the denominator:

=============================  ====================================  ===========================
`agg`                          loss                                  D by default
=============================  ====================================  ===========================
"token-mean" (DAPO)            sum_{b,t} L m / D                     sum_{b,t} m
"seq-mean-token-mean" (GRPO)   sum_{b: n_b>0} (sum_t L m / n_b) / D  #{b : n_b > 0}
"seq-mean-token-sum"           sum_{b,t} L m / D                     #{b : n_b > 0}
"seq-mean-token-sum-norm"      sum_{b,t} L m / D                     B x max_response_len
  (Dr. GRPO)
=============================  ====================================  ===========================

Rows with no valid token (n_b = 0, e.g. overlong-filtered) contribute nothing and do not
count as sequences; under "seq-mean-token-sum-norm" every row counts, since Dr. GRPO wants a
constant denominator. A zero denominator (nothing valid at all) gives loss 0.

Microbatches and devices: each numerator is a sum over rows, so a batch split into pieces
gives the whole batch's loss and gradient when every piece divides by the WHOLE optimizer
batch's D and the pieces' losses (and gradients) are summed. Compute D once on the whole
batch's mask with `loss_denominator(mask, agg, max_response_len)` and pass it as
`denominator=` (or, for "token-mean", as `token_count=`) to every piece. Under `jax.jit` with
the batch sharded over a mesh, the sums are already global and no override is needed.

Metrics (`policy_loss`'s second output) are sums over this piece's valid tokens / rows, so the
trainer adds them across microbatches (they are already global across devices under jit) and
then calls `summarize_metrics` once.
"""

from __future__ import annotations

import numbers
from typing import Optional

import jax
import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
             "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3")
RATIO_LEVELS = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


def _check_agg(agg: str) -> None:
    if agg not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation agg={agg!r} (expected one of {AGG_MODES})")


def _check_mask(mask: jax.Array) -> jax.Array:
    mask = jnp.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [B, T], got shape {mask.shape}")
    return mask.astype(jnp.float32)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    den = jnp.asarray(den, jnp.float32)
    return num / jnp.where(den > 0, den, 1.0)


def loss_denominator(mask: jax.Array, agg: str,
                     max_response_len: Optional[int] = None) -> jax.Array:
    """The default denominator D of `agg` for this mask (see the module docstring).

    Call it on the WHOLE optimizer batch's mask and pass the result as `denominator=` to
    every microbatch's `policy_loss` / `aggregate`.

    Args:
      mask: [B, T] 0/1 (or bool) valid-token mask.
      agg: one of AGG_MODES.
      max_response_len: the constant of "seq-mean-token-sum-norm" (required there).

    Returns:
      float32 scalar.
    """
    _check_agg(agg)
    m = _check_mask(mask)
    if agg == "token-mean":
        return jnp.sum(m)
    if agg == "seq-mean-token-sum-norm":
        if not isinstance(max_response_len, numbers.Integral) or max_response_len < 1:
            raise ValueError("agg='seq-mean-token-sum-norm' needs max_response_len, a positive "
                             f"int (the config's constant), got {max_response_len!r}")
        return jnp.float32(m.shape[0] * max_response_len)
    return jnp.sum((jnp.sum(m, axis=-1) > 0).astype(jnp.float32))


def aggregate(values: jax.Array, mask: jax.Array, agg: str = "token-mean", *,
              max_response_len: Optional[int] = None,
              denominator: Optional[jax.Array] = None) -> jax.Array:
    """Reduces per-token values [B, T] to a scalar loss with aggregation mode `agg`.

    Masked positions may hold anything, including inf or NaN: they are replaced by 0 before
    any arithmetic, so they reach neither the value nor the gradient.

    Args:
      values: [B, T] per-token losses.
      mask: [B, T] valid-token mask (0/1 or bool; non-binary values act as weights).
      agg: one of AGG_MODES.
      max_response_len: constant of "seq-mean-token-sum-norm" when `denominator` is None.
      denominator: D of the whole optimizer batch (see `loss_denominator`); default: this
        batch's own D.

    Returns:
      float32 scalar.
    """
    _check_agg(agg)
    m = _check_mask(mask)
    if values.shape != m.shape:
        raise ValueError(f"values {values.shape} and mask {m.shape} differ in shape")
    if denominator is None:
        denominator = loss_denominator(m, agg, max_response_len)
    v = jnp.where(m > 0, values.astype(jnp.float32), 0.0) * m
    if agg == "seq-mean-token-mean":
        per_seq = _safe_div(jnp.sum(v, axis=-1), jnp.sum(m, axis=-1))
        return _safe_div(jnp.sum(per_seq), denominator)
    return _safe_div(jnp.sum(v), denominator)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, kind: str = "k3") -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs.

    k1 = logp - ref_logp; k2 = 0.5 (logp - ref_logp)^2;
    k3 = clamp(exp(d) - d - 1, -10, 10) with d = clamp(ref_logp - logp, -20, 20)
    (Schulman's low-variance, always >= 0 estimator; "low_var_kl" in verl).

    Args:
      logp, ref_logp: [B, T] log-probs of the sampled tokens under the policy and the
        frozen reference.
      kind: "k1", "k2" or "k3".

    Returns:
      [B, T] float32, unmasked (aggregate it with the loss's mask and mode).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator kind={kind!r} (expected one of {KL_KINDS})")
    diff = logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * jnp.square(diff)
    d = jnp.clip(-diff, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.clip(jnp.exp(d) - d - 1.0, -K3_CLAMP, K3_CLAMP)


def _check_number(name: str, value, ok, what: str) -> None:
    """Validates a Python scalar hyper-parameter (traced values are left to the caller)."""
    if isinstance(value, numbers.Real) and not ok(value):
        raise ValueError(f"{name}={value!r} is out of range: {what}")


def _log_ratio(lp: jax.Array, olp: jax.Array, m: jax.Array, ratio_level: str) -> jax.Array:
    if ratio_level == "token":
        return jnp.clip(lp - olp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    # GSPO: the value is the sequence ratio s_b on every token; the gradient is
    # s_b * d logp[b, t], one term per token, which aggregate() then weighs.
    log_s = _safe_div(jnp.sum((lp - olp) * m, axis=-1), jnp.sum(m, axis=-1))
    log_s = jnp.clip(jax.lax.stop_gradient(log_s), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return lp - jax.lax.stop_gradient(lp) + log_s[:, None]


def policy_loss(logp: jax.Array, old_logp: jax.Array, adv: jax.Array, mask: jax.Array, *,
                eps_low: float = 0.2, eps_high: float = 0.2, clip_c: Optional[float] = None,
                agg: str = "token-mean", max_response_len: Optional[int] = None,
                token_count: Optional[jax.Array] = None,
                denominator: Optional[jax.Array] = None, ratio_level: str = "token",
                ref_logp: Optional[jax.Array] = None, beta: float = 0.0,
                kl_kind: str = "k3", entropy: Optional[jax.Array] = None,
                entropy_coef: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped surrogate loss of GRPO / DAPO / GSPO, aggregated (module docstring).

    Args:
      logp: [B, T] log-probs of the sampled tokens under the policy being trained.
      old_logp: [B, T] the same under the policy that sampled them (no gradient).
      adv: [B] advantages (broadcast over T) or [B, T] per-token advantages.
      mask: [B, T] valid-token mask (0/1 or bool).
      eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high] (DAPO's clip-higher:
        eps_high > eps_low). 0 <= eps_low < 1, eps_high >= 0.
      clip_c: dual-clip constant c > 1 (None: no dual clip); bounds L by -A c where A < 0.
      agg: one of AGG_MODES.
      max_response_len: constant of "seq-mean-token-sum-norm".
      token_count: "token-mean" only: the number of valid tokens of the whole optimizer
        batch (the same as `denominator`, under the issue's name).
      denominator: D of the whole optimizer batch for any mode (`loss_denominator`).
      ratio_level: "token" (PPO / GRPO / DAPO) or "sequence" (GSPO).
      ref_logp: [B, T] reference-policy log-probs; required when beta != 0.
      beta: KL coefficient; the loss adds beta x aggregate(kl_penalty(logp, ref_logp)).
      kl_kind: "k1", "k2" or "k3".
      entropy: [B, T] per-token policy entropy (from `logprobs.token_logprobs`), for the
        metrics and the bonus; required when entropy_coef != 0.
      entropy_coef: entropy bonus; the loss subtracts entropy_coef x aggregate(entropy).

    Returns:
      (loss, metrics): loss is a float32 scalar; metrics is a dict of float32 scalar SUMS
      over this batch (see `summarize_metrics`): "loss", "pg_loss", "kl_loss",
      "entropy_loss" (the aggregated terms, which add up over microbatches when the whole
      batch's denominator is passed), "tokens" (sum m), "sequences" (#{b : n_b > 0}),
      "clip_low" / "clip_high" (valid tokens with pg2 > pg1 and r < 1 / r > 1),
      "dual_clip" (valid tokens where A < 0 and -A c < max(pg1, pg2)), "approx_kl"
      (sum m (old_logp - logp)), "ratio" (sum m r), "kl" (sum m k, when ref_logp is given),
      "entropy" (sum m H, when entropy is given).
    """
    _check_agg(agg)
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio_level={ratio_level!r} (expected one of {RATIO_LEVELS})")
    _check_number("eps_low", eps_low, lambda v: 0 <= v < 1, "need 0 <= eps_low < 1")
    _check_number("eps_high", eps_high, lambda v: v >= 0, "need eps_high >= 0")
    if clip_c is not None:
        _check_number("clip_c", clip_c, lambda v: v > 1, "the dual-clip constant needs c > 1")
    if token_count is not None:
        if agg != "token-mean":
            raise ValueError(f"token_count is the denominator of agg='token-mean'; for "
                             f"agg={agg!r} pass denominator=loss_denominator(mask, agg, ...) "
                             "computed on the whole batch")
        if denominator is not None:
            raise ValueError("pass token_count or denominator, not both")
        denominator = token_count
    m = _check_mask(mask)
    for name, x in (("logp", logp), ("old_logp", old_logp), ("ref_logp", ref_logp),
                    ("entropy", entropy)):
        if x is not None and x.shape != m.shape:
            raise ValueError(f"{name} has shape {x.shape}, expected the mask's {m.shape}")
    adv = jnp.asarray(adv, jnp.float32)
    if adv.shape == m.shape[:1]:
        adv = adv[:, None]
    elif adv.shape != m.shape:
        raise ValueError(f"adv must be [B] or [B, T] = {m.shape}, got {adv.shape}")
    if beta != 0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp")
    if entropy_coef != 0 and entropy is None:
        raise ValueError("entropy_coef != 0 needs entropy")
    if denominator is None:
        denominator = loss_denominator(m, agg, max_response_len)
    agg_kw = dict(agg=agg, denominator=denominator)

    valid = m > 0
    lp = jnp.where(valid, logp.astype(jnp.float32), 0.0)
    olp = jnp.where(valid, old_logp.astype(jnp.float32), 0.0)
    ratio = jnp.exp(_log_ratio(lp, olp, m, ratio_level))
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    clipped = pg2 > pg1
    per_token = jnp.where(clipped, pg2, pg1)
    if clip_c is not None:
        dual = (adv < 0) & (-adv * clip_c < per_token)
        per_token = jnp.where(dual, -adv * clip_c, per_token)
    else:
        dual = jnp.zeros_like(clipped)

    pg_loss = aggregate(per_token, m, **agg_kw)
    loss = pg_loss

    def count(selected):
        return jnp.sum(jnp.where(valid & selected, m, 0.0))

    metrics = {
        "pg_loss": pg_loss,
        "tokens": jnp.sum(m),
        "sequences": jnp.sum((jnp.sum(m, axis=-1) > 0).astype(jnp.float32)),
        "clip_low": count(clipped & (ratio < 1)),
        "clip_high": count(clipped & (ratio > 1)),
        "dual_clip": count(dual),
        "approx_kl": jnp.sum((olp - lp) * m),
        "ratio": jnp.sum(jnp.where(valid, ratio, 0.0) * m),
    }
    if ref_logp is not None:
        kl = kl_penalty(lp, jnp.where(valid, ref_logp.astype(jnp.float32), 0.0), kl_kind)
        kl_loss = beta * aggregate(kl, m, **agg_kw)
        loss = loss + kl_loss
        metrics["kl_loss"] = kl_loss
        metrics["kl"] = jnp.sum(jnp.where(valid, kl, 0.0) * m)
    if entropy is not None:
        ent = jnp.where(valid, entropy.astype(jnp.float32), 0.0)
        if entropy_coef != 0:
            ent_loss = -entropy_coef * aggregate(ent, m, **agg_kw)
            loss = loss + ent_loss
            metrics["entropy_loss"] = ent_loss
        metrics["entropy"] = jnp.sum(jax.lax.stop_gradient(ent) * m)
    metrics["loss"] = loss
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def summarize_metrics(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Turns `policy_loss` metric sums (added over microbatches) into the logged values.

    Returns a dict with: "loss", "pg_loss", "kl_loss", "entropy_loss" (as given);
    "clip_frac_low" = clip_low / tokens, "clip_frac_high" = clip_high / tokens,
    "clip_frac" = their sum, "dual_clip_frac" = dual_clip / tokens,
    "approx_kl" = mean over valid tokens of (old_logp - logp), "ratio_mean",
    "kl" and "entropy" (means over valid tokens), "tokens", "sequences". Means over zero
    tokens are 0.
    """
    tokens = sums["tokens"]
    out = {k: sums[k] for k in ("loss", "pg_loss", "kl_loss", "entropy_loss", "tokens",
                                "sequences") if k in sums}
    per_token = {"clip_frac_low": "clip_low", "clip_frac_high": "clip_high",
                 "dual_clip_frac": "dual_clip", "approx_kl": "approx_kl",
                 "ratio_mean": "ratio", "kl": "kl", "entropy": "entropy"}
    for name, key in per_token.items():
        if key in sums:
            out[name] = _safe_div(sums[key], tokens)
    out["clip_frac"] = out["clip_frac_low"] + out["clip_frac_high"]
    return out

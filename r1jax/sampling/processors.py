"""Logits processing and sampling: temperature, top-k, top-p, min-p, greedy.

Order (as in transformers' and vLLM's samplers): temperature scales the logits, then top-k,
then top-p on the top-k distribution, then min-p on what remains. Filtered tokens get
probability exactly 0 and are never drawn. Sampling draws one uniform number per row and
inverts the cumulative distribution, which costs one pass over the vocabulary.

Glossary: B rows, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 means greedy (argmax); top_k 0, top_p 1 and min_p 0
    disable their filters."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def validate(self) -> None:
        """Raises ValueError on impossible values (before anything is compiled)."""
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) \
                or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (0.0 <= self.min_p < 1.0):
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """Tempered, filtered logits [B, V] float32; filtered-out tokens are -inf.

    Args:
      logits: [B, V] raw logits.
      params: the filters; temperature must be > 0.
    """
    x = logits.astype(jnp.float32) / params.temperature
    if params.top_k and params.top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, params.top_k)[0][:, -1:]
        x = jnp.where(x < kth, NEG_INF, x)
    if params.top_p < 1.0:
        probs = jax.nn.softmax(x, axis=-1)
        sorted_p = -jnp.sort(-probs, axis=-1)
        before = jnp.cumsum(sorted_p, axis=-1) - sorted_p
        # Keep the smallest head of the sorted distribution whose mass reaches top_p (the top
        # token always survives); ties with the last kept probability are kept too.
        kept = jnp.where(before < params.top_p, sorted_p, jnp.inf)
        cutoff = jnp.min(kept, axis=-1, keepdims=True)
        x = jnp.where(probs < cutoff, NEG_INF, x)
    if params.min_p > 0.0:
        probs = jax.nn.softmax(x, axis=-1)
        floor = params.min_p * jnp.max(probs, axis=-1, keepdims=True)
        x = jnp.where(probs < floor, NEG_INF, x)
    return x


def sample(logits: jax.Array, key: jax.Array,
           params: SamplingParams) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws one token per row.

    Args:
      logits: [B, V] raw (temperature 1) logits of the policy.
      key: PRNG key for this step.
      params: sampling parameters.
    Returns:
      tokens [B] int32, logp [B] log-probability of the token under the policy at temperature
      1 (log_softmax of the raw logits), sample_logp [B] its log-probability under the
      distribution it was drawn from (0 for greedy).
    """
    logits = logits.astype(jnp.float32)
    policy_logp = jax.nn.log_softmax(logits, axis=-1)
    if params.greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return tokens, _take(policy_logp, tokens), jnp.zeros(tokens.shape, jnp.float32)
    x = filter_logits(logits, params)
    sample_logp = jax.nn.log_softmax(x, axis=-1)
    probs = jnp.exp(sample_logp)
    cdf = jnp.cumsum(probs, axis=-1)
    u = jax.random.uniform(key, (logits.shape[0], 1), jnp.float32) * cdf[:, -1:]
    above = cdf > u
    # First index whose cumulative mass exceeds u; float round-off can leave none (u within
    # an ulp of the total), then take the last token with non-zero probability.
    last = logits.shape[-1] - 1 - jnp.argmax((probs > 0)[:, ::-1], axis=-1)
    tokens = jnp.where(above.any(-1), jnp.argmax(above, axis=-1), last).astype(jnp.int32)
    return tokens, _take(policy_logp, tokens), _take(sample_logp, tokens)


def _take(logp: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]

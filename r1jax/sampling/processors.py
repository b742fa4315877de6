"""Logits processing and sampling: temperature, top-k, top-p, min-p, greedy.

Order (as in transformers' and vLLM's samplers): temperature scales the logits, then top-k,
then top-p on the top-k distribution, then min-p on what remains. Filtered tokens get
probability exactly 0 and are never drawn. Sampling draws one uniform number per row and
inverts the cumulative distribution in two levels (blocks of ~sqrt(V) tokens, then tokens
within the chosen block), so it needs no full-vocabulary prefix sum and no V random numbers.

Glossary: B rows, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from r1jax.sampling import threefry

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
      key: a PRNG key for the whole step (one uniform per row drawn from it), or [B] keys,
        one per row (each row's draw then depends on its own key only).
      params: sampling parameters.
    Returns:
      tokens [B] int32, logp [B] log-probability of the token under the policy at temperature
      1 (log_softmax of the raw logits), sample_logp [B] its log-probability under the
      distribution it was drawn from (0 for greedy).
    """
    logits = logits.astype(jnp.float32)
    if params.greedy or params == SamplingParams(temperature=1.0):
        # One pass over [B, V]: exp(logits - max) is both what the draw reads (it takes
        # unnormalised weights) and, summed, the normaliser of the chosen tokens' log-probs.
        top = jnp.max(logits, axis=-1, keepdims=True)
        weights = jnp.exp(logits - top)
        log_z = top[:, 0] + jnp.log(jnp.sum(weights, axis=-1))
        if params.greedy:
            tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return tokens, _take(logits, tokens) - log_z, jnp.zeros(tokens.shape, jnp.float32)
        tokens = inverse_cdf(weights, _uniforms(key, logits.shape[0]))
        logp = _take(logits, tokens) - log_z
        return tokens, logp, logp
    policy_logp = jax.nn.log_softmax(logits, axis=-1)
    sample_logp = jax.nn.log_softmax(filter_logits(logits, params), axis=-1)
    tokens = inverse_cdf(jnp.exp(sample_logp), _uniforms(key, logits.shape[0]))
    return tokens, _take(policy_logp, tokens), _take(sample_logp, tokens)


def _uniforms(key: jax.Array, rows: int) -> jax.Array:
    """[rows] uniforms in [0, 1): from one key for the step, or one per row from [rows]
    keys."""
    if key.ndim == 0:
        return jax.random.uniform(key, (rows,), jnp.float32)
    return threefry.uniforms(key)


def inverse_cdf(probs: jax.Array, u: jax.Array) -> jax.Array:
    """Token t with cdf[t - 1] <= u * total < cdf[t], found block-wise.

    Args:
      probs: [B, V] non-negative (unnormalized is fine); zero-probability tokens are never
        returned.
      u: [B] uniform numbers in [0, 1).
    Returns:
      [B] int32 token ids.
    """
    b, v = probs.shape
    width = max(8, math.isqrt(v - 1) + 1)
    nblocks = -(-v // width)
    blocks = jnp.pad(probs, ((0, 0), (0, nblocks * width - v))).reshape(b, nblocks, width)
    block_mass = blocks.sum(-1)
    block_cdf = _cumsum(block_mass)
    target = u * block_cdf[:, -1]
    j = _first_above(block_cdf, target, block_mass)
    inner = jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]
    offset = jnp.take_along_axis(block_cdf - block_mass, j[:, None], axis=1)[:, 0]
    i = _first_above(_cumsum(inner), target - offset, inner)
    return (j * width + i).astype(jnp.int32)


def _cumsum(x: jax.Array) -> jax.Array:
    """Inclusive prefix sum over the last axis as a matmul with a triangular matrix (the last
    axis is ~sqrt(V) long; a matmul beats a scan there on every backend)."""
    n = x.shape[-1]
    tri = jnp.triu(jnp.ones((n, n), x.dtype))
    return jnp.matmul(x, tri, precision=lax.Precision.HIGHEST)


def _first_above(cdf: jax.Array, target: jax.Array, mass: jax.Array) -> jax.Array:
    """First index with cdf > target; float round-off can leave none (target within an ulp
    of the total), then the last index with non-zero mass."""
    above = cdf > target[:, None]
    last = cdf.shape[-1] - 1 - jnp.argmax((mass > 0)[:, ::-1], axis=-1)
    return jnp.where(above.any(-1), jnp.argmax(above, axis=-1), last)


def _take(logp: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]

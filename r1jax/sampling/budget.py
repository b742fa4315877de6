"""Budget forcing: a thinking budget in tokens, enforced token by token in the decode loop.

The idea of the s1 paper ("s1: Simple test-time scaling"): once a completion has written
`budget` thinking tokens without ending its thinking, the end-of-thinking delimiter (e.g.
"</think>") is forced and the answer follows; when the model ends its thinking early, the
delimiter is replaced by a string such as "Wait", up to `max_waits` times, after which the
model may end its thinking.

Here it is a per-row override of the sampled token inside the jitted decode loops
(`r1jax.sampling.sampler`): no prompt is prefilled again and no step returns to the host.
Each row carries four int32 counters (`init_state`):

  bf_phase  THINKING until the end delimiter is written (forced or accepted), then ANSWERING;
  bf_ptr    index into `table = end_ids + wait_ids` of the next token to force;
  bf_end    end of the sequence being forced in `table` (the row is forcing while
            bf_ptr < bf_end);
  bf_waits  end delimiters replaced by the wait string so far.

A row starts thinking at completion position 0, so while it is thinking its thinking tokens
so far are its completion position t. At each position (`force`):

  * thinking and t >= budget: end_ids is forced (its first token lands exactly at position
    `budget`), the row is answering; this ends a wait string being forced too;
  * forcing: the next token of the sequence is written instead of the sampled one;
  * thinking, the model samples end_ids[0]: with waits left, wait_ids is forced instead and
    the row keeps thinking; without, the sampled token stays, end_ids[1:] is forced and the
    row is answering;
  * otherwise the sampled token stays.

The end of thinking is detected on the delimiter's first token only: exact for a delimiter
that is a single token (Qwen3's "</think>"), a prefix match for longer ones. Stop tokens
work as always on the written token: one sampled while thinking ends the row (unless it is
end_ids[0], which the rules above handle first), one inside a forced sequence ends it too.

A forced token's `logp` is the policy's log-probability of that token (what the model
assigns it, as the RL loss would need), its sampling log-probability 0. Random keys are drawn
per position as without forcing, so a completion still depends only on (seed, prompt index,
sample index, position).

Glossary: R rows (or engine slots), V vocabulary.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional

import jax
import jax.numpy as jnp

THINKING, ANSWERING = 0, 1
STATE_KEYS = ("bf_phase", "bf_ptr", "bf_end", "bf_waits")


def _token_ids(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"BudgetForcing.{name} must be a sequence of token ids, got "
                         f"{value!r}")
    ids = tuple(value)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or int(t) < 0:
            raise ValueError(f"BudgetForcing.{name} must hold token ids >= 0, got {t!r}")
    return tuple(int(t) for t in ids)


def _count(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"BudgetForcing.{name} must be an integer >= {least}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class BudgetForcing:
    """Test-time thinking budget (see the module docstring).

    Attributes:
      budget: thinking tokens (completion positions 0 .. budget - 1) before end_ids is forced;
        a budget >= max_new_tokens is never reached.
      end_ids: the end-of-thinking delimiter's token ids (e.g. those of "</think>").
      wait_ids: what replaces an early end delimiter (e.g. the ids of "Wait").
      max_waits: how many early end delimiters are replaced; 0 = none.
    Raises:
      ValueError (naming the field): budget < 1, empty end_ids, negative ids, max_waits < 0,
        or max_waits > 0 with empty wait_ids.
    """

    budget: int
    end_ids: tuple[int, ...]
    wait_ids: tuple[int, ...] = ()
    max_waits: int = 0

    def __post_init__(self):
        object.__setattr__(self, "budget", _count(self.budget, "budget", 1))
        object.__setattr__(self, "max_waits", _count(self.max_waits, "max_waits", 0))
        object.__setattr__(self, "end_ids", _token_ids(self.end_ids, "end_ids"))
        object.__setattr__(self, "wait_ids", _token_ids(self.wait_ids, "wait_ids"))
        if not self.end_ids:
            raise ValueError("BudgetForcing.end_ids must not be empty")
        if self.max_waits > 0 and not self.wait_ids:
            raise ValueError(f"BudgetForcing.wait_ids must not be empty when max_waits > 0 "
                             f"(max_waits={self.max_waits})")

    def check_vocab(self, vocab_size: int) -> None:
        """Raises ValueError when a token id is outside [0, vocab_size)."""
        for name in ("end_ids", "wait_ids"):
            bad = [t for t in getattr(self, name) if t >= vocab_size]
            if bad:
                raise ValueError(f"BudgetForcing.{name} has token id {bad[0]} outside the "
                                 f"vocabulary [0, {vocab_size})")


def check(bf: Optional[BudgetForcing], vocab_size: int) -> Optional[BudgetForcing]:
    """`bf` if it is None or a BudgetForcing whose ids fit the vocabulary; else ValueError."""
    if bf is None:
        return None
    if not isinstance(bf, BudgetForcing):
        raise ValueError(f"budget_forcing must be a BudgetForcing or None, got "
                         f"{type(bf).__name__}")
    bf.check_vocab(vocab_size)
    return bf


def init_state(rows: int) -> dict[str, jax.Array]:
    """Fresh per-row state: thinking, nothing forced, no waits; each [R] int32."""
    return {k: jnp.zeros((rows,), jnp.int32) for k in STATE_KEYS}


def force(bf: BudgetForcing, state: dict, t: jax.Array, sampled: jax.Array,
          logits: jax.Array, logp: jax.Array, sample_logp: jax.Array
          ) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
    """The tokens written at completion position `t`, and the rows' next state.

    Args:
      bf: the settings (static).
      state: STATE_KEYS -> [R] int32, before this position.
      t: [R] or scalar int32 completion position of the token.
      sampled: [R] the tokens drawn from `logits`.
      logits: [R, V] raw logits of this position.
      logp, sample_logp: [R] the sampled tokens' policy and sampling log-probabilities.
    Returns:
      (tokens [R], logp [R], sample_logp [R], state): forced tokens carry their policy
      log-probability and a sampling log-probability of 0.
    """
    n_end = len(bf.end_ids)
    table = jnp.asarray(bf.end_ids + bf.wait_ids, jnp.int32)
    phase, ptr, end, waits = (state[k] for k in STATE_KEYS)
    t = jnp.broadcast_to(t, sampled.shape)
    thinking = phase == THINKING
    at_budget = thinking & (t >= bf.budget)
    forcing = (ptr < end) & ~at_budget
    free = thinking & ~at_budget & ~forcing
    wants_end = free & (sampled == bf.end_ids[0])
    wait = wants_end & (waits < bf.max_waits)
    accept_end = wants_end & ~wait
    # Where a forced sequence starts: the end delimiter at 0, the wait string at n_end.
    start = jnp.where(wait, n_end, 0)
    begin = at_budget | wait
    src = jnp.where(begin, start, ptr)
    forced = forcing | begin
    tokens = jnp.where(forced, table[jnp.clip(src, 0, table.shape[0] - 1)], sampled)
    policy = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    forced_logp = jnp.take_along_axis(policy, tokens[:, None], axis=-1)[:, 0]
    ends = at_budget | accept_end
    new = {
        "bf_phase": jnp.where(ends, ANSWERING, phase),
        "bf_ptr": jnp.where(forced, src + 1, jnp.where(accept_end, 1, ptr)),
        "bf_end": jnp.where(ends, n_end, jnp.where(wait, table.shape[0], end)),
        "bf_waits": waits + wait.astype(jnp.int32),
    }
    return (tokens, jnp.where(forced, forced_logp, logp),
            jnp.where(forced, 0.0, sample_logp), new)

"""Group-relative advantages (GRPO, Dr. GRPO, batch-std GRPO, RLOO) from scalar rewards.

Rows are grouped contiguously: rows `[g * G, (g + 1) * G)` are the G completions of prompt g
(B = prompts x G). Every estimator works on one reward R per completion and returns one
advantage A per completion; the loss broadcasts A to every completion token.

With mean_g, std_g the mean and the Bessel-corrected standard deviation (divisor G - 1, as
`torch.std` in the reference implementations) of R over the group, and std_B the
Bessel-corrected standard deviation over all B rewards passed in:

=========================  ================================================================
`baseline`, `scale`        A
=========================  ================================================================
"mean", "group" (GRPO)     (R - mean_g) / (std_g + eps)
"mean", "batch"            (R - mean_g) / (std_B + eps)
"mean", "none" (Dr. GRPO)  R - mean_g
"rloo", "none" (RLOO)      R - (sum_g - R) / (G - 1)
"rloo", "group"/"batch"    the RLOO value divided by (std_g + eps) / (std_B + eps)
=========================  ================================================================

Exact cases, chosen on purpose:

- A group whose rewards are all equal gets A = 0 exactly (the centred reward is set to 0
  rather than computed, so float rounding in the mean cannot leave a residue of order
  ulp / eps that the 1e-6 denominator would amplify).
- A group of one (G = 1) has no peers and hence no baseline: it gets baseline 0 and group
  std 1 (exactly: no eps is added), i.e. A = R under "group" and "none" (plain REINFORCE),
  A = R / (std_B + eps) under "batch". This is verl's rule (mean 0, std 1 for a
  single-sample group); it keeps such groups useful, which is why `dapo.keep_groups` keeps
  them.
- A standard deviation over a single value (std_B with B = 1) is taken as 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCALES = ("group", "batch", "none")
BASELINES = ("mean", "rloo")


def _bessel_std(x: jax.Array, axis=None) -> jax.Array:
    """Unbiased standard deviation (divisor n - 1); 1 where n = 1."""
    n = x.size if axis is None else x.shape[axis]
    if n == 1:
        return jnp.ones_like(jnp.mean(x, axis=axis))
    return jnp.std(x, axis=axis, ddof=1)


def group_advantages(rewards: jax.Array, group_size: int, scale: str = "group", *,
                     baseline: str = "mean", eps: float = 1e-6) -> jax.Array:
    """Per-completion advantages from per-completion rewards, relative to each group.

    Args:
      rewards: [B] rewards, B = prompts x G, each group's G rows contiguous.
      group_size: G, completions per prompt (a Python int).
      scale: "group" (divide by the group's std, GRPO), "batch" (divide by the std of all
        B rewards) or "none" (Dr. GRPO: no division).
      baseline: "mean" (the group mean, GRPO) or "rloo" (the mean of the other G - 1
        rewards of the group, leave-one-out).
      eps: added to the standard deviation before dividing.

    Returns:
      [B] float32 advantages; see the module docstring for the exact formulas.

    Raises:
      ValueError: on a non-1-D rewards array, a length that is not a multiple of
        group_size, or an unknown scale / baseline.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r} (expected one of {SCALES})")
    if baseline not in BASELINES:
        raise ValueError(f"unknown advantage baseline {baseline!r} "
                         f"(expected one of {BASELINES})")
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {rewards.shape}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards are not a whole number of groups of "
                         f"group_size={group_size}")
    r = rewards.reshape(-1, group_size)
    if group_size == 1:
        centred = r
    else:
        total = jnp.sum(r, axis=1, keepdims=True)
        if baseline == "mean":
            centred = r - total / group_size
        else:
            centred = r - (total - r) / (group_size - 1)
        all_equal = jnp.max(r, axis=1, keepdims=True) == jnp.min(r, axis=1, keepdims=True)
        centred = jnp.where(all_equal, 0.0, centred)
    if scale == "group" and group_size > 1:
        centred = centred / (_bessel_std(r, axis=1)[:, None] + eps)
    elif scale == "batch":
        centred = centred / (_bessel_std(rewards) + eps)
    return centred.reshape(-1)

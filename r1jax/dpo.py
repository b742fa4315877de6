"""Direct preference optimisation: pairs of responses to one prompt, packed several to a row,
trained to prefer the chosen response over the rejected one relative to a frozen reference.

For a pair (x, y_c, y_r), with log pi(y | x) the sum of the response tokens' log-probs
(the prompt's tokens never count), the log-ratios against the reference are

    r_c = log pi(y_c | x) - log ref(y_c | x),    r_r = log pi(y_r | x) - log ref(y_r | x)

and Delta = r_c - r_r. Per-pair losses (`dpo_losses`; all as TRL 1.16's `DPOTrainer`):

- "sigmoid" (DPO, Rafailov et al. 2023): -(1 - eps) log sigma(beta Delta)
  - eps log sigma(-beta Delta); eps = `label_smoothing` (conservative DPO, the form TRL
  applies for its label-smoothed "aot" losses; TRL 1.16's own "sigmoid" ignores
  label_smoothing, i.e. eps = 0).
- "ipo" (Azar et al. 2023, eq. 17): (Delta' - 1 / (2 beta))^2 where Delta' uses the
  per-token averages r_c / n_c - r_r / n_r (n = response tokens, at least 1), as TRL does
  after confirming the normalisation with the IPO authors.
- "nca_pair" (NCA, Chen et al. 2024, used by Light-R1's DPO stage): -log sigma(beta r_c)
  - 0.5 log sigma(-beta r_c) - 0.5 log sigma(-beta r_r).

The batch loss is the mean over the optimizer batch's pairs, plus, with `sft_weight` w > 0,
w times the chosen responses' negative log-likelihood per token: -(sum of every chosen
response token's log-prob) / (their count) over the batch (`sft_loss`; RPO, Pang et al.
2024, whose reasoning gains needed it; TRL's loss_type ["sigmoid", "sft"] with loss_weights
[1, w]). Without it DPO lowers the chosen responses' likelihood too (both log-ratios
fall, the rejected one faster). Metrics carry TRL's names:
rewards/chosen = mean beta r_c, rewards/rejected = mean beta r_r, rewards/margins = their
mean difference, rewards/accuracies = the share of pairs with beta r_c > beta r_r (strictly),
logps/chosen and logps/rejected = mean sequence log-probs of the policy, loss; and
sft_loss (logged whatever w is).

The reference is the starting policy (`reference="policy"`: its log-probs computed per
batch from a frozen copy of the initial parameters, `make_reference_fn`) or numbers stored
with the data (`reference="precomputed"`: `ref_chosen_logps`, `ref_rejected_logps`, which
must come from the same tokens and truncation).

Packing: each pair's two sequences (prompt + chosen, prompt + rejected) are packed best-fit
into rows of S tokens, together in one row or each on its own (`pack_pairs`). A token's
`sequence_ids` entry names the sequence whose response it predicts: 2j for the chosen and
2j + 1 for the rejected response of pair j of its microbatch; the loss sums log-probs by
that id, so how pairs are placed in rows never changes it.

Glossary: R rows, S row length, N pairs (of the batch, or of one microbatch: M = 2N
sequences), D model dim, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r1jax.config import ModelConfig
from r1jax.sft import PackStats, best_fit, padded_rows, render_conversation
from r1jax.sharding import Sharding

LOSS_TYPES = ("sigmoid", "ipo", "nca_pair")
REFERENCES = ("policy", "precomputed")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected")


# ----------------------------------------------------------------------------------------
# The maths (pure functions of arrays).


def sequence_logps(logp: jax.Array, weights: jax.Array, sequence_ids: jax.Array,
                   num_sequences: int) -> tuple[jax.Array, jax.Array]:
    """Per-sequence sums of response-token log-probs and response-token counts.

    Args:
      logp: [R, S] log-prob of each position's target.
      weights: [R, S] 1 where the target is a response token, else 0.
      sequence_ids: [R, S] int, the sequence (0..M-1) each target belongs to; -1 (or any
        id outside [0, M)) on padding, which counts nowhere.
      num_sequences: M.
    Returns:
      (sums [M], counts [M]) float32.
    """
    ids = jnp.where((sequence_ids >= 0) & (sequence_ids < num_sequences), sequence_ids,
                    num_sequences).reshape(-1)
    w = weights.astype(jnp.float32).reshape(-1)
    sums = jax.ops.segment_sum(logp.astype(jnp.float32).reshape(-1) * w, ids,
                               num_segments=num_sequences + 1)
    counts = jax.ops.segment_sum(w, ids, num_segments=num_sequences + 1)
    return sums[:num_sequences], counts[:num_sequences]


def dpo_losses(chosen_logps: jax.Array, rejected_logps: jax.Array,
               ref_chosen_logps: jax.Array, ref_rejected_logps: jax.Array, *, beta: float,
               loss_type: str = "sigmoid", label_smoothing: float = 0.0,
               chosen_tokens: Optional[jax.Array] = None,
               rejected_tokens: Optional[jax.Array] = None) -> jax.Array:
    """Per-pair preference losses [N] (module docstring for the formulas).

    Args:
      chosen_logps, rejected_logps: [N] policy sequence log-probs (response tokens summed).
      ref_chosen_logps, ref_rejected_logps: [N] the reference's.
      beta: the KL strength (for "ipo", the regulariser tau).
      loss_type: one of LOSS_TYPES.
      label_smoothing: eps of conservative DPO ("sigmoid" only), in [0, 0.5).
      chosen_tokens, rejected_tokens: [N] response token counts ("ipo" only).
    Raises:
      ValueError: an unknown loss type, beta <= 0, label smoothing outside [0, 0.5) or
        with a loss other than "sigmoid", or "ipo" without token counts.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type 'sigmoid' only, not "
                         f"{loss_type!r}")
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    if loss_type == "sigmoid":
        z = beta * (chosen_ratio - rejected_ratio)
        return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) \
            - label_smoothing * jax.nn.log_sigmoid(-z)
    if loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the 'ipo' loss needs chosen_tokens and rejected_tokens")
        delta = chosen_ratio / jnp.maximum(chosen_tokens, 1.0) \
            - rejected_ratio / jnp.maximum(rejected_tokens, 1.0)
        return (delta - 1.0 / (2.0 * beta)) ** 2
    return -jax.nn.log_sigmoid(beta * chosen_ratio) \
        - 0.5 * jax.nn.log_sigmoid(-beta * chosen_ratio) \
        - 0.5 * jax.nn.log_sigmoid(-beta * rejected_ratio)


def sft_loss(chosen_logps: jax.Array, pair_weights: jax.Array,
             chosen_tokens: jax.Array) -> jax.Array:
    """A microbatch's share of the batch's chosen-response NLL per token (scalar).

    Args:
      chosen_logps: [N] policy sequence log-probs of the chosen responses.
      pair_weights: [N] 1 for a real pair, 0 for an unused slot.
      chosen_tokens: scalar, the chosen response tokens of the whole batch (at least 1).
    """
    return -jnp.sum(chosen_logps * pair_weights) / chosen_tokens


def chosen_token_count(batch: "DPOBatch") -> jax.Array:
    """The chosen response tokens of a whole batch (scalar float32, at least 1): targets
    with weight 1 whose sequence id is even (2j = pair j's chosen response)."""
    chosen = (batch.sequence_ids >= 0) & (batch.sequence_ids % 2 == 0)
    return jnp.maximum(jnp.sum(batch.weights * chosen), 1.0)


def pair_metrics(chosen_logps: jax.Array, rejected_logps: jax.Array,
                 ref_chosen_logps: jax.Array, ref_rejected_logps: jax.Array, *,
                 beta: float) -> dict[str, jax.Array]:
    """Per-pair values [N] of TRL's metrics (`METRICS`); their means are what TRL logs."""
    chosen = beta * jax.lax.stop_gradient(chosen_logps - ref_chosen_logps)
    rejected = beta * jax.lax.stop_gradient(rejected_logps - ref_rejected_logps)
    return {"rewards/chosen": chosen, "rewards/rejected": rejected,
            "rewards/accuracies": (chosen > rejected).astype(jnp.float32),
            "rewards/margins": chosen - rejected,
            "logps/chosen": jax.lax.stop_gradient(chosen_logps),
            "logps/rejected": jax.lax.stop_gradient(rejected_logps)}


# ----------------------------------------------------------------------------------------
# Pairs as tokens, and packing.


@dataclasses.dataclass
class PairTokens:
    """One pair as token ids with 0/1 response masks (1 on the response tokens)."""

    chosen_ids: list
    chosen_mask: list
    rejected_ids: list
    rejected_mask: list
    ref_chosen_logps: float = 0.0
    ref_rejected_logps: float = 0.0


def _last_turns(mask: list[int], skip: int) -> list[int]:
    """The mask with its first `skip` runs of 1s (earlier assistant turns) set to 0."""
    out, runs, prev = list(mask), 0, 0
    for i, m in enumerate(mask):
        if m and not prev:
            runs += 1
        if m and runs <= skip:
            out[i] = 0
        prev = m
    return out


def _as_messages(value: Any, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def tokenize_pair(tokenizer: Any, pair: dict) -> PairTokens:
    """Token ids and response masks of a pair {"prompt", "chosen", "rejected"}.

    Message lists (a string prompt then counts as one user turn) are rendered with the chat
    template; only the turns after the prompt are the response. Plain strings (all three)
    are tokenized as text, each response followed by EOS, as TRL does for non-chat data.
    `ref_chosen_logps` / `ref_rejected_logps` are carried over when present.

    Raises:
      ValueError: a missing or empty field, or a response without an assistant turn.
    """
    for key in ("chosen", "rejected"):
        if not pair.get(key):
            raise ValueError(f"preference pair {pair.get('id')!r} has no `{key}`")
    refs = {k: float(pair[k]) for k in ("ref_chosen_logps", "ref_rejected_logps") if k in pair}
    prompt = pair.get("prompt") or []
    if all(isinstance(pair.get(k, ""), str) for k in ("prompt", "chosen", "rejected")):
        head = list(tokenizer.encode(prompt or "", add_special_tokens=False))
        out = []
        for key in ("chosen", "rejected"):
            body = list(tokenizer.encode(pair[key], add_special_tokens=False))
            body.append(tokenizer.eos_token_id)
            out += [head + body, [0] * len(head) + [1] * len(body)]
        return PairTokens(*out, **refs)
    prompt = _as_messages(prompt, "user")
    earlier = sum(m.get("role") == "assistant" for m in prompt)
    out = []
    for key in ("chosen", "rejected"):
        response = _as_messages(pair[key], "assistant")
        if not any(m.get("role") == "assistant" for m in response):
            raise ValueError(f"preference pair {pair.get('id')!r}: `{key}` has no "
                             "assistant turn")
        ids, mask = render_conversation(tokenizer, prompt + response)
        out += [ids, _last_turns(mask, earlier)]
    return PairTokens(*out, **refs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DPOBatch:
    """Packed pairs, split into `pieces` microbatches of R / pieces rows and N / pieces pairs.

    tokens, positions, segment_ids, targets, weights: [R, S] as in `r1jax.sft.SFTBatch`
    (weights: 1 on response targets). sequence_ids: [R, S] int32, 2j (chosen) or 2j + 1
    (rejected) for pair j of the row's microbatch, -1 where nothing is predicted.
    ref_chosen_logps, ref_rejected_logps: [N] float32 reference log-probs (zeros until
    computed, with reference "policy"). pair_weights: [N] float32, 1 for a pair, 0 for an
    empty slot.
    """

    tokens: Any
    positions: Any
    segment_ids: Any
    targets: Any
    weights: Any
    sequence_ids: Any
    ref_chosen_logps: Any
    ref_rejected_logps: Any
    pair_weights: Any


def _fit(ids: list, mask: list, max_len: int) -> tuple[list, list, bool]:
    """The sequence cut to max_len tokens (keeping its start) and whether it was cut."""
    return ids[:max_len], mask[:max_len], len(ids) > max_len


def _piece_items(pairs: Sequence[PairTokens], max_len: int, together: bool
                 ) -> list[list[int]]:
    """Bin items of one microbatch: [2j, 2j+1] when a pair goes into one row, else [s]."""
    items = []
    for j, p in enumerate(pairs):
        if together and len(p.chosen_ids) + len(p.rejected_ids) <= max_len:
            items.append([2 * j, 2 * j + 1])
        else:
            items += [[2 * j], [2 * j + 1]]
    return items


def pack_pairs(pairs: Sequence[PairTokens], max_len: int, *, pieces: int = 1,
               pairs_per_piece: Optional[int] = None, row_unit: int = 1, pad_id: int = 0,
               overflow: str = "truncate", together: bool = False
               ) -> tuple[DPOBatch, PackStats]:
    """Packs pairs into a `DPOBatch` of numpy arrays (best fit within each microbatch).

    Args:
      pairs: the pairs; pair k goes to microbatch k // pairs_per_piece.
      max_len: S.
      pieces: microbatches (each holds whole pairs: a pair's loss needs both sequences).
      pairs_per_piece: pair slots per microbatch (default: ceil(len(pairs) / pieces));
        unused slots have pair weight 0.
      row_unit: each microbatch's rows are padded to a power of two times this (the batch
        parallelism), so that few shapes compile.
      overflow: a sequence longer than S is cut to its first S tokens ("truncate", as TRL's
        keep_start) or its pair is left out ("drop"). A pair with a response left without a
        predicted token is dropped either way; both are counted (`PackStats`, per pair).
      together: put a pair's two sequences in one row when they fit (else each is packed
        on its own); the loss is the same either way.
    """
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', got {overflow!r}")
    stats, kept = PackStats(), []
    for p in pairs:
        c_ids, c_mask, c_cut = _fit(list(p.chosen_ids), list(p.chosen_mask), max_len)
        r_ids, r_mask, r_cut = _fit(list(p.rejected_ids), list(p.rejected_mask), max_len)
        if (c_cut or r_cut) and overflow == "drop" or not any(c_mask[1:]) \
                or not any(r_mask[1:]):
            stats.dropped += 1
            continue
        stats.truncated += int(c_cut or r_cut)
        kept.append(dataclasses.replace(p, chosen_ids=c_ids, chosen_mask=c_mask,
                                        rejected_ids=r_ids, rejected_mask=r_mask))
    per = pairs_per_piece or max(1, -(-len(pairs) // pieces))
    if len(kept) > per * pieces:
        raise ValueError(f"{len(kept)} pairs do not fit {pieces} microbatches of {per}")
    groups = [kept[k * per:(k + 1) * per] for k in range(pieces)]
    layouts = []
    for group in groups:
        seqs = [s for p in group for s in ((p.chosen_ids, p.chosen_mask),
                                           (p.rejected_ids, p.rejected_mask))]
        items = _piece_items(group, max_len, together)
        bins = best_fit([sum(len(seqs[s][0]) for s in it) for it in items], max_len)
        layouts.append((seqs, [[s for i in b for s in items[i]] for b in bins]))
    rows_per = padded_rows(max(len(rows) for _, rows in layouts), row_unit)
    shape = (pieces * rows_per, max_len)
    out = {k: np.zeros(shape, np.int32) for k in ("tokens", "positions", "segment_ids",
                                                   "targets")}
    out["tokens"][:] = pad_id
    out["weights"] = np.zeros(shape, np.float32)
    out["sequence_ids"] = np.full(shape, -1, np.int32)
    for k, (seqs, rows) in enumerate(layouts):
        for r, members in enumerate(rows, start=k * rows_per):
            at = 0
            for seg, s in enumerate(members, start=1):
                ids, mask = seqs[s]
                n = len(ids)
                out["tokens"][r, at:at + n] = ids
                out["positions"][r, at:at + n] = np.arange(n)
                out["segment_ids"][r, at:at + n] = seg
                out["targets"][r, at:at + n - 1] = ids[1:]
                out["weights"][r, at:at + n - 1] = mask[1:]
                out["sequence_ids"][r, at:at + n - 1] = s
                at += n
            stats.tokens += at
        stats.rows += len(rows)
    refs = np.zeros((2, pieces * per), np.float32)
    valid = np.zeros(pieces * per, np.float32)
    for k, group in enumerate(groups):
        for j, p in enumerate(group):
            refs[:, k * per + j] = p.ref_chosen_logps, p.ref_rejected_logps
            valid[k * per + j] = 1.0
    stats.examples, stats.row_tokens = len(kept), stats.rows * max_len
    return DPOBatch(**out, ref_chosen_logps=refs[0], ref_rejected_logps=refs[1],
                    pair_weights=valid), stats


# ----------------------------------------------------------------------------------------
# Programs: reference log-probs and the update.


def batch_sequence_logps(params: Any, batch: DPOBatch, cfg: ModelConfig,
                         sharding: Optional[Sharding] = None
                         ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(chosen, rejected, chosen_tokens, rejected_tokens), each [N], of one microbatch."""
    from r1jax.models import decoder
    from r1jax.rl.logprobs import token_logprobs
    h = decoder.final_hidden(params, batch.tokens, cfg, positions=batch.positions,
                             segment_ids=batch.segment_ids, sharding=sharding)
    logp, _ = token_logprobs(h, decoder.lm_head_kernel(params, cfg), batch.targets,
                             return_entropy=False)
    n = batch.pair_weights.shape[0]
    sums, counts = sequence_logps(logp, batch.weights, batch.sequence_ids, 2 * n)
    return sums[0::2], sums[1::2], counts[0::2], counts[1::2]


def _pieces(batch: DPOBatch, microbatches: int) -> DPOBatch:
    return jax.tree.map(lambda x: x.reshape(microbatches, -1, *x.shape[1:]), batch)


def make_reference_fn(cfg: ModelConfig, sharding: Optional[Sharding], microbatches: int = 1):
    """`reference(ref_params, batch) -> batch` with its ref_chosen_logps / ref_rejected_logps
    set to the reference model's sequence log-probs (one microbatch at a time, no gradient)."""

    def reference(params, batch: DPOBatch) -> DPOBatch:
        params = jax.lax.stop_gradient(params)
        logps = jax.lax.map(lambda piece: batch_sequence_logps(params, piece, cfg, sharding)[:2],
                            _pieces(batch, microbatches))
        chosen, rejected = (x.reshape(-1) for x in logps)
        return dataclasses.replace(batch, ref_chosen_logps=chosen, ref_rejected_logps=rejected)

    return reference


def make_dpo_loss(cfg: ModelConfig, sharding: Optional[Sharding], *, beta: float,
                  loss_type: str, label_smoothing: float = 0.0, sft_weight: float = 0.0):
    """`loss_fn(params, piece, pairs, chosen_tokens) -> (loss, metric sums)`: a microbatch's
    share of the batch's loss and metrics (`pairs` = the batch's pair count,
    `chosen_tokens` = its chosen response tokens, the `sft_loss` denominator)."""

    def loss_fn(params, piece: DPOBatch, pairs, chosen_tokens):
        chosen, rejected, n_c, n_r = batch_sequence_logps(params, piece, cfg, sharding)
        refs = (piece.ref_chosen_logps, piece.ref_rejected_logps)
        per_pair = dpo_losses(chosen, rejected, *refs, beta=beta, loss_type=loss_type,
                              label_smoothing=label_smoothing, chosen_tokens=n_c,
                              rejected_tokens=n_r)
        w = piece.pair_weights
        sums = {k: jnp.sum(v * w) / pairs
                for k, v in pair_metrics(chosen, rejected, *refs, beta=beta).items()}
        nll = sft_loss(chosen, w, chosen_tokens)
        loss = jnp.sum(per_pair * w) / pairs
        if sft_weight:
            loss = loss + sft_weight * nll
        return loss, dict(sums, pairs=jnp.sum(w), sft_loss=jax.lax.stop_gradient(nll))

    return loss_fn


def make_dpo_update(cfg: ModelConfig, tx: optax.GradientTransformation,
                    sharding: Optional[Sharding], *, beta: float, loss_type: str,
                    label_smoothing: float = 0.0, sft_weight: float = 0.0,
                    microbatches: int = 1):
    """`update(state, batch) -> (state, metrics)`: one optimizer step on a `DPOBatch` (with
    its reference log-probs filled in) through the shared machinery (`accumulate_grads`,
    `apply_update`: clipping, AdamW, skip of non-finite or empty updates).

    Each microbatch divides by the batch's pair count (and chosen token count), so the
    summed loss, metrics and gradient are the batch means whatever the microbatching and
    packing.
    """
    from r1jax.rl.update import accumulate_grads, apply_update
    dpo_loss = make_dpo_loss(cfg, sharding, beta=beta, loss_type=loss_type,
                             label_smoothing=label_smoothing, sft_weight=sft_weight)

    def update(state, batch: DPOBatch):
        pairs = jnp.maximum(jnp.sum(batch.pair_weights), 1.0)
        tokens = chosen_token_count(batch)
        loss, sums, grads = accumulate_grads(lambda p, piece: dpo_loss(p, piece, pairs, tokens),
                                             state["params"], batch, microbatches)
        state, opt = apply_update(state, grads, loss, tx, tokens=sums["pairs"])
        return state, dict(sums, loss=loss, grad_norm=opt["grad_norm"],
                           skipped=opt["skipped"], empty=opt["empty"])

    return update

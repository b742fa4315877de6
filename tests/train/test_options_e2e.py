"""Every training option README documents, run end to end through `Trainer(cfg).run()`.

README's "Training options" table names each option, its values and the run of `RUNS` below
that exercises it; `test_readme_option_table_matches_the_runs` keeps the two in step. A few
short runs of the tiny trainer config (tests/train/conftest.py) combine the options. Each run
records, for every optimizer step, the parameters it started from and the minibatch it saw;
the tests then recompute that step's logged metrics from scratch: full-vocabulary
log-softmax of the model's logits in float64 numpy, and README's formulas for the advantages,
ratio (token and sequence level), clipping, dual clip, KL estimators, entropy bonus and
aggregation modes. So a value that depends on an option is checked against what the option
means, not against a second run of the same code. Numerics options (remat, bf16, scan off,
mesh shapes) are checked against the same recomputation, and the fp32 ones also against a
run with default numerics on the same rollout.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.config import check_key
from r1jax.metrics import read_metrics
from r1jax.models.decoder import forward
from r1jax.train import Trainer
from tests.train.conftest import tiny_config

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
LENGTH = 1  # finish_reason of a completion cut at max_new_tokens
TIMING = ("time/", "perf/generated_tokens_per_s")

# The tiny model never answers correctly (with or without a warm start, which the runs skip:
# tests/train/test_reference_and_preemption.py covers RL after SFT), so accuracy and format
# rewards are all 0; a length-shaped term (the cosine reward, or DAPO's overlong
# penalty) gives the groups different rewards and the policy loss something to do.
COSINE_REWARDS = [dict(name="accuracy", weight=1.0, kwargs=dict(mode="answer_tag")),
                  dict(name="format", weight=0.1, kwargs={}),
                  dict(name="cosine", weight=0.1,
                       kwargs=dict(max_length=16, mode="answer_tag"))]

# 16 new tokens keep every batch at one completion width (one update program per run).
COMMON = dict(eval=dict(source=None), train=dict(checkpoint_every=0), sft=dict(steps=0),
              rollout=dict(max_new_tokens=16))

DAPO = dict(
    train=dict(steps=2),
    rollout=dict(min_p=0.6),
    algo=dict(adv="batch", agg="token-mean", eps_low=0.2, eps_high=0.28, kl_beta=0.01,
              kl_kind="k2", entropy_coef=0.001, overlong_buffer_len=8,
              overlong_penalty_factor=0.5, overlong_filter=True),
    optim=dict(lr=1e-2, schedule="constant"))

# name -> config sections (on top of the tiny config and COMMON). README's table points here.
RUNS = {
    # GRPO family: group advantages, seq-mean-token-mean, k3 KL, entropy bonus, mu = 2 over 2
    # minibatches of 2 microbatches, dual clip, nucleus sampling, cosine lr with warm-up.
    "grpo": dict(
        train=dict(steps=2),
        rewards=dict(functions=COSINE_REWARDS),
        rollout=dict(top_p=0.9),
        algo=dict(adv="group", agg="seq-mean-token-mean", clip_c=1.01, kl_beta=0.04,
                  kl_kind="k3", entropy_coef=0.01, num_iterations=2, minibatches=2,
                  microbatches=2),
        optim=dict(lr=1e-2, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1),
        model=dict(remat="dots_no_batch")),
    # DAPO family: clip-higher, token-mean, batch-std advantages, overlong shaping + filter,
    # k2 KL, min-p sampling; the fp32 default-numerics baseline of "sharded".
    "dapo": DAPO,
    # The same rollout as "dapo" step 1 on a 2 x 2 x 2 mesh, full remat, layers unscanned.
    "sharded": dict(DAPO, train=dict(steps=1),
                    model=dict(remat="full", scan_layers=False),
                    mesh=dict(data=2, fsdp=2, tensor=2)),
    # Dr. GRPO + GSPO: no std scaling, seq-mean-token-sum-norm, sequence-level ratio, k1 KL,
    # recomputed old log-probs, constant lr after a linear warm-up; rollout streamed from
    # the continuous-batching engine, 8 slots for the step's 16 completions, 4-step segments.
    "drgrpo_gspo": dict(
        train=dict(steps=2),
        rewards=dict(functions=COSINE_REWARDS),
        rollout=dict(recompute_old_logprobs=True, max_slots=8, stream_steps=4),
        algo=dict(adv="none", agg="seq-mean-token-sum-norm", max_response_len=32,
                  ratio_level="sequence", kl_beta=0.02, kl_kind="k1", minibatches=2),
        optim=dict(lr=1e-2, schedule="constant", warmup_steps=2),
        model=dict(remat="save_attention_out")),
    # RLOO: leave-one-out baseline, seq-mean-token-sum, mu = 2, microbatches, data x fsdp mesh.
    "rloo": dict(
        train=dict(steps=2),
        rewards=dict(functions=COSINE_REWARDS),
        algo=dict(adv="rloo", agg="seq-mean-token-sum", eps_low=0.02, eps_high=0.04,
                  num_iterations=2, microbatches=2),
        mesh=dict(data=4, fsdp=2)),
    # top_k = 1: every completion of a group is the same, so every advantage is exactly 0 and
    # only the entropy bonus moves the policy; bf16 compute with dots remat.
    "greedy_bf16": dict(
        train=dict(steps=1),
        rollout=dict(top_k=1),
        algo=dict(entropy_coef=0.01),
        model=dict(dtype="bfloat16", remat="dots")),
    # Completions cut at 2 tokens, one group per minibatch: the overlong filter empties the
    # minibatches whose group never stopped, and an empty minibatch changes nothing (not even
    # through Adam's momentum once real updates have run).
    "truncated": dict(
        train=dict(steps=2),
        rollout=dict(max_new_tokens=2),
        algo=dict(overlong_filter=True, overlong_buffer_len=2, overlong_penalty_factor=0.5,
                  minibatches=4, entropy_coef=0.01)),
}


def run_config(name: str, run_dir: str):
    sections = copy.deepcopy(COMMON)
    for section, values in RUNS[name].items():
        sections.setdefault(section, {}).update(copy.deepcopy(values))
    return tiny_config(run_dir, **sections)


# --------------------------------------------------------------------------------------------
# Running and recording.


@dataclasses.dataclass
class Update:
    rl_step: int      # 1-based RL step this optimizer step belongs to
    index: int        # position among the RL step's optimizer steps (pass-major)
    opt_step: int     # the optimizer's step counter before this update
    params: dict      # host copy of the parameters it started from
    batch: object     # host RLBatch (minibatch, with the old / reference log-probs it used)
    metrics: dict     # host metrics of the jitted update
    stats: dict = dataclasses.field(default_factory=dict)  # reference values, computed once


@dataclasses.dataclass
class Result:
    name: str
    cfg: object
    model_config: object
    rows: dict = dataclasses.field(default_factory=dict)       # RL step -> logged metrics
    groups: list = dataclasses.field(default_factory=list)     # per RL step: kept groups
    updates: list = dataclasses.field(default_factory=list)
    ref_params: object = None
    final_params: object = None
    final_opt_step: int = -1

    def step_updates(self, step: int) -> list:
        return [u for u in self.updates if u.rl_step == step]


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def train(name: str, run_dir: str) -> Result:
    """Runs `RUNS[name]` and records its groups and every optimizer step's inputs."""
    cfg = run_config(name, run_dir)
    trainer = Trainer(cfg)
    result = Result(name, cfg, trainer.model_config)
    collect, update = trainer.collect, trainer.rl._update

    def recording_collect(step):
        groups, metrics = collect(step)
        result.groups.append(groups)
        return groups, metrics

    def recording_update(state, batch):
        step = len(result.groups)
        params, opt_step = host(state["params"]), int(state["step"])
        state, metrics = update(state, batch)
        index = len(result.step_updates(step))
        result.updates.append(Update(step, index, opt_step, params, host(batch),
                                     host(metrics)))
        return state, metrics

    trainer.collect = recording_collect
    trainer.rl._update = recording_update
    try:
        trainer.run()
        result.ref_params = None if trainer.rl.ref_params is None else host(
            trainer.rl.ref_params)
        result.final_params = host(trainer.rl.params)
        result.final_opt_step = int(trainer.rl.state["step"])
    finally:
        trainer.close()
    result.rows = {r["step"]: r for r in read_metrics(cfg.train.run_dir) if r["step"] > 0}
    return result


# --------------------------------------------------------------------------------------------
# The reference: README's maths on full-vocabulary float64 log-probs.

_forward = jax.jit(forward, static_argnums=2)


def log_probs(params, batch, model_config) -> np.ndarray:
    """[B, T, V] float64 log-probs (temperature 1) at each completion position."""
    cfg = dataclasses.replace(model_config, dtype="float32", remat="none")
    logits = _forward(jax.tree.map(jnp.asarray, params), jnp.asarray(batch.tokens), cfg,
                      positions=jnp.asarray(batch.positions),
                      segment_ids=jnp.asarray(batch.segment_ids))
    t = batch.mask.shape[1]
    width = batch.tokens.shape[1] - t
    logits = np.asarray(logits, np.float64)[:, width - 1:width - 1 + t]
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def token_stats(params, batch, model_config):
    """(log-prob of each completion token [B, T], entropy [B, T], all log-probs [B, T, V])."""
    lp_all = log_probs(params, batch, model_config)
    t = batch.mask.shape[1]
    targets = batch.tokens[:, -t:]
    logp = np.take_along_axis(lp_all, targets[..., None], -1)[..., 0]
    entropy = -(np.exp(lp_all) * lp_all).sum(-1)
    return logp, entropy, lp_all


def expected_metrics(logp, entropy, ref_logp, batch, algo, max_response_len) -> dict:
    """README "The maths": the loss terms and logged per-token means of one optimizer step."""
    m = batch.mask.astype(np.float64)
    adv = batch.adv.astype(np.float64)[:, None]
    old = batch.old_logp.astype(np.float64)
    n = m.sum(1)
    tokens, seqs = m.sum(), float((n > 0).sum())
    diff = np.where(m > 0, logp - old, 0.0)
    if algo.ratio_level == "token":
        ratio = np.exp(np.clip(diff, -20, 20))
    else:  # GSPO: s_b = exp(mean over the row's valid tokens of logp - old_logp)
        log_s = diff.sum(1) / np.maximum(n, 1)
        ratio = np.broadcast_to(np.exp(np.clip(log_s, -20, 20))[:, None], m.shape)
    pg1 = -adv * ratio
    pg2 = -adv * np.clip(ratio, 1 - algo.eps_low, 1 + algo.eps_high)
    clipped = pg2 > pg1
    per_token = np.maximum(pg1, pg2)
    dual = np.zeros_like(clipped)
    if algo.clip_c is not None:
        dual = (adv < 0) & (-adv * algo.clip_c < per_token)
        per_token = np.where(dual, -adv * algo.clip_c, per_token)
    denominator = {"token-mean": tokens, "seq-mean-token-mean": seqs,
                   "seq-mean-token-sum": seqs,
                   "seq-mean-token-sum-norm": batch.valid_rows.sum() * max_response_len
                   }[algo.agg]

    def agg(x):
        x = np.where(m > 0, x, 0.0)
        if algo.agg == "seq-mean-token-mean":
            return (x.sum(1) / np.maximum(n, 1)).sum() / denominator
        return x.sum() / denominator

    def mean(x, where=None):
        where = np.ones_like(m, bool) if where is None else where
        return float((np.where(where, x, 0.0) * m).sum() / tokens)

    out = {"pg_loss": agg(per_token), "tokens": tokens, "sequences": seqs,
           "ratio_mean": mean(ratio), "approx_kl": mean(-diff),
           "clip_frac_low": mean(1.0, clipped & (ratio < 1)),
           "clip_frac_high": mean(1.0, clipped & (ratio > 1)),
           "dual_clip_frac": mean(1.0, dual), "entropy": mean(entropy)}
    out["loss"] = out["pg_loss"]
    if algo.kl_beta:
        d = logp - ref_logp
        kl = {"k1": d, "k2": 0.5 * d ** 2,
              "k3": np.clip(np.exp(np.clip(-d, -20, 20)) - np.clip(-d, -20, 20) - 1,
                            -10, 10)}[algo.kl_kind]
        out["kl"], out["kl_loss"] = mean(kl), algo.kl_beta * agg(kl)
        out["loss"] += out["kl_loss"]
    if algo.entropy_coef:
        out["entropy_loss"] = -algo.entropy_coef * agg(entropy)
        out["loss"] += out["entropy_loss"]
    return out


def expected_advantages(rewards: np.ndarray, group_size: int, mode: str) -> np.ndarray:
    """README's advantage estimators (Bessel std, eps 1e-6; an all-equal group gets 0)."""
    r = rewards.astype(np.float64).reshape(-1, group_size)
    if mode == "rloo":
        centred = r - (r.sum(1, keepdims=True) - r) / (group_size - 1)
    else:
        centred = r - r.mean(1, keepdims=True)
    centred = np.where(r.max(1, keepdims=True) == r.min(1, keepdims=True), 0.0, centred)
    if mode == "group":
        centred = centred / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    elif mode == "batch":
        centred = centred / (rewards.astype(np.float64).std(ddof=1) + 1e-6)
    return centred.reshape(-1)


def expected_lr(optim, total_updates: int, t: int) -> float:
    """Linear warm-up from 0 over warmup_steps optimizer steps, then constant, or cosine
    decay to min_lr_ratio x lr at the last optimizer step of the run."""
    if t < optim.warmup_steps:
        return optim.lr * t / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    decay = max(total_updates - optim.warmup_steps, 1)
    frac = min(t - optim.warmup_steps, decay) / decay
    return optim.lr * (optim.min_lr_ratio
                       + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def overlong_penalty(length: int, max_len: int, buffer: int, factor: float) -> float:
    """DAPO eq. 13."""
    if length <= max_len - buffer:
        return 0.0
    if length <= max_len:
        return (max_len - buffer - length) / buffer * factor
    return -factor


def step_batch(result: Result, step: int):
    """The whole RL batch of `step`: its first pass's minibatches, concatenated."""
    mb = result.cfg.algo.minibatches
    parts = [u.batch for u in result.step_updates(step)[:mb]]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def completions(result: Result, step: int):
    """(lengths, finish reasons) of the step's completions, in batch row order."""
    groups = result.groups[step - 1]
    lengths = [len(c) for g in groups for c in g["completions"]]
    finish = np.concatenate([g["finish"] for g in groups])
    return np.asarray(lengths), finish


# --------------------------------------------------------------------------------------------
# Checks. One test per run (a run is the expensive part; pytest-xdist may spread tests over
# workers, so no run is shared between tests except "sharded", which needs "dapo"'s rollout).

POLICY_KEYS = ("loss", "pg_loss", "kl_loss", "entropy_loss", "kl", "entropy", "ratio_mean",
               "approx_kl", "clip_frac_low", "clip_frac_high", "dual_clip_frac")


def reference(result: Result, u: Update, algo=None) -> dict:
    """README's metrics of update `u` (under `algo`, default the run's), from its inputs."""
    algo = algo or result.cfg.algo
    if not u.stats:
        logp, entropy, _ = token_stats(u.params, u.batch, result.model_config)
        ref = token_stats(result.ref_params, u.batch, result.model_config)[0] \
            if result.ref_params is not None else None
        u.stats.update(logp=logp, entropy=entropy, ref=ref)
    max_len = algo.max_response_len or result.cfg.rollout.max_new_tokens
    return expected_metrics(u.stats["logp"], u.stats["entropy"], u.stats["ref"], u.batch,
                            algo, max_len)


def real_updates(result: Result) -> list:
    return [u for u in result.updates if u.metrics["tokens"] > 0]


def check_updates_match_the_maths(result: Result) -> None:
    """Each optimizer step's logged loss terms and means equal README's formulas recomputed
    from the parameters and minibatch it saw; each step's row averages its updates."""
    algo = result.cfg.algo
    bf16 = result.cfg.model.dtype == "bfloat16"
    rtol, atol = (5e-2, 5e-3) if bf16 else (1e-4, 2e-6)
    assert real_updates(result)
    for u in real_updates(result):
        for key, value in reference(result, u).items():
            if bf16 and key.startswith(("clip_frac", "dual_clip")):
                continue
            np.testing.assert_allclose(
                u.metrics[key], value, rtol=rtol, atol=atol,
                err_msg=f"{result.name} step {u.rl_step}.{u.index}: {key}")
        assert u.metrics["skipped"] == 0
    for step, row in result.rows.items():
        ups = [u for u in result.step_updates(step) if u.metrics["tokens"] > 0] or \
            result.step_updates(step)
        for key in POLICY_KEYS:
            if key in ups[0].metrics:
                np.testing.assert_allclose(row[f"policy/{key}"],
                                           np.mean([u.metrics[key] for u in ups]),
                                           rtol=1e-6, atol=1e-9, err_msg=key)
        for key, on in (("kl", algo.kl_beta), ("kl_loss", algo.kl_beta),
                        ("entropy_loss", algo.entropy_coef)):
            assert (f"policy/{key}" in row) == bool(on), key


def check_option_matters(result: Result, **alternatives) -> None:
    """Under each alternative value of an `algo` field, README's maths gives numbers that the
    maths check would reject (by 20 x its tolerance) for some update and metric: the check
    really tells the option's values apart."""
    for field, values in alternatives.items():
        for value in values:
            algo = dataclasses.replace(result.cfg.algo, **{field: value})
            worst = max(abs(float(u.metrics[k]) - v) / (2e-6 + 1e-4 * abs(float(u.metrics[k])))
                        for u in real_updates(result)
                        for k, v in reference(result, u, algo).items() if k in u.metrics)
            assert worst > 20, (result.name, field, value, worst)


def check_advantages(result: Result) -> None:
    """The batch's advantages are README's estimator of `algo.adv` on the step's rewards
    (and not another mode's)."""
    g = result.cfg.rollout.group_size
    for step in result.rows:
        rewards = np.concatenate([grp["rewards"] for grp in result.groups[step - 1]])
        adv = step_batch(result, step).adv[:len(rewards)]
        np.testing.assert_allclose(adv, expected_advantages(rewards, g, result.cfg.algo.adv),
                                   rtol=1e-5, atol=1e-5, err_msg=f"step {step}")
        if np.abs(adv).max() > 0:
            for other in {"group", "batch", "none", "rloo"} - {result.cfg.algo.adv}:
                assert np.abs(adv - expected_advantages(rewards, g, other)).max() > 1e-3


def check_learning_rate(result: Result) -> None:
    """Logged lr = warm-up / constant / cosine-with-floor at the optimizer step counter (which
    empty minibatches do not advance); the first real update moves every weight by at most
    that lr (Adam's first step is lr x sign(g)), and by nothing when the warm-up starts at 0."""
    cfg = result.cfg
    total = cfg.train.steps * cfg.algo.num_iterations * cfg.algo.minibatches
    counter = 0
    for u in result.updates:
        assert u.opt_step == counter
        counter += int(u.metrics["tokens"] > 0)
    assert result.final_opt_step == counter
    for step, row in result.rows.items():
        last = result.step_updates(step)[-1]
        assert row["lr"] == pytest.approx(expected_lr(cfg.optim, total, last.opt_step),
                                          rel=1e-6, abs=1e-12)
    first = result.updates.index(real_updates(result)[0])
    assert result.updates[first].metrics["grad_norm"] > 0
    if cfg.model.dtype != "float32":
        return
    after = result.updates[first + 1].params if first + 1 < len(result.updates) \
        else result.final_params
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(after), jax.tree.leaves(result.updates[first].params)))
    assert moved == pytest.approx(expected_lr(cfg.optim, total, 0), rel=1e-3, abs=0)


def check_old_logprobs(result: Result) -> None:
    """The loss's old log-probs (the sampler's at mu = 1, recomputed with mu > 1 or
    rollout.recompute_old_logprobs) are the policy's at the step's start, so the step's first
    update has ratio 1 and approx_kl 0; a second pass (mu = 2) starts from a moved policy."""
    cfg = result.cfg
    recomputed = cfg.rollout.recompute_old_logprobs or cfg.algo.num_iterations > 1
    tol = 1e-6 if recomputed else 2e-5
    for step, row in result.rows.items():
        # The sampler-vs-trainer gap is logged whenever old log-probs are recomputed; in
        # float32 both compute the same policy up to round-off.
        assert ("logprob_mismatch/max_abs" in row) == recomputed
        if recomputed:
            assert 0 <= row["logprob_mismatch/mean_abs"] <= row["logprob_mismatch/max_abs"] \
                < 1e-4
            assert 0 <= row["logprob_mismatch/kl"] < 1e-8
        first = result.step_updates(step)[0]
        batch = step_batch(result, step)
        logp = token_stats(first.params, batch, result.model_config)[0]
        gap = np.abs(np.where(batch.mask > 0, logp - batch.old_logp, 0.0)).max()
        assert gap < 10 * tol, (step, gap)
        assert abs(first.metrics["ratio_mean"] - 1) < tol
        assert abs(first.metrics["approx_kl"]) < tol
        if cfg.algo.num_iterations > 1:
            second_pass = result.step_updates(step)[cfg.algo.minibatches:]
            assert max(abs(u.metrics["ratio_mean"] - 1) for u in second_pass) > 1e-4
            assert max(abs(u.metrics["approx_kl"]) for u in second_pass) > 1e-6


def check_kl_reference(result: Result) -> None:
    """With kl_beta > 0 the reference is the policy RL starts from: KL is 0 on the first
    update and not after; k2 and k3 are >= 0 everywhere; with token-mean the loss terms are
    beta x the logged mean KL and -entropy_coef x the logged mean entropy."""
    algo = result.cfg.algo
    for a, b in zip(jax.tree.leaves(result.ref_params),
                    jax.tree.leaves(result.updates[0].params)):
        np.testing.assert_array_equal(a, b)
    first = result.updates[0].metrics
    assert abs(first["kl"]) < 1e-7 and abs(first["kl_loss"]) < 1e-8
    if len(result.updates) > 1:
        assert max(abs(u.metrics["kl"]) for u in result.updates[1:]) > 1e-7
    if algo.kl_kind in ("k2", "k3"):
        assert min(u.metrics["kl"] for u in result.updates) >= 0
    if algo.agg == "token-mean":
        for row in result.rows.values():
            assert row["policy/kl_loss"] == pytest.approx(algo.kl_beta * row["policy/kl"],
                                                          rel=1e-5, abs=1e-12)
            assert row["policy/entropy_loss"] == pytest.approx(
                -algo.entropy_coef * row["policy/entropy"], rel=1e-5)


def check_common(result: Result) -> None:
    check_updates_match_the_maths(result)
    check_advantages(result)
    check_learning_rate(result)
    if result.cfg.algo.kl_beta:
        check_kl_reference(result)


def rollout_tokens(result: Result, step: int):
    """(policy probabilities [B, T, V] at the step's rollout, the sampled tokens' [B, T],
    a mask of every generated token [B, T]) -- the overlong filter's mask hides some."""
    batch = step_batch(result, step)
    probs = np.exp(log_probs(result.step_updates(step)[0].params, batch, result.model_config))
    t = batch.mask.shape[1]
    chosen = np.take_along_axis(probs, batch.tokens[:, -t:, None], -1)[..., 0]
    lengths, _ = completions(result, step)
    lengths = np.concatenate([lengths, np.zeros(len(batch.adv) - len(lengths), int)])
    return probs, chosen, np.arange(t)[None] < lengths[:, None]


# --------------------------------------------------------------------------------------------
# The runs.


def test_grpo_run(tmp_path):
    """GRPO family: plus the dual clip biting, mu = 2's second pass, nucleus sampling."""
    result = train("grpo", str(tmp_path))
    check_common(result)
    check_old_logprobs(result)
    check_option_matters(result, agg=["token-mean", "seq-mean-token-sum"], clip_c=[None],
                         kl_kind=["k1", "k2"], entropy_coef=[0.0])
    assert max(u.metrics["dual_clip_frac"] for u in result.updates) > 0
    assert max(r["policy/dual_clip_frac"] for r in result.rows.values()) > 0
    # top_p = 0.9: every sampled token lies in the 0.9 nucleus of the policy that sampled it
    # (the mass of strictly likelier tokens is < 0.9), and the nucleus did cut tokens off.
    top_p = result.cfg.rollout.top_p
    for step in result.rows:
        probs, chosen, valid = rollout_tokens(result, step)
        likelier = np.where(probs > chosen[..., None], probs, 0).sum(-1)
        assert likelier[valid].max() < top_p + 1e-5
        desc = -np.sort(-probs, -1)
        assert ((desc.cumsum(-1) - desc >= top_p).any(-1))[valid].mean() > 0.5


def test_dapo_run_and_the_same_run_sharded_rematted_unscanned(tmp_path):
    """DAPO family: overlong shaping and filter, min-p sampling, k2 KL. Then a 2 x 2 x 2 mesh,
    full remat and unscanned layers change no number: the same rollout and the same update
    metrics as the default numerics (fsdp 8, no remat, scan) at step 1."""
    result = train("dapo", str(tmp_path / "dapo"))
    check_common(result)
    check_old_logprobs(result)
    check_option_matters(result, agg=["seq-mean-token-mean"], kl_kind=["k3"])
    assert all(u.metrics["dual_clip_frac"] == 0 for u in result.updates)
    algo, max_len = result.cfg.algo, result.cfg.rollout.max_new_tokens
    saw_cut = saw_stopped = False
    for step, row in result.rows.items():
        # Overlong shaping: eq. 13 of each length, added to the total reward.
        lengths, finish = completions(result, step)
        penalty = [overlong_penalty(n, max_len, algo.overlong_buffer_len,
                                    algo.overlong_penalty_factor) for n in lengths]
        assert row["reward/overlong_penalty/mean"] == pytest.approx(np.mean(penalty),
                                                                    abs=1e-6)
        assert row["reward/mean"] == pytest.approx(
            row["reward/accuracy/mean"] + 0.1 * row["reward/format/mean"] + np.mean(penalty),
            abs=1e-6)
        # Overlong filter: truncated completions are out of the loss and the token count.
        stopped = finish != LENGTH
        assert row["batch/tokens"] == lengths[stopped].sum()
        n = step_batch(result, step).mask[:len(lengths)].sum(1)
        np.testing.assert_array_equal(n, np.where(stopped, lengths, 0))
        saw_cut, saw_stopped = saw_cut or (~stopped).any(), saw_stopped or stopped.any()
        # min_p = 0.6: every sampled token has probability >= 0.6 x the likeliest one's,
        # and the floor did remove tokens.
        probs, chosen, valid = rollout_tokens(result, step)
        floor = result.cfg.rollout.min_p * probs.max(-1)
        assert (chosen[valid] >= floor[valid] * (1 - 1e-5)).all()
        assert ((probs < floor[..., None]).any(-1))[valid].mean() > 0.5
    assert saw_cut and saw_stopped

    sharded = train("sharded", str(tmp_path / "sharded"))
    check_common(sharded)
    base, other = result.rows[1], sharded.rows[1]
    assert other.keys() == base.keys()
    for key, value in base.items():
        if key.startswith(TIMING):
            continue
        exact = key.startswith(("reward/", "response_length/", "batch/", "accuracy", "perf/"))
        tol = dict(rel=0, abs=0) if exact else dict(rel=1e-4, abs=1e-6)
        assert other[key] == pytest.approx(value, **tol), key


def test_drgrpo_gspo_run(tmp_path):
    """Dr. GRPO + GSPO: recomputed old log-probs give ratio 1 exactly at each step's start;
    the sequence-level ratio and the norm aggregation are told apart from the alternatives."""
    result = train("drgrpo_gspo", str(tmp_path))
    check_common(result)
    for row in result.rows.values():  # 16 completions through 8 slots
        assert 0.3 < row["perf/slot_utilization"] <= 1.0
    check_old_logprobs(result)
    check_option_matters(result, agg=["seq-mean-token-sum", "token-mean"],
                         ratio_level=["token"], kl_kind=["k3"], max_response_len=[16])


def test_rloo_run(tmp_path):
    """RLOO, seq-mean-token-sum, microbatches, mu = 2 with clip-higher bounds 0.98 / 1.04:
    the second passes clip tokens on both sides."""
    result = train("rloo", str(tmp_path))
    check_common(result)
    check_old_logprobs(result)
    check_option_matters(result, agg=["seq-mean-token-mean", "token-mean"],
                         eps_low=[0.2], eps_high=[0.2])
    assert max(u.metrics["clip_frac_low"] for u in result.updates) > 0
    assert max(u.metrics["clip_frac_high"] for u in result.updates) > 0
    for row in result.rows.values():
        assert row["policy/clip_frac"] == pytest.approx(
            row["policy/clip_frac_low"] + row["policy/clip_frac_high"])


def test_greedy_bf16_run(tmp_path):
    """top_k = 1: the G completions of each prompt are the same, every group advantage is
    exactly 0, so pg_loss is exactly 0 and the loss is the entropy bonus alone. bf16
    compute: within bf16 error of the float32 maths (checked) but not equal to it."""
    result = train("greedy_bf16", str(tmp_path))
    check_common(result)
    for grp in result.groups[0]:
        assert all(c == grp["completions"][0] for c in grp["completions"])
    assert len({tuple(grp["completions"][0]) for grp in result.groups[0]}) > 1
    u = result.updates[0]
    assert np.all(u.batch.adv == 0)
    row = result.rows[1]
    assert row["policy/pg_loss"] == 0.0
    assert row["policy/loss"] == pytest.approx(-0.01 * row["policy/entropy"], rel=1e-5)
    fp32 = reference(result, u)["entropy"]
    assert u.metrics["entropy"] != pytest.approx(fp32, rel=1e-6)
    assert u.metrics["entropy"] == pytest.approx(fp32, rel=2e-2)


def test_truncated_run(tmp_path):
    """At most 2 new tokens: the penalty is eq. 13 of each length (-factor when cut); the
    filter leaves a minibatch (one group) empty exactly when none of its completions stopped,
    and an empty minibatch leaves parameters and optimizer state untouched."""
    result = train("truncated", str(tmp_path))
    check_common(result)
    algo = result.cfg.algo
    for step, row in result.rows.items():
        lengths, finish = completions(result, step)
        penalty = [overlong_penalty(n, 2, 2, algo.overlong_penalty_factor) for n in lengths]
        assert row["reward/overlong_penalty/mean"] == pytest.approx(np.mean(penalty),
                                                                    abs=1e-7)
        assert row["batch/tokens"] == lengths[finish != LENGTH].sum()
        empty = [not s.any() for s in (finish != LENGTH).reshape(algo.minibatches, -1)]
        assert [u.metrics["empty"] == 1 for u in result.step_updates(step)] == empty
        assert row["empty_minibatches"] == sum(empty) and row["skipped_updates"] == 0
    flags = [bool(u.metrics["empty"]) for u in result.updates]
    # This seed has an empty minibatch after a real update (Adam's momentum is non-zero, so a
    # zero-gradient step would still move the weights); if the tiny model changes, pick a
    # seed that does.
    assert any(flags[i] and not all(flags[:i]) for i in range(len(flags)))
    params = [u.params for u in result.updates] + [result.final_params]
    for i in range(len(result.updates)):
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params[i]),
                                                         jax.tree.leaves(params[i + 1])))
        assert same == flags[i], i


# --------------------------------------------------------------------------------------------
# README's option table and these runs agree.


def readme_option_table() -> dict:
    """{key: (values, run names)} from README's "Training options" table: values are the
    backticked items of the second column (none for a numeric option)."""
    text = open(README).read()
    section = text.split("### Training options\n", 1)[1].split("\n#", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = re.fullmatch(r"`([a-z_]+\.[a-z_]+)`", cells[0])
        if key:
            values = [ast.literal_eval(v) if v in ("True", "False") else v
                      for v in re.findall(r"`([^`]+)`", cells[1])]
            table[key.group(1)] = (values, re.findall(r"`([a-z0-9_]+)`", cells[2]))
    return table


def test_readme_option_table_matches_the_runs(tmp_path):
    """Each option of README's table is set by every run it names, and each value it lists
    is the value of that option in some run."""
    table = readme_option_table()
    assert len(table) >= 25
    configs = {name: run_config(name, str(tmp_path / name)) for name in RUNS}
    for key, (values, runs) in table.items():
        check_key(key)  # a real config field
        section, field = key.split(".")
        assert runs and set(runs) <= set(RUNS), (key, runs)
        for name in runs:
            assert field in RUNS[name].get(section, {}), f"run {name} does not set {key}"
        used = [getattr(getattr(configs[name], section), field) for name in RUNS]
        for v in values:
            assert any(type(u) is type(v) and u == v for u in used), \
                f"README lists {key} = {v!r} but no run uses it"

"""Rollout throughput: the continuous-batching engine vs static batches, same slot budget.

Both sample from the same random-weight Qwen2-shaped model, the same prompts, G completions
per prompt, and a budget of N rows decoding at once:

- static: the prompts in batches of N / G prompts (N rows), one `generate` call after the
  other (`Sampler(max_slots=None)`); each batch decodes until its longest row stops;
- engine: one `generate` call over all prompts with `Sampler(max_slots=N)`.

Completion lengths are heavy-tailed as in long chain-of-thought RL: the model's random weights
(init std 0.02) give a nearly uniform next-token distribution, and `--stop_tokens` of the V
token ids end a completion, so each token stops its row with probability q ~ stop_tokens / V
and lengths are geometric with mean ~1 / q, cut at `--max_new`. With the defaults (q ~ 1/64,
max_new 256) the longest completion runs ~4x the mean and ~2% run to the limit. The measured
distribution (mean, p50, p90, p99, max, max / mean, share at the limit) is printed.

Reported per repeat (after a warm-up that compiles): completed tokens / s of each path and
their ratio, and slot utilisation (tokens decoded by occupied slots / slot-steps run); the
summary gives the median ratio and its min / max over repeats.

    python -m r1jax.benchmarks.rollout                      # CPU defaults
    python -m r1jax.benchmarks.rollout --model=qwen2.5-1.5b --dtype=bfloat16 --slots=256 \\
        --prompts=512 --max_new=4096 --stop_tokens=40 --vocab=151936     # accelerator
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from r1jax.benchmarks.sampler import MODELS, make_model_dir


def length_stats(lengths: np.ndarray, limit: int) -> dict:
    """Summary of a completion-length sample."""
    mean = float(lengths.mean())
    return {"mean": mean, "p50": float(np.percentile(lengths, 50)),
            "p90": float(np.percentile(lengths, 90)), "p99": float(np.percentile(lengths, 99)),
            "max": int(lengths.max()), "max_over_mean": float(lengths.max()) / mean,
            "at_limit": float((lengths >= limit).mean())}


def run_static(sampler, prompts: list, n: int, slots: int, kw: dict) -> dict:
    """Batches of slots // n prompts, one after the other."""
    per = slots // n
    tokens = rows = capacity = 0
    lengths = []
    start = time.perf_counter()
    for a in range(0, len(prompts), per):
        out = sampler.generate(prompts[a:a + per], n=n, seed=kw["seed"] + a, **kw["sp"])
        lengths.append(out.lengths)
        tokens += int(out.lengths.sum())
        rows += out.stats["rows"]
        # decode iterations (the first token of each row comes from the prefill) x rows
        capacity += (out.stats["decode_steps"] - 1) * out.stats["rows"]
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds,
            "utilization": (tokens - rows) / max(capacity, 1),
            "lengths": np.concatenate(lengths)}


def run_engine(sampler, prompts: list, n: int, kw: dict) -> dict:
    start = time.perf_counter()
    out = sampler.generate(prompts, n=n, seed=kw["seed"], **kw["sp"])
    seconds = time.perf_counter() - start
    tokens = int(out.lengths.sum())
    return {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds,
            "utilization": out.stats["slot_utilization"], "lengths": out.lengths,
            "decode_steps": out.stats["decode_steps"], "prefills": out.stats["prefills"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", choices=sorted(MODELS))
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--stop_tokens", type=int, default=8,
                   help="how many token ids end a completion (q ~ stop_tokens / vocab)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--n", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--slots", type=int, default=64, help="N: rows decoding at once")
    p.add_argument("--prompt_len", type=int, default=16, help="longest prompt (lengths vary)")
    p.add_argument("--max_new", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.slots % args.n:
        p.error("--slots must be a multiple of --n (static batches hold whole groups)")

    import jax
    import r1jax
    from r1jax.sampling import Sampler

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        make_model_dir(args.model, args.vocab, tmp)
        model = r1jax.load_hf(tmp, dtype=args.dtype)
    vocab = model.config.vocab_size
    stops = rng.choice(np.arange(1, vocab), args.stop_tokens, replace=False).tolist()
    lens = rng.integers(max(args.prompt_len // 2, 1), args.prompt_len + 1, args.prompts)
    prompts = [rng.integers(1, vocab, n).tolist() for n in lens]
    common = dict(max_prompt_len=args.prompt_len, max_new_tokens=args.max_new,
                  eos_token_ids=stops)
    static = Sampler(model, **common)
    engine = Sampler(model, max_slots=args.slots, **common)
    sp = {"temperature": 1.0}
    warm = dict(seed=10_000, sp=sp)
    start = time.perf_counter()
    run_static(static, prompts, args.n, args.slots, warm)
    compile_static = time.perf_counter() - start
    start = time.perf_counter()
    run_engine(engine, prompts, args.n, warm)
    compile_engine = time.perf_counter() - start
    print(f"device: {jax.devices()[0].device_kind}; model {args.model} ({args.dtype}), "
          f"V={vocab}, {args.prompts} prompts x G={args.n}, N={args.slots} slots, "
          f"max_new={args.max_new}; warm-up (compiles + one run) static "
          f"{compile_static:.1f} s, engine {compile_engine:.1f} s")
    reps, all_lengths = [], []
    for r in range(args.repeats):
        kw = dict(seed=r, sp=sp)
        s = run_static(static, prompts, args.n, args.slots, kw)
        e = run_engine(engine, prompts, args.n, kw)
        all_lengths += [s["lengths"], e["lengths"]]
        rep = {"static_tok_s": s["tok_s"], "engine_tok_s": e["tok_s"],
               "ratio": e["tok_s"] / s["tok_s"], "static_utilization": s["utilization"],
               "engine_utilization": e["utilization"], "static_tokens": s["tokens"],
               "engine_tokens": e["tokens"], "engine_decode_steps": e["decode_steps"]}
        reps.append(rep)
        print(json.dumps(rep))
    dist = length_stats(np.concatenate(all_lengths), args.max_new)
    ratios = [r["ratio"] for r in reps]
    summary = {"model": args.model, "dtype": args.dtype, "vocab": vocab,
               "prompts": args.prompts, "n": args.n, "slots": args.slots,
               "max_new": args.max_new, "lengths": dist,
               "ratio_median": float(np.median(ratios)), "ratio_min": min(ratios),
               "ratio_max": max(ratios),
               "engine_utilization_median": float(np.median(
                   [r["engine_utilization"] for r in reps])),
               "static_utilization_median": float(np.median(
                   [r["static_utilization"] for r in reps])),
               "engine_tok_s_median": float(np.median([r["engine_tok_s"] for r in reps])),
               "static_tok_s_median": float(np.median([r["static_tok_s"] for r in reps])),
               "repeats": reps}
    print(f"lengths: mean {dist['mean']:.1f}, p50 {dist['p50']:.0f}, p90 {dist['p90']:.0f}, "
          f"p99 {dist['p99']:.0f}, max {dist['max']} (max/mean {dist['max_over_mean']:.1f}), "
          f"{dist['at_limit']:.1%} at the limit")
    print(f"engine / static completed tokens/s: median {summary['ratio_median']:.2f}x "
          f"(min {summary['ratio_min']:.2f}x, max {summary['ratio_max']:.2f}x over "
          f"{args.repeats} repeats); slot utilisation engine "
          f"{summary['engine_utilization_median']:.1%}, static "
          f"{summary['static_utilization_median']:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

"""Benchmark: chunked `token_logprobs` against the full-logits reference, forward + backward.

    python -m r1jax.benchmarks.logprobs [--repeats 5] [--large]

For each case it jits value_and_grad of sum(logp x g) w.r.t. (h, w) (entropy computed and
logged, not differentiated, as the trainer uses it) and prints the best wall time over the
repeats, the useful throughput 6 B T D V / time (the flops of forward + backward without
recomputation) and the peak temporary memory from XLA's memory analysis. With --large it
also runs Qwen's vocabulary and compiles (without running) a full-size step, B=32 T=256
D=896 V=151,936, to compare the memory alone.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from r1jax.rl import logprobs

CASES = [  # (B, T, D, V, dtype)
    (32, 256, 512, 4096, "float32"),
    (32, 256, 512, 4096, "bfloat16"),
]
LARGE_CASES = [  # Qwen2.5-0.5B's lm head: D = 896, V = 151,936
    (4, 64, 896, 151936, "float32"),
    (4, 64, 896, 151936, "bfloat16"),
]

# compiled only (the reference needs ~18 GiB of temporaries here)
MEMORY_CASES = [
    (32, 256, 896, 151936, "float32"),
    (32, 256, 896, 151936, "bfloat16"),
]

FNS = {"chunked": lambda h, w, x: logprobs.token_logprobs(h, w, x),
       "reference": logprobs.token_logprobs_reference}


def _loss_fn(fn):
    def loss(h, w, targets, g):
        logp, ent = fn(h, w, targets)
        return jnp.sum(logp * g) + 0.0 * jnp.sum(jax.lax.stop_gradient(ent))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _time(f, args, repeats: int) -> float:
    jax.block_until_ready(f(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def run_case(b: int, t: int, d: int, v: int, dtype: str, repeats: int) -> None:
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    h = (jax.random.normal(k[0], (b, t, d)) / 4).astype(dtype)
    w = (jax.random.normal(k[1], (d, v)) / d ** 0.5).astype(dtype)
    targets = jax.random.randint(k[2], (b, t), 0, v)
    g = jax.random.normal(k[3], (b, t))
    args = (h, w, targets, g)
    flops = 6 * b * t * d * v
    times = {}
    for name, fn in FNS.items():
        f = _loss_fn(fn)
        mem = f.lower(*args).compile().memory_analysis()
        times[name] = _time(f, args, repeats)
        print(f"  {name:9s} {times[name] * 1e3:9.1f} ms  {flops / times[name] / 1e9:6.1f} "
              f"GFLOP/s useful  temp {mem.temp_size_in_bytes / 2**20:8.1f} MiB")
    print(f"  chunked / reference time: {times['chunked'] / times['reference']:.2f}")


def memory_case(b: int, t: int, d: int, v: int, dtype: str) -> None:
    args = (jax.ShapeDtypeStruct((b, t, d), dtype), jax.ShapeDtypeStruct((d, v), dtype),
            jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.float32))
    for name, fn in FNS.items():
        mem = _loss_fn(fn).lower(*args).compile().memory_analysis()
        print(f"  {name:9s} temp {mem.temp_size_in_bytes / 2**30:7.2f} GiB (compiled only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--large", action="store_true", help="also run V = 151,936")
    args = parser.parse_args()
    for case in CASES + (LARGE_CASES if args.large else []):
        b, t, d, v, dtype = case
        print(f"B={b} T={t} D={d} V={v} {dtype} (chunk_size, vocab_chunk_size = "
              f"{logprobs.default_chunk_sizes(b, t, v)})")
        run_case(*case, repeats=args.repeats)
    for case in MEMORY_CASES if args.large else []:
        b, t, d, v, dtype = case
        print(f"B={b} T={t} D={d} V={v} {dtype} (chunk_size, vocab_chunk_size = "
              f"{logprobs.default_chunk_sizes(b, t, v)})")
        memory_case(*case)


if __name__ == "__main__":
    main()

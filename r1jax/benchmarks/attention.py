"""Attention kernels: flash attention TFLOP/s and decode attention GB/s, against their peers.

On a GPU or TPU (Qwen2.5-7B attention: 28 query heads, 4 KV heads, head dim 128, bf16):
- flash attention, causal, forward and forward + backward, at S = 2k, 8k, 16k (16k tokens per
  batch), for the Pallas kernel, XLA's reference attention (which builds the [S, S] scores)
  and, on GPU, `jax.nn.dot_product_attention(implementation="cudnn")`. FLOPs count the causal
  half: forward 4 * B * H * S^2 * D / 2, backward 2.5 x forward.
- decode attention, every row's cache full, for the Pallas kernel and the XLA reference: GB/s
  of K/V cache read, against the device's HBM bandwidth (spec sheet) and a measured copy.

On CPU the kernels only run in interpret mode: this reports that correctness run (max errors
against the reference, forward and gradients, both kernel families) and, when libtpu is
installed, what the TPU kernels compile to for a v5p (memory, FLOPs), ahead of time.

    python -m r1jax.benchmarks.attention
    python -m r1jax.benchmarks.attention --seq=2048,8192 --json=out.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.kernels import decode_attention as decode_kernels
from r1jax.kernels import flash_attention as flash_kernels

HEADS, KV_HEADS, HEAD_DIM = 28, 4, 128  # Qwen2.5-7B
TOKENS_PER_BATCH = 16384
# HBM bandwidth from the vendors' spec sheets, bytes/s, by a substring of device_kind.
HBM_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "TPU v5p": 2.765e12,
                 "TPU v5 lite": 8.19e11, "TPU v6": 1.64e12, "TPU v4": 1.2e12}


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `fn` (blocked until ready) after one warm-up call."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def flash_impls(platform: str) -> dict[str, Callable]:
    """name -> attention(q, k, v) for this accelerator."""
    kernel = flash_kernels.tpu if platform == "tpu" else flash_kernels.gpu
    impls = {"pallas": lambda q, k, v: kernel.flash_attention(q, k, v),
             "xla": lambda q, k, v: flash_kernels.flash_attention_reference(q, k, v)}
    if platform == "gpu":
        impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation="cudnn")
    return impls


def bench_flash(platform: str, seqs: list[int], repeats: int) -> list[dict]:
    rows = []
    for s in seqs:
        b = max(1, TOKENS_PER_BATCH // s)
        keys = jax.random.split(jax.random.key(s), 3)
        q = jax.random.normal(keys[0], (b, s, HEADS, HEAD_DIM), jnp.bfloat16)
        k, v = (jax.random.normal(x, (b, s, KV_HEADS, HEAD_DIM), jnp.bfloat16)
                for x in keys[1:])
        fwd_flops = 4 * b * HEADS * s * s * HEAD_DIM / 2
        for name, fn in flash_impls(platform).items():
            fwd = jax.jit(fn)
            both = jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(
                fn(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)))
            row = {"kernel": "flash", "impl": name, "seq": s, "batch": b}
            try:
                t_fwd = best_time(lambda: fwd(q, k, v), repeats)
                t_both = best_time(lambda: both(q, k, v), repeats)
            except Exception as e:  # noqa: BLE001 - report OOM / unsupported and go on
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            else:
                row.update(fwd_ms=1e3 * t_fwd, fwd_tflops=fwd_flops / t_fwd / 1e12,
                           fwd_bwd_ms=1e3 * t_both,
                           fwd_bwd_tflops=3.5 * fwd_flops / t_both / 1e12)
            rows.append(row)
            print(_fmt(row), flush=True)
    return rows


def copy_bandwidth(repeats: int, nbytes: int = 1 << 30) -> float:
    """Measured bytes/s of x + 1 over a 1 GiB bf16 array (one read and one write)."""
    x = jnp.zeros((nbytes // 2,), jnp.bfloat16)
    f = jax.jit(lambda x: x + 1)
    return 2 * nbytes / best_time(lambda: f(x), repeats)


def bench_decode(platform: str, lengths: list[int], batch: int, repeats: int) -> list[dict]:
    kind = jax.devices()[0].device_kind
    spec = next((bw for key, bw in HBM_BANDWIDTH.items() if key in kind), None)
    copy = copy_bandwidth(repeats)
    kernel = decode_kernels.tpu if platform == "tpu" else decode_kernels.gpu
    impls = {"pallas": kernel.decode_attention,
             "xla": jax.jit(decode_kernels.decode_attention_reference)}
    rows = []
    for s in lengths:
        keys = jax.random.split(jax.random.key(s), 3)
        q = jax.random.normal(keys[0], (batch, HEADS, HEAD_DIM), jnp.bfloat16)
        kc, vc = (jax.random.normal(x, (batch, KV_HEADS, s, HEAD_DIM), jnp.bfloat16)
                  for x in keys[1:])
        full = jnp.full((batch,), s, jnp.int32)
        nbytes = 2 * kc.size * kc.dtype.itemsize
        for name, fn in impls.items():
            t = best_time(lambda fn=fn: fn(q, kc, vc, full), repeats)
            row = {"kernel": "decode", "impl": name, "cache_len": s, "batch": batch,
                   "us": 1e6 * t, "gb_s": nbytes / t / 1e9,
                   "copy_gb_s": copy / 1e9, "frac_copy": nbytes / t / copy}
            if spec:
                row.update(hbm_spec_gb_s=spec / 1e9, frac_hbm=nbytes / t / spec)
            rows.append(row)
            print(_fmt(row), flush=True)
    return rows


def interpret_check() -> list[dict]:
    """CPU: both kernel families in interpret mode vs the reference, small shapes."""
    b, s, g, kh, d = 2, 40, 7, 1, 64
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (b, s, g * kh, d))
    k, v = (jax.random.normal(x, (b, s, kh, d)) for x in keys[1:3])
    seg = jnp.asarray(np.repeat([[0] * 6 + [1] * 20 + [2] * 14], b, 0), jnp.int32)
    blocks = flash_kernels.BlockSizes(16, 16, 16, 16, 16, 16)
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, seg)))
    ref = flash_kernels.flash_attention_reference
    ref_out, ref_grads = ref(q, k, v, seg), jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    kc, vc = (jax.random.normal(x, (b, kh, s, d)) for x in keys[3:])
    lengths = jnp.array([0, 29], jnp.int32)
    ref_dec = decode_kernels.decode_attention_reference(q[:, 0], kc, vc, lengths)
    rows = []
    for platform in ("tpu", "gpu"):
        flash = getattr(flash_kernels, platform).flash_attention
        fn = lambda q, k, v, seg, f=flash: f(q, k, v, seg, block_sizes=blocks, interpret=True)
        start = time.perf_counter()
        out = fn(q, k, v, seg)
        grads = jax.grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
        dec = getattr(decode_kernels, platform).decode_attention(
            q[:, 0], kc, vc, lengths, block_sizes=decode_kernels.BlockSizes(16, 2),
            interpret=True)
        row = {"kernel": "interpret", "impl": platform, "seconds": time.perf_counter() - start,
               "flash_out_err": float(jnp.max(jnp.abs(out - ref_out))),
               "flash_grad_err": max(float(jnp.max(jnp.abs(a - r)))
                                     for a, r in zip(grads, ref_grads)),
               "decode_err": float(jnp.max(jnp.abs(dec - ref_dec)))}
        rows.append(row)
        print(_fmt(row), flush=True)
    return rows


def tpu_aot(seqs: list[int]) -> list[dict]:
    """Compiles the TPU flash kernels (forward + backward) for a v5p, without a TPU."""
    from jax.experimental import topologies
    from jax.sharding import NamedSharding, PartitionSpec as P
    device = topologies.get_topology_desc(topology_name="v5p:2x2x1", platform="tpu").devices[0]
    mesh = jax.sharding.Mesh(np.array([device]), ("x",))
    rows = []
    for s in seqs:
        b = max(1, TOKENS_PER_BATCH // s)
        spec = lambda shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(
            shape, dt, sharding=NamedSharding(mesh, P()))
        q, kv = spec((b, s, HEADS, HEAD_DIM)), spec((b, s, KV_HEADS, HEAD_DIM))
        grad = jax.grad(lambda q, k, v: jnp.sum(flash_kernels.tpu.flash_attention(
            q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))
        start = time.perf_counter()
        compiled = jax.jit(grad).lower(q, kv, kv).compile()
        mem = compiled.memory_analysis()
        rows.append({"kernel": "tpu_aot_fwd_bwd", "impl": "pallas", "seq": s, "batch": b,
                     "compile_s": time.perf_counter() - start,
                     "argument_mib": mem.argument_size_in_bytes / 2 ** 20,
                     "temp_mib": mem.temp_size_in_bytes / 2 ** 20,
                     "scores_f32_mib": b * HEADS * s * s * 4 / 2 ** 20,
                     "flops": compiled.cost_analysis()["flops"]})
        print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(row: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items())


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", default="2048,8192,16384", help="flash sequence lengths")
    parser.add_argument("--cache", default="4096,16384,32768", help="decode cache lengths")
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="append one JSON line per result")
    args = parser.parse_args(argv)
    platform = jax.default_backend()
    seqs = [int(x) for x in args.seq.split(",")]
    print(f"backend={platform} device={jax.devices()[0].device_kind} jax={jax.__version__}")
    if platform in ("gpu", "tpu"):
        rows = bench_flash(platform, seqs, args.repeats)
        rows += bench_decode(platform, [int(x) for x in args.cache.split(",")],
                             args.decode_batch, args.repeats)
    else:
        print("no accelerator: interpret-mode correctness only (no timings)")
        rows = interpret_check()
        if importlib.util.find_spec("libtpu") is None:
            print("libtpu not installed: skipping the TPU ahead-of-time compile")
        else:
            rows += tpu_aot(seqs)
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps({"backend": platform, **row}) + "\n")


if __name__ == "__main__":
    main()

"""Sampler throughput: r1jax's native sampler vs transformers' `generate`, in one run.

Both sample from the same random-weight Qwen2-shaped model (fp32), same batch, prompt length
and number of new tokens, sampling on (temperature 1, no top-k / top-p), no stop token, so
every row generates exactly `new_tokens` tokens. Reports steady-state generated tokens per
second of each (best of `repeats` runs after a warm-up), the ratio, r1jax's compile time, and
the fraction of the machine's compute roofline: 2 x params x tokens / the fp32 matmul FLOP/s
measured here.

    python -m r1jax.benchmarks.sampler                 # CPU targets: tiny and small models
    python -m r1jax.benchmarks.sampler --models=tiny --batch=8
    python -m r1jax.benchmarks.sampler --positions=128,1024,4096 --models=small

Both peers use the whole machine: transformers through PyTorch's intra-op threads, r1jax (by
default, on a CPU host) by splitting the batch over one device per core (`use_every_core`);
`--data_parallel=1` measures r1jax on one device.

`--positions` reports the time of one decode step at those positions instead: the difference
between generating 2m and m tokens after a prompt of that length, divided by m, so that the
prefill cancels out; the growth with position is the attention over the filled cache.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

MODELS = {
    # ~0.9M parameters, overhead-bound on CPU.
    "tiny": dict(hidden_size=128, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2),
    # ~27M parameters, compute-bound on a 2-core CPU.
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=4),
    # GPU shapes (Qwen2.5-0.5B / 1.5B), bf16.
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936),
}


def matmul_flops(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> float:
    """Best-of FLOP/s of an n x n x n matmul on the default device."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best


def use_every_core() -> int:
    """The r1jax layout that uses the whole machine, as transformers' intra-op threads do:
    on a CPU host one device per core with the batch split over them (XLA:CPU runs each
    device's small operations on one thread; one device leaves the other cores idle), else
    one device. Sets `jax_num_cpu_devices` when the CPU backend has not started yet and the
    device count was not set otherwise (XLA_FLAGS); returns the devices to use."""
    from jax._src import xla_bridge
    if ("host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")
            and not xla_bridge.backends_are_initialized()):
        jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)  # the CPU backend only
    if jax.default_backend() != "cpu":
        return 1
    return max(1, min(jax.local_device_count(), os.cpu_count() or 1))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_model_dir(name: str, vocab: int, path: str, seed: int = 0):
    """Saves a random transformers Qwen2 model; returns (torch model, num params)."""
    import torch
    import transformers
    torch.manual_seed(seed)
    spec = dict(MODELS[name])
    spec.setdefault("vocab_size", vocab)
    cfg = transformers.Qwen2Config(**spec, tie_word_embeddings=True,
                                   max_position_embeddings=8192)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(path)
    return model, sum(p.numel() for p in model.parameters())


def bench_r1jax(path, prompts, new_tokens, repeats, dtype, data_parallel=1):
    import r1jax
    from r1jax.sampling import Sampler
    mesh = None
    if data_parallel > 1:
        mesh = r1jax.sharding.make_mesh(data=data_parallel, fsdp=1, tensor=1,
                                        devices=jax.devices()[:data_parallel])
    model = r1jax.load_hf(path, dtype=dtype, mesh=mesh)
    sampler = Sampler(model, max_prompt_len=prompts.shape[1], max_new_tokens=new_tokens)
    ids = prompts.tolist()
    first = _timed(lambda: sampler.generate(ids, max_new_tokens=new_tokens, seed=0))
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        out = sampler.generate(ids, max_new_tokens=new_tokens, seed=r + 1)
        times.append(time.perf_counter() - start)
        assert int(out.lengths.sum()) == prompts.shape[0] * new_tokens
    return min(times), first - min(times)


def bench_transformers(model, prompts, new_tokens, repeats):
    import torch
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=0,
                                 eos_token_id=None)
        assert out.shape[1] == prompts.shape[1] + new_tokens
    run()
    return min(_timed(run) for _ in range(repeats))


def step_time_at(path: str, position: int, batch: int, dtype: str, repeats: int,
                 vocab: int, m: int = 32) -> float:
    """Seconds per decode step at `position` (prefill cancelled out, see module docstring)."""
    import r1jax
    from r1jax.sampling import Sampler
    model = r1jax.load_hf(path, dtype=dtype)
    sampler = Sampler(model, max_prompt_len=position, max_new_tokens=2 * m)
    ids = np.random.default_rng(0).integers(1, vocab, (batch, position)).tolist()

    def best(new: int) -> float:
        sampler.generate(ids, max_new_tokens=new, seed=0)
        return min(_timed(lambda: sampler.generate(ids, max_new_tokens=new, seed=1))
                   for _ in range(repeats))
    return (best(2 * m) - best(m)) / m


def positions_main(args) -> list[dict]:
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            hf_model, n_params = make_model_dir(name, args.vocab, tmp)
            del hf_model
            for pos in (int(p) for p in args.positions.split(",")):
                sec = step_time_at(tmp, pos, args.batch, args.dtype, args.repeats, args.vocab)
                rows.append({"model": name, "position": pos, "batch": args.batch,
                             "step_ms": 1e3 * sec})
                print(json.dumps(rows[-1]))
    print("\n| model | position | batch | decode step ms |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['position']} | {r['batch']} | {r['step_ms']:.2f} |")
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--skip_transformers", action="store_true")
    p.add_argument("--data_parallel", type=int, default=0,
                   help="split r1jax's batch over this many devices (a data mesh); 0: every "
                        "core of a CPU host, one device each (see `use_every_core`), else one "
                        "device")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--positions", default=None,
                   help="comma-separated positions: report decode step time at each")
    args = p.parse_args(argv)
    if args.positions:
        return positions_main(args)
    if args.data_parallel == 0:
        args.data_parallel = use_every_core()
    flops = matmul_flops("float32")
    import torch
    print(f"device: {jax.devices()[0].device_kind}, fp32 matmul: {flops / 1e9:.1f} GFLOP/s; "
          f"r1jax on {args.data_parallel} device(s), transformers on {torch.get_num_threads()} "
          "thread(s)")
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            hf_model, n_params = make_model_dir(name, args.vocab, tmp)
            rng = np.random.default_rng(0)
            vocab = hf_model.config.vocab_size
            prompts = rng.integers(1, vocab, (args.batch, args.prompt_len)).astype(np.int32)
            tokens = args.batch * args.new_tokens
            sec, compile_s = bench_r1jax(tmp, prompts, args.new_tokens, args.repeats,
                                         args.dtype, args.data_parallel)
            row = {"model": name, "params": int(n_params), "batch": args.batch,
                   "r1jax_devices": args.data_parallel, "torch_threads": torch.get_num_threads(),
                   "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                   "r1jax_tok_s": tokens / sec, "r1jax_compile_s": compile_s,
                   "roofline_frac": 2 * n_params * tokens / sec / flops}
            if not args.skip_transformers:
                hf_sec = bench_transformers(hf_model, prompts, args.new_tokens, args.repeats)
                row["transformers_tok_s"] = tokens / hf_sec
                row["ratio"] = hf_sec / sec
            rows.append(row)
            print(json.dumps(row))
    print("\n| model | params | r1jax tok/s | transformers tok/s | ratio | "
          "roofline | compile s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['r1jax_tok_s']:.0f} | "
              f"{r.get('transformers_tok_s', float('nan')):.0f} | "
              f"{r.get('ratio', float('nan')):.2f}x | {r['roofline_frac']:.0%} | "
              f"{r['r1jax_compile_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_flops": flops, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

"""RL step throughput: r1jax's rollout + DAPO update against TRL's `GRPOTrainer`, in one run.

One step = sample G = 8 completions for each of 4 prompts (16 tokens each), score them with
the same cheap host-side reward (`token_reward`, on token ids), group advantages, and ONE
optimizer step (DAPO: token-mean loss, eps 0.2 / 0.28, beta 0, AdamW lr 1e-6, weight decay
0.01, global-norm clip 1.0). Every completion runs to the full budget (64 tokens on the tiny
model, 256 on the small one): r1jax samples with no stop token, TRL generates with
`min_new_tokens = max_completion_length`. Both start from the same random transformers Qwen2
weights (r1jax loads them with `r1jax.load_hf`) and see the same prompt token ids (TRL
through a word-level tokenizer whose token "t<i>" is id i).

Each framework runs in fp32 and in bf16 compute: r1jax `model.dtype = bfloat16` over fp32
master weights; TRL `bf16=True` (accelerate autocast over fp32 weights; TRL generates
outside the autocast, so its rollout stays fp32).

Reported per framework: seconds per step (best of `--steps` after one warm-up step; r1jax's
compile time = first step - best step), generated tokens per second (B x T / step), and the
phases (each the best over the timed steps) with their fraction of the compute roofline,
the JAX 1024^3 matmul FLOP/s of the same dtype, the better of two measurements taken just
before and just after each case:
  rollout = generation + decode + reward (+ TRL's padding and advantages), counted as
            2 x params x generated tokens;
  update  = the rest of the step: batch assembly, forward + backward, optimizer step,
            counted as 6 x params x B x (prompt + completion).
Also the peak memory of r1jax's compiled update (`memory_analysis()`: arguments + outputs -
aliased + temporaries), and r1jax/TRL = TRL seconds per step / r1jax seconds per step.

    python -m r1jax.benchmarks.step                          # tiny + small, fp32 + bf16
    python -m r1jax.benchmarks.step --models=tiny --dtypes=float32 --steps=2 --json=out.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from r1jax.benchmarks.sampler import make_model_dir, matmul_flops

NEW_TOKENS = {"tiny": 64, "small": 256}  # forced completion length per model
PROMPTS, GROUP, PROMPT_LEN, VOCAB = 4, 8, 16, 4096
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SPECIALS = ("<pad>", "<eos>", "<unk>")  # ids 0, 1, 2 of the word-level tokenizer
EPS_LOW, EPS_HIGH, LR, WEIGHT_DECAY = 0.2, 0.28, 1e-6, 0.01


def token_reward(completion_ids: Sequence[Sequence[int]], **unused: Any) -> list[float]:
    """Fraction of even token ids in each completion: deterministic, cheap, varies in a group.

    Used as is by both frameworks (TRL passes `completion_ids` as a keyword).
    """
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def make_tokenizer(vocab: int) -> Any:
    """Word-level tokenizer: the text "t5 t17" is the ids [5, 17], and back.

    The special tokens have names that no "t<i>" contains: added tokens are matched inside
    words before pre-tokenization.
    """
    import tokenizers
    import transformers
    words = {name: i for i, name in enumerate(SPECIALS)}
    words.update({f"t{i}": i for i in range(len(SPECIALS), vocab)})
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token=SPECIALS[UNK_ID]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=SPECIALS[PAD_ID], eos_token=SPECIALS[EOS_ID],
        unk_token=SPECIALS[UNK_ID], padding_side="left")


def make_prompts(vocab: int, seed: int = 0) -> np.ndarray:
    """[PROMPTS, PROMPT_LEN] prompt ids, special ids excluded."""
    rng = np.random.default_rng(seed)
    return rng.integers(UNK_ID + 1, vocab, (PROMPTS, PROMPT_LEN)).astype(np.int32)


# ----------------------------------------------------------------------------------------
# r1jax: Sampler -> reward -> RLSteps.make_batch -> RLSteps.update, as Trainer.train_step.


def r1jax_config(path: str, dtype: str, new_tokens: int) -> Any:
    """RunConfig of the benchmark step: DAPO token-mean, eps 0.2 / 0.28, beta 0, mu 1."""
    from r1jax.config import base_config, run_config_from
    c = base_config()
    c.model.path, c.model.dtype, c.model.param_dtype = path, dtype, "float32"
    c.data.max_prompt_tokens = PROMPT_LEN
    c.rollout.group_size, c.rollout.max_new_tokens = GROUP, new_tokens
    c.train.prompts_per_step = PROMPTS
    c.algo.eps_low, c.algo.eps_high, c.algo.agg, c.algo.kl_beta = (EPS_LOW, EPS_HIGH,
                                                                    "token-mean", 0.0)
    c.optim.lr, c.optim.weight_decay, c.optim.grad_clip = LR, WEIGHT_DECAY, 1.0
    return run_config_from(c)


class R1jaxStep:
    """The policy, sampler and train state of one r1jax case; `step(seed)` runs one RL step."""

    def __init__(self, path: str, dtype: str, new_tokens: int, prompts: np.ndarray,
                 tokenizer: Any):
        from r1jax import builder
        from r1jax.rl.steps import RLSteps
        from r1jax.sampling import Sampler
        self.cfg = r1jax_config(path, dtype, new_tokens)
        sharding = builder.build_sharding(self.cfg.mesh)
        model = builder.build_policy(self.cfg.model, sharding)
        self.sampler = Sampler(model, max_prompt_len=PROMPT_LEN, max_new_tokens=new_tokens,
                               eos_token_ids=(), pad_id=PAD_ID)
        self.rl = RLSteps(model.config, self.cfg, sharding, model.params)  # donates params
        self.prompts = prompts.tolist()
        self.tokenizer = tokenizer
        self.new_tokens = new_tokens
        self.last_groups: list = []

    def step(self, seed: int) -> dict:
        from r1jax.rl.rollout import GenerationBatch
        start = time.perf_counter()
        out = self.sampler.generate(self.prompts, n=GROUP, max_new_tokens=self.new_tokens,
                                    temperature=1.0, seed=seed, params=self.rl.params)
        generated = time.perf_counter()
        completions = out.completions()
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        rewards = np.asarray(token_reward(completions), np.float32)
        gen = GenerationBatch([{"prompt_ids": p} for p in self.prompts], out, texts, rewards,
                              {"token_reward": rewards}, rewards > 0.5, {}, {})
        self.last_groups = [gen.group(p, GROUP) for p in range(PROMPTS)]
        rolled = time.perf_counter()
        batch = self.rl.make_batch(self.last_groups, PAD_ID)
        batched = time.perf_counter()
        metrics = self.rl.update(batch)  # returns host floats: waits for the device
        done = time.perf_counter()
        assert int(out.lengths.sum()) == PROMPTS * GROUP * self.new_tokens
        return {"step": done - start, "generate": generated - start,
                "rollout": rolled - start, "update": done - rolled,
                "make_batch": batched - rolled,
                "completion_tokens": int(out.lengths.sum()), "rewards": rewards.tolist(),
                "prompts": [list(p) for p in out.prompt_ids],
                "tokens": metrics["batch/tokens"]}

    def update_memory(self) -> dict:
        """Memory of the compiled update program (the one `RLSteps.update` runs)."""
        batch = self.rl.make_batch(self.last_groups, PAD_ID)
        mem = self.rl._update.lower(self.rl.state, batch).compile().memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
        return {"update_temp_mib": mem.temp_size_in_bytes / 2**20,
                "update_args_mib": mem.argument_size_in_bytes / 2**20,
                "update_peak_mib": peak / 2**20}


def bench_r1jax(path: str, dtype: str, new_tokens: int, prompts: np.ndarray, tokenizer: Any,
                steps: int) -> dict:
    """Best-of-`steps` timings after one warm-up step, compile time and update memory."""
    runner = R1jaxStep(path, dtype, new_tokens, prompts, tokenizer)
    first = runner.step(seed=0)
    timed = [runner.step(seed=s + 1) for s in range(steps)]
    best = _best(timed)
    best["compile_s"] = first["step"] - best["step"]
    best.update(runner.update_memory())
    return best


# ----------------------------------------------------------------------------------------
# TRL: GRPOTrainer.train() for 1 + steps optimizer steps, timed by a callback.


def trl_args(out_dir: str, new_tokens: int, bf16: bool, max_steps: int) -> Any:
    """GRPOConfig: one generation round of 4 prompts x 8 = one batch = one optimizer step."""
    import trl
    return trl.GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=bf16, fp16=False, seed=0,
        per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, num_generations=GROUP,
        max_completion_length=new_tokens, generation_kwargs={"min_new_tokens": new_tokens},
        temperature=1.0, top_p=1.0, top_k=0, loss_type="dapo", beta=0.0, epsilon=EPS_LOW,
        epsilon_high=EPS_HIGH, scale_rewards="group", mask_truncated_completions=False,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=WEIGHT_DECAY, max_grad_norm=1.0, gradient_checkpointing=False,
        max_steps=max_steps, logging_strategy="no", save_strategy="no", report_to="none",
        disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
        dataloader_pin_memory=False)


def make_trl_trainer(model_dir: str, tokenizer: Any, prompts: np.ndarray, new_tokens: int,
                     bf16: bool, max_steps: int, out_dir: str) -> Any:
    """A GRPOTrainer on a fresh copy of the saved weights, prompts given as "t<i>" text."""
    import datasets
    import torch
    import transformers
    import trl
    model = transformers.Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    texts = [" ".join(f"t{i}" for i in p) for p in prompts]
    assert [tokenizer(t)["input_ids"] for t in texts] == prompts.tolist()
    return trl.GRPOTrainer(model=model, reward_funcs=token_reward,
                           args=trl_args(out_dir, new_tokens, bf16, max_steps),
                           train_dataset=datasets.Dataset.from_dict({"prompt": texts}),
                           processing_class=tokenizer)


def _timed_method(obj: Any, name: str, sink: list, inspect_out=None) -> None:
    """Replaces obj.name by a wrapper appending (seconds, inspect_out(result)) to sink."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        sink.append((time.perf_counter() - start,
                     inspect_out(result) if inspect_out else None))
        return result
    setattr(obj, name, wrapper)


def bench_trl(model_dir: str, tokenizer: Any, prompts: np.ndarray, new_tokens: int,
              bf16: bool, steps: int) -> dict:
    """Best-of-`steps` timings of `GRPOTrainer.train()` after its first (warm-up) step."""
    import transformers

    class StepTimer(transformers.TrainerCallback):
        """Wall time from on_step_begin to on_step_end (generation included)."""

        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    with tempfile.TemporaryDirectory() as out_dir:
        trainer = make_trl_trainer(model_dir, tokenizer, prompts, new_tokens, bf16,
                                   1 + steps, out_dir)
        timer, rollouts, generations, rewards = StepTimer(), [], [], []
        trainer.add_callback(timer)
        _timed_method(trainer, "_generate_and_score_completions", rollouts,
                      lambda o: (int(o["completion_mask"].sum()), o["prompt_ids"].tolist()))
        _timed_method(trainer, "_generate_single_turn", generations)
        _timed_method(trainer, "_calculate_rewards", rewards,
                      lambda r: r[:, 0].tolist())
        trainer.train()
    runs = []
    for i, sec in enumerate(timer.times):
        (roll_s, (tokens, prompt_ids)) = rollouts[i]
        runs.append({"step": sec, "generate": generations[i][0], "rollout": roll_s,
                     "update": sec - roll_s, "completion_tokens": tokens,
                     "rewards": rewards[i][1], "prompts": prompt_ids})
    for r in runs:
        assert r["completion_tokens"] == PROMPTS * GROUP * new_tokens, r["completion_tokens"]
    return _best(runs[1:])


# ----------------------------------------------------------------------------------------


def _best(runs: list[dict]) -> dict:
    """Best (minimum) of each timing over the runs; the other fields of the fastest step."""
    fastest = min(runs, key=lambda r: r["step"])
    out = dict(fastest)
    for key in ("step", "generate", "rollout", "update"):
        out[key] = min(r[key] for r in runs)
    out["all_steps"] = [r["step"] for r in runs]
    return out


def derived(res: dict, n_params: int, new_tokens: int, peak: float) -> dict:
    """Generated tokens / s and roofline fractions of the phases."""
    rows = PROMPTS * GROUP
    gen_flops = 2 * n_params * rows * new_tokens
    upd_flops = 6 * n_params * rows * (PROMPT_LEN + new_tokens)
    return {"tok_s": rows * new_tokens / res["step"],
            "rollout_roofline": gen_flops / res["rollout"] / peak,
            "update_roofline": upd_flops / res["update"] / peak}


def run_case(name: str, dtype: str, path: str, n_params: int, tokenizer: Any,
             args: argparse.Namespace) -> dict:
    """Both frameworks on one (model, dtype); the roofline is the better of two matmul
    measurements taken just before and just after (the 2 cores are shared)."""
    new_tokens = NEW_TOKENS[name]
    prompts = make_prompts(args.vocab)
    load, before = os.getloadavg()[0], matmul_flops(dtype)
    row = {"model": name, "params": int(n_params), "dtype": dtype, "new_tokens": new_tokens}
    row["r1jax"] = bench_r1jax(path, dtype, new_tokens, prompts, tokenizer, args.steps)
    if not args.skip_trl:
        row["trl"] = bench_trl(path, tokenizer, prompts, new_tokens, dtype == "bfloat16",
                               args.steps)
        row["ratio"] = row["trl"]["step"] / row["r1jax"]["step"]
    peak = max(before, matmul_flops(dtype))
    for fw in ("r1jax", "trl"):
        if fw in row:
            row[fw].update(derived(row[fw], n_params, new_tokens, peak))
    row.update(matmul_gflops=peak / 1e9, load=[load, os.getloadavg()[0]])
    return row


def print_table(rows: list[dict]) -> None:
    def cell(r, fw):
        if fw not in r:
            return ["-"] * 4
        x = r[fw]
        return [f"{x['step']:.2f}", f"{x['tok_s']:.0f}",
                f"{x['rollout']:.2f} ({x['rollout_roofline']:.1%})",
                f"{x['update']:.2f} ({x['update_roofline']:.1%})"]
    print("\n| model | dtype | T | r1jax step s | TRL step s | r1jax / TRL | r1jax tok/s | "
          "TRL tok/s | r1jax rollout s (roofline) | TRL rollout s (roofline) | "
          "r1jax update s (roofline) | TRL update s (roofline) | r1jax compile s | "
          "r1jax update peak MiB | matmul GFLOP/s | load |")
    print("|" + "---|" * 16)
    for r in rows:
        a, b = cell(r, "r1jax"), cell(r, "trl")
        print(f"| {r['model']} ({r['params'] / 1e6:.2f}M) | {r['dtype']} | {r['new_tokens']} "
              f"| {a[0]} | {b[0]} | {r.get('ratio', float('nan')):.2f}x | {a[1]} | {b[1]} | "
              f"{a[2]} | {b[2]} | {a[3]} | {b[3]} | {r['r1jax']['compile_s']:.1f} | "
              f"{r['r1jax']['update_peak_mib']:.0f} | {r['matmul_gflops']:.0f} | "
              f"{r['load'][0]:.1f}-{r['load'][1]:.1f} |")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--skip_trl", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    import jax
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, "
          f"{os.cpu_count()} CPUs")
    tokenizer = make_tokenizer(args.vocab)
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as path:
            _, n_params = make_model_dir(name, args.vocab, path)
            for dtype in args.dtypes.split(","):
                rows.append(run_case(name, dtype, path, n_params, tokenizer, args))
                brief = {k: v for k, v in rows[-1].items() if k not in ("r1jax", "trl")}
                print(json.dumps(brief))
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

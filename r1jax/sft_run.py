"""`r1jax-sft`: supervised fine-tuning / distillation on packed conversations.

    r1jax-sft --config=configs/sft/generic.py --config.model.path=/models/Qwen2.5-7B \\
        --config.data.source=/data/openr1.jsonl --config.sft.layout=openr1_math \\
        --config.train.run_dir=/ckpt/sft1

Each optimizer step takes the next `sft.batch_size` conversations of the data stream
(an epoch is a permutation of the examples by `sft.seed` and the epoch number), renders them
with the chat template (loss on assistant tokens only), packs them best-fit into rows of
`sft.max_len` tokens, and runs one update through the same machinery as RL
(`r1jax.sft.make_packed_sft_update`). The loss logged for step k is the one computed on step
k's batch, before its update. A checkpoint holds the train state and the stream position,
so a resumed run continues with exactly the conversations the stopped one would have seen.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import builder, checkpoint, sft
from r1jax.config import (ConfigError, RunConfig, check_resume, config_args, load_config,
                          to_dict)
from r1jax.data.conversations import load_conversations
from r1jax.metrics import MetricsWriter
from r1jax.models import save_hf
from r1jax.models.decoder import Decoder, param_shardings
from r1jax.rl.steps import like_params
from r1jax.rl.update import make_optimizer, make_schedule

log = logging.getLogger("r1jax.sft")


def load_sft_examples(cfg: RunConfig) -> tuple[list[dict], Any]:
    """Conversations of `data.source`: a JSONL / Parquet file in `sft.layout`, or a dataset
    name of r1jax.data (a benchmark or generated task) whose examples have a `solution`,
    as one user turn (the question) and one assistant turn (the solution)."""
    d = cfg.data
    path = d.source
    if d.data_dir and not os.path.isabs(path):
        path = os.path.join(d.data_dir, path)
    if os.path.splitext(path.removesuffix(".gz"))[1].lower() in (".jsonl", ".json",
                                                                 ".parquet"):
        return load_conversations(path, cfg.sft.layout, cfg.sft.fields, strict=d.strict,
                                  limit=d.limit)
    source = builder.build_train_source(d)
    out = []
    for i in range(len(source)):
        ex = source[i]
        if not ex.get("solution"):
            raise ConfigError(f"data.source {d.source!r}: example {ex.get('id')!r} has no "
                              "`solution` to train on (give a conversation file instead)")
        out.append({"id": ex.get("id", i),
                    "messages": [{"role": "user", "content": ex["question"]},
                                 {"role": "assistant", "content": ex["solution"]}]})
    return out, None


@functools.lru_cache(maxsize=4)
def _epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def stream_indices(position: int, count: int, size: int, seed: int) -> list[int]:
    """Examples [position, position + count) of the stream over `size` examples: epoch e is
    the permutation of range(size) drawn with seed (seed, e)."""
    return [int(_epoch_order(size, seed, k // size)[k % size])
            for k in range(position, position + count)]


class SFTRun:
    """One r1jax-sft job: `SFTRun(cfg).run()`."""

    def __init__(self, cfg: RunConfig):
        if jax.process_count() > 1:
            raise NotImplementedError("r1jax-sft runs on one host for now "
                                      f"(this job has {jax.process_count()} processes)")
        s = cfg.sft
        self.cfg = cfg
        self.run_dir = os.path.abspath(cfg.train.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self.sharding = builder.build_sharding(cfg.mesh)
        self.tokenizer = builder.build_tokenizer(cfg.model, self.run_dir)
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError("r1jax-sft renders conversations with the tokenizer's chat "
                              f"template, and {cfg.model.tokenizer or cfg.model.path!r} has "
                              "none")
        self.examples, self.load_stats = load_sft_examples(cfg)
        self.steps_per_epoch = math.ceil(len(self.examples) / s.batch_size)
        self.total_steps = s.steps or s.epochs * self.steps_per_epoch
        if self.total_steps < 1:
            raise ConfigError("set sft.steps or sft.epochs (both are 0)")
        model = builder.build_policy(cfg.model, self.sharding, self.tokenizer)
        self.model_config = model.config
        self._source = (model.source_dir, model.source_config)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self.tx = make_optimizer(cfg.optim, self.total_steps)
        self.schedule = make_schedule(cfg.optim, self.total_steps)
        mesh = self.sharding.mesh
        replicated = NamedSharding(mesh, P())
        p_sharding = param_shardings(self.model_config, self.sharding)
        abstract = jax.eval_shape(self.tx.init, model.params)
        self.state_sharding = {"params": p_sharding,
                               "opt_state": like_params(abstract, p_sharding, replicated),
                               "step": replicated}
        init = jax.jit(lambda p: {"params": p, "opt_state": self.tx.init(p),
                                  "step": jnp.int32(0)},
                       out_shardings=self.state_sharding, donate_argnums=0)
        self.state = init(model.params)
        del model
        self.batch_sharding = NamedSharding(mesh, P(self.sharding.batch_axes or None))
        self.row_unit = s.microbatches * self.sharding.batch_parallelism
        self._update = jax.jit(
            sft.make_packed_sft_update(self.model_config, self.tx, self.sharding,
                                       s.microbatches),
            donate_argnums=0, out_shardings=(self.state_sharding, None))
        self.checkpointer = checkpoint.Checkpointer(
            os.path.join(self.run_dir, "checkpoints"), keep=cfg.train.keep_checkpoints,
            async_save=cfg.train.async_checkpoint)
        self.step = 0
        self.position = 0  # conversations of the stream consumed
        self.summary: dict = {}
        self._stop_requested = False

    # ------------------------------------------------------------------------------------
    def next_batch(self) -> tuple[sft.SFTBatch, sft.PackStats]:
        """The next batch_size conversations, rendered and packed, and the packer's stats;
        the batch's rows are padded (with empty rows) to a power of two times (microbatches x
        batch parallelism), so few shapes compile."""
        s = self.cfg.sft
        idx = stream_indices(self.position, s.batch_size, len(self.examples), s.seed)
        self.position += s.batch_size
        rendered = [sft.render_conversation(self.tokenizer, self.examples[i]["messages"])
                    for i in idx]
        return sft.pack_batch(rendered, s.max_len, row_unit=self.row_unit, pad_id=self.pad_id,
                              overflow=s.overflow)

    def train_step(self) -> dict:
        start = time.perf_counter()
        batch, stats = self.next_batch()
        self.state, m = self._update(self.state, jax.device_put(batch, self.batch_sharding))
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        lr = float(self.schedule(self.step))
        self.step += 1
        return {"sft/loss": m["sft/loss"], "sft/tokens": m["sft/tokens"],
                "grad_norm": m["sft/grad_norm"], "skipped_updates": m["sft/skipped"],
                "lr": lr, "sft/examples": float(stats.examples),
                "sft/truncated": float(stats.truncated), "sft/dropped": float(stats.dropped),
                "sft/rows": float(stats.rows), "sft/packing_efficiency": stats.efficiency,
                "sft/batch_rows": float(batch.tokens.shape[0]),
                "epoch": self.position / len(self.examples),
                "time/step_s": time.perf_counter() - start}

    def save(self, wait: bool = False) -> None:
        meta = {"step": self.step, "summary": self.summary, "config": to_dict(self.cfg)}
        self.checkpointer.save(self.step, self.state, {"position": self.position}, meta)
        if wait:
            self.checkpointer.wait()

    def restore(self) -> bool:
        latest = self.checkpointer.latest_step()
        if latest is None or not self.cfg.train.resume:
            return False
        check_resume(self.checkpointer.meta(latest).get("config"), self.cfg)
        tree, data_state, meta = self.checkpointer.restore(
            latest, checkpoint.abstract_like(self.state))
        self.state = tree
        self.position = int(data_state["position"])
        self.step = int(meta["step"])
        self.summary = meta.get("summary", {})
        log.info("resumed from %s at step %d", self.checkpointer.directory, self.step)
        return True

    def run(self) -> dict:
        cfg = self.cfg
        self.restore()
        writer = MetricsWriter.for_run(self.run_dir, cfg, total_steps=self.total_steps,
                                       start_step=self.step)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            while self.step < self.total_steps:
                metrics = self.train_step()
                writer.write(self.step, metrics)
                self.summary.setdefault("first_loss", metrics["sft/loss"])
                self.summary["loss"] = metrics["sft/loss"]
                if self._stop_requested:
                    writer.note(f"SIGTERM: saving a checkpoint at step {self.step} and exiting")
                    self.save(wait=True)
                    self.summary["stopped_at"] = self.step
                    return self.summary
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save()
            self.summary.update(steps=self.step, examples=len(self.examples))
            self.save(wait=True)
            if cfg.train.export_hf:
                self.summary["export"] = self.export(os.path.join(self.run_dir, "export"))
            if jax.process_index() == 0:
                with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                    json.dump(self.summary, f, indent=2, default=float)
            return self.summary
        finally:
            signal.signal(signal.SIGTERM, previous)
            writer.close()
            self.checkpointer.wait()

    def close(self) -> None:
        self.checkpointer.close()

    def export(self, out_dir: str) -> str:
        """The current policy as a Hugging Face directory (atomically), with the tokenizer."""
        model = Decoder(self.model_config, params=self.state["params"], sharding=self.sharding,
                        source_dir=self._source[0], source_config=self._source[1])
        return save_hf(model, out_dir, tokenizer=self.tokenizer)

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_requested = True


def main(argv: Optional[list] = None) -> int:
    """Entry point of `r1jax-sft --config=FILE[:ARG] [--config.key=value ...]`."""
    import sys
    argv = list(sys.argv if argv is None else argv)
    spec, overrides = config_args(argv, "r1jax-sft", "configs/sft/FILE.py")
    if spec is None:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from r1jax.data.sources import DataError
    try:
        cfg = load_config(spec, overrides)
        run = SFTRun(cfg)
        try:
            summary = run.run()
        finally:
            run.close()
    except (ConfigError, DataError) as e:
        print(f"r1jax-sft: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

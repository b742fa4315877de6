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

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import builder, checkpoint, distributed, sft
from r1jax.config import (ConfigError, RunConfig, SFTStage, check_resume, config_args,
                          load_config, to_dict)
from r1jax.data.conversations import load_conversations
from r1jax.data.pass_rates import read_pass_rates
from r1jax.evaluation.held_out import HeldOut
from r1jax.metrics import MetricsWriter
from r1jax.models import save_hf
from r1jax.models.decoder import Decoder, param_shardings
from r1jax.rl.steps import like_params
from r1jax.rl.update import make_optimizer, make_schedule

log = logging.getLogger("r1jax.sft")


def load_sft_examples(cfg: RunConfig, source: Optional[str] = None,
                      layout: Optional[str] = None, keep: Sequence[str] = ()
                      ) -> tuple[list[dict], Any]:
    """Conversations of `source` (default `data.source`): a JSONL / Parquet file in `layout`
    (default `sft.layout`), or a dataset name of r1jax.data (a benchmark or generated task)
    whose examples have a `solution`, as one user turn (the question) and one assistant turn
    (the solution). Each example keeps the row's fields named in `keep` under "row" (a
    dataset example keeps all of its fields)."""
    d = cfg.data
    path = source or d.source
    if d.data_dir and not os.path.isabs(path):
        path = os.path.join(d.data_dir, path)
    if os.path.splitext(path.removesuffix(".gz"))[1].lower() in (".jsonl", ".json",
                                                                 ".parquet"):
        return load_conversations(path, layout or cfg.sft.layout, cfg.sft.fields,
                                  strict=d.strict, limit=d.limit, keep=keep)
    data_cfg = d if source is None else dataclasses.replace(d, source=source)
    dataset = builder.build_train_source(data_cfg)
    out = []
    for i in range(len(dataset)):
        ex = dataset[i]
        if not ex.get("solution"):
            raise ConfigError(f"data source {data_cfg.source!r}: example {ex.get('id')!r} has "
                              "no `solution` to train on (give a conversation file instead)")
        out.append({"id": ex.get("id", i), "row": dict(ex),
                    "messages": [{"role": "user", "content": ex["question"]},
                                 {"role": "assistant", "content": ex["solution"]}]})
    return out, None


def _where_test(value: Any, test: Sequence) -> bool:
    """`where` semantics: [low, high] of numbers is an inclusive range, else allowed values."""
    numeric = len(test) == 2 and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                     for t in test)
    if not numeric:
        return value in list(test)
    if isinstance(value, str):  # numbers written as text ("12") compare as numbers
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and test[0] <= value <= test[1]


def filter_stage(examples: list[dict], stage: SFTStage) -> tuple[list[dict], dict]:
    """The conversations of a curriculum stage that pass its `where` tests and pass-rate
    range, and the drop counts ("where_missing", "where_rejected", "no_pass_rate",
    "pass_rate_out_of_range")."""
    counts = dict.fromkeys(("where_missing", "where_rejected", "no_pass_rate",
                            "pass_rate_out_of_range"), 0)
    rates = read_pass_rates(stage.pass_rates) if stage.pass_rates else None
    kept = []
    for ex in examples:
        row = ex.get("row", {})
        missing = [f for f in stage.where if f not in row]
        if missing:
            counts["where_missing"] += 1
            continue
        if not all(_where_test(row[f], t) for f, t in stage.where.items()):
            counts["where_rejected"] += 1
            continue
        if rates is not None:
            rate = rates.get(str(ex["id"]))
            if rate is None:
                counts["no_pass_rate"] += 1
                continue
            if not stage.pass_rate_min <= rate <= stage.pass_rate_max:
                counts["pass_rate_out_of_range"] += 1
                continue
        kept.append(ex)
    return kept, counts


def load_stage(cfg: RunConfig, stage: SFTStage, index: int) -> tuple[list[dict], dict]:
    """The filtered conversations of curriculum stage `index` and its drop counts.

    Raises:
      ConfigError: the stage has no conversation left.
    """
    examples, _ = load_sft_examples(cfg, stage.source, stage.layout, keep=list(stage.where))
    kept, counts = filter_stage(examples, stage)
    counts = dict(counts, loaded=len(examples))
    if not kept:
        raise ConfigError(f"sft.stages[{index}] ({stage.source}): no conversation left after "
                          f"its filters ({counts})")
    return kept, counts


@functools.lru_cache(maxsize=8)
def _epoch_order(size: int, seed: int, epoch: int, stage: Optional[int] = None) -> np.ndarray:
    key = [seed, epoch] if stage is None else [seed, epoch, stage]
    return np.random.default_rng(key).permutation(size)


def stream_indices(position: int, count: int, size: int, seed: int) -> list[int]:
    """Examples [position, position + count) of the stream over `size` examples: epoch e is
    the permutation of range(size) drawn with seed (seed, e)."""
    return [int(_epoch_order(size, seed, k // size)[k % size])
            for k in range(position, position + count)]


def curriculum_indices(position: int, count: int, sizes: Sequence[int],
                       epochs: Sequence[int], seed: int) -> list[tuple[int, int]]:
    """(stage, example) at stream positions [position, position + count) of a curriculum.

    Stage k takes the next epochs[k] x sizes[k] positions; its epoch e is the permutation of
    range(sizes[k]) drawn with seed (seed, e, k). Positions past the last stage continue
    the last stage's epochs.
    """
    bounds = np.cumsum([0] + [e * n for e, n in zip(epochs, sizes)])
    out = []
    for p in range(position, position + count):
        k = min(int(np.searchsorted(bounds, p, side="right")) - 1, len(sizes) - 1)
        local = p - int(bounds[k])
        out.append((k, int(_epoch_order(sizes[k], seed, local // sizes[k], k)[
            local % sizes[k]])))
    return out


class SFTRun:
    """One r1jax-sft job: `SFTRun(cfg).run()`."""

    LOSS_METRIC = "sft/loss"  # the metric the summary reports as first_loss / loss
    PHASE = "sft"  # held-out evaluation tags: before_<PHASE>, after_<PHASE>

    def __init__(self, cfg: RunConfig):
        s = cfg.sft
        self.cfg = cfg
        self.run_dir = distributed.prepare_run_dir(to_dict(cfg), cfg.train.run_dir)
        self.sharding = builder.build_sharding(cfg.mesh)
        self.tokenizer = builder.build_tokenizer(cfg.model, self.run_dir)
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError("r1jax-sft renders conversations with the tokenizer's chat "
                              f"template, and {cfg.model.tokenizer or cfg.model.path!r} has "
                              "none")
        self.stages: list[list[dict]] = []
        self.stage_counts: list[dict] = []
        if s.stages:
            for k, stage in enumerate(s.stages):
                examples, counts = load_stage(cfg, stage, k)
                self.stages.append(examples)
                self.stage_counts.append(counts)
            self.examples = [ex for stage in self.stages for ex in stage]
            stream = sum(st.epochs * len(ex) for st, ex in zip(s.stages, self.stages))
            self.total_steps = s.steps or math.ceil(stream / s.batch_size)
        else:
            self.examples, self.load_stats = load_sft_examples(cfg)
            self.total_steps = s.steps or s.epochs * math.ceil(len(self.examples)
                                                                / s.batch_size)
        if self.total_steps < 1:
            raise ConfigError("set sft.steps or sft.epochs (both are 0)")
        model = builder.build_policy(cfg.model, self.sharding, self.tokenizer)
        self.model_config = model.config
        self.held_out, self._pool = self._held_out(model), None
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
        self.stage = 0  # the curriculum stage of the last batch
        self.summary: dict = {}
        self._stop_requested = False

    def _held_out(self, model: Decoder) -> Optional[HeldOut]:
        """The periodic held-out evaluation (`eval.source`, `eval.every`), or None."""
        cfg = self.cfg
        if cfg.eval.source is None:
            return None
        from r1jax.data.templates import make_template
        from r1jax.models.tokenizer import stop_token_ids
        from r1jax.sampling import Sampler
        stops = stop_token_ids(self.tokenizer, cfg.model.path)
        pad = self.tokenizer.pad_token_id
        sampler = Sampler(model, max_prompt_len=cfg.data.max_prompt_tokens,
                          max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                          eos_token_ids=stops, pad_id=stops[0] if pad is None else pad,
                          truncate_prompts=True)
        self._pool = builder.build_reward_pool(cfg.rewards, cfg.data)
        return HeldOut(cfg, self.tokenizer, make_template(cfg.data.template,
                                                          cfg.data.system_prompt),
                       sampler, self._pool)

    def evaluate(self, tag: str, writer: MetricsWriter) -> Optional[dict]:
        """Held-out evaluation of the current parameters, logged as `eval/*` at this step."""
        if self.held_out is None:
            return None
        report = self.held_out(self.state["params"], tag, self.run_dir)
        if report:
            writer.write(self.step, {f"eval/{k}": v for k, v in report.items()},
                         advance=False)
            writer.note(f"held-out {tag}: pass@1 {report['pass@1']:.3f} over "
                        f"{report['problems']} problems")
        return report

    # ------------------------------------------------------------------------------------
    def next_batch(self) -> tuple[sft.SFTBatch, sft.PackStats]:
        """The next batch_size conversations, rendered and packed, and the packer's stats;
        the batch's rows are padded (with empty rows) to a power of two times (microbatches x
        batch parallelism), so few shapes compile."""
        s = self.cfg.sft
        if self.stages:
            idx = curriculum_indices(self.position, s.batch_size,
                                     [len(x) for x in self.stages],
                                     [st.epochs for st in s.stages], s.seed)
            chosen = [self.stages[k][i] for k, i in idx]
            self.stage = idx[-1][0]
        else:
            chosen = [self.examples[i] for i in stream_indices(
                self.position, s.batch_size, len(self.examples), s.seed)]
        self.position += s.batch_size
        rendered = [sft.render_conversation(self.tokenizer, ex["messages"]) for ex in chosen]
        return sft.pack_batch(rendered, s.max_len, row_unit=self.row_unit, pad_id=self.pad_id,
                              overflow=s.overflow)

    def train_step(self) -> dict:
        start = time.perf_counter()
        batch, stats = self.next_batch()
        self.state, m = self._update(self.state, jax.device_put(batch, self.batch_sharding))
        m = {k: float(v) for k, v in distributed.to_host(m).items()}
        lr = float(self.schedule(self.step))
        self.step += 1
        return {"sft/loss": m["sft/loss"], "sft/tokens": m["sft/tokens"],
                "grad_norm": m["sft/grad_norm"], "skipped_updates": m["sft/skipped"],
                "lr": lr, "sft/examples": float(stats.examples),
                "sft/truncated": float(stats.truncated), "sft/dropped": float(stats.dropped),
                "sft/rows": float(stats.rows), "sft/packing_efficiency": stats.efficiency,
                "sft/batch_rows": float(batch.tokens.shape[0]),
                **({"sft/stage": float(self.stage)} if self.stages else
                   {"epoch": self.position / len(self.examples)}),
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
            if self.step == 0 and self.held_out is not None:
                self.summary["eval_before"] = self.evaluate(f"before_{self.PHASE}", writer)
            while self.step < self.total_steps:
                metrics = self.train_step()
                writer.write(self.step, metrics)
                self.summary.setdefault("first_loss", metrics[self.LOSS_METRIC])
                self.summary["loss"] = metrics[self.LOSS_METRIC]
                if distributed.any_process(self._stop_requested):  # all stop at this step
                    writer.note(f"SIGTERM: saving a checkpoint at step {self.step} and exiting")
                    self.save(wait=True)
                    self.summary["stopped_at"] = self.step
                    return self.summary
                if cfg.eval.every and self.step % cfg.eval.every == 0 \
                        and self.step < self.total_steps:
                    self.evaluate(f"step_{self.step}", writer)
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save()
            if self.held_out is not None:
                after = self.evaluate(f"after_{self.PHASE}", writer)
                self.summary["eval_after"] = after
                before = self.summary.get("eval_before")
                if before and after:
                    self.summary["accuracy_gain_points"] = 100 * (after["pass@1"]
                                                                  - before["pass@1"])
            self.summary.update(steps=self.step, examples=len(self.examples))
            if self.stages:
                self.summary["stages"] = [dict(c, examples=len(x)) for c, x in
                                          zip(self.stage_counts, self.stages)]
            self.save(wait=True)
            if cfg.train.export_hf:
                self.summary["export"] = self.export(os.path.join(self.run_dir, "export"))
            if jax.process_index() == 0:
                try:
                    from r1jax import plot
                    self.summary["plot"] = plot.plot_run(self.run_dir)
                except (ImportError, ValueError) as e:  # no matplotlib, or no curve to draw
                    log.warning("no curves PNG: %s", e)
                with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                    json.dump(self.summary, f, indent=2, default=float)
            return self.summary
        finally:
            signal.signal(signal.SIGTERM, previous)
            writer.close()
            self.checkpointer.wait()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self.checkpointer.close()

    def export(self, out_dir: str) -> str:
        """The current policy as a Hugging Face directory (atomically), with the tokenizer."""
        model = Decoder(self.model_config, params=self.state["params"], sharding=self.sharding,
                        source_dir=self._source[0], source_config=self._source[1])
        return save_hf(model, out_dir, tokenizer=self.tokenizer)

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_requested = True


def run_command(argv: Optional[list], tool: str, example: str, run_class: type) -> int:
    """The command line of `tool` (r1jax-sft, r1jax-dpo): the config, the processes of a
    multi-host job (`distributed`), `run_class(cfg).run()`, the summary on stdout."""
    import sys
    argv = list(sys.argv if argv is None else argv)
    spec, overrides = config_args(argv, tool, example)
    if spec is None:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from r1jax.data.sources import DataError
    try:
        cfg = load_config(spec, overrides)
        if distributed.initialize(cfg.distributed):
            distributed.watch_processes()
        run = run_class(cfg)
        try:
            summary = run.run()
        except Exception as e:  # noqa: BLE001 - a lost process ends the job with its name
            distributed.exit_if_peer_lost(e)
            raise
        finally:
            run.close()
    except (ConfigError, DataError) as e:
        print(f"{tool}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=float))
    return 0


def main(argv: Optional[list] = None) -> int:
    """Entry point of `r1jax-sft --config=FILE[:ARG] [--config.key=value ...]`."""
    return run_command(argv, "r1jax-sft", "configs/sft/FILE.py", SFTRun)


if __name__ == "__main__":
    raise SystemExit(main())

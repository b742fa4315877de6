"""The one orchestrator: [SFT warm start] -> (rollout -> reward -> advantage -> update)* -> export.

Every process of the job runs this same program over the same mesh: the policy parameters,
optimizer state and (when kl_beta > 0) frozen reference parameters are sharded arrays by the
rules of r1jax/sharding.py, and the sampler reads exactly the arrays the update writes.

    r1jax-train --config=configs/demo_cpu.py
    r1jax-train --config=configs/dapo_qwen2_5_math_7b.py --config.train.run_dir=/ckpt/run1
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Optional

import jax
import numpy as np

from r1jax import builder, checkpoint, distributed
from r1jax.config import (ConfigError, RunConfig, check_resume, config_args, load_config,
                          to_dict)
from r1jax.data import make_prompt_iterator
from r1jax.evaluation.held_out import HeldOut
from r1jax.metrics import MetricsWriter
from r1jax.models import save_hf
from r1jax.models.decoder import Decoder
from r1jax.models.tokenizer import stop_token_ids
from r1jax.rl import dapo, steps
from r1jax.rl.rollout import generate_batch, merge_groups, score_batch
from r1jax.sampling import Sampler

log = logging.getLogger("r1jax.train")


class TrainingStopped(RuntimeError):
    """Training cannot go on (non-finite updates, dynamic sampling exhausted); a checkpoint
    was saved first."""


class Trainer:
    """Holds the run's state and runs it; `Trainer(cfg).run()` is the whole job."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run_dir = distributed.prepare_run_dir(to_dict(cfg), cfg.train.run_dir)
        self.sharding = builder.build_sharding(cfg.mesh)
        self.tokenizer = builder.build_tokenizer(cfg.model, self.run_dir)
        model = builder.build_policy(cfg.model, self.sharding, self.tokenizer)
        self.model_config = model.config
        self._source = (model.source_dir, model.source_config)
        # Completions stop on the same tokens as in r1jax-eval (EOS, end-of-turn, the
        # checkpoint's generation_config.json); the warm start ends solutions with EOS.
        self.stop_ids = stop_token_ids(self.tokenizer, cfg.model.path)
        self.eos_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None \
            else self.stop_ids[0]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.eos_id
        max_new = max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)
        self.sampler = Sampler(model, max_prompt_len=cfg.data.max_prompt_tokens,
                               max_new_tokens=max_new, eos_token_ids=self.stop_ids,
                               pad_id=self.pad_id, truncate_prompts=cfg.rollout.truncate_prompts,
                               max_slots=cfg.rollout.max_slots)
        self.pool = builder.build_reward_pool(cfg.rewards, cfg.data, self.sharding)
        self.accuracy_name = builder.accuracy_names(cfg.rewards, cfg.data)
        # Every process holds each generation batch's whole prompt list (token ids, a few KB):
        # the host decisions made from it agree, and the data order does not depend on the
        # number of processes. Device arrays built from it hold each process's own shards.
        gen_prompts = cfg.train.gen_prompts_per_batch or cfg.train.prompts_per_step
        if cfg.data.mixture:  # no warm start, no held-out set (config validation)
            self.train_source = None
            self.data = builder.build_mixture_iterator(cfg.data, self.tokenizer, gen_prompts)
        else:
            self.train_source = builder.build_train_source(cfg.data)
            self.data = make_prompt_iterator(
                self.train_source, self.tokenizer, self._template(), gen_prompts,
                cfg.data.seed, max_prompt_tokens=cfg.data.max_prompt_tokens)
        self.held_out = HeldOut(cfg, self.tokenizer, self._template(), self.sampler, self.pool)
        self.rl = steps.RLSteps(self.model_config, cfg, self.sharding, model.params)
        del model  # its arrays now belong to the train state (donated by the update)
        self.checkpointer = checkpoint.Checkpointer(
            os.path.join(self.run_dir, "checkpoints"), keep=cfg.train.keep_checkpoints,
            async_save=cfg.train.async_checkpoint)
        self.sft_checkpointer = checkpoint.Checkpointer(
            os.path.join(self.run_dir, "sft_checkpoints"), keep=1, async_save=False)
        self.step = 0
        self.summary: dict = {}
        self._stop_requested = False
        self._consecutive_skips = 0

    # ------------------------------------------------------------------------------------
    def _template(self):
        from r1jax.data.templates import make_template
        return make_template(self.cfg.data.template, self.cfg.data.system_prompt)

    def _seed(self, step: int, gen_batch: int) -> int:
        return (self.cfg.train.seed * 1_000_003 + step * 1009 + gen_batch) % (2**31 - 1)

    # ------------------------------------------------------------------------------------
    def evaluate(self, tag: str) -> Optional[dict]:
        """Held-out evaluation with the current params; writes eval/<tag>.json(l)."""
        return self.held_out(self.rl.params, tag, self.run_dir)

    def save(self, wait: bool = False) -> None:
        meta = {"step": self.step, "summary": self.summary, "config": to_dict(self.cfg)}
        self.checkpointer.save(self.step, self.rl.checkpoint_tree(), self.data.get_state(),
                               meta)
        if wait:
            self.checkpointer.wait()

    def restore(self) -> bool:
        """Resumes from the latest checkpoint, if any; returns whether it did."""
        latest = self.checkpointer.latest_step()
        if latest is None or not self.cfg.train.resume:
            return False
        changed = check_resume(self.checkpointer.meta(latest).get("config"), self.cfg)
        if changed:
            log.info("resuming with changed %s", ", ".join(changed))
        tree, data_state, meta = self.checkpointer.restore(
            latest, checkpoint.abstract_like(self.rl.checkpoint_tree()))
        self.rl.load_checkpoint_tree(tree)
        self.data.set_state(data_state)
        self.step = int(meta["step"])
        self.summary = meta.get("summary", {})
        log.info("resumed from %s at step %d", self.checkpointer.directory, self.step)
        return True

    # ------------------------------------------------------------------------------------
    def warm_start(self, writer: MetricsWriter) -> bool:
        """Supervised cold start on the training examples' worked solutions.

        Continues from the warm start's own checkpoint (`run_dir/sft_checkpoints`) when a
        preempted run left one. Returns False when SIGTERM stopped it: the warm start's
        state (parameters, its optimizer, data position) is saved before returning.
        """
        s = self.cfg.sft
        it = make_prompt_iterator(self.train_source, self.tokenizer, self._template(),
                                  s.batch_size, s.seed, max_prompt_tokens=self.cfg.data.max_prompt_tokens)
        start, state = 0, None
        latest = self.sft_checkpointer.latest_step() if self.cfg.train.resume else None
        if latest is not None:
            check_resume(self.sft_checkpointer.meta(latest).get("config"), self.cfg)
            state, data_state, _ = self.sft_checkpointer.restore(
                latest, self.rl.abstract_sft_state(s))
            it.set_state(data_state)
            start = latest
            writer.note(f"warm start resumed at SFT step {start}")
        sft_metrics, stopped = self.rl.run_sft(
            it, s, self.tokenizer, self.eos_id, self.pad_id, self.cfg.rollout.max_new_tokens,
            start=start, state=state, stop=self._stop_everywhere)
        self.summary["sft"] = sft_metrics
        if stopped is not None:
            done = sft_metrics["steps"]
            writer.note(f"SIGTERM: saving the warm start at SFT step {done} and exiting")
            self.sft_checkpointer.save(done, stopped, it.get_state(),
                                       {"sft_step": done, "config": to_dict(self.cfg)})
            self.sft_checkpointer.wait()
            return False
        writer.note(f"warm start: {s.steps} SFT steps, final loss {sft_metrics['loss']:.4f}")
        return True

    def collect(self, step: int) -> tuple[list, dict]:
        """Generation batches until the step's groups are gathered (DAPO dynamic sampling)."""
        cfg = self.cfg
        g = cfg.rollout.group_size
        sampling = dict(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                        top_k=cfg.rollout.top_k, min_p=cfg.rollout.min_p)
        overlong = None
        if cfg.algo.overlong_buffer_len:
            overlong = (cfg.algo.overlong_buffer_len, cfg.algo.overlong_penalty_factor)
        ds = dapo.DynamicSampler(cfg.train.prompts_per_step, g, cfg.algo.max_num_gen_batches,
                                 cfg.algo.min_train_prompts) if cfg.algo.dynamic_sampling \
            else None
        if self.cfg.data.mixture:
            self.data.set_step(step)  # the curriculum's task weights of this step
        if cfg.rollout.max_slots is not None:
            return self._collect_streaming(step, ds, sampling, overlong)
        gens = []
        while True:
            gen = generate_batch(self.sampler, self.tokenizer, self.pool, next(self.data),
                                 params=self.rl.params, group_size=g,
                                 max_new_tokens=cfg.rollout.max_new_tokens, sampling=sampling,
                                 seed=self._seed(step, len(gens)),
                                 accuracy_name=self.accuracy_name, overlong=overlong)
            gens.append(gen)
            payloads = [gen.group(p, g) for p in range(len(gen.examples))]
            if ds is None:
                return payloads, steps.rollout_metrics(gens, None)
            # DAPO filters on accuracy (each group on its own task's in a mixture): groups
            # all correct or all wrong carry no signal.
            if ds.add(gen.accuracy, payloads, correct=gen.correct) is not \
                    dapo.Status.NEED_MORE:
                break
        try:
            groups, ds_stats = ds.take()
        except dapo.DynamicSamplingError as e:
            self.save(wait=True)
            raise TrainingStopped(f"{e} (checkpoint saved at step {self.step})") from e
        return groups, steps.rollout_metrics(gens, ds_stats)

    def _collect_streaming(self, step: int, ds: Optional[dapo.DynamicSampler],
                           sampling: dict, overlong) -> tuple[list, dict]:
        """`collect` on the engine's stream (README "Streaming rollout").

        Generation batches are drawn from the data only as the engine's prompt queue runs
        low, at most max_num_gen_batches of them (0: no cap). While the device decodes the
        next `rollout.stream_steps` steps, the host scores the groups that finished in the
        previous ones and hands them to dynamic sampling in the order they finished. Once the
        step has its groups, groups still decoding are dropped and prompts not yet started
        are left unused (both counted); the next step draws fresh batches, so what a step
        sees depends only on the data order, the config and what the device computed.
        """
        cfg = self.cfg
        g = cfg.rollout.group_size
        stream = self.sampler.stream(n=g, max_new_tokens=cfg.rollout.max_new_tokens,
                                     seed=self._seed(step, 0), params=self.rl.params,
                                     segment_steps=cfg.rollout.stream_steps, **sampling)
        cap = cfg.algo.max_num_gen_batches if ds is not None else 1
        low = max(-(-stream.stats["slots"] // g), self.sampler._parallelism)
        feed, drawn, gens, payloads = [], 0, [], {}
        status = dapo.Status.NEED_MORE

        def top_up():
            nonlocal drawn
            while stream.waiting < low and (not cap or drawn < cap):
                batch = next(self.data)
                feed.extend(batch)
                stream.add([e["prompt_ids"] for e in batch])
                drawn += 1
                if ds is not None:
                    ds.note_batch()

        top_up()
        stream.dispatch()
        while status is dapo.Status.NEED_MORE:
            start = time.perf_counter()
            finished = stream.collect()
            waited = time.perf_counter() - start
            top_up()
            more = stream.dispatch()  # decodes while the host scores
            if not finished and not more and ds is not None:
                status = ds.add(np.zeros(0), [], last=True)  # nothing more will come
            elif finished:
                prompts = [p for p, _ in finished]
                out = merge_groups([o for _, o in finished])
                gen = score_batch(self.tokenizer, self.pool, [feed[p] for p in prompts], out,
                                  max_new_tokens=cfg.rollout.max_new_tokens,
                                  accuracy_name=self.accuracy_name, overlong=overlong,
                                  rollout_s=waited)
                gens.append(gen)
                groups = [gen.group(i, g) for i in range(len(prompts))]
                if ds is None:
                    payloads.update(zip(prompts, groups))
                else:
                    status = ds.add(gen.accuracy, groups, correct=gen.correct, last=not more)
            if ds is None and not more:
                break
        # The segment dispatched during the last scoring: its groups are dropped too.
        extra = stream.collect()
        unfinished = stream.in_flight + len(extra)
        unstarted = stream.waiting
        if ds is None:
            result = [payloads[p] for p in sorted(payloads)], None
        else:
            try:
                result = ds.take()
            except dapo.DynamicSamplingError as e:
                self.save(wait=True)
                raise TrainingStopped(f"{e} (checkpoint saved at step {self.step})") from e
        metrics = steps.rollout_metrics(gens, result[1])
        metrics["perf/slot_utilization"] = stream.stats["slot_utilization"]
        if ds is not None:
            metrics["dynamic_sampling/groups_unfinished"] = float(unfinished)
            metrics["dynamic_sampling/prompts_unstarted"] = float(unstarted)
        return result[0], metrics

    def train_step(self, step: int) -> dict:
        start = time.perf_counter()
        groups, metrics = self.collect(step)
        update_start = time.perf_counter()
        batch = self.rl.make_batch(groups, self.pad_id)
        update_metrics = self.rl.update(batch)
        metrics.update(update_metrics)
        metrics["time/update_s"] = time.perf_counter() - update_start
        metrics["time/step_s"] = time.perf_counter() - start
        return metrics

    def _check_skips(self, metrics: dict) -> None:
        """Stops (after a checkpoint) when too many steps in a row skipped every update."""
        algo = self.cfg.algo
        attempted = algo.num_iterations * algo.minibatches - metrics["empty_minibatches"]
        if metrics["skipped_updates"] >= attempted:
            self._consecutive_skips += 1
        else:
            self._consecutive_skips = 0
        if self._consecutive_skips >= self.cfg.train.max_consecutive_skips:
            self.save(wait=True)
            raise TrainingStopped(f"{self._consecutive_skips} consecutive steps had only "
                                  "non-finite losses or gradients (all updates skipped); "
                                  f"checkpoint saved at step {self.step}")

    # ------------------------------------------------------------------------------------
    def run(self) -> dict:
        """The whole job; returns the summary (also written to run_dir/summary.json)."""
        cfg = self.cfg
        resumed = self.restore()
        if self.train_source is not None:  # rows read, kept, and dropped by reason
            self.summary["data"] = self.train_source.stats.as_dict()
        writer = MetricsWriter.for_run(self.run_dir, cfg, total_steps=cfg.train.steps,
                                       start_step=self.step)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            if not resumed:
                if cfg.sft.steps and not self.warm_start(writer):
                    self.summary["stopped_at"] = self.step
                    self.summary["stopped_in"] = "sft"
                    return self.summary
                self.rl.reset_optimizer()
                self.summary["eval_before"] = self.evaluate("before_rl")
                self._print_eval("before RL", self.summary["eval_before"], writer)
                self._log_eval(writer, self.summary["eval_before"])
                self.save(wait=True)
            if self.summary.pop("pending_eval", None) == self.step:
                # The evaluation a preempted run owed at this step, run after its save.
                self._log_eval(writer, self.evaluate(f"step_{self.step}"))
            while self.step < cfg.train.steps:
                metrics = self.train_step(self.step)
                self.step += 1
                writer.write(self.step, metrics)
                self._check_skips(metrics)
                eval_due = bool(cfg.eval.every and self.step % cfg.eval.every == 0
                                and self.step < cfg.train.steps)
                if self._stop_everywhere():  # save first: an evaluation may outlast the grace
                    writer.note(f"SIGTERM: saving a checkpoint at step {self.step} and exiting")
                    if eval_due:
                        self.summary["pending_eval"] = self.step
                    self.save(wait=True)
                    self.summary["stopped_at"] = self.step
                    return self.summary
                if eval_due:
                    self._log_eval(writer, self.evaluate(f"step_{self.step}"))
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save()
            self.summary["eval_after"] = self.evaluate("after_rl")
            self._print_eval("after RL", self.summary["eval_after"], writer)
            self._log_eval(writer, self.summary["eval_after"])
            self.save(wait=True)
            if cfg.train.export_hf:
                self.summary["export"] = self.export(os.path.join(self.run_dir, "export"))
            self._write_summary(writer)
            return self.summary
        finally:
            signal.signal(signal.SIGTERM, previous)
            writer.close()
            self.checkpointer.wait()

    def close(self) -> None:
        self.pool.close()
        self.checkpointer.close()
        self.sft_checkpointer.close()

    def export(self, out_dir: str) -> str:
        """Writes the current policy as a Hugging Face directory (atomically)."""
        model = Decoder(self.model_config, params=self.rl.params, sharding=self.sharding,
                        source_dir=self._source[0], source_config=self._source[1])
        tokenizer = self.tokenizer if self.cfg.model.char_vocab else None
        return save_hf(model, out_dir, tokenizer=tokenizer)

    def _log_eval(self, writer: MetricsWriter, report: Optional[dict]) -> None:
        if report:
            writer.write(self.step, {f"eval/{k}": v for k, v in report.items()},
                         advance=False)

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_requested = True

    def _stop_everywhere(self) -> bool:
        """Whether SIGTERM reached any process (checked once per step by all of them, so
        every process stops after the same step and they save one checkpoint together)."""
        return distributed.any_process(self._stop_requested)

    def _print_eval(self, when: str, report: Optional[dict], writer: MetricsWriter) -> None:
        if report:
            writer.note(f"held-out {when}: pass@1 {report['pass@1']:.3f} over "
                        f"{report['problems']} problems")

    def _write_summary(self, writer: MetricsWriter) -> None:
        before = (self.summary.get("eval_before") or {}).get("pass@1")
        after = (self.summary.get("eval_after") or {}).get("pass@1")
        if before is not None and after is not None:
            self.summary["accuracy_gain_points"] = 100 * (after - before)
            writer.note(f"held-out accuracy: before RL {before:.1%} | after RL {after:.1%} "
                        f"| gain {100 * (after - before):+.1f} points")
        if jax.process_index() == 0:
            with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                json.dump(self.summary, f, indent=2, default=float)
            try:
                from r1jax import plot
                self.summary["plot"] = plot.plot_run(self.run_dir)
            except ImportError as e:  # matplotlib missing: the run itself is complete
                log.warning("no reward curve PNG: %s", e)


def main(argv: Optional[list] = None) -> int:
    """Entry point of `r1jax-train --config=FILE[:ARG] [--config.key=value ...]`."""
    import sys
    argv = list(sys.argv if argv is None else argv)
    spec, overrides = config_args(argv, "r1jax-train", "configs/FILE.py")
    if spec is None:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:  # a bad config, or a checkpoint the config may not resume: the message, no trace
        cfg = load_config(spec, overrides)
        if distributed.initialize(cfg.distributed):
            distributed.watch_processes()
        trainer = Trainer(cfg)
        try:
            summary = trainer.run()
        except Exception as e:  # noqa: BLE001 - a lost process ends the job with its name
            distributed.exit_if_peer_lost(e)
            raise
        finally:
            trainer.close()
    except ConfigError as e:
        print(f"r1jax-train: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "sft"}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

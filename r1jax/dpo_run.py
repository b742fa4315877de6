"""`r1jax-dpo`: direct preference optimisation on packed pairs.

    r1jax-dpo --config=configs/dpo/light_r1_dpo.py --config.model.path=/ckpt/sft2/export \\
        --config.data.source=/data/light_r1_dpo.jsonl --config.train.run_dir=/ckpt/dpo

Each optimizer step takes the next `dpo.batch_size` pairs of the data stream (an epoch is a
permutation of the pairs by `dpo.seed` and the epoch number), renders them
(`r1jax.dpo.tokenize_pair`), packs them into `dpo.microbatches` microbatches of rows of
`dpo.max_len` tokens, fills in the reference log-probs (from a frozen copy of the starting
parameters, or the ones stored with the pairs) and runs one update through the machinery
RL and SFT share (`r1jax.dpo.make_dpo_update`). Metrics carry TRL's names (`loss`,
`rewards/chosen`, ...), each the mean over the step's pairs before its update. Checkpoints,
resume, SIGTERM, held-out evaluation (`eval.*`) and the Hugging Face export are
`r1jax-sft`'s (`SFTRun`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import builder, checkpoint, distributed, dpo
from r1jax.config import ConfigError, RunConfig, to_dict
from r1jax.data.preference import load_pairs, pairs_from_solutions
from r1jax.models.decoder import param_shardings
from r1jax.rl.steps import like_params
from r1jax.rl.update import make_optimizer, make_schedule
from r1jax.sft_run import SFTRun, run_command, stream_indices

log = logging.getLogger("r1jax.dpo")


def load_preference_pairs(cfg: RunConfig) -> tuple[list[dict], dict]:
    """The pairs of `data.source` and what loading counted: a JSONL / Parquet file in
    `dpo.layout`, or the name of a dataset of r1jax.data with worked solutions
    (`pairs_from_solutions`: its own solution chosen, another example's rejected).

    Raises:
      ConfigError: no pair, or reference "precomputed" with pairs lacking stored numbers.
    """
    d, o = cfg.data, cfg.dpo
    path = d.source
    if d.data_dir and not os.path.isabs(path):
        path = os.path.join(d.data_dir, path)
    if os.path.splitext(path.removesuffix(".gz"))[1].lower() in (".jsonl", ".json",
                                                                 ".parquet"):
        if not os.path.isfile(path):
            raise ConfigError(f"data.source: preference file not found: {path}")
        options = dict(chosen=o.sample_chosen, rejected=o.sample_rejected, seed=o.seed)
        pairs, stats = load_pairs(path, o.layout, strict=d.strict, limit=d.limit, **options)
        counts = stats if isinstance(stats, dict) else {
            "rows": stats.rows, "kept": stats.kept, **dict(stats.skipped)}
    else:  # a dataset of r1jax.data with worked solutions: synthetic pairs
        source = builder.build_train_source(d)
        pairs = pairs_from_solutions([source[i] for i in range(len(source))], o.seed)
        counts = {"examples": len(source), "pairs": len(pairs)}
    if not pairs:
        raise ConfigError(f"data.source {path}: no preference pair ({counts})")
    if o.reference == "precomputed":
        missing = sum(not {"ref_chosen_logps", "ref_rejected_logps"} <= set(p) for p in pairs)
        if missing:
            raise ConfigError(f"dpo.reference='precomputed', but {missing} of {len(pairs)} "
                              "pairs lack ref_chosen_logps / ref_rejected_logps (use "
                              "dpo.reference='policy')")
    return pairs, counts


class DPORun(SFTRun):
    """One r1jax-dpo job: `DPORun(cfg).run()`; the loop, checkpoints, evaluation and export
    are SFTRun's, the data, batches and update its own."""

    LOSS_METRIC = "loss"
    PHASE = "dpo"

    def __init__(self, cfg: RunConfig):
        o = cfg.dpo
        self.cfg = cfg
        self.run_dir = distributed.prepare_run_dir(to_dict(cfg), cfg.train.run_dir)
        self.sharding = builder.build_sharding(cfg.mesh)
        self.tokenizer = builder.build_tokenizer(cfg.model, self.run_dir)
        self.stages, self.stage_counts, self.stage = [], [], 0
        self.examples, self.load_stats = load_preference_pairs(cfg)
        chat = any(not isinstance(p.get(k), str) for p in self.examples
                   for k in ("chosen", "rejected"))
        if chat and getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError("the pairs hold message lists, rendered with the tokenizer's "
                              f"chat template, and {cfg.model.tokenizer or cfg.model.path!r} "
                              "has none")
        self.total_steps = o.steps or o.epochs * math.ceil(len(self.examples) / o.batch_size)
        if self.total_steps < 1:
            raise ConfigError("set dpo.steps or dpo.epochs (both are 0)")
        model = builder.build_policy(cfg.model, self.sharding, self.tokenizer)
        self.model_config = model.config
        self.held_out, self._pool = self._held_out(model), None
        self._source = (model.source_dir, model.source_config)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self.tx = make_optimizer(cfg.optim, self.total_steps)
        self.schedule = make_schedule(cfg.optim, self.total_steps)
        self._init_state(model)
        del model
        self._batch_shardings()
        self.pairs_per_piece = -(-o.batch_size // o.microbatches)
        self._reference = jax.jit(dpo.make_reference_fn(self.model_config, self.sharding,
                                                        o.microbatches))
        self._update = jax.jit(
            dpo.make_dpo_update(self.model_config, self.tx, self.sharding, beta=o.beta,
                                loss_type=o.loss_type, label_smoothing=o.label_smoothing,
                                sft_weight=o.sft_weight,
                                microbatches=o.microbatches),
            donate_argnums=0, out_shardings=(self.state_sharding, None))
        self.checkpointer = checkpoint.Checkpointer(
            os.path.join(self.run_dir, "checkpoints"), keep=cfg.train.keep_checkpoints,
            async_save=cfg.train.async_checkpoint)
        self.step = 0
        self.position = 0  # pairs of the stream consumed
        self.summary: dict = {"data": self.load_stats}
        self._stop_requested = False

    def _init_state(self, model) -> None:
        """Train state (params, AdamW state, step) and, with reference "policy", a frozen
        copy of the starting parameters made before the state takes (donates) them."""
        replicated = NamedSharding(self.sharding.mesh, P())
        p_sharding = param_shardings(self.model_config, self.sharding)
        abstract = jax.eval_shape(self.tx.init, model.params)
        self.state_sharding = {"params": p_sharding,
                               "opt_state": like_params(abstract, p_sharding, replicated),
                               "step": replicated}
        self.ref_params = None
        if self.cfg.dpo.reference == "policy":
            self.ref_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                      out_shardings=p_sharding)(model.params)
        init = jax.jit(lambda p: {"params": p, "opt_state": self.tx.init(p),
                                  "step": jnp.int32(0)},
                       out_shardings=self.state_sharding, donate_argnums=0)
        self.state = init(model.params)

    def _batch_shardings(self) -> None:
        """Rows over the batch axes; the per-pair arrays replicated."""
        mesh = self.sharding.mesh
        rows = NamedSharding(mesh, P(self.sharding.batch_axes or None))
        pairs = NamedSharding(mesh, P())
        self.row_unit = self.sharding.batch_parallelism
        self.batch_sharding = dpo.DPOBatch(
            tokens=rows, positions=rows, segment_ids=rows, targets=rows, weights=rows,
            sequence_ids=rows, ref_chosen_logps=pairs, ref_rejected_logps=pairs,
            pair_weights=pairs)

    def next_batch(self):
        """The next batch_size pairs, rendered and packed, and the packer's stats (per pair:
        examples, truncated, dropped)."""
        o = self.cfg.dpo
        chosen = [self.examples[i] for i in stream_indices(self.position, o.batch_size,
                                                           len(self.examples), o.seed)]
        self.position += o.batch_size
        tokens = [dpo.tokenize_pair(self.tokenizer, pair) for pair in chosen]
        return dpo.pack_pairs(tokens, o.max_len, pieces=o.microbatches,
                              pairs_per_piece=self.pairs_per_piece, row_unit=self.row_unit,
                              pad_id=self.pad_id, overflow=o.overflow,
                              together=o.pair_in_one_row)

    def train_step(self) -> dict:
        start = time.perf_counter()
        batch, stats = self.next_batch()
        batch = jax.device_put(batch, self.batch_sharding)
        if self.ref_params is not None:
            batch = self._reference(self.ref_params, batch)
        self.state, m = self._update(self.state, batch)
        m = {k: float(v) for k, v in distributed.to_host(m).items()}
        lr = float(self.schedule(self.step))
        self.step += 1
        return {"loss": m["loss"], **{k: m[k] for k in dpo.METRICS},
                "grad_norm": m["grad_norm"], "skipped_updates": m["skipped"], "lr": lr,
                "dpo/pairs": m["pairs"], "dpo/sft_loss": m["sft_loss"],
                "dpo/truncated": float(stats.truncated),
                "dpo/dropped": float(stats.dropped), "dpo/rows": float(stats.rows),
                "dpo/packing_efficiency": stats.efficiency,
                "dpo/batch_rows": float(batch.tokens.shape[0]),
                "epoch": self.position / len(self.examples),
                "time/step_s": time.perf_counter() - start}


def main(argv: Optional[list] = None) -> int:
    """Entry point of `r1jax-dpo --config=FILE[:ARG] [--config.key=value ...]`."""
    return run_command(argv, "r1jax-dpo", "configs/dpo/FILE.py", DPORun)


if __name__ == "__main__":
    raise SystemExit(main())

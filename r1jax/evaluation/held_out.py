"""A training run's held-out evaluation (config `eval.*`), shared by r1jax-train and
r1jax-sft: the problems of `eval.source` (a generated task's test split, or a benchmark)
templated like the run's prompts, sampled from the run's current parameters and graded by
the run's accuracy reward; each evaluation writes `run_dir/eval/<tag>.json` and
`<tag>.samples.jsonl`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax

from r1jax import builder
from r1jax.config import RunConfig
from r1jax.data import make_prompt_iterator
from r1jax.evaluation.evaluate import evaluate, write_results


class HeldOut:
    """`HeldOut(cfg, tokenizer, template, sampler, pool)(params, tag, run_dir) -> report`.

    `problems` is None when the config has no `eval.source`; calls then return None.
    """

    def __init__(self, cfg: RunConfig, tokenizer: Any, template: Any, sampler: Any,
                 pool: Any):
        self.cfg, self.tokenizer, self.sampler, self.pool = cfg, tokenizer, sampler, pool
        self.problems: Optional[list] = None
        source = builder.build_eval_source(cfg.eval, cfg.data)
        if source is not None:
            it = make_prompt_iterator(source, tokenizer, template, 1, 0,
                                      max_prompt_tokens=cfg.data.max_prompt_tokens,
                                      num_epochs=1)
            self.problems = sorted((batch[0] for batch in it), key=lambda p: p["id"])

    def __call__(self, params: Any, tag: str, run_dir: str) -> Optional[dict]:
        if not self.problems:
            return None
        e = self.cfg.eval
        result = evaluate(self.sampler, self.tokenizer, self.problems, self.pool,
                          accuracy_name=self.cfg.rewards.accuracy, params=params,
                          n=e.n, temperature=e.temperature, top_p=e.top_p,
                          max_new_tokens=e.max_new_tokens or self.cfg.rollout.max_new_tokens,
                          seed=e.seed)
        if jax.process_index() == 0:
            write_results(os.path.join(run_dir, "eval"), tag, result)
        return result.report

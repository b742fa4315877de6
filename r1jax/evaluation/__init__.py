"""Evaluation of policies on math benchmarks: pass@k, maj@k, the `r1jax-eval` command.

    from r1jax.evaluation import evaluate, make_problems
    problems = make_problems(["What is 2+3?"], ["5"], tokenizer, template="qwen_math")
    report = evaluate(sampler, tokenizer, problems, n=8, temperature=0.6).report
"""

from r1jax.evaluation.evaluate import (EvalResult, combine_reports, evaluate, make_problems,
                                       prepare_problems, summarize, write_results)
from r1jax.evaluation.metrics import (maj_at_k, majority_answer, mean_maj_at_k,
                                      mean_pass_at_1, mean_pass_at_k, pass_at_k)
from r1jax.evaluation.policy import (Policy, PolicyError, load_checkpoint_policy,
                                     load_hf_policy, resolve_checkpoint)

__all__ = [
    "EvalResult", "combine_reports", "evaluate", "make_problems", "prepare_problems",
    "summarize", "write_results", "maj_at_k", "majority_answer", "mean_maj_at_k",
    "mean_pass_at_1", "mean_pass_at_k", "pass_at_k", "Policy", "PolicyError",
    "load_checkpoint_policy", "load_hf_policy", "resolve_checkpoint",
]

"""Native JAX sampling: prefill + decode over a KV cache, group sampling, exact log-probs."""

from r1jax.sampling.budget import BudgetForcing
from r1jax.sampling.processors import SamplingParams, filter_logits, sample
from r1jax.sampling.sampler import FINISH_REASONS, SampleOutput, Sampler
from r1jax.sampling.text import encode_prompts, generate_text

__all__ = ["BudgetForcing", "SamplingParams", "filter_logits", "sample", "FINISH_REASONS",
           "SampleOutput", "Sampler", "encode_prompts", "generate_text"]

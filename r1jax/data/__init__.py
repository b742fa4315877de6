"""Prompt data: JSONL / Parquet recipes, Countdown puzzles, templates, grain batch iterators.

Never imports r1jax.models; the tokenizer is passed in.
"""

from r1jax.data.countdown import countdown_question, generate_countdown
from r1jax.data.pipeline import FilterStats, PromptIterator, make_prompt_iterator, prepare_prompts
from r1jax.data.recipes import BENCHMARKS, RECIPES, field_recipe, load_benchmark, load_source
from r1jax.data.sources import BadRow, DataError, LoadStats, PromptSource, load_examples
from r1jax.data.templates import (QWEN_MATH_SYSTEM, R1_ZERO_INSTRUCTION, TEMPLATES,
                                  PromptTemplate, make_template)

__all__ = [
    "countdown_question", "generate_countdown", "FilterStats", "PromptIterator",
    "make_prompt_iterator", "prepare_prompts", "BENCHMARKS", "RECIPES", "field_recipe",
    "load_benchmark", "load_source", "BadRow", "DataError", "LoadStats", "PromptSource",
    "load_examples", "QWEN_MATH_SYSTEM", "R1_ZERO_INSTRUCTION", "TEMPLATES", "PromptTemplate",
    "make_template",
]

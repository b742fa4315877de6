"""r1jax: GRPO / DAPO reinforcement-learning training of reasoning LLMs in JAX.

    import r1jax
    model = r1jax.load_hf("/models/Qwen2.5-Math-1.5B")
    sampler = r1jax.Sampler(model, max_new_tokens=1024, eos_token_ids=[151645])
    out = sampler.generate(prompt_ids, n=8, temperature=1.0, seed=0)

Subpackages: models, sampling, rl (advantages, losses, dapo, logprobs), rewards, data,
evaluation; `r1jax.train.Trainer` runs a whole job.
"""

from r1jax.config import ConfigError, ModelConfig, RunConfig, load_config
from r1jax.models import (CheckpointError, Decoder, UnsupportedModelError, load_hf,
                          load_tokenizer, preset_config, save_hf)
from r1jax.sampling import BudgetForcing, SampleOutput, Sampler, generate_text

__version__ = "0.1.0"

__all__ = ["ConfigError", "ModelConfig", "RunConfig", "load_config", "CheckpointError",
           "Decoder", "UnsupportedModelError", "load_hf", "load_tokenizer", "preset_config",
           "save_hf", "BudgetForcing", "SampleOutput", "Sampler", "generate_text"]

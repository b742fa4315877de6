"""r1jax: GRPO / DAPO reinforcement-learning training of reasoning LLMs in JAX."""

from r1jax.config import ConfigError, ModelConfig
from r1jax.models import (CheckpointError, Decoder, UnsupportedModelError, load_hf,
                          load_tokenizer, preset_config, save_hf)

__version__ = "0.1.0"

__all__ = ["ConfigError", "ModelConfig", "CheckpointError", "Decoder",
           "UnsupportedModelError", "load_hf", "load_tokenizer", "preset_config", "save_hf"]

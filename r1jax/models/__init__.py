"""Decoder-only transformers (Llama 3 / Qwen2 / Qwen2.5 / Qwen3) and Hugging Face I/O."""

from r1jax.models.decoder import Decoder, forward, init_params, param_specs
from r1jax.models.hf_config import UnsupportedModelError, model_config_from_hf
from r1jax.models.hf_io import load_hf, save_hf
from r1jax.models.presets import PRESETS, preset_config
from r1jax.models.safetensors_io import CheckpointError
from r1jax.models.tokenizer import load_tokenizer

__all__ = ["Decoder", "forward", "init_params", "param_specs", "UnsupportedModelError",
           "model_config_from_hf", "load_hf", "save_hf", "PRESETS", "preset_config",
           "CheckpointError", "load_tokenizer"]

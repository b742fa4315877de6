"""Architectures of the published checkpoints r1jax targets, as config.json-style dicts.

`PUBLISHED_PARAMS` holds each model's parameter count as published (model cards and the
safetensors index totals); tests check `count_params` against it with `jax.eval_shape`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from r1jax.config import ModelConfig
from r1jax.models.hf_config import model_config_from_hf


def _qwen2(hidden, layers, heads, kv, mlp, vocab, tied, theta=1e6, max_pos=32768):
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "intermediate_size": mlp, "vocab_size": vocab,
            "tie_word_embeddings": tied, "rope_theta": theta, "rms_norm_eps": 1e-6,
            "max_position_embeddings": max_pos, "hidden_act": "silu",
            "use_sliding_window": False, "torch_dtype": "bfloat16"}


PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": _qwen2(896, 24, 14, 2, 4864, 151936, True),
    "qwen2.5-1.5b": _qwen2(1536, 28, 12, 2, 8960, 151936, True),
    "qwen2.5-3b": _qwen2(2048, 36, 16, 2, 11008, 151936, True),
    "qwen2.5-7b": _qwen2(3584, 28, 28, 4, 18944, 152064, False, max_pos=131072),
    "qwen2.5-32b": _qwen2(5120, 64, 40, 8, 27648, 152064, False, max_pos=131072),
    "qwen2.5-math-1.5b": _qwen2(1536, 28, 12, 2, 8960, 151936, True, theta=1e4,
                                max_pos=4096),
    "qwen2.5-math-7b": _qwen2(3584, 28, 28, 4, 18944, 152064, False, theta=1e4,
                              max_pos=4096),
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "torch_dtype": "bfloat16"},
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256,
        "tie_word_embeddings": True, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "hidden_act": "silu", "torch_dtype": "bfloat16"},
    "qwen3-8b": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936,
        "tie_word_embeddings": False, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 40960, "attention_bias": False, "hidden_act": "silu",
        "torch_dtype": "bfloat16"},
}

PUBLISHED_PARAMS = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-32b": 32_763_876_352,
    "qwen2.5-math-1.5b": 1_543_714_304,
    "qwen2.5-math-7b": 7_615_616_512,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.2-1b": 1_235_814_400,
    "qwen3-8b": 8_190_735_360,
}


def preset_for_path(path: str) -> Optional[str]:
    """The preset of a checkpoint directory named as its Hugging Face repository
    (/models/Qwen2.5-32B -> "qwen2.5-32b"; an "-Instruct" suffix names the same architecture:
    /models/Qwen2.5-7B-Instruct -> "qwen2.5-7b"), or None.

    For tools that need only the architecture (r1jax-fit) when the directory is not there.
    """
    name = os.path.basename(os.path.normpath(path)).lower()
    for candidate in (name, name.removesuffix("-instruct")):
        if candidate in PRESETS:
            return candidate
    return None


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """ModelConfig of a named preset; `overrides` set numerics fields (dtype, remat, ...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset '{name}' (known: {', '.join(sorted(PRESETS))})")
    return model_config_from_hf(PRESETS[name], **overrides)

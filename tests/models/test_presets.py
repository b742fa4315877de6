"""Full-size presets: parameter counts against the published numbers, without allocating."""

import pytest

from r1jax.models.decoder import abstract_params, count_params
from r1jax.models.presets import PRESETS, PUBLISHED_PARAMS, preset_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_count_matches_published(name):
    cfg = preset_config(name, param_dtype="bfloat16")
    assert count_params(cfg) == PUBLISHED_PARAMS[name]
    assert cfg.num_params == PUBLISHED_PARAMS[name]


def test_presets_carry_family_specific_features():
    llama = preset_config("llama-3.1-8b")
    assert llama.rope_scaling.kind == "llama3" and llama.rope_scaling.factor == 8.0
    assert not llama.qkv_bias and not llama.tie_embeddings
    qwen = preset_config("qwen2.5-1.5b")
    assert qwen.qkv_bias and qwen.tie_embeddings and qwen.rope_theta == 1e6
    assert "lm_head" not in abstract_params(qwen)
    assert preset_config("qwen2.5-math-7b").rope_theta == 1e4
    qwen3 = preset_config("qwen3-8b")
    assert qwen3.qk_norm and not qwen3.qkv_bias and qwen3.head_dim == 128


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model preset 'qwen9'"):
        preset_config("qwen9")

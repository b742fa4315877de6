"""config.json in both layouts (transformers 4.x hub files and 5.x), and unsupported features."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import r1jax
from r1jax.models.hf_config import UnsupportedModelError, model_config_from_hf
from tests.hf_models import hf_logits, left_padded_batch, make_hf_model

# The Llama-3.1-8B config.json as published on the hub (transformers 4.x layout).
LLAMA31_HUB = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
}


def to_v5_layout(hub: dict) -> dict:
    out = {k: v for k, v in hub.items() if k not in ("rope_theta", "rope_scaling",
                                                     "torch_dtype")}
    out["rope_parameters"] = dict(hub.get("rope_scaling") or {"rope_type": "default"},
                                  rope_theta=hub["rope_theta"])
    out["dtype"] = hub["torch_dtype"]
    return out


def test_both_layouts_give_the_same_config():
    old = model_config_from_hf(LLAMA31_HUB)
    new = model_config_from_hf(to_v5_layout(LLAMA31_HUB))
    assert old == new
    assert old.rope_theta == 500000.0 and old.rope_scaling.factor == 8.0
    assert old.rope_scaling.original_max_position_embeddings == 8192
    assert old.head_dim == 128 and old.num_kv_heads == 8 and old.rms_norm_eps == 1e-5


def test_hub_layout_config_json_loads_with_same_logits(tmp_path):
    hf_model = make_hf_model("llama")
    hf_model.save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    v5 = json.loads(cfg_path.read_text())
    assert "rope_parameters" in v5  # transformers 5 wrote the new layout
    v4 = {k: v for k, v in v5.items() if k not in ("rope_parameters", "dtype")}
    v4["rope_theta"] = v5["rope_parameters"]["rope_theta"]
    v4["rope_scaling"] = {k: v for k, v in v5["rope_parameters"].items() if k != "rope_theta"}
    v4["torch_dtype"] = "float32"
    cfg_path.write_text(json.dumps(v4))
    tokens, mask, positions = left_padded_batch()
    ref = hf_logits(hf_model, tokens, mask, positions)
    out = np.asarray(r1jax.load_hf(str(tmp_path))(jnp.asarray(tokens),
                                                  attention_mask=jnp.asarray(mask)))
    assert np.abs(out - ref)[mask.astype(bool)].max() <= 1e-4


def test_qwen2_sliding_window_flag_off_is_accepted():
    cfg = dict(LLAMA31_HUB, model_type="qwen2", architectures=["Qwen2ForCausalLM"],
               use_sliding_window=False, sliding_window=131072, max_window_layers=28)
    assert model_config_from_hf(cfg).qkv_bias


@pytest.mark.parametrize("change,field", [
    ({"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"]}, "model_type"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "model_type"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
    ({"num_experts": 64}, "num_experts"),
    ({"num_local_experts": 8}, "num_local_experts"),
    ({"layer_types": ["full_attention"] * 31 + ["sliding_attention"]}, "layer_types"),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
      "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 21},
     "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
])
def test_unsupported_features_raise_naming_the_field(change, field):
    with pytest.raises(UnsupportedModelError, match=f"field '{field}'"):
        model_config_from_hf(dict(LLAMA31_HUB, **change))


def test_missing_required_field_names_it():
    cfg = dict(LLAMA31_HUB)
    del cfg["hidden_size"]
    with pytest.raises(UnsupportedModelError, match="'hidden_size'"):
        model_config_from_hf(cfg)

"""Hugging Face config.json <-> ModelConfig, for both layouts users have on disk.

- transformers 4.x (the published Qwen2.5 / Llama 3 / Qwen3 checkpoints): top-level
  `rope_theta`, `rope_scaling` (`type` or `rope_type`), `torch_dtype`;
- transformers 5.x: `rope_parameters` ({rope_type, rope_theta, ...}), `dtype`, `layer_types`.

Anything the config asks for that the decoder does not implement (MoE, sliding-window layers,
YaRN / dynamic RoPE, other activations, ...) raises `UnsupportedModelError` naming the field.
Keys this module does not know are reported once in a warning and otherwise ignored.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from r1jax.config import ModelConfig, RopeScaling

log = logging.getLogger(__name__)

FAMILIES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# Keys that carry no meaning for the maths, or that this module reads.
_KNOWN_KEYS = {
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "rms_norm_eps", "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act",
    "max_position_embeddings", "rope_theta", "rope_scaling", "rope_parameters",
    "use_sliding_window", "sliding_window", "max_window_layers", "layer_types",
    "torch_dtype", "dtype", "transformers_version", "bos_token_id", "eos_token_id",
    "pad_token_id", "initializer_range", "use_cache", "attention_dropout", "pretraining_tp",
    "_name_or_path", "id2label", "label2id", "return_dict", "output_attentions",
    "output_hidden_states", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder",
    "tokenizer_class", "use_mrope", "output_router_logits", "router_aux_loss_coef",
    "tie_encoder_decoder", "torchscript", "quantization_config", "num_experts",
    "num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
    "shared_expert_intermediate_size", "mlp_only_layers", "partial_rotary_factor",
    "attn_logit_softcapping", "final_logit_softcapping", "no_rope_layers",
    "attention_chunk_size", "residual_dropout", "embd_pdrop", "resid_pdrop",
}

_SUPPORTED_ROPE = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """config.json asks for something the r1jax decoder does not implement."""


def _fail(field: str, value: Any, why: str) -> None:
    raise UnsupportedModelError(f"config.json field '{field}' = {value!r}: {why}")


def _family(hf: dict) -> str:
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type in FAMILIES:
        for a in archs:
            if a != FAMILIES[model_type]:
                _fail("architectures", archs, f"only {FAMILIES[model_type]} is supported for "
                      f"model_type '{model_type}'")
        return model_type
    if model_type is None:
        for fam, arch in FAMILIES.items():
            if archs == [arch]:
                return fam
    _fail("model_type", model_type, f"unsupported architecture (architectures={archs}); "
          f"supported model_type values: {sorted(FAMILIES)}")
    raise AssertionError


def _rope(hf: dict) -> tuple[float, Optional[RopeScaling]]:
    """(theta, scaling) from either layout."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta, spec, where = params["rope_theta"], params, "rope_parameters"
    else:
        theta = hf.get("rope_theta", 10000.0)
        spec, where = hf.get("rope_scaling"), "rope_scaling"
    if not spec:
        return float(theta), None
    kind = spec.get("rope_type", spec.get("type", "default"))
    if kind not in _SUPPORTED_ROPE:
        _fail(f"{where}.rope_type", kind, f"supported RoPE types: {_SUPPORTED_ROPE}")
    if "mrope_section" in spec:
        _fail(f"{where}.mrope_section", spec["mrope_section"], "multimodal RoPE is not "
              "supported")
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        return float(theta), RopeScaling(kind="linear", factor=float(spec["factor"]))
    return float(theta), RopeScaling(
        kind="llama3", factor=float(spec["factor"]),
        low_freq_factor=float(spec["low_freq_factor"]),
        high_freq_factor=float(spec["high_freq_factor"]),
        original_max_position_embeddings=int(spec["original_max_position_embeddings"]))


def _check_unsupported(hf: dict, family: str, num_layers: int) -> None:
    for key in ("num_experts", "num_local_experts", "moe_intermediate_size",
                "shared_expert_intermediate_size"):
        if hf.get(key):
            _fail(key, hf[key], "mixture-of-experts models are not supported")
    for key in ("attn_logit_softcapping", "final_logit_softcapping", "attention_chunk_size",
                "no_rope_layers", "quantization_config"):
        if hf.get(key):
            _fail(key, hf[key], "not implemented by the r1jax decoder")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        _fail("partial_rotary_factor", hf["partial_rotary_factor"], "only 1.0 is supported")
    if hf.get("hidden_act", "silu") != "silu":
        _fail("hidden_act", hf["hidden_act"], "only 'silu' (SwiGLU MLP) is supported")
    if hf.get("mlp_bias"):
        _fail("mlp_bias", hf["mlp_bias"], "MLP biases are not supported")
    layer_types = hf.get("layer_types")
    if layer_types is not None:
        other = sorted({t for t in layer_types if t != "full_attention"})
        if other:
            _fail("layer_types", other, "only 'full_attention' layers are supported "
                  "(no sliding-window attention)")
    elif hf.get("use_sliding_window") and hf.get("sliding_window"):
        first = hf.get("max_window_layers", 0) if family == "qwen2" else 0
        if first < num_layers:
            _fail("use_sliding_window", True, "sliding-window attention is not supported")


def model_config_from_hf(hf: dict, **overrides: Any) -> ModelConfig:
    """ModelConfig from a parsed config.json; `overrides` set r1jax's own numerics fields.

    Raises:
      UnsupportedModelError: the config asks for a feature the decoder lacks (names it).
      KeyError-like UnsupportedModelError: a required field is missing.
    """
    family = _family(hf)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
        if key not in hf:
            _fail(key, None, "required field is missing")
    num_layers = int(hf["num_hidden_layers"])
    _check_unsupported(hf, family, num_layers)
    unknown = sorted(set(hf) - _KNOWN_KEYS)
    if unknown:
        log.warning("config.json keys not used by r1jax (ignored): %s", ", ".join(unknown))
    theta, scaling = _rope(hf)
    heads = int(hf["num_attention_heads"])
    attention_bias = bool(hf.get("attention_bias", False))
    # Qwen2 always has q/k/v biases and no o bias; Llama and Qwen3 put `attention_bias` on
    # all four projections.
    qkv_bias = True if family == "qwen2" else attention_bias
    o_bias = False if family == "qwen2" else attention_bias
    fields = dict(
        family=family,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        qk_norm=family == "qwen3",
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
    )
    fields.update(overrides)
    cfg = ModelConfig(**fields)
    cfg.validate()
    return cfg


def checkpoint_dtype(hf: dict) -> Optional[str]:
    """The dtype the checkpoint's weights were saved in (`torch_dtype` or `dtype`)."""
    dtype = hf.get("dtype") or hf.get("torch_dtype")
    return dtype if isinstance(dtype, str) else None


def hf_config_from_model(cfg: ModelConfig, dtype: str,
                         base: Optional[dict] = None) -> dict:
    """A config.json dict for `cfg` with weights saved in `dtype`.

    With `base` (the config.json the weights came from) its keys are kept and only the
    architecture fields and dtype are rewritten; otherwise the transformers 4.x layout is
    written, which both transformers 4.x and 5.x read.
    """
    out = dict(base or {})
    if "rope_parameters" in out:
        rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        if cfg.rope_scaling is not None:
            rope.update(_scaling_dict(cfg.rope_scaling))
        out["rope_parameters"] = rope
    else:
        out["rope_theta"] = cfg.rope_theta
        out["rope_scaling"] = (None if cfg.rope_scaling is None
                               else _scaling_dict(cfg.rope_scaling))
    out.update(
        architectures=[FAMILIES[cfg.family]],
        model_type=cfg.family,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_position_embeddings,
        hidden_act="silu",
    )
    if cfg.family != "qwen2":
        out["attention_bias"] = cfg.qkv_bias
    if "dtype" in out and "torch_dtype" not in out:
        out["dtype"] = dtype
    else:
        out["torch_dtype"] = dtype
        out.pop("dtype", None)
    return out


def _scaling_dict(s: RopeScaling) -> dict:
    if s.kind == "linear":
        return {"rope_type": "linear", "factor": s.factor}
    return {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings}

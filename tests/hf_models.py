"""Small random-weight transformers (PyTorch) models of each family, for parity tests."""

from __future__ import annotations

import numpy as np

FAMILIES = ("llama", "qwen2", "qwen3")


def make_hf_model(family: str, *, seed: int = 0, vocab: int = 256, layers: int = 2,
                  tied: bool = False, init_std: float = 0.02):
    """A transformers CausalLM with random weights, norms and biases (not just 1 and 0).

    llama: Llama 3.1-style llama3 RoPE scaling (original context 64 so that short test
    sequences reach the scaled band) and tied embeddings like Llama 3.2.
    qwen2: Qwen2.5-style, rope_theta 1e6, q/k/v biases. qwen3: q/k norms, head_dim 32.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                  max_position_embeddings=512, initializer_range=init_std)
    if family == "llama":
        cfg = transformers.LlamaConfig(**common, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
        model = transformers.LlamaForCausalLM(cfg)
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**common, rope_theta=1e6, tie_word_embeddings=tied)
        model = transformers.Qwen2ForCausalLM(cfg)
    elif family == "qwen3":
        cfg = transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=tied)
        model = transformers.Qwen3ForCausalLM(cfg)
    else:
        raise ValueError(family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def left_padded_batch(vocab: int = 256, seed: int = 0):
    """Tokens [3, 12], attention mask (rows padded by 0, 4 and 7) and positions."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[1, :4] = 0
    mask[2, :7] = 0
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    return tokens, mask, positions


def hf_logits(model, tokens, mask, positions) -> np.ndarray:
    import torch
    with torch.no_grad():
        out = model(torch.tensor(tokens), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions))
    return out.logits.float().numpy()

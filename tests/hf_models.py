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


def write_bigram_model(path, tokenizer_dir, successors: dict) -> None:
    """Saves to `path` a transformers Qwen2 (hidden 64, 2 layers, the tokenizer's vocabulary)
    whose next token depends only on the current one: `successors[t]` lists the tokens that
    may follow t, all equally likely at temperature 1 (argmax: the lowest id among them).

    Attention and MLP outputs are zeroed (o_proj, down_proj), so the last hidden state is
    RMSNorm(embedding). Source token i embeds as the unit vector e_i and the lm_head rows of
    its successors are 10 e_i: each successor's logit is 10 x 8 = 80, every other logit is
    0, so sampling leaves the graph with probability ~V e^-80.
    """
    import os
    import shutil

    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(successors) <= 64, "one hidden unit per source token"
    model = make_hf_model("qwen2", vocab=len(tok), tied=False, seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        for i, (current, following) in enumerate(successors.items()):
            model.model.embed_tokens.weight[current] = 0.0
            model.model.embed_tokens.weight[current, i] = 1.0
            for successor in following:
                model.lm_head.weight[successor, i] = 10.0
    model.save_pretrained(path)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), path)

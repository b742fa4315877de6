"""Tokenizers and chat templates through transformers.AutoTokenizer, from local paths only."""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def load_tokenizer(path: str) -> Any:
    """A transformers tokenizer from a local directory (never downloads).

    Raises:
      FileNotFoundError: `path` is not a directory, or holds no tokenizer files.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory does not exist: {path} (r1jax loads "
                                "tokenizers from local directories only)")
    if not any(os.path.exists(os.path.join(path, f)) for f in
               ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")):
        raise FileNotFoundError(f"no tokenizer files (tokenizer.json, tokenizer_config.json, "
                                f"vocab.json, tokenizer.model) in {path}")
    from r1jax.models.transformers_logging import hide_no_torch_notice
    hide_no_torch_notice()
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


# End-of-turn / end-of-text tokens of the supported families (Qwen, Llama 3).
FAMILY_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")


def chat_end_of_turn_id(tokenizer: Any) -> Optional[int]:
    """The special token the chat template writes right after an assistant message, if any.

    Rendered from the template itself (an assistant turn with a marker as its content), so
    it holds for templates this module does not know by name.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "R1JAX_END_OF_TURN_PROBE"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
            tokenize=False)
    except Exception:  # a template that cannot render a plain two-turn chat
        return None
    after = text.split(marker, 1)[1] if marker in text else ""
    ids = tokenizer.encode(after, add_special_tokens=False) if after.strip() else []
    if ids and ids[0] in set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab()
                                                               .values()):
        return int(ids[0])
    return None


def stop_token_ids(tokenizer: Any, model_dir: Optional[str] = None) -> list[int]:
    """Every token that ends a completion, the same for training and evaluation.

    The tokenizer's EOS, the family end-of-turn / end-of-text tokens it has, the chat
    template's end-of-turn token, and `model_dir`'s generation_config.json `eos_token_id`
    (an int or a list). A base Qwen2.5-Math checkpoint (EOS `<|endoftext|>`) prompted
    through its chat template thus also stops at `<|im_end|>`.

    Raises:
      ValueError: no token could ever end a completion.
    """
    ids = set() if tokenizer.eos_token_id is None else {int(tokenizer.eos_token_id)}
    added = tokenizer.get_added_vocab()
    ids.update(added[t] for t in FAMILY_STOP_TOKENS if t in added)
    end_of_turn = chat_end_of_turn_id(tokenizer)
    if end_of_turn is not None:
        ids.add(end_of_turn)
    path = os.path.join(model_dir, "generation_config.json") if model_dir else None
    if path and os.path.exists(path):
        with open(path) as f:
            eos = json.load(f).get("eos_token_id")
        ids.update(int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None)
    if not ids:
        raise ValueError("the tokenizer has no EOS token and no end-of-turn token: "
                         "completions could never stop")
    return sorted(ids)

"""Tokenizers and chat templates through transformers.AutoTokenizer, from local paths only."""

from __future__ import annotations

import os
from typing import Any


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

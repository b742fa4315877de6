"""Strings in, strings out: the sampler behind a tokenizer and its chat template."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from r1jax.sampling.sampler import Sampler

Prompt = Union[str, Sequence[dict]]


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt], *, chat: bool = True,
                   system_prompt: Optional[str] = None) -> list[list[int]]:
    """Token ids of each prompt.

    Args:
      prompts: strings (one user message each) or chat message lists
        ([{"role": "user", "content": ...}, ...]).
      chat: apply the tokenizer's chat template (with the assistant generation prompt);
        otherwise encode the raw string.
      system_prompt: prepended as a system message when chat is on.
    """
    out = []
    for p in prompts:
        if not chat:
            if not isinstance(p, str):
                raise ValueError("chat=False needs string prompts")
            out.append(tokenizer.encode(p, add_special_tokens=False))
            continue
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        if system_prompt is not None:
            messages = [{"role": "system", "content": system_prompt}] + messages
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        out.append(tokenizer.encode(text, add_special_tokens=False))
    return out


def generate_text(sampler: Sampler, tokenizer: Any, prompts: Sequence[Prompt], *,
                  n: int = 1, chat: bool = True, system_prompt: Optional[str] = None,
                  skip_special_tokens: bool = True, **generate_kwargs: Any) -> list[list[str]]:
    """Completions as strings: `n` per prompt, in prompt order.

    The tokenizer's EOS token (and the sampler's eos_token_ids) stop a completion.
    `generate_kwargs` go to `Sampler.generate` (max_new_tokens, temperature, top_p, ...).
    """
    ids = encode_prompts(tokenizer, prompts, chat=chat, system_prompt=system_prompt)
    stops = list(generate_kwargs.pop("stop_token_ids", ()))
    if tokenizer.eos_token_id is not None:
        stops.append(tokenizer.eos_token_id)
    out = sampler.generate(ids, n=n, stop_token_ids=stops, **generate_kwargs)
    texts = tokenizer.batch_decode(out.completions(), skip_special_tokens=skip_special_tokens)
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

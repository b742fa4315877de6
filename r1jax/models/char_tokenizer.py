"""A character-level tokenizer for models trained from scratch (the CPU demo).

Every character of `chars` is one token, and so are the R1 tags (`<think>`, `</think>`,
`<answer>`, `</answer>`); `<pad>` is id 0 and `<eos>` ends completions. It is a regular
`transformers.PreTrainedTokenizerFast`: it saves, loads and decodes like any other. Its chat
template (`CHAT_TEMPLATE`) writes each message's content as is and closes assistant turns with
`<eos>`: a question and its worked solution render exactly as the plain prompt template and
the warm start lay them out.
"""

from __future__ import annotations

from typing import Any

SPECIALS = ("<pad>", "<eos>", "<unk>")
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}"
                 "{% if m['role'] == 'assistant' %}<eos>{% endif %}{% endfor %}")


def make_char_tokenizer(chars: str) -> Any:
    """A tokenizer with one token per distinct character of `chars` plus tags and specials.

    Raises:
      ValueError: empty `chars`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    from r1jax.models.transformers_logging import hide_no_torch_notice
    hide_no_torch_notice()
    from transformers import PreTrainedTokenizerFast

    unique = sorted(set(chars))
    if not unique:
        raise ValueError("char_vocab is empty")
    vocab = {tok: i for i, tok in enumerate(SPECIALS + TAGS)}
    for c in unique:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    tok.add_tokens(list(TAGS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                   eos_token="<eos>", unk_token="<unk>",
                                   chat_template=CHAT_TEMPLATE)

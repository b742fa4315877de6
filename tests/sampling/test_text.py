"""Strings in, strings out through the tokenizer's chat template, against transformers:
`encode_prompts` is `apply_chat_template`, and greedy `generate_text` is the text of
transformers' `generate(do_sample=False)` with the same random weights."""

import pytest
import torch
import transformers

import r1jax
from r1jax.sampling import encode_prompts, generate_text
from tests.hf_models import make_hf_model

PROMPTS = ["What is 2+2?", "Name a prime number between 10 and 20, please."]
SYSTEM = "Be brief."
MAX_NEW = 12


@pytest.fixture(scope="module")
def hf_tokenizer(qwen_tokenizer_dir):
    return transformers.AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_qwen(hf_tokenizer, tmp_path_factory):
    """transformers' Qwen2 over the full Qwen vocabulary (tied embeddings, one layer), with
    weights large enough that greedy choices are not near-ties at float32 rounding."""
    model = make_hf_model("qwen2", vocab=len(hf_tokenizer), layers=1, tied=True, seed=1,
                          init_std=0.2)
    path = tmp_path_factory.mktemp("qwen_text")
    model.save_pretrained(path)
    return model, str(path)


def chat_ids(hf_tokenizer, prompt, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_encode_prompts_is_the_chat_template(qwen_tokenizer_dir, hf_tokenizer):
    tok = r1jax.load_tokenizer(qwen_tokenizer_dir)
    got = encode_prompts(tok, PROMPTS, system_prompt=SYSTEM)
    assert got == [chat_ids(hf_tokenizer, p, SYSTEM) for p in PROMPTS]
    assert got[0][-3:] == hf_tokenizer.encode("<|im_start|>assistant\n",
                                              add_special_tokens=False)
    assert encode_prompts(tok, PROMPTS, chat=False) == [
        hf_tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]


def test_greedy_text_equals_transformers_generate(qwen_tokenizer_dir, hf_tokenizer, tiny_qwen):
    hf_model, model_dir = tiny_qwen
    expected = []
    for prompt in PROMPTS:
        ids = chat_ids(hf_tokenizer, prompt, SYSTEM)
        # An explicit mask: the prompt holds <|im_end|>, which is also the pad token here, and
        # transformers would mask it out if it inferred the mask from the pads.
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                    dtype=torch.long), do_sample=False, max_new_tokens=MAX_NEW,
                                    eos_token_id=hf_tokenizer.eos_token_id,
                                    pad_token_id=hf_tokenizer.eos_token_id)
        expected.append(hf_tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
    # A random model: the two prompts' completions differ and are non-empty text.
    assert expected[0] != expected[1] and all(expected)

    tok = r1jax.load_tokenizer(qwen_tokenizer_dir)
    sampler = r1jax.Sampler(r1jax.load_hf(model_dir), max_prompt_len=64,
                            max_new_tokens=MAX_NEW)
    texts = generate_text(sampler, tok, PROMPTS, n=2, system_prompt=SYSTEM, temperature=0.0,
                          max_new_tokens=MAX_NEW)
    assert texts == [[e, e] for e in expected]

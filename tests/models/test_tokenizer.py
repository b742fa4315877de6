"""Tokenizer and chat template from the shared Qwen2.5 tokenizer directory."""

import pytest

import r1jax


def test_qwen_tokenizer_ids_and_chat_template(qwen_tokenizer_dir):
    tok = r1jax.load_tokenizer(qwen_tokenizer_dir)
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
                     add_special_tokens=False)
    assert ids == [151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645, 198, 151644,
                   77091, 198]
    assert tok.eos_token_id == 151645


def test_missing_tokenizer_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer directory does not exist"):
        r1jax.load_tokenizer(str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        r1jax.load_tokenizer(str(tmp_path))

"""Strings in, strings out through the tokenizer's chat template."""

import r1jax
from r1jax.sampling import encode_prompts, generate_text
from tests.hf_models import make_hf_model


def test_chat_prompts_and_text_completions(qwen_tokenizer_dir, tmp_path):
    tok = r1jax.load_tokenizer(qwen_tokenizer_dir)
    ids = encode_prompts(tok, ["What is 2+2?"], system_prompt="Be brief.")
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
        tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert ids == [list(expected)]
    assert ids[0][-3:] == tok.encode("<|im_start|>assistant\n", add_special_tokens=False)

    # A tiny model over the full Qwen vocabulary: completions decode to the greedy tokens.
    make_hf_model("qwen2", vocab=len(tok), layers=1, tied=True).save_pretrained(tmp_path)
    model = r1jax.load_hf(str(tmp_path))
    sampler = r1jax.Sampler(model, max_prompt_len=64, max_new_tokens=6)
    texts = generate_text(sampler, tok, ["What is 2+2?", "Name a prime."], n=2,
                          temperature=0.0, max_new_tokens=6)
    assert len(texts) == 2 and all(len(t) == 2 for t in texts)
    out = sampler.generate(encode_prompts(tok, ["What is 2+2?", "Name a prime."]), n=2,
                           temperature=0.0, max_new_tokens=6, stop_token_ids=[tok.eos_token_id])
    decoded = tok.batch_decode(out.completions(), skip_special_tokens=True)
    assert [t for pair in texts for t in pair] == decoded
    assert texts[0][0] == texts[0][1]  # greedy: both samples of a prompt agree

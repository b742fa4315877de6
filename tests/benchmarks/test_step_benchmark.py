"""The RL step benchmark compares like with like: on a micro Qwen2, r1jax's step and TRL's
GRPOTrainer step see the same prompt token ids, generate full-length completions, score them
with the same reward of their token ids, and TRL takes one optimizer step per generation."""

import numpy as np
import pytest

pytest.importorskip("trl")

from r1jax.benchmarks import step as bench  # noqa: E402

VOCAB, NEW_TOKENS = 64, 6
ROWS = bench.PROMPTS * bench.GROUP


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, tie_word_embeddings=True,
                                   max_position_embeddings=64)
    path = str(tmp_path_factory.mktemp("micro_qwen2"))
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


def test_r1jax_step_samples_full_length_and_scores_its_completions(model_dir):
    tokenizer, prompts = bench.make_tokenizer(VOCAB), bench.make_prompts(VOCAB)
    runner = bench.R1jaxStep(model_dir, "float32", NEW_TOKENS, prompts, tokenizer)
    out = runner.step(seed=0)
    completions = [c for group in runner.last_groups for c in group["completions"]]
    assert out["prompts"] == prompts.tolist()
    assert [len(c) for c in completions] == [NEW_TOKENS] * ROWS
    assert out["tokens"] == ROWS * NEW_TOKENS  # every token counts in the token-mean loss
    np.testing.assert_allclose(out["rewards"], bench.token_reward(completions), rtol=1e-6)


def test_trl_step_sees_the_same_prompt_ids_full_length_and_reward(model_dir, tmp_path):
    tokenizer, prompts = bench.make_tokenizer(VOCAB), bench.make_prompts(VOCAB)
    trainer = bench.make_trl_trainer(model_dir, tokenizer, prompts, NEW_TOKENS, bf16=False,
                                     max_steps=1, out_dir=str(tmp_path))
    seen = []
    score = trainer._calculate_rewards

    def spy(inputs, prompt_texts, completions, completion_ids):
        rewards = score(inputs, prompt_texts, completions, completion_ids)
        seen.append((prompt_texts, completion_ids, rewards[:, 0].tolist()))
        return rewards
    trainer._calculate_rewards = spy
    trainer.train()
    (texts, ids, rewards), = seen  # one generation round ...
    assert trainer.state.global_step == 1  # ... one optimizer step
    assert (trainer.loss_type, trainer.beta, trainer.epsilon_low, trainer.epsilon_high) == (
        "dapo", 0.0, bench.EPS_LOW, bench.EPS_HIGH)
    expected = sorted(p for p in prompts.tolist() for _ in range(bench.GROUP))
    assert sorted(tokenizer(texts)["input_ids"]) == expected
    assert [len(c) for c in ids] == [NEW_TOKENS] * ROWS
    np.testing.assert_allclose(rewards, bench.token_reward(ids), rtol=1e-6)

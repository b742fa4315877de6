"""A tiny but complete training run config, for the trainer tests."""

import pytest

from r1jax.config import base_config, run_config_from


def tiny_config(run_dir: str, **sections):
    """Addition task, 1-layer model, G = 4, 4 prompts a step; `sections` update sections."""
    c = base_config()
    c.model.arch = dict(model_type="qwen2", hidden_size=32, intermediate_size=64,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        max_position_embeddings=128, tie_word_embeddings=True)
    c.model.char_vocab = "0123456789+=,"
    c.data.update(source="arithmetic", template="plain", max_prompt_tokens=16,
                  num_generated=500, task_options=dict(terms=2, digits=1))
    c.rewards.functions = [dict(name="accuracy", weight=1.0, kwargs=dict(mode="answer_tag")),
                           dict(name="format", weight=0.1, kwargs={})]
    c.rewards.num_workers = 1
    c.rollout.update(group_size=4, max_new_tokens=24)
    c.optim.update(lr=1e-3, weight_decay=0.0)
    c.sft.update(steps=3, batch_size=8, lr=1e-2)
    c.eval.update(source="arithmetic", limit=8)
    c.train.update(steps=3, prompts_per_step=4, run_dir=run_dir, checkpoint_every=1,
                   progress_bar=False, tensorboard=False, export_hf=False,
                   async_checkpoint=False)
    for name, values in sections.items():
        getattr(c, name).update(values)
    return run_config_from(c)


@pytest.fixture
def make_config(tmp_path):
    return lambda name="run", **sections: tiny_config(str(tmp_path / name), **sections)

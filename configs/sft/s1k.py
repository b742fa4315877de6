"""s1-style SFT with `r1jax-sft`: Qwen2.5-32B-Instruct on s1K-1.1's 1,000 reasoning traces
(layout `s1k`: `question`, `deepseek_thinking_trajectory`, `deepseek_attempt`), 5 epochs of
16 conversations a step in 32,768-token rows; evaluate it with budget forcing (README "Budget
forcing": `r1jax-eval --thinking_budget=... --max_waits=...`).

    r1jax-sft --config=configs/sft/s1k.py --config.data.source=/data/s1K-1.1/train.parquet \\
        --config.train.run_dir=/ckpt/s1_32b
    r1jax-sft --config=configs/sft/s1k.py:tiny   # CPU smoke run: random tiny model

Defaults: AdamW lr 1e-5, b2 0.95, weight decay 1e-4, 16 warm-up steps (5% of 5 x 63) and
cosine decay, bfloat16 compute with the flash attention kernel, full remat; the mesh splits
each row's model over 2 chips (tensor) and the 16 rows over fsdp.

Recommended slice: v5p-64 (r1jax-fit: 54.3 of 95.0 GiB per chip), fsdp 16 x tensor 2
(`r1jax-fit --config=configs/sft/s1k.py --topology=v5p-64 --programs=sft`).
"""

from ml_collections import ConfigDict

from r1jax.config import base_config
from r1jax.recipes import tiny_sft


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="/models/Qwen2.5-32B-Instruct", remat="full", dtype="bfloat16",
                   attention_impl="auto")
    c.data.source = "s1K-1.1/train.parquet"
    c.sft.update(epochs=5, batch_size=16, max_len=32768, layout="s1k", microbatches=1)
    c.optim.update(lr=1e-5, schedule="cosine", min_lr_ratio=0.0, warmup_steps=16,
                   weight_decay=1e-4, b2=0.95)
    c.mesh.update(data=1, fsdp=-1, tensor=2)
    c.train.update(run_dir="runs/s1k_sft", checkpoint_every=50, keep_checkpoints=2)
    if arg == "tiny":  # generated sums, a random tiny model (r1jax.recipes.tiny_sft)
        tiny_sft(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

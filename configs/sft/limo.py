"""LIMO-style SFT with `r1jax-sft`: Qwen2.5-32B-Instruct on LIMO's 817 curated problems with
long solutions (layout `limo`: `question`, `solution`), 15 epochs of 64 conversations a step
in 16,384-token rows.

    r1jax-sft --config=configs/sft/limo.py --config.data.source=/data/LIMO/limo.jsonl \\
        --config.train.run_dir=/ckpt/limo_32b
    r1jax-sft --config=configs/sft/limo.py:tiny   # CPU smoke run: random tiny model

Defaults: AdamW lr 5e-6 without warm-up, cosine decay, b2 0.95, bfloat16 compute with the
flash attention kernel, full remat, 2 microbatches a step.

Recommended slice: v5p-64 (r1jax-fit: 49.1 of 95.0 GiB per chip), fsdp over its 32 chips
(`r1jax-fit --config=configs/sft/limo.py --topology=v5p-64 --programs=sft`).
"""

from ml_collections import ConfigDict

from r1jax.config import base_config
from r1jax.recipes import tiny_sft


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="/models/Qwen2.5-32B-Instruct", remat="full", dtype="bfloat16",
                   attention_impl="auto")
    c.data.source = "LIMO/limo.jsonl"
    c.sft.update(epochs=15, batch_size=64, max_len=16384, layout="limo", microbatches=2)
    c.optim.update(lr=5e-6, schedule="cosine", min_lr_ratio=0.0, warmup_steps=0,
                   weight_decay=0.0, b2=0.95)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.train.update(run_dir="runs/limo_sft", checkpoint_every=50, keep_checkpoints=2)
    if arg == "tiny":  # generated sums, a random tiny model (r1jax.recipes.tiny_sft)
        tiny_sft(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

"""OpenR1-Math-style distillation with `r1jax-sft`: Qwen2.5-Math-7B trained on long reasoning
traces (OpenR1-Math-220k's `messages` layout) in 32,768-token packed rows, its RoPE base
raised from 10,000 to 300,000 (`model.rope_theta`) so that a model pre-trained at 4k
positions reads 32k; the raised base is used in training, sampling and evaluation and is
written to the exported config.json.

    r1jax-sft --config=configs/sft/openr1_math.py \\
        --config.data.source=/data/OpenR1-Math-220k/default.parquet \\
        --config.train.run_dir=/ckpt/openr1_math_7b
    r1jax-sft --config=configs/sft/openr1_math.py:tiny   # CPU smoke run: random tiny model

Defaults: 3 epochs of 128 conversations a step, 16 microbatches, full remat, bfloat16
compute with the flash attention kernel, AdamW lr 5e-5, b2 0.95, 100 warm-up steps, cosine
to 10%. Evaluate with `--max_new_tokens` up to 32k and, if wanted, a thinking budget (README
"Budget forcing").

Recommended slice: v5p-16 (r1jax-fit: 45.1 of 95.0 GiB per chip), fsdp over its 8 chips
(`r1jax-fit --config=configs/sft/openr1_math.py --topology=v5p-16 --programs=sft`).
"""

from ml_collections import ConfigDict

from r1jax.config import base_config
from r1jax.recipes import tiny_sft


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="/models/Qwen2.5-Math-7B", remat="full", rope_theta=300000.0,
                   attention_impl="auto", dtype="bfloat16")
    c.data.source = "OpenR1-Math-220k/default.parquet"
    c.sft.update(epochs=3, batch_size=128, max_len=32768, layout="openr1_math",
                 microbatches=16)
    c.optim.update(lr=5e-5, schedule="cosine", min_lr_ratio=0.1, warmup_steps=100,
                   weight_decay=0.0, b2=0.95)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.train.update(run_dir="runs/openr1_math_sft", checkpoint_every=200, keep_checkpoints=2)
    if arg == "tiny":  # generated sums, a random tiny model (r1jax.recipes.tiny_sft)
        tiny_sft(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

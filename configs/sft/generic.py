"""Generic supervised fine-tuning / distillation with `r1jax-sft`: set the model, the data
and the run directory on the command line.

    r1jax-sft --config=configs/sft/generic.py \\
        --config.model.path=/models/Qwen2.5-7B-Instruct \\
        --config.data.source=/data/sft.jsonl --config.sft.layout=auto \\
        --config.train.run_dir=/ckpt/sft1
    r1jax-sft --config=configs/sft/generic.py:tiny   # a CPU smoke run (random tiny model)

Defaults: a 7B model, 3 epochs of 32 conversations per step packed into 8,192-token rows
(4 microbatches, full remat), AdamW lr 1e-5, b2 0.95, 10 warm-up steps and cosine decay to
10%, like the open distillation recipes; loss on assistant tokens only.

Recommended slice: v5p-16 (r1jax-fit: 50.5 of 95.0 GiB per chip), fsdp over its 8 chips
(`r1jax-fit --config=configs/sft/generic.py --topology=v5p-16 --programs=sft`).
"""

from ml_collections import ConfigDict

from r1jax.config import base_config
from r1jax.recipes import tiny_sft


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="/models/Qwen2.5-7B-Instruct", remat="full")
    c.data.source = "sft.jsonl"
    c.sft.update(epochs=3, batch_size=32, max_len=8192, layout="auto", microbatches=4)
    c.optim.update(lr=1e-5, schedule="cosine", min_lr_ratio=0.1, warmup_steps=10,
                   weight_decay=0.0, b2=0.95)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.train.update(run_dir="runs/sft", checkpoint_every=200, keep_checkpoints=2)
    if arg == "tiny":  # generated sums, a random tiny model (r1jax.recipes.tiny_sft)
        tiny_sft(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

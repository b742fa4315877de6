"""Light-R1-style two-stage curriculum SFT with `r1jax-sft`: stage 1 on the full distillation
set, stage 2 on its hardest part (a difficulty filter, or the prompts a policy still fails:
`pass_rates` from r1jax-rejection-sample), each stage with its own epochs.

    r1jax-sft --config=configs/sft/light_r1.py \\
        --config.sft.stages[0].source=/data/light_r1/stage1.jsonl \\
        --config.sft.stages[1].source=/data/light_r1/stage2.jsonl \\
        --config.train.run_dir=/ckpt/light_r1_sft
    r1jax-sft --config=configs/sft/light_r1.py:tiny   # CPU smoke run: random tiny model

Both stages read the Light-R1-SFTData layout (ShareGPT `conversations`, recipe `light_r1`).
Stage 2 keeps only rows whose `difficulty` field lies in [8, 10] when the file has one
(set `--config.sft.stages[1].where={}` for a file that is already the hard subset). The model
here is a 7B (Qwen2.5-7B-Instruct) at 8,192-token rows; Light-R1-32B ran the same two stages
from Qwen2.5-32B-Instruct with longer rows: set model.path and check the slice with r1jax-fit.

Recommended slice: v5p-16 (r1jax-fit: 50.5 of 95.0 GiB per chip), fsdp over its 8 chips
(`r1jax-fit --config=configs/sft/light_r1.py --topology=v5p-16 --programs=sft`).
"""

from ml_collections import ConfigDict

from r1jax.config import base_config, sft_stage
from r1jax.recipes import tiny_sft


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="/models/Qwen2.5-7B-Instruct", remat="full")
    c.sft.update(batch_size=32, max_len=8192, layout="light_r1", microbatches=4)
    c.sft.stages = [sft_stage(source="light_r1/stage1.jsonl", epochs=3),
                    sft_stage(source="light_r1/stage2.jsonl", epochs=3,
                              where={"difficulty": [8, 10]})]
    c.optim.update(lr=5e-6, schedule="cosine", min_lr_ratio=0.1, warmup_steps=20,
                   weight_decay=0.0, b2=0.95)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.train.update(run_dir="runs/light_r1_sft", checkpoint_every=200, keep_checkpoints=2)
    if arg == "tiny":
        # Generated one-digit sums with worked solutions; stage 2: the sums with a carry.
        tiny_sft(c)
        c.sft.stages = [sft_stage(source="arithmetic", epochs=1),
                        sft_stage(source="arithmetic", epochs=2, where={"answer": [10, 18]})]
        c.sft.update(steps=0)
        c.train.checkpoint_every = 4
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

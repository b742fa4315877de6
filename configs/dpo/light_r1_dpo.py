"""Light-R1's DPO stage with `r1jax-dpo`: from the stage-2 SFT model (configs/sft/light_r1.py),
preference pairs of a correct and an incorrect long solution to the same problem.

    r1jax-dpo --config=configs/dpo/light_r1_dpo.py \\
        --config.model.path=runs/light_r1_sft/export \\
        --config.data.source=/data/light_r1/dpo.jsonl --config.train.run_dir=/ckpt/light_r1_dpo
    r1jax-dpo --config=configs/dpo/light_r1_dpo.py:tiny   # CPU smoke run: random tiny model

Data: Light-R1-DPOData (LLaMA-Factory ranking layout: ShareGPT `conversations` as the prompt,
one `chosen` and one `rejected` {from, value} turn; recipe `light_r1_dpo`), or pairs made
from r1jax-rejection-sample's samples.jsonl with `--config.dpo.layout=rejection_samples`.

Settings as Light-R1's published DPO script (360-LLaMA-Factory): NCA pair loss
(`nca_pair`), beta 0.3, lr 5e-7 constant without warm-up, 3 epochs, 8 pairs per optimizer
step (1 per device x 4 accumulation x 2 data-parallel groups), sequences cut at 32,768
tokens, seed 42, the reference being the starting model. Weight decay 0 and AdamW betas
(0.9, 0.999) are the Hugging Face Trainer defaults that script keeps. bfloat16 compute with
the flash attention kernel and full remat; the mesh splits each row's model over 2 chips
(tensor) and the step's 16 sequences (8 pairs, each sequence up to a 32k row) over fsdp 16,
one row per fsdp group, in one pass (no accumulation needed).

Recommended slice: v5p-64 (r1jax-fit: 56.1 of 95.0 GiB per chip), fsdp 16 x tensor 2
(`r1jax-fit --config=configs/dpo/light_r1_dpo.py --topology=v5p-64 --programs=dpo
--preset qwen2.5-32b`: Qwen2.5-32B-Instruct's shape, as the SFT export has; the frozen
reference weights resident beside the update).
"""

from ml_collections import ConfigDict

from r1jax.config import base_config
from r1jax.recipes import tiny_sft


def get_config(arg: str = "") -> ConfigDict:
    c = base_config()
    c.model.update(path="runs/light_r1_sft/export", remat="full", dtype="bfloat16",
                   attention_impl="auto")
    c.data.update(source="light_r1/dpo.jsonl")
    c.dpo.update(beta=0.3, loss_type="nca_pair", reference="policy", layout="light_r1_dpo",
                 batch_size=8, epochs=3, max_len=32768, microbatches=1, seed=42)
    c.optim.update(lr=5e-7, schedule="constant", warmup_steps=0, weight_decay=0.0,
                   b1=0.9, b2=0.999, grad_clip=1.0)
    c.mesh.update(data=1, fsdp=-1, tensor=2)
    c.train.update(run_dir="runs/light_r1_dpo", checkpoint_every=50, keep_checkpoints=2)
    if arg == "tiny":
        # Generated one-digit sums: each sum's worked solution is chosen over another sum's.
        tiny_sft(c)
        c.dpo.update(steps=4, epochs=0, batch_size=8, max_len=128, microbatches=2)
        c.optim.update(lr=1e-3)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

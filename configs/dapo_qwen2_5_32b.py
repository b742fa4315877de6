"""DAPO on DAPO-Math-17k with Qwen2.5-32B (base): the DAPO paper's recipe.

The paper's hyper-parameters (`r1jax.recipes.dapo`): clip-higher eps_low 0.2 / eps_high
0.28, token-level loss (token-mean), no KL term, G = 16 samples for each of 512 prompts a
step, dynamic sampling (generation batches of 3 x 512 prompts until 512 informative groups),
overlong reward shaping with a 4,096-token buffer before the 20,480-token limit (and no
truncation filter), lr 1e-6 with 10 warm-up steps, 16 gradient steps per rollout
(mini-batches of 32 prompts), accuracy reward +1 / -1 on the "Answer:" line (the DAPO
prompt asks for it).

Needs a TPU pod (or a GPU cluster): 32B parameters in fp32 master weights with AdamW moments
are ~390 GB, sharded FSDP x tensor over the mesh. Point data.source at the parquet file:

    r1jax-train --config=configs/dapo_qwen2_5_32b.py --config.model.path=/models/Qwen2.5-32B \\
        --config.data.source=/data/dapo-math-17k.parquet

`tiny` (`r1jax.recipes.tiny_variant`) keeps the algorithm and shrinks the sizes for a CPU
smoke run; it reads the Qwen2.5 tokenizer under $R1JAX_DATA_DIR.

Recommended slice: v5p-256 (r1jax-fit: 45.0 of 95.0 GiB per chip), with 256 decode slots
(`rollout.max_slots`) and 16 microbatches per optimizer step; the largest program is the
update. Check another slice or setting with
`r1jax-fit --config=configs/dapo_qwen2_5_32b.py --topology=v5p-128 --config.KEY=VALUE`.
"""

from ml_collections import ConfigDict

from r1jax import recipes
from r1jax.config import base_config


def get_config(arg: str = "") -> ConfigDict:
    c = recipes.dapo(base_config())
    c.model.update(path="/models/Qwen2.5-32B", param_dtype="float32", dtype="bfloat16",
                   remat="full", attention_impl="auto")
    c.mesh.update(data=1, fsdp=-1, tensor=8)
    # A v5p-256: 256 decode slots of 22,528 tokens (not one static batch of 1,536 x 16 rows)
    # and gradient accumulation over 16 microbatches keep every program within HBM.
    c.rollout.max_slots = 256
    c.algo.microbatches = 16
    c.eval.update(source="aime24", n=32, temperature=1.0, top_p=0.7, every=20,
                  max_new_tokens=20480)
    c.train.update(steps=300, run_dir="runs/dapo_qwen2_5_32b")
    if arg == "tiny":
        recipes.tiny_variant(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

"""DAPO with Qwen2.5-Math-7B on DAPO-Math-17k.

The DAPO recipe (`r1jax.recipes.dapo`, see dapo_qwen2_5_32b.py) scaled to the 7B math
model. Qwen2.5-Math-7B has a 4,096-token context, so prompts get 1,024 tokens and responses
3,072, with a 512-token overlong buffer; everything else is the paper's.

    r1jax-train --config=configs/dapo_qwen2_5_math_7b.py \\
        --config.model.path=/models/Qwen2.5-Math-7B --config.data.source=/data/dapo.parquet

`tiny` keeps the algorithm and shrinks the sizes for a CPU smoke run ($R1JAX_DATA_DIR).

Recommended slice: v5p-16 (r1jax-fit: 73.0 of 95.0 GiB per chip), with 256 decode slots
(`rollout.max_slots`) and 16 microbatches per optimizer step; the largest program is the
update.
"""

from ml_collections import ConfigDict

from r1jax import recipes
from r1jax.config import base_config


def get_config(arg: str = "") -> ConfigDict:
    c = recipes.dapo(base_config())
    c.model.update(path="/models/Qwen2.5-Math-7B", param_dtype="float32", dtype="bfloat16",
                   remat="dots_no_batch", attention_impl="auto")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.max_prompt_tokens = 1024
    c.rollout.max_new_tokens = 3072
    c.algo.overlong_buffer_len = 512
    # A v5p-16: 256 decode slots (not one static batch of 1,536 x 16 rows) and gradient
    # accumulation over 16 microbatches keep every program within a chip's HBM.
    c.rollout.max_slots = 256
    c.algo.microbatches = 16
    c.eval.update(source="aime24", n=16, temperature=1.0, top_p=0.7, every=20,
                  max_new_tokens=3072)
    c.train.update(steps=300, run_dir="runs/dapo_qwen2_5_math_7b")
    if arg == "tiny":
        recipes.tiny_variant(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

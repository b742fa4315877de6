"""Light-R1's last stage with `r1jax-merge`: the stage-2 SFT model and two DPO models of it
merged into one (Light-R1-32B is such a merge: AIME24 75.8 after DPO, 76.6 merged).

    r1jax-merge --recipe=configs/merge/light_r1_merge.py
    r1jax-merge --recipe=configs/merge/light_r1_merge.py --models A B C --out DIR  # override
    r1jax-merge --recipe=configs/merge/light_r1_merge.py:tiny   # the tiny SFT + DPO exports

Inputs: the exports of configs/sft/light_r1.py (stage 2), configs/dpo/light_r1_dpo.py and a
second DPO run (another seed or data draw: `--config.dpo.seed=...
--config.train.run_dir=runs/light_r1_dpo_2`). Light-R1 names these three inputs; it does
not publish its merge method or weights, so this recipe takes the plain weighted average
(`linear`, equal weights), which keeps every input's shared improvements and needs no base.
Swap in `--method ties --base runs/light_r1_sft/export --density 0.5` to merge task vectors
instead.

`:tiny` merges the exports of the two tiny runs (`r1jax-sft --config=configs/sft/
light_r1.py:tiny --config.train.export_hf=True`, then `r1jax-dpo --config=configs/dpo/
light_r1_dpo.py:tiny` from that export with `--config.train.export_hf=True`).
"""


def get_config(arg: str = "") -> dict:
    c = dict(method="linear",
             models=["runs/light_r1_sft/export", "runs/light_r1_dpo/export",
                     "runs/light_r1_dpo_2/export"],
             weights=[1.0, 1.0, 1.0], out="runs/light_r1_merged")
    if arg == "tiny":
        c.update(models=["runs/light_r1_sft/export", "runs/light_r1_dpo/export"],
                 weights=[1.0, 1.0], out="runs/light_r1_merged_tiny", dtype="float32")
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'tiny'")
    return c

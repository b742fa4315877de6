"""Causal self-attention over full sequences, with segment ids (packing and padding).

`flash_attention_reference` (pure jnp, the reference), `flash_attention_xla` (its values with a
hand-written backward that recomputes the softmax: the CPU implementation), and the Pallas
kernels with the same signature plus tiling options: `tpu.flash_attention` (Mosaic) and
`gpu.flash_attention` (Triton). Both have a custom VJP whose backward is also a pair of Pallas
kernels.
"""

from r1jax.kernels.flash_attention import gpu, tpu
from r1jax.kernels.flash_attention.common import BlockSizes
from r1jax.kernels.flash_attention.reference import flash_attention_reference
from r1jax.kernels.flash_attention.xla import flash_attention_xla

__all__ = ["BlockSizes", "flash_attention_reference", "flash_attention_xla", "gpu", "tpu"]

"""Attention of one new token per row against a KV cache with per-row valid lengths.

`decode_attention_reference` (pure jnp, the CPU implementation), and the Pallas kernels with
the same signature plus tiling options: `tpu.decode_attention` (Mosaic) and
`gpu.decode_attention` (Triton, split-K).
"""

from r1jax.kernels.decode_attention import gpu, tpu
from r1jax.kernels.decode_attention.common import BlockSizes
from r1jax.kernels.decode_attention.reference import decode_attention_reference

__all__ = ["BlockSizes", "decode_attention_reference", "gpu", "tpu"]

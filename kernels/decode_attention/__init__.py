"""Attention of one new token per row against a KV cache with per-row valid lengths.

`decode_attention_reference` (pure jnp, the reference), `decode_attention_xla` (the same with the
key cache stored [B, K, D, S]: the CPU implementation), and the Pallas kernels with the
reference's signature plus tiling options: `tpu.decode_attention` (Mosaic) and
`gpu.decode_attention` (Triton, split-K).
"""

from r1jax.kernels.decode_attention import gpu, tpu
from r1jax.kernels.decode_attention.common import BlockSizes
from r1jax.kernels.decode_attention.reference import decode_attention_reference
from r1jax.kernels.decode_attention.xla import decode_attention_xla

__all__ = ["BlockSizes", "decode_attention_reference", "decode_attention_xla", "gpu", "tpu"]

"""Attention of one new token per row against a KV cache with per-row valid lengths."""

from r1jax.kernels.decode_attention.reference import decode_attention_reference

__all__ = ["decode_attention_reference"]

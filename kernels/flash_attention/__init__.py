"""Causal self-attention over full sequences, with segment ids (packing and padding)."""

from r1jax.kernels.flash_attention.reference import flash_attention_reference

__all__ = ["flash_attention_reference"]

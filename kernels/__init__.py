"""Pallas attention kernels, installed as `r1jax.kernels`.

Each kernel package holds the kernels (TPU: Pallas Mosaic; GPU: Pallas on Triton) and, beside
them, a pure-jnp reference with the same signature, which is also the CPU implementation.
"""

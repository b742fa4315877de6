"""The GPU kernels lower through Pallas's Triton backend (cross-platform export for CUDA on
this CPU host): every op has a Triton lowering and every tile shape is legal for Triton.
Compiling the Triton IR to a GPU binary needs a GPU and is not done here."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

from r1jax.kernels.decode_attention import gpu as decode_gpu
from r1jax.kernels.flash_attention import gpu as flash_gpu

TRITON = "__gpu$xla.gpu.triton"


def _triton_kernels(fn, *args) -> list[str]:
    """Names of the Triton kernels in `fn` exported for CUDA."""
    exported = jax.export.export(
        jax.jit(fn), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(TRITON)])(*args)
    text = exported.mlir_module()
    calls = re.findall(r'custom_call @' + re.escape(TRITON) + r'\(.*?name = "(\w+)"', text)
    assert len(calls) == text.count(f"custom_call @{TRITON}")
    return sorted(calls)


@pytest.mark.parametrize("s", [1000, 40])
def test_flash_attention_forward_and_backward_lower_to_triton(s):
    # Qwen2.5-7B heads (G = 7: the dK/dV kernel's block holds 7 query heads), S not a power
    # of two, default tiles.
    b, h, k, d = 1, 28, 4, 128
    q = jax.ShapeDtypeStruct((b, s, h, d), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((b, s, k, d), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((b, s), jnp.int32)

    def loss(q, k, v, seg):
        return jnp.sum(flash_gpu.flash_attention(q, k, v, seg).astype(jnp.float32))

    assert _triton_kernels(flash_gpu.flash_attention, q, kv, kv, seg) == ["flash_attention_fwd"]
    assert _triton_kernels(jax.grad(loss, argnums=(0, 1, 2)), q, kv, kv, seg) == [
        "flash_attention_bwd_dkv", "flash_attention_bwd_dq", "flash_attention_fwd"]


def test_decode_attention_lowers_to_triton():
    b, h, k, s, d = 8, 28, 4, 4000, 64
    cache = jax.ShapeDtypeStruct((b, k, s, d), jnp.bfloat16)
    args = (jax.ShapeDtypeStruct((b, h, d), jnp.bfloat16), cache, cache,
            jax.ShapeDtypeStruct((b,), jnp.int32))
    assert _triton_kernels(decode_gpu.decode_attention, *args) == ["decode_attention"]

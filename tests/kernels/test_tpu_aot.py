"""The TPU kernels compile, ahead of time, for real TPUs (v5p 2x2x1; also v4, v5e, v6e)
through libtpu on this CPU host: Mosaic lowers and compiles every kernel, alone and inside
shard_map under a mesh. Skipped only when libtpu is not installed."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install 'jax[tpu]'), so "
                    "the TPU kernels cannot be compiled for a TPU topology on this host")

from jax.experimental import topologies  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

from r1jax.kernels.decode_attention import tpu as decode_tpu  # noqa: E402
from r1jax.kernels.flash_attention import tpu as flash_tpu  # noqa: E402
from r1jax.models import attention as attn  # noqa: E402
from r1jax.sharding import Sharding, make_mesh  # noqa: E402

# Qwen2.5-7B attention: 28 query heads, 4 KV heads (G = 7), head dim 128, bf16.
H, K, D = 28, 4, 128
BF16 = jnp.bfloat16


@pytest.fixture(scope="module", autouse=True)
def no_persistent_cache():
    # TPU executables compiled without a TPU client cannot be read back from the persistent
    # compile cache: keep them out of it.
    # JAX decides once per process whether to use the cache: reset that decision both ways.
    was = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_enable_compilation_cache", was)
    compilation_cache.reset_cache()


def _topology(name: str):
    return topologies.get_topology_desc(topology_name=name, platform="tpu").devices


@pytest.fixture(scope="module")
def devices():
    return _topology("v5p:2x2x1")


def _spec(shape, dtype, mesh, spec=P()):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _kernels(compiled) -> list[str]:
    """Names of the Mosaic kernels in a compiled module."""
    return sorted(re.findall(r'%([a-z_]+)(?:\.\d+)? = [^\n]*custom_call_target="tpu_custom_call"',
                             compiled.as_text()))


def test_flash_attention_forward_and_backward_compile(devices):
    mesh = jax.sharding.Mesh(np.array(devices[:1]), ("x",))
    b, s = 1, 2048
    q, k = _spec((b, s, H, D), BF16, mesh), _spec((b, s, K, D), BF16, mesh)
    seg = _spec((b, s), jnp.int32, mesh)

    def loss(q, k, v, seg):
        return jnp.sum(flash_tpu.flash_attention(q, k, v, seg).astype(jnp.float32))

    fwd = jax.jit(flash_tpu.flash_attention).lower(q, k, k, seg).compile()
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, k, seg).compile()
    assert _kernels(fwd) == ["flash_attention_fwd"]
    assert _kernels(bwd) == ["flash_attention_bwd_dkv", "flash_attention_bwd_dq",
                             "flash_attention_fwd"]
    # Nothing of the size of the [H, S, S] scores (bf16: 235 MB) is ever allocated.
    scores = H * s * s * 2
    for compiled in (fwd, bwd):
        assert compiled.memory_analysis().temp_size_in_bytes < scores / 10
    # The kernels' cost estimates reach XLA: causal forward = 2 matmuls over S^2 / 2 pairs.
    fwd_flops = 4 * b * H * D * s * s // 2
    assert fwd.cost_analysis()["flops"] >= fwd_flops


@pytest.mark.parametrize("topology", ["v4:2x2x1", "v5e:2x2", "v6e:2x2"])
def test_kernels_compile_for_other_tpu_generations(topology):
    # v4 has no lane-to-sublane gather: the kernels must avoid it.
    mesh = jax.sharding.Mesh(np.array(_topology(topology)[:1]), ("x",))
    b, s = 1, 1024
    q, k = _spec((b, s, H, D), BF16, mesh), _spec((b, s, K, D), BF16, mesh)

    def loss(q, k, v):
        return jnp.sum(flash_tpu.flash_attention(q, k, v).astype(jnp.float32))

    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, k).compile()
    assert _kernels(bwd) == ["flash_attention_bwd_dkv", "flash_attention_bwd_dq",
                             "flash_attention_fwd"]
    cache = _spec((8, K, s, D), BF16, mesh)
    decode = jax.jit(decode_tpu.decode_attention).lower(
        _spec((8, H, D), BF16, mesh), cache, cache, _spec((8,), jnp.int32, mesh)).compile()
    assert _kernels(decode) == ["decode_attention"]


def test_decode_attention_compiles_without_copying_the_cache(devices):
    mesh = jax.sharding.Mesh(np.array(devices[:1]), ("x",))
    b, s = 8, 4096
    cache = _spec((b, K, s, D), BF16, mesh)
    compiled = jax.jit(decode_tpu.decode_attention).lower(
        _spec((b, H, D), BF16, mesh), cache, cache, _spec((b,), jnp.int32, mesh)).compile()
    assert _kernels(compiled) == ["decode_attention"]
    # The 2 x 64 MiB of cache are read in place: no relayout copy of them.
    assert compiled.memory_analysis().temp_size_in_bytes < b * K * s * D * 2 / 10


def test_model_switch_compiles_in_shard_map_under_a_mesh(devices):
    sharding = Sharding(make_mesh(data=2, fsdp=1, tensor=2, devices=devices))
    mesh = sharding.mesh
    b, s = 4, 1024
    qs = P(("data",), None, "tensor", None)
    q, k = _spec((b, s, H, D), BF16, mesh, qs), _spec((b, s, K, D), BF16, mesh, qs)
    seg = _spec((b, s), jnp.int32, mesh, P("data", None))

    def loss(q, k, v, seg):
        o = attn.attention(q, k, v, seg, sm_scale=D ** -0.5, impl="pallas", sharding=sharding)
        return jnp.sum(o.astype(jnp.float32))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, k, seg).compile()
    assert _kernels(compiled) == ["flash_attention_bwd_dkv", "flash_attention_bwd_dq",
                                  "flash_attention_fwd"]
    # Each kernel sees its shard: batch 4 / 2, KV heads 4 / 2, all 7 query heads per group.
    assert "bf16[2,2,7,1024,128]" in compiled.as_text()

    cache = _spec((b, K, s, D), BF16, mesh, P("data", "tensor", None, None))
    decode = jax.jit(lambda q, kc, vc, n: attn.decode_attention(
        q, kc, vc, n, sm_scale=D ** -0.5, impl="auto", sharding=sharding)).lower(
        _spec((b, H, D), BF16, mesh, P("data", "tensor", None)), cache, cache,
        _spec((b,), jnp.int32, mesh, P("data"))).compile()
    assert _kernels(decode) == ["decode_attention"]
    assert "bf16[2,2,1024,128]" in decode.as_text()

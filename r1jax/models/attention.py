"""The model's one attention switch: every attention call of the decoder goes through here.

`impl` selects the implementation:
- "xla": plain XLA (any backend; the CPU default): `flash_attention_xla` (the reference's values,
  flash-style hand-written backward) for training and prefill, `decode_attention_xla` (keys
  cached as [B, K, Dh, S], see `transposed_key_cache`) or the pure-jnp reference for decode.
- "pallas": the Pallas kernels of the backend: Mosaic on TPU, Triton on GPU. There are no CPU
  kernels: on CPU this raises, unless traced under `interpret(...)`, which runs the TPU or GPU
  kernels in Pallas interpret mode (tests, debugging).
- "auto": "pallas" on TPU and GPU (and under `interpret`), "xla" elsewhere.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` for training and prefill
  (GPU only; it takes the segment mask as a dense [B, 1, S, S] boolean), the Pallas GPU
  kernel for decode.

The backend is the platform of the mesh when a `Sharding` is given, else JAX's default
backend. Under a multi-device mesh the Pallas kernels, which XLA cannot partition, run inside
`jax.shard_map` over the batch axes (rule "act_batch") and the head axes (rule
"act_kv_heads"; query heads are split the same way so that each shard keeps whole groups).

Glossary: B batch, S sequence, H query heads, K KV heads, Dh head dim.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

from r1jax.kernels import decode_attention as decode_kernels
from r1jax.kernels import flash_attention as flash_kernels
from r1jax.kernels.decode_attention import decode_attention_reference, decode_attention_xla
from r1jax.kernels.flash_attention import flash_attention_xla
from r1jax.sharding import Sharding

IMPLS = ("xla", "pallas", "auto", "cudnn")
KERNEL_PLATFORMS = ("tpu", "gpu")

FLASH_KERNELS = {"tpu": flash_kernels.tpu.flash_attention,
                 "gpu": flash_kernels.gpu.flash_attention}
DECODE_KERNELS = {"tpu": decode_kernels.tpu.decode_attention,
                  "gpu": decode_kernels.gpu.decode_attention}

_INTERPRET: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "r1jax_attention_interpret", default=None)


@contextlib.contextmanager
def interpret(platform: str = "tpu") -> Iterator[None]:
    """Within this context, "pallas" / "auto" run `platform`'s kernels in interpret mode.

    For tests and debugging on a CPU host. It applies to functions traced inside the context;
    a jitted function keeps what it was traced with (TPU interpret mode is part of JAX's jit
    cache key, the GPU choice is not). TPU interpret mode refuses a multi-device mesh (the
    Mosaic interpreter's per-kernel barrier across devices deadlocks on XLA:CPU); the GPU one
    runs inside shard_map like the compiled kernels.

    Args:
      platform: "tpu" (Mosaic kernels, TPU interpret mode) or "gpu" (Triton kernels).
    """
    if platform not in KERNEL_PLATFORMS:
        raise ValueError(f"interpret platform '{platform}' is not one of {KERNEL_PLATFORMS}")
    token = _INTERPRET.set(platform)
    try:
        with pltpu.force_tpu_interpret_mode() if platform == "tpu" else contextlib.nullcontext():
            yield
    finally:
        _INTERPRET.reset(token)


def resolve(impl: str, sharding: Optional[Sharding] = None) -> tuple[str, str, bool]:
    """(kind, platform, interpret): kind is "xla", "pallas" or "cudnn".

    Raises:
      ValueError: for an unknown impl, or a kernel the backend does not have.
    """
    if impl not in IMPLS:
        raise ValueError(f"attention impl '{impl}' is not available; choose one of {IMPLS}")
    interpreted = _INTERPRET.get()
    platform = interpreted or backend(sharding)
    if interpreted == "tpu" and sharding is not None and sharding.mesh.size > 1:
        # The Mosaic interpreter joins all devices at a thread barrier per kernel; XLA:CPU
        # runs fewer device programs at once than that on small hosts, and it deadlocks.
        raise ValueError("TPU interpret mode cannot run under a multi-device mesh; use "
                         "interpret('gpu') or a one-device mesh")
    if impl == "auto":
        impl = "pallas" if platform in KERNEL_PLATFORMS else "xla"
    if impl == "pallas" and platform not in KERNEL_PLATFORMS:
        raise ValueError(f"attention impl 'pallas' has kernels for {KERNEL_PLATFORMS}, not for "
                         f"the '{platform}' backend; use 'xla' or 'auto', or trace under "
                         f"r1jax.models.attention.interpret('tpu') to interpret the kernels")
    if impl == "cudnn" and (platform != "gpu" or interpreted):
        raise ValueError(f"attention impl 'cudnn' needs a GPU backend, got '{platform}'"
                         + (" (interpreted)" if interpreted else ""))
    return impl, platform, interpreted is not None


def backend(sharding: Optional[Sharding]) -> str:
    """The platform ("cpu", "tpu", "gpu") of the mesh's devices, else JAX's default."""
    if sharding is not None:
        return sharding.mesh.devices.flat[0].platform
    return jax.default_backend()


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
              sm_scale: float, impl: str = "xla",
              sharding: Optional[Sharding] = None) -> jax.Array:
    """Causal grouped-query self-attention within segments (training and prefill).

    Args:
      q: [B, S, H, Dh]; k, v: [B, S, K, Dh].
      segment_ids: [B, S] int; tokens attend earlier tokens of the same segment only.
      sm_scale: softmax scale.
      impl: implementation, see module docstring.
      sharding: the mesh and rules, for implementations that need shard_map.
    Returns:
      [B, S, H, Dh].
    """
    kind, platform, interpreted = resolve(impl, sharding)
    if kind == "xla":
        return flash_attention_xla(q, k, v, segment_ids, causal=True, sm_scale=sm_scale)
    if kind == "cudnn":
        return _cudnn_attention(q, k, v, segment_ids, sm_scale)
    kernel = functools.partial(FLASH_KERNELS[platform], causal=True, sm_scale=sm_scale,
                               interpret=interpreted)
    batch, heads = _batch_and_heads(sharding, q.shape[0], k.shape[2])
    spec = P(batch, None, heads, None)
    return _shard(kernel, sharding, (spec, spec, spec, P(batch, None)), spec)(
        q, k, v, segment_ids)


def transposed_key_cache(impl: str, sharding: Optional[Sharding] = None) -> bool:
    """Whether `decode_attention` with this impl wants the key cache as [B, K, Dh, S].

    True for the XLA implementation (its score matmul reads keys in that layout without a
    copy), False for the Pallas kernels, which tile [B, K, S, Dh].
    """
    return resolve(impl, sharding)[0] == "xla"


def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     lengths: jax.Array, *, sm_scale: float, impl: str = "xla",
                     sharding: Optional[Sharding] = None,
                     keys_transposed: bool = False) -> jax.Array:
    """One new token per row against the valid prefix of its KV cache (decode).

    The Pallas kernels compute in the cache dtype: q is cast to it, the output back to q's.

    Args:
      q: [B, H, Dh].
      k_cache: [B, K, S, Dh], or [B, K, Dh, S] with `keys_transposed` (XLA impl only; what
        `transposed_key_cache(impl)` asks for).
      v_cache: [B, K, S, Dh]; slots [0, lengths[b]) of row b are valid.
      lengths: [B] int32.
    Returns:
      [B, H, Dh].
    """
    kind, platform, interpreted = resolve(impl, sharding)
    if kind == "xla":
        if keys_transposed:
            return decode_attention_xla(q, k_cache, v_cache, lengths, sm_scale=sm_scale)
        return decode_attention_reference(q, k_cache, v_cache, lengths, sm_scale=sm_scale)
    if keys_transposed:
        raise ValueError(f"attention impl '{impl}' runs the {platform} decode kernel, which "
                         f"takes keys [B, K, S, Dh]; keys_transposed is for the XLA impl")
    kernel = functools.partial(DECODE_KERNELS[platform], sm_scale=sm_scale,
                               interpret=interpreted)
    batch, heads = _batch_and_heads(sharding, q.shape[0], k_cache.shape[1])
    q_spec, cache_spec = P(batch, heads, None), P(batch, heads, None, None)
    out = _shard(kernel, sharding, (q_spec, cache_spec, cache_spec, P(batch)), q_spec)(
        q.astype(k_cache.dtype), k_cache, v_cache, lengths.astype(jnp.int32))
    return out.astype(q.dtype)


def _batch_and_heads(sharding: Optional[Sharding], batch: int, kv_heads: int):
    """Mesh axes of the batch and of the heads (those that divide the KV heads)."""
    if sharding is None or sharding.mesh.size == 1:
        return None, None
    spec = sharding.spec(("act_batch", "act_kv_heads"), (batch, kv_heads))
    return spec[0], spec[1]


def _shard(fn: Callable, sharding: Optional[Sharding], in_specs: tuple, out_spec: P) -> Callable:
    """`fn` as is without a multi-device mesh, else inside shard_map with these specs."""
    if sharding is None or sharding.mesh.size == 1:
        return fn
    return jax.shard_map(fn, mesh=sharding.mesh, in_specs=in_specs, out_specs=out_spec,
                         check_vma=False)


def _cudnn_attention(q, k, v, segment_ids, sm_scale):
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [B, 1, S, S]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=sm_scale, is_causal=True,
                                        implementation="cudnn")

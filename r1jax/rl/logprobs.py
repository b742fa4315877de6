"""Per-token log-probs and entropies of sampled tokens without [B, T, V] float32 logits.

`token_logprobs(h, w, targets)` computes, for final hidden states h [B, T, D] and the lm-head
kernel w [D, V], z = (h @ w) / temperature (float32 accumulation), and returns

    logp[b, t]    = z[b, t, targets[b, t]] - logsumexp_v z[b, t, v]
    entropy[b, t] = -sum_v p log p,  p = softmax_v z[b, t]

tile by tile, under a custom VJP so that the backward pass is tiled too. A tile is a chunk of
T positions (all B rows) times a chunk of the vocabulary; for small vocabularies one vocab
chunk covers V, and a last, narrower vocab chunk takes the remainder (nothing is padded).

Forward: the target logit is a gathered dot product h . w[:, target]; per tile one matmul,
then an online logsumexp (running max and sum) and the entropy's running sum of p z. Only
logsumexp and entropy [B, T] are kept as residuals. Backward: each tile's logits are
recomputed once, then with p = softmax(z), onehot = [v = target],

    dL/dz = g_logp (onehot - p) - g_ent p (log p + H)       (one fused elementwise pass)
    dh   += (dL/dz / temperature) @ w_tile^T,   dw_tile += h^T @ (dL/dz / temperature)

Peak memory is one tile (default ~16 MiB of float32 logits) plus dw [D, V] in float32,
instead of several [B, T, V] buffers; the price is one extra matmul (the recomputation),
8 instead of 6 x B T D V flops for forward + backward. bf16 h / w run the matmuls in bf16
with float32 accumulation; dw accumulates in float32 and is cast to w's dtype at the end.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

# Chunk heuristics. A token chunk spans about MIN_ROWS rows or more (B x chunk) so that the
# float32 dw accumulator, whose tiles are read and written once per token chunk, costs little
# next to the chunk's matmuls; the vocabulary is then split so that one tile of logits holds
# about TILE_ELEMENTS values (16 MiB float32), small enough for the CPU's caches and any HBM.
MIN_ROWS = 1024
TILE_ELEMENTS = 1 << 22
VOCAB_ALIGN = 128


def default_chunk_sizes(batch: int, length: int, vocab: int) -> tuple[int, int]:
    """(positions of T per token chunk, vocab entries per vocab chunk), balanced."""
    c = max(-(-MIN_ROWS // batch), TILE_ELEMENTS // max(1, batch * vocab))
    c = min(length, c)
    c = -(-length // -(-length // c))
    vc = vocab
    if batch * c * vocab > TILE_ELEMENTS:
        vc = max(VOCAB_ALIGN, TILE_ELEMENTS // (batch * c))
        vc = -(-vc // VOCAB_ALIGN) * VOCAB_ALIGN
    return c, min(vc, vocab)


def _zeros(shape, *like) -> jax.Array:
    """float32 zeros that vary over the same shard_map axes as `like` (scan carries must)."""
    zero = sum(jnp.zeros_like(x[(0,) * x.ndim], jnp.float32) for x in like if x is not None)
    return jnp.broadcast_to(zero, shape)


def _bits(x: jax.Array) -> jax.Array:
    """A 16-bit float array viewed as uint16, else x.

    XLA:CPU runs slices, dynamic slices, gathers and updates of bf16 arrays through float32
    (converting the WHOLE operand, e.g. all of w, once per call); on the bit pattern they are
    plain copies. A free bitcast on other backends.
    """
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16)
    return x


def _unbits(x: jax.Array, dtype) -> jax.Array:
    """Inverse of `_bits`."""
    return jax.lax.bitcast_convert_type(x, dtype) if x.dtype != dtype else x


def _over_vocab(fn: Callable, carry, w: jax.Array, vc: int):
    """Folds `carry = fn(carry, w_tile, offset)` over the vocab chunks of w [D, V].

    The full chunks run in a scan; the remainder (V mod vc columns) is one more call with
    its own, narrower shape.
    """
    n_full, rem = divmod(w.shape[1], vc)
    if n_full == 1 and not rem:
        return fn(carry, w, 0)
    wb = _bits(w)
    if n_full:
        def body(c, j):
            off = j * vc
            w_tile = _unbits(jax.lax.dynamic_slice_in_dim(wb, off, vc, axis=1), w.dtype)
            return fn(c, w_tile, off), None
        carry, _ = jax.lax.scan(body, carry, jnp.arange(n_full))
    if rem:
        carry = fn(carry, _unbits(wb[:, n_full * vc:], w.dtype), n_full * vc)
    return carry


def _tile_logits(h_c, w_tile, temperature):
    z = jnp.einsum("bcd,dv->bcv", h_c, w_tile, preferred_element_type=jnp.float32)
    return z if temperature == 1.0 else z / temperature


def _forward_chunk(h_c, t_c, w, vc, temperature, with_entropy):
    """(logp, lse, entropy or None), each [B, c], by an online logsumexp over vocab chunks."""
    def tile(carry, w_tile, _):
        m, s, sz = carry
        z = _tile_logits(h_c, w_tile, temperature)
        m_new = jnp.maximum(m, jnp.max(z, axis=-1))
        scale = jnp.exp(m - m_new)
        e = jnp.exp(z - m_new[..., None])
        s = s * scale + jnp.sum(e, axis=-1)
        if with_entropy:
            sz = sz * scale + jnp.sum(e * z, axis=-1)
        return m_new, s, sz

    zeros = _zeros(t_c.shape, h_c, t_c, w)
    m, s, sz = _over_vocab(tile, (zeros - jnp.inf, zeros, zeros), w, vc)
    lse = m + jnp.log(s)
    # the target logit as a dot with the gathered column: no pass over the tiles
    # (in float32 after the gather: a bf16 batched dot would make XLA:CPU convert all of w)
    w_t = _unbits(jnp.take(_bits(w), t_c, axis=1), w.dtype)
    picked = jnp.einsum("bcd,dbc->bc", h_c.astype(jnp.float32), w_t.astype(jnp.float32))
    if temperature != 1.0:
        picked = picked / temperature
    ent = lse - sz / s if with_entropy else None
    return picked - lse, lse, ent


def _to_chunks(x: jax.Array, c: int) -> jax.Array:
    """[B, T, ...] -> [n, B, c, ...], T zero-padded to n * c (the batch dim keeps its place,
    and with it its sharding)."""
    x = _bits(x)
    if pad := -x.shape[1] % c:
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], -1, c, *x.shape[2:]), 1, 0)


def _from_chunks(x: jax.Array, t: int) -> jax.Array:
    """[n, B, c, ...] -> [B, t, ...] (dropping the padding)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :t]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _chunked(h, w, targets, temperature, chunk, vc, with_entropy):
    out, _ = _chunked_fwd_impl(h, w, targets, temperature, chunk, vc, with_entropy)
    return out


def _chunked_fwd_impl(h, w, targets, temperature, chunk, vc, with_entropy):
    def body(_, xs):
        h_c, t_c = xs
        return None, _forward_chunk(_unbits(h_c, h.dtype), t_c, w, vc, temperature,
                                    with_entropy)

    t = h.shape[1]
    _, (logp, lse, ent) = jax.lax.scan(body, None, (_to_chunks(h, chunk),
                                                    _to_chunks(targets, chunk)))
    logp, lse = _from_chunks(logp, t), _from_chunks(lse, t)
    ent = _from_chunks(ent, t) if with_entropy else None
    return (logp, ent), (lse, ent)


def _chunked_fwd(h, w, targets, temperature, chunk, vc, with_entropy):
    h, w, targets = h.value, w.value, targets.value
    out, (lse, ent) = _chunked_fwd_impl(h, w, targets, temperature, chunk, vc, with_entropy)
    return out, (h, w, targets, lse, ent)


def _backward_chunk(dw, dw_dtype, h_c, t_c, lse_c, gl_c, ent_c, ge_c, w, vc, temperature):
    """Adds this token chunk's h^T dz to dw [D, V]; returns (dw, dh_c [B, c, D] float32)."""
    def tile(carry, w_tile, off):
        dw, dh_c = carry
        z = _tile_logits(h_c, w_tile, temperature)
        logp_all = z - lse_c[..., None]
        coef = -gl_c[..., None]
        if ent_c is not None:
            coef = coef - ge_c[..., None] * (logp_all + ent_c[..., None])
        hit = jax.lax.broadcasted_iota(jnp.int32, z.shape, 2) == (t_c - off)[..., None]
        gz = jnp.exp(logp_all) * coef + jnp.where(hit, gl_c[..., None], 0.0)
        if temperature != 1.0:
            gz = gz / temperature
        gz = gz.astype(h_c.dtype)
        dh_c = dh_c + jnp.einsum("bcv,dv->bcd", gz, w_tile, preferred_element_type=jnp.float32)
        dw_tile = jnp.einsum("bcd,bcv->dv", h_c, gz, preferred_element_type=jnp.float32)
        # dw is carried as _bits(dw) (see there); its dtype is float32 or w's
        old = _unbits(jax.lax.dynamic_slice_in_dim(dw, off, w_tile.shape[1], axis=1), dw_dtype)
        dw_tile = _bits((old.astype(jnp.float32) + dw_tile).astype(dw_dtype))
        return jax.lax.dynamic_update_slice_in_dim(dw, dw_tile, off, axis=1), dh_c

    dh_c = _zeros(h_c.shape, h_c, t_c, lse_c, gl_c, ent_c, ge_c, w)
    return _over_vocab(tile, (dw, dh_c), w, vc)


def _chunked_bwd(temperature, chunk, vc, with_entropy, res, g):
    h, w, targets, lse, ent = res
    g_logp, g_ent = g
    use_ent = with_entropy and not isinstance(g_ent, SymbolicZero)
    if isinstance(g_logp, SymbolicZero):
        g_logp = jnp.zeros_like(lse)
    n = -(-h.shape[1] // chunk)

    def split(x):
        # padded positions have h = 0 and cotangents 0, so they add nothing to dh or dw
        return _to_chunks(x, chunk)

    # dw sums over token chunks in float32; with one token chunk each tile is written once,
    # so it may be rounded to w's dtype right away (saving a float32 [D, V] buffer).
    dw_dtype = jnp.float32 if n > 1 else w.dtype

    def body(dw, xs):
        h_c, t_c, lse_c, gl_c, ent_c, ge_c = xs
        dw, dh_c = _backward_chunk(dw, dw_dtype, _unbits(h_c, h.dtype), t_c, lse_c, gl_c,
                                   ent_c, ge_c, w, vc, temperature)
        return dw, _bits(dh_c.astype(h.dtype))

    xs = (split(h), split(targets), split(lse), split(g_logp.astype(jnp.float32)),
          split(ent) if use_ent else None,
          split(g_ent.astype(jnp.float32)) if use_ent else None)
    dw0 = _bits(_zeros(w.shape, w, *xs).astype(dw_dtype))
    dw, dh = jax.lax.scan(body, dw0, xs)
    dh = _unbits(_from_chunks(dh, h.shape[1]), h.dtype)
    return dh, _unbits(dw, dw_dtype).astype(w.dtype), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)


def token_logprobs(h: jax.Array, w: jax.Array, targets: jax.Array, *,
                   temperature: float = 1.0, chunk_size: Optional[int] = None,
                   vocab_chunk_size: Optional[int] = None,
                   return_entropy: bool = True) -> tuple[jax.Array, Optional[jax.Array]]:
    """Log-probs of `targets` and per-token entropies under logits (h @ w) / temperature.

    Differentiable w.r.t. h and w (the gradients of the plain log_softmax-and-gather
    computation, obtained tile by tile; see the module docstring). An entropy that the loss
    does not use (e.g. only logged) costs nothing in the backward pass.

    Args:
      h: [B, T, D] final hidden states at the positions that predict `targets` (float32 or
        bfloat16).
      w: [D, V] lm-head kernel, same dtype as h. Inside `shard_map`, w must be whole on
        every device (the log-softmax runs over the full vocabulary); h may be split over
        batch axes.
      targets: [B, T] int token ids in [0, V).
      temperature: the sampling temperature (> 0) the log-probs refer to; use the
        sampler's so that logp and old_logp describe the same distribution.
      chunk_size: positions of T per token chunk (T is zero-padded to a multiple of it).
      vocab_chunk_size: vocabulary entries per vocab chunk (the last chunk takes the
        remainder). Defaults: `default_chunk_sizes(B, T, V)`.
      return_entropy: also compute the entropy (else None is returned for it).

    Returns:
      (logp [B, T] float32, entropy [B, T] float32 or None).
    """
    if h.ndim != 3 or w.ndim != 2 or h.shape[-1] != w.shape[0]:
        raise ValueError(f"need h [B, T, D] and w [D, V], got {h.shape} and {w.shape}")
    if targets.shape != h.shape[:2]:
        raise ValueError(f"targets {targets.shape} must be h's [B, T] = {h.shape[:2]}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"targets must be integer token ids, got {targets.dtype}")
    if h.dtype != w.dtype:
        raise ValueError(f"h ({h.dtype}) and w ({w.dtype}) must share a dtype")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    for name, size in (("chunk_size", chunk_size), ("vocab_chunk_size", vocab_chunk_size)):
        if size is not None and size < 1:
            raise ValueError(f"{name}={size} must be >= 1")
    b, t, _ = h.shape
    auto_c, auto_vc = default_chunk_sizes(b, t, w.shape[1])
    chunk = min(chunk_size or auto_c, t)
    vc = min(vocab_chunk_size or auto_vc, w.shape[1])
    # Inside shard_map with h split over batch axes and w replicated, this makes w vary like
    # h, so that w's gradient (a per-device partial sum) is psum-ed by JAX's transpose of the
    # implicit broadcast. Outside shard_map XLA drops the + 0.
    w = w + jnp.zeros_like(h[0, 0, 0])
    return _chunked(h, w, targets.astype(jnp.int32), float(temperature), chunk, vc,
                    bool(return_entropy))


def token_logprobs_reference(h: jax.Array, w: jax.Array, targets: jax.Array, *,
                             temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """The plain full-logits version of `token_logprobs` (for tests and benchmarks)."""
    z = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32) / temperature
    logp_all = jax.nn.log_softmax(z, axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, ent

"""The decoder-only transformer (Llama 3 / Qwen2 / Qwen2.5 / Qwen3) as pure functions + NNX.

The maths is pure functions of a nested dict of arrays (`params`), so that the jitted train
and sample steps work on plain pytrees. `Decoder` is the NNX module research code holds and
calls; its parameters are `nnx.Param`s with `logical_axes` metadata from `param_specs`, the
single table of every parameter's shape and logical axis names.

Layer parameters are stacked on a leading `layers` axis; the forward pass scans over them
(`scan_layers=True`, fast to compile) or unrolls a Python loop.

Glossary: B batch, S sequence, D model dim, F MLP dim, V vocab, L layers, H query heads,
K KV heads, Dh head dim.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from r1jax.config import ModelConfig
from r1jax.models import attention as attn_lib
from r1jax.models.layers import (gated_mlp, positions_from_segments, rms_norm, rope_angles,
                                 rope_inv_freq, rotate)
from r1jax.sharding import Sharding, constrain

Params = dict[str, Any]
INIT_STD = 0.02  # Hugging Face's initializer_range for these families


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    axes: tuple[Optional[str], ...]
    init: str  # "normal" | "ones" | "zeros"


def param_specs(cfg: ModelConfig) -> dict[str, Any]:
    """Shape, logical axes and initializer of every parameter, as a nested dict."""
    d, f, h, k, dh, l, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                            cfg.num_kv_heads, cfg.head_dim, cfg.num_layers, cfg.vocab_size)
    layers = {
        "attn_norm": ParamSpec((l, d), ("layers", "norm"), "ones"),
        "wq": ParamSpec((l, d, h, dh), ("layers", "embed", "q_heads", "head_dim"), "normal"),
        "wk": ParamSpec((l, d, k, dh), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        "wv": ParamSpec((l, d, k, dh), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        "wo": ParamSpec((l, h, dh, d), ("layers", "q_heads", "head_dim", "embed"), "normal"),
        "mlp_norm": ParamSpec((l, d), ("layers", "norm"), "ones"),
        "w_gate": ParamSpec((l, d, f), ("layers", "embed", "mlp"), "normal"),
        "w_up": ParamSpec((l, d, f), ("layers", "embed", "mlp"), "normal"),
        "w_down": ParamSpec((l, f, d), ("layers", "mlp", "embed"), "normal"),
    }
    if cfg.qkv_bias:
        layers["bq"] = ParamSpec((l, h, dh), ("layers", "q_heads", "head_dim"), "zeros")
        layers["bk"] = ParamSpec((l, k, dh), ("layers", "kv_heads", "head_dim"), "zeros")
        layers["bv"] = ParamSpec((l, k, dh), ("layers", "kv_heads", "head_dim"), "zeros")
    if cfg.o_bias:
        layers["bo"] = ParamSpec((l, d), ("layers", "norm"), "zeros")
    if cfg.qk_norm:
        layers["q_norm"] = ParamSpec((l, dh), ("layers", "head_dim"), "ones")
        layers["k_norm"] = ParamSpec((l, dh), ("layers", "head_dim"), "ones")
    specs = {
        "embed": ParamSpec((v, d), ("vocab", "embed"), "normal"),
        "layers": layers,
        "final_norm": ParamSpec((d,), ("norm",), "ones"),
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = ParamSpec((d, v), ("embed", "vocab"), "normal")
    return specs


def _is_spec(x: Any) -> bool:
    return isinstance(x, ParamSpec)


def init_params(cfg: ModelConfig, key: jax.Array,
                sharding: Optional[Sharding] = None) -> Params:
    """Random parameters N(0, 0.02) (norms 1, biases 0) in `cfg.param_dtype`.

    One compiled program makes every parameter; with `sharding`, each is created directly on
    its shards (`param_shardings`), so no device ever holds a whole unsharded model.
    """
    specs = param_specs(cfg)
    leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
    dtype = jnp.dtype(cfg.param_dtype)

    def make(spec: ParamSpec, k: jax.Array) -> jax.Array:
        if spec.init == "ones":
            return jnp.ones(spec.shape, dtype)
        if spec.init == "zeros":
            return jnp.zeros(spec.shape, dtype)
        return (INIT_STD * jax.random.normal(k, spec.shape, jnp.float32)).astype(dtype)

    def build(key: jax.Array) -> Params:
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [make(s, keys[i]) for i, s in enumerate(leaves)])

    out = None if sharding is None else param_shardings(cfg, sharding)
    return jax.jit(build, out_shardings=out)(key)


def param_shardings(cfg: ModelConfig, sharding: Sharding) -> Any:
    """NamedSharding of every parameter, same tree as `init_params`."""
    return jax.tree.map(lambda s: sharding.named(s.axes, s.shape), param_specs(cfg),
                        is_leaf=_is_spec)


# --------------------------------------------------------------------------------------------
# Forward pass.

Attend = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


def _project(x: jax.Array, w: jax.Array) -> jax.Array:
    """[B, S, D] x [D, N, Dh] -> [B, S, N, Dh] as one 2-D matmul (free reshapes)."""
    return (x @ w.reshape(w.shape[0], -1)).reshape(*x.shape[:2], *w.shape[1:])


Rope = tuple[jax.Array, jax.Array]  # cos, sin [B, S, Dh / 2] from `rope_tables`


def rope_tables(positions: jax.Array, cfg: ModelConfig) -> Rope:
    """The RoPE angles of positions [B, S] (`layers.rope_angles`), for every layer."""
    return rope_angles(positions, rope_inv_freq(cfg.head_dim, cfg.rope_theta,
                                                cfg.rope_scaling))


def project_qkv(p: Params, x: jax.Array, rope: Rope, cfg: ModelConfig,
                sharding: Optional[Sharding]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries [B, S, H, Dh] and keys, values [B, S, K, Dh], with bias, q/k norm and RoPE
    (`rope` from `rope_tables`)."""
    q = _project(x, p["wq"])
    k = _project(x, p["wk"])
    v = _project(x, p["wv"])
    if cfg.qkv_bias:
        q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
    if cfg.qk_norm:
        q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q = rotate(q, *rope)
    k = rotate(k, *rope)
    q = constrain(q, ("act_batch", "act_seq", "act_heads", None), sharding)
    k = constrain(k, ("act_batch", "act_seq", "act_kv_heads", None), sharding)
    v = constrain(v, ("act_batch", "act_seq", "act_kv_heads", None), sharding)
    return q, k, v


def block(p: Params, x: jax.Array, rope: Rope, attend: Attend, cfg: ModelConfig,
          sharding: Optional[Sharding]) -> tuple[jax.Array, Any]:
    """One pre-norm decoder layer. `attend(q, k, v) -> (out [B, S, H, Dh], aux)`.

    Args:
      p: one layer's parameters (the `layers` dict sliced at one index), compute dtype.
      x: [B, S, D] residual stream.
      rope: the RoPE angles of the positions (`rope_tables`).
    Returns:
      (x [B, S, D], aux from `attend`).
    """
    h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q, k, v = project_qkv(p, h, rope, cfg, sharding)
    o, aux = attend(q, k, v)
    # As a 2-D matmul over the flattened heads: both reshapes are free, and XLA gets no
    # choice of contraction order that would make it transpose wo on every call.
    o = o.reshape(*o.shape[:2], -1) @ p["wo"].reshape(-1, p["wo"].shape[-1])
    if cfg.o_bias:
        o = o + p["bo"]
    x = constrain(x + o, ("act_batch", "act_seq", "act_embed"), sharding)
    h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    x = x + gated_mlp(h, p["w_gate"], p["w_up"], p["w_down"])
    return constrain(x, ("act_batch", "act_seq", "act_embed"), sharding), aux


REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def cast(tree: Any, dtype: str) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype), tree)


def layer_slice(layers: Params, i: int) -> Params:
    return jax.tree.map(lambda a: a[i], layers)


def embed_tokens(params: Params, tokens: jax.Array, cfg: ModelConfig,
                 sharding: Optional[Sharding]) -> jax.Array:
    """[B, S] token ids -> [B, S, D] in the compute dtype."""
    x = jnp.take(params["embed"], tokens, axis=0).astype(cfg.dtype)
    return constrain(x, ("act_batch", "act_seq", "act_embed"), sharding)


def run_layers(params: Params, x: jax.Array, positions: jax.Array, attend: Attend,
               cfg: ModelConfig, sharding: Optional[Sharding]) -> tuple[jax.Array, Any]:
    """All layers with the same `attend`; aux of each layer stacked on a leading L axis."""
    rope = rope_tables(positions, cfg)

    def body(x, p):
        p = cast(p, cfg.dtype)
        return block(p, x, rope, attend, cfg, sharding)

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    if cfg.scan_layers:
        return lax.scan(body, x, params["layers"])
    auxs = []
    for i in range(cfg.num_layers):
        x, aux = body(x, layer_slice(params["layers"], i))
        auxs.append(aux)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *auxs)


def final_hidden(params: Params, tokens: jax.Array, cfg: ModelConfig, *,
                 positions: Optional[jax.Array] = None,
                 segment_ids: Optional[jax.Array] = None,
                 sharding: Optional[Sharding] = None,
                 return_kv: bool = False) -> Any:
    """Final-norm hidden states [B, S, D] (and stacked K/V when `return_kv`).

    Args:
      tokens: [B, S] int.
      positions: [B, S]; default: position within each segment.
      segment_ids: [B, S]; tokens attend only earlier tokens of the same segment. Default:
        one segment per row.
    Returns:
      h [B, S, D], or (h, (k, v)) with k, v [L, B, S, K, Dh] when `return_kv`.
    """
    if segment_ids is None:
        segment_ids = jnp.ones(tokens.shape, jnp.int32)
    if positions is None:
        positions = positions_from_segments(segment_ids)

    def attend(q, k, v):
        o = attn_lib.attention(q, k, v, segment_ids, sm_scale=cfg.head_dim ** -0.5,
                               impl=cfg.attention_impl, sharding=sharding)
        o = checkpoint_name(o, "attention_out")
        return o, ((k, v) if return_kv else None)

    x = embed_tokens(params, tokens, cfg, sharding)
    x, kv = run_layers(params, x, positions, attend, cfg, sharding)
    h = rms_norm(x, params["final_norm"].astype(cfg.dtype), cfg.rms_norm_eps)
    return (h, kv) if return_kv else h


def lm_head_kernel(params: Params, cfg: ModelConfig) -> jax.Array:
    """The output projection [D, V] in the compute dtype (the embedding, transposed, if tied)."""
    w = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    return w.astype(cfg.dtype)


def logits_from_hidden(params: Params, h: jax.Array, cfg: ModelConfig,
                       sharding: Optional[Sharding] = None) -> jax.Array:
    """[..., D] -> float32 logits [..., V] (float32 accumulation)."""
    logits = jnp.einsum("...d,dv->...v", h, lm_head_kernel(params, cfg),
                        preferred_element_type=jnp.float32)
    if logits.ndim == 3:
        logits = constrain(logits, ("act_batch", "act_seq", "act_vocab"), sharding)
    return logits


def forward(params: Params, tokens: jax.Array, cfg: ModelConfig, *,
            positions: Optional[jax.Array] = None,
            attention_mask: Optional[jax.Array] = None,
            segment_ids: Optional[jax.Array] = None,
            sharding: Optional[Sharding] = None) -> jax.Array:
    """Logits [B, S, V] float32 of a (left-padded, right-padded or packed) batch.

    Args:
      tokens: [B, S] int.
      positions: [B, S]; default: position within each segment (pads do not count).
      attention_mask: [B, S] 1 for real tokens, 0 for padding (Hugging Face convention).
        Used as segment ids when `segment_ids` is not given.
      segment_ids: [B, S] int, for packed sequences; overrides attention_mask.
    """
    if segment_ids is None and attention_mask is not None:
        segment_ids = attention_mask.astype(jnp.int32)
    h = final_hidden(params, tokens, cfg, positions=positions, segment_ids=segment_ids,
                     sharding=sharding)
    return logits_from_hidden(params, h, cfg, sharding)


# --------------------------------------------------------------------------------------------
# The NNX module.


class Decoder(nnx.Module):
    """Decoder-only transformer. `model(tokens, positions=..., attention_mask=...) -> logits`.

    Attributes:
      config: the ModelConfig.
      sharding: mesh + rules the parameters are placed with (None: default device).
      source_dir: the Hugging Face directory the weights came from, if any (used by
        `save_hf` to carry tokenizer files and the original config.json keys along).
    """

    def __init__(self, config: ModelConfig, *, rngs: Optional[nnx.Rngs] = None,
                 params: Optional[Params] = None, sharding: Optional[Sharding] = None,
                 source_dir: Optional[str] = None, source_config: Optional[dict] = None):
        config.validate()
        if params is None:
            if rngs is None:
                raise ValueError("Decoder needs `rngs` (random init) or `params`")
            params = init_params(config, rngs.params(), sharding)
        self.config = config
        self.sharding = sharding
        self.source_dir = source_dir
        self.source_config = nnx.static(source_config)
        specs = param_specs(config)
        _check_param_tree(params, specs)
        wrap = lambda s, a: nnx.Param(a, logical_axes=s.axes)
        tree = jax.tree.map(wrap, specs, params, is_leaf=_is_spec)
        self.embed = tree["embed"]
        self.layers = nnx.Dict(tree["layers"])
        self.final_norm = tree["final_norm"]
        if "lm_head" in tree:
            self.lm_head = tree["lm_head"]

    @property
    def params(self) -> Params:
        """The parameters as a nested dict of arrays (the tree `init_params` makes)."""
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def __call__(self, tokens: jax.Array, *, positions: Optional[jax.Array] = None,
                 attention_mask: Optional[jax.Array] = None,
                 segment_ids: Optional[jax.Array] = None) -> jax.Array:
        """Logits [B, S, V] float32; see `forward`."""
        return forward(self.params, tokens, self.config, positions=positions,
                       attention_mask=attention_mask, segment_ids=segment_ids,
                       sharding=self.sharding)


def _check_param_tree(params: Params, specs: dict) -> None:
    flat_p = {jax.tree_util.keystr(k): v for k, v in
              jax.tree_util.tree_flatten_with_path(params)[0]}
    flat_s = {jax.tree_util.keystr(k): v for k, v in
              jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0]}
    if set(flat_p) != set(flat_s):
        missing = sorted(set(flat_s) - set(flat_p))
        extra = sorted(set(flat_p) - set(flat_s))
        raise ValueError(f"parameter tree mismatch: missing {missing}, unexpected {extra}")
    for name, spec in flat_s.items():
        if tuple(flat_p[name].shape) != spec.shape:
            raise ValueError(f"parameter {name} has shape {tuple(flat_p[name].shape)}, "
                             f"expected {spec.shape}")


def abstract_params(cfg: ModelConfig) -> Params:
    """ShapeDtypeStructs of every parameter, without allocating."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def count_params(cfg: ModelConfig) -> int:
    """Number of parameters from `jax.eval_shape` (nothing is allocated)."""
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(abstract_params(cfg))))

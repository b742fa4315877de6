"""Hugging Face weight I/O: `load_hf` from a local model directory, `save_hf` back to one.

Loading streams each tensor from the memory-mapped safetensors files straight into its target
sharding: every device shard is filled by a callback that copies only its own slice, so host
memory holds at most one tensor's slice at a time, never the whole model.

Saving writes safetensors + config.json (+ tokenizer files) into a temporary sibling directory
and renames it into place, so an interrupted save never leaves a half-written model where a
good one was. All checks (paths, tensor names, shapes, dtypes) run before anything is written
or allocated; errors name the file and the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from typing import Any, Optional, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from r1jax.config import ModelConfig
from r1jax.distributed import barrier, to_host
from r1jax.models import hf_config, safetensors_io as st
from r1jax.models.decoder import Decoder, ParamSpec, param_specs
from r1jax.sharding import Sharding, single_device

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")
# Tensors some checkpoints carry that hold no parameters of the model.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
SAVE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class WeightMap:
    """How one r1jax parameter maps to Hugging Face tensor(s).

    `split` describes the layout change: 0 = same layout (flattened when `flat`, e.g. the q bias
    [H, Dh] is HF's [H * Dh]); n > 0 = our first n dims are HF's input dim and the rest its
    output dim, i.e. HF holds the transposed, flattened [prod(ours[n:]), prod(ours[:n])].
    """

    path: tuple[str, ...]
    hf_name: str  # "{i}" is the layer index for stacked parameters
    split: int
    flat: bool = False

    def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        if self.split == 0:
            return (math.prod(ours),) if self.flat else tuple(ours)
        return (math.prod(ours[self.split:]), math.prod(ours[:self.split]))

    def to_ours(self, hf: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
        return hf.reshape(ours) if self.split == 0 else hf.T.reshape(ours)

    def to_hf(self, arr: np.ndarray) -> np.ndarray:
        if self.split == 0:
            return arr.reshape(self.hf_shape(arr.shape))
        return arr.reshape(math.prod(arr.shape[:self.split]), -1).T


_LAYER = "model.layers.{i}."
_MAPS = [
    WeightMap(("embed",), "model.embed_tokens.weight", 0),
    WeightMap(("final_norm",), "model.norm.weight", 0),
    WeightMap(("lm_head",), "lm_head.weight", 1),
    WeightMap(("layers", "attn_norm"), _LAYER + "input_layernorm.weight", 0),
    WeightMap(("layers", "mlp_norm"), _LAYER + "post_attention_layernorm.weight", 0),
    WeightMap(("layers", "wq"), _LAYER + "self_attn.q_proj.weight", 1),
    WeightMap(("layers", "wk"), _LAYER + "self_attn.k_proj.weight", 1),
    WeightMap(("layers", "wv"), _LAYER + "self_attn.v_proj.weight", 1),
    WeightMap(("layers", "wo"), _LAYER + "self_attn.o_proj.weight", 2),
    WeightMap(("layers", "bq"), _LAYER + "self_attn.q_proj.bias", 0, flat=True),
    WeightMap(("layers", "bk"), _LAYER + "self_attn.k_proj.bias", 0, flat=True),
    WeightMap(("layers", "bv"), _LAYER + "self_attn.v_proj.bias", 0, flat=True),
    WeightMap(("layers", "bo"), _LAYER + "self_attn.o_proj.bias", 0),
    WeightMap(("layers", "q_norm"), _LAYER + "self_attn.q_norm.weight", 0),
    WeightMap(("layers", "k_norm"), _LAYER + "self_attn.k_norm.weight", 0),
    WeightMap(("layers", "w_gate"), _LAYER + "mlp.gate_proj.weight", 1),
    WeightMap(("layers", "w_up"), _LAYER + "mlp.up_proj.weight", 1),
    WeightMap(("layers", "w_down"), _LAYER + "mlp.down_proj.weight", 1),
]


def _active_maps(cfg: ModelConfig) -> list[tuple[WeightMap, ParamSpec]]:
    specs = param_specs(cfg)
    out = []
    for m in _MAPS:
        node = specs
        for key in m.path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            out.append((m, node))
    return out


def _hf_names(m: WeightMap, spec: ParamSpec) -> list[str]:
    if m.path[0] == "layers":
        return [m.hf_name.format(i=i) for i in range(spec.shape[0])]
    return [m.hf_name]


def _as_sharding(mesh: Union[None, Mesh, Sharding]) -> Sharding:
    if mesh is None:
        return single_device()
    if isinstance(mesh, Mesh):
        return Sharding(mesh)
    return mesh


def read_hf_config(path: str) -> dict:
    """The parsed config.json of a local model directory, with clear errors."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory does not exist: {path} (r1jax loads models "
                                "from local directories only; nothing is downloaded)")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"no config.json in model directory {path}")
    try:
        with open(cfg_path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise st.CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None


def _validate_checkpoint(reader: st.TensorReader, cfg: ModelConfig,
                         maps: list[tuple[WeightMap, ParamSpec]]) -> None:
    expected = set()
    for m, spec in maps:
        per_tensor = spec.shape[1:] if m.path[0] == "layers" else spec.shape
        for name in _hf_names(m, spec):
            expected.add(name)
            info = reader.infos.get(name)
            if info is None:
                files = sorted({i.file for i in reader.infos.values()})
                raise st.CheckpointError(f"tensor '{name}' is missing from the checkpoint "
                                         f"({', '.join(files)})")
            want = m.hf_shape(per_tensor)
            if info.shape != want:
                raise st.CheckpointError(f"{info.file}: tensor '{name}' has shape "
                                         f"{list(info.shape)}, expected {list(want)} for this "
                                         f"config.json")
            if info.dtype not in st.FLOAT_DTYPES:
                raise st.CheckpointError(f"{info.file}: tensor '{name}' has dtype {info.dtype}"
                                         f", which cannot be converted to {cfg.param_dtype}")
    extra = sorted(n for n in reader.infos if n not in expected
                   and not n.endswith(_IGNORED_SUFFIXES)
                   and not (cfg.tie_embeddings and n == "lm_head.weight"))
    if extra:
        raise st.CheckpointError(f"{reader.infos[extra[0]].file}: unexpected tensor "
                                 f"'{extra[0]}' (and {len(extra) - 1} more) that the r1jax "
                                 f"{cfg.family} decoder has no parameter for")


def _load_param(reader: st.TensorReader, m: WeightMap, spec: ParamSpec,
                sharding: NamedSharding, dtype: np.dtype) -> jax.Array:
    stacked = m.path[0] == "layers"
    names = _hf_names(m, spec)
    per_tensor = spec.shape[1:] if stacked else spec.shape

    def read(i: int, index: tuple) -> np.ndarray:
        return np.asarray(m.to_ours(reader.view(names[i]), per_tensor)[index], dtype=dtype)

    def callback(index: tuple) -> np.ndarray:
        if not stacked:
            return read(0, index)
        layers = range(spec.shape[0])[index[0]]
        return np.stack([read(i, index[1:]) for i in layers])

    return jax.make_array_from_callback(spec.shape, sharding, callback)


def load_hf(path: str, *, dtype: str = "float32", compute_dtype: Optional[str] = None,
            mesh: Union[None, Mesh, Sharding] = None, **model_options: Any) -> Decoder:
    """Loads a Hugging Face model directory into an r1jax `Decoder`.

    Args:
      path: local directory with config.json and model.safetensors (or a sharded index).
      dtype: parameter dtype ("float32", "bfloat16", "float16").
      compute_dtype: activation / matmul dtype; default `dtype`.
      mesh: a `jax.sharding.Mesh` with axes (data, fsdp, tensor), an `r1jax.sharding.Sharding`
        (mesh + rules), or None for the default device.
      **model_options: other ModelConfig fields (remat, attention_impl, scan_layers).
    Raises:
      FileNotFoundError: the directory or config.json does not exist.
      UnsupportedModelError: config.json asks for something the decoder lacks.
      CheckpointError: missing, mis-shaped or unconvertible tensors (names file and tensor).
    """
    hf = read_hf_config(path)
    cfg = hf_config.model_config_from_hf(hf, param_dtype=dtype,
                                         dtype=compute_dtype or dtype, **model_options)
    sharding = _as_sharding(mesh)
    params = load_params(path, cfg, sharding)
    return Decoder(cfg, params=params, sharding=sharding, source_dir=os.path.abspath(path),
                   source_config=hf)


def load_params(path: str, cfg: ModelConfig, sharding: Sharding,
                extra: tuple[tuple[WeightMap, ParamSpec], ...] = ()) -> dict[str, Any]:
    """The decoder parameters of `cfg` (plus `extra` top-level tensors) from `path`.

    Every tensor is checked first (the checkpoint must hold exactly these tensors), then
    streamed onto its shards of `sharding` in `cfg.param_dtype`.

    Args:
      path: local model directory.
      cfg: the decoder's config; decides which tensors are expected.
      sharding: mesh + rules the parameters are placed with.
      extra: (map, spec) pairs of tensors outside the decoder, e.g. a classification head;
        each lands in the returned dict under `map.path[0]`.
    Raises:
      CheckpointError: missing, mis-shaped, unconvertible or unexpected tensors.
    """
    reader = st.TensorReader(path)
    maps = _active_maps(cfg) + list(extra)
    _validate_checkpoint(reader, cfg, maps)
    params: dict[str, Any] = {"layers": {}}
    for m, spec in maps:
        arr = _load_param(reader, m, spec, sharding.named(spec.axes, spec.shape),
                          np.dtype(jax.numpy.dtype(cfg.param_dtype)))
        if m.path[0] == "layers":
            params["layers"][m.path[1]] = arr
        else:
            params[m.path[0]] = arr
    return params


def _save_plan(params: dict, cfg: ModelConfig, dtype: np.dtype) -> list:
    plan = []
    for m, spec in _active_maps(cfg):
        arr = params[m.path[0]] if len(m.path) == 1 else params["layers"][m.path[1]]
        for i, name in enumerate(_hf_names(m, spec)):
            stacked = m.path[0] == "layers"
            ours = spec.shape[1:] if stacked else spec.shape

            def produce(arr=arr, i=i, stacked=stacked, m=m):
                host = to_host(arr[i] if stacked else arr)
                return np.ascontiguousarray(m.to_hf(host)).astype(dtype)

            plan.append((name, m.hf_shape(ours), dtype, produce))
    return plan


def save_hf(model: Decoder, out_dir: str, *, dtype: Optional[str] = None,
            tokenizer: Any = None, max_shard_bytes: int = 5 * 2**30) -> str:
    """Writes `model` as a Hugging Face directory that transformers loads.

    Args:
      model: the Decoder.
      out_dir: destination; an existing model there is replaced only once the new one is
        complete.
      dtype: dtype of the saved tensors; default: the dtype of the checkpoint the model was
        loaded from, else the parameter dtype.
      tokenizer: a transformers tokenizer to save alongside; default: copy the tokenizer files
        of the directory the model was loaded from, if any.
      max_shard_bytes: size limit of one safetensors file.
    Returns:
      out_dir.
    """
    cfg = model.config
    source_cfg = model.source_config
    if dtype is None:
        dtype = (hf_config.checkpoint_dtype(source_cfg or {}) or cfg.param_dtype)
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"save dtype '{dtype}' is not one of {SAVE_DTYPES}")
    np_dtype = np.dtype(jax.numpy.dtype(dtype))
    plan = _save_plan(model.params, cfg, np_dtype)
    out_dir = os.path.abspath(out_dir)
    if jax.process_index() != 0:
        for *_, produce in plan:  # take part in the collective gathers
            produce()
        barrier("r1jax_save_hf")
        return out_dir
    write_hf_dir(out_dir, plan, hf_config.hf_config_from_model(cfg, dtype, source_cfg),
                 tokenizer=tokenizer, source_dir=model.source_dir,
                 max_shard_bytes=max_shard_bytes)
    barrier("r1jax_save_hf")
    return out_dir


def write_hf_dir(out_dir: str, plan: list, config: dict, *, tokenizer: Any = None,
                 source_dir: Optional[str] = None, max_shard_bytes: int = 5 * 2**30) -> None:
    """Writes a Hugging Face directory atomically: the tensors of `plan` ((name, shape,
    dtype, produce) entries, `safetensors_io.write_sharded`), config.json = `config`, and
    `tokenizer` (else the tokenizer files of `source_dir`), into a temporary sibling that
    replaces `out_dir` only once complete."""
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        st.write_sharded(tmp, plan, max_shard_bytes)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        _save_tokenizer(tmp, tokenizer, source_dir)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_tokenizer(tmp: str, tokenizer: Any, source_dir: Optional[str]) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
        return
    if source_dir is None:
        return
    for name in TOKENIZER_FILES:
        src = os.path.join(source_dir, name)
        if os.path.exists(src):
            shutil.copy2(src, os.path.join(tmp, name))


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Moves the finished `tmp` to `out_dir`; the old directory is removed only afterwards."""
    if not os.path.exists(out_dir):
        os.rename(tmp, out_dir)
        return
    old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-",
                           dir=os.path.dirname(out_dir))
    os.rmdir(old)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)

"""Reading and writing the safetensors format tensor by tensor, without loading whole files.

Reading memory-maps each file and hands out lazy numpy views, so a caller copies only the
slice it needs (one device's shard of one tensor). Writing streams tensors one at a time into
files of at most `max_shard_bytes` and writes the `model.safetensors.index.json` that
transformers reads when there is more than one file.

Format: 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the
raw little-endian tensor bytes (offsets relative to the end of the header).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Callable, Iterable, Iterator, Optional

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint file or tensor that cannot be used; the message names the file/tensor."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str) -> dict[str, TensorInfo]:
    """Tensor infos of one safetensors file (reads only the header)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    infos = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        dtype, shape = meta["dtype"], tuple(int(s) for s in meta["shape"])
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        if end - begin != int(np.prod(shape)) * DTYPES[dtype].itemsize or 8 + n + end > size:
            raise CheckpointError(f"{path}: tensor '{name}' data is truncated or inconsistent "
                                  f"with its shape {shape} and dtype {dtype}")
        infos[name] = TensorInfo(path, name, dtype, shape, 8 + n + begin, end - begin)
    return infos


def checkpoint_files(model_dir: str) -> list[str]:
    """The safetensors files of a Hugging Face model directory (sharded or single)."""
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: corrupt index ({e!r})") from None
        files = sorted(set(weight_map.values()))
        for name in files:
            if not os.path.exists(os.path.join(model_dir, name)):
                raise CheckpointError(f"{index} lists '{name}', which does not exist in "
                                      f"{model_dir}")
        return [os.path.join(model_dir, name) for name in files]
    single = os.path.join(model_dir, SINGLE_FILE)
    if not os.path.exists(single):
        raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {model_dir}")
    return [single]


class TensorReader:
    """Lazy access to all tensors of a checkpoint directory."""

    def __init__(self, model_dir: str):
        self.infos: dict[str, TensorInfo] = {}
        for path in checkpoint_files(model_dir):
            for name, info in read_header(path).items():
                if name in self.infos:
                    raise CheckpointError(f"tensor '{name}' appears in both "
                                          f"{self.infos[name].file} and {path}")
                self.infos[name] = info
        self._maps: dict[str, np.memmap] = {}

    def view(self, name: str) -> np.ndarray:
        """A zero-copy memory-mapped view of tensor `name`."""
        info = self.infos[name]
        if info.file not in self._maps:
            self._maps[info.file] = np.memmap(info.file, dtype=np.uint8, mode="r")
        raw = self._maps[info.file][info.offset:info.offset + info.nbytes]
        return raw.view(DTYPES[info.dtype]).reshape(info.shape)


def write_sharded(out_dir: str, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype,
                                                        Callable[[], np.ndarray]]],
                  max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Writes tensors, produced one at a time by their callables, into safetensors files.

    Args:
      out_dir: existing directory to write into.
      tensors: (name, shape, dtype, produce) in write order; `produce()` returns the array.
      max_shard_bytes: start a new file when the current one would exceed this.
    Returns:
      The file names written (an index file is added when there is more than one).
    """
    plan = list(tensors)
    shards: list[list] = [[]]
    size = 0
    for item in plan:
        nbytes = int(np.prod(item[1])) * np.dtype(item[2]).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                 for i in range(len(shards))]
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        total += _write_file(os.path.join(out_dir, fname), shard)
        weight_map.update({item[0]: fname for item in shard})
    if len(names) > 1:
        with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f,
                      indent=2, sort_keys=True)
    return names


def _write_file(path: str, items: list) -> int:
    header, offset = {}, 0
    for name, shape, dtype, _ in items:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, produce in items:
            arr = np.ascontiguousarray(produce())
            if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise CheckpointError(f"tensor '{name}': produced {arr.dtype}{arr.shape}, "
                                      f"planned {np.dtype(dtype)}{tuple(shape)}")
            f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    return offset


def iter_names(reader: TensorReader) -> Iterator[str]:
    return iter(sorted(reader.infos))


def float_dtype_name(dtype: np.dtype) -> Optional[str]:
    name = _NAMES.get(np.dtype(dtype))
    return name if name in FLOAT_DTYPES else None

"""Minimal safetensors reader/writer in NumPy (the format: u64 header length, JSON header, raw data).

Reading memory-maps the file, so a 5 GB checkpoint is not copied until a tensor is used. bfloat16
tensors (no NumPy dtype) are widened to float32, which is exact.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from mindone.convert.mapped_pages import release_pages
from mindone.errors import CheckpointError
from mindone.utils.atomic import atomic_path

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 values (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _tensor_span(name: str, info: object, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, once they are consistent with each other and the file.

    The header is untrusted: offsets must lie in the data section, ``end - begin`` must be exactly
    ``numel * itemsize``, shapes non-negative integers. Raises ValueError saying which rule failed.
    """
    if not isinstance(info, dict):
        raise ValueError(f"tensor {name}: header entry is a {type(info).__name__}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    itemsize = 2 if dtype == "BF16" else np.dtype(DTYPES[dtype]).itemsize if dtype in DTYPES else None
    if itemsize is None:
        raise ValueError(f"tensor {name}: unsupported dtype {dtype!r:.40}")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise ValueError(f"tensor {name}: shape {shape!r:.80} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise ValueError(f"tensor {name}: data_offsets {offsets!r:.80} are not two non-negative integers")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise ValueError(f"tensor {name}: data_offsets [{begin}, {end}] lie outside the data section "
                         f"({data_size} bytes); the file is truncated or crafted")
    if end - begin != math.prod(shape) * itemsize:
        raise ValueError(f"tensor {name}: shape {tuple(shape)} of {dtype} needs {math.prod(shape) * itemsize} "
                         f"bytes, data_offsets give {end - begin}")
    return dtype, tuple(shape), begin, end


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as (memory-mapped where possible) NumPy arrays.

    Every header entry is checked against the file (see :func:`_tensor_span`) before it is used.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {header_len} exceeds the file ({size} bytes)")
            header = json.loads(fh.read(header_len))
        if not isinstance(header, dict):
            raise ValueError(f"header is a {type(header).__name__}, not an object")
        header.pop("__metadata__", None)
        base = 8 + header_len
        spans = {name: _tensor_span(name, info, size - base) for name, info in header.items()}
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from err
    except (struct.error, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > base else np.zeros(0, np.uint8)
    tensors = {}
    for name, (dtype, shape, begin, end) in spans.items():
        raw = data[base + begin: base + end]
        if dtype == "BF16":
            tensors[name] = bf16_to_f32(raw.view(np.uint16)).reshape(shape)
        else:
            tensors[name] = raw.view(DTYPES[dtype]).reshape(shape)
    return tensors


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None
                      ) -> None:
    """Write tensors (in the given order) to ``path`` atomically."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    arrays = []
    for name, value in tensors.items():
        array = np.asarray(value)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        if array.dtype not in _NAMES:
            raise ValueError(f"{name}: dtype {array.dtype} cannot be stored in safetensors")
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # data section starts 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)))
        fh.write(encoded)
        for array in arrays:
            if array.size:
                fh.write(memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B"))
                release_pages(array)  # a memory-mapped source's pages, once written

"""Minimal safetensors reader/writer in NumPy (the format: u64 header length, JSON header, raw data).

Reading memory-maps the file, so a 5 GB checkpoint is not copied until a tensor is used. bfloat16
tensors (no NumPy dtype) are widened to float32, which is exact.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from mindone.utils.atomic import atomic_path
from mindone.utils.cli import UserError

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 values (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as (memory-mapped where possible) NumPy arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > _MAX_HEADER:
                raise ValueError(f"header length {header_len}")
            header = json.loads(fh.read(header_len))
    except (OSError, struct.error, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from err
    header.pop("__metadata__", None)
    base = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size > base else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        raw = data[base + begin: base + end]
        if info["dtype"] == "BF16":
            tensors[name] = bf16_to_f32(raw.view(np.uint16)).reshape(shape)
        elif info["dtype"] in DTYPES:
            tensors[name] = raw.view(DTYPES[info["dtype"]]).reshape(shape)
        else:
            raise UserError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
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

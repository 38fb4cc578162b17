"""Read PyTorch zip checkpoints (``torch.save``, .ckpt / .bin) without torch and without running code.

A torch zip file holds ``<root>/data.pkl`` (a pickle describing the object tree) and one raw byte
record per storage in ``<root>/data/<key>``. Pickles can name any Python callable, which is how a
malicious checkpoint runs code; this unpickler resolves only the handful of torch/collections names a
state dict needs, builds NumPy arrays straight from the storage records, and turns every other
global into an inert placeholder (e.g. a PyTorch Lightning callback object stored beside the weights).
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from mindone.convert.safetensors_io import bf16_to_f32
from mindone.errors import CheckpointError, ConfigError

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,  # widened to float32 after the tensor view is built
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


INFLATE_LIMIT_ENV = "MINDONE_MAX_INFLATED_BYTES"
DEFAULT_MAX_INFLATED_BYTES = 1 << 30


class StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class Opaque:
    """Inert stand-in for any global the reader does not trust (``qualname`` says which).

    Pickle may call it (REDUCE), instantiate it (NEWOBJ), set its state (BUILD) or fill it like a
    list or dict (APPENDS / SETITEMS); all of that is recorded nowhere and runs nothing.
    """

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<skipped {self.qualname}>"


def _opaque_class(qualname: str) -> type:
    return type("Opaque", (Opaque,), {"qualname": qualname})


class Storage:
    """One storage record: its flat array, its record key and whether the elements are bfloat16 bit patterns."""

    def __init__(self, array: np.ndarray, bf16: bool, key: str = "?"):
        self.array = array
        self.bf16 = bf16
        self.key = key


class InvalidTensor(ValueError):
    """A tensor whose storage offset, sizes or strides do not fit its storage (a corrupt or crafted file)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_geometry(length: int, offset: Any, size: Any, stride: Any, where: str
                   ) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(size, stride, numel) once they are known to address only elements of a ``length``-element storage.

    The file gives offset, sizes and strides; unchecked, ``as_strided`` would read memory outside the
    storage buffer. Every element index ``offset + sum(i_k * stride_k)`` must lie in the storage, i.e.
    the largest, ``offset + sum((size_k - 1) * stride_k)``, must be below its length (Python ints:
    no overflow). For a contiguous tensor that is ``offset + numel <= length``. A tensor may not
    have more elements than its storage either: zero or overlapping strides would let a few bytes
    claim a huge array (a (16000, 16000) tensor over one float is 1 GB once copied). Tensors with no
    elements read nothing and need only non-negative numbers.
    """
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and _is_int(offset)
            and all(_is_int(v) for v in (*size, *stride))):
        raise InvalidTensor(f"{where}: storage offset, sizes and strides must be integers "
                            f"(got offset {offset!r:.40}, size {size!r:.80}, stride {stride!r:.80})")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride):
        raise InvalidTensor(f"{where}: {len(size)} sizes but {len(stride)} strides")
    if offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise InvalidTensor(f"{where}: negative storage offset, size or stride "
                            f"(offset {offset}, size {size}, stride {stride})")
    numel = math.prod(size)
    if numel and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= length:
        raise InvalidTensor(f"{where}: offset {offset}, size {size}, stride {stride} reach past the end of "
                            f"the storage ({length} elements); the file is corrupt or crafted")
    if numel > length:
        raise InvalidTensor(f"{where}: size {size} has {numel} elements, more than its storage holds ({length}): "
                            f"stride {stride} repeats elements; the file is corrupt or crafted")
    return size, stride, numel


def _rebuild_tensor(storage: Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a view of the storage (copied only when not a plain reshape).

    Raises InvalidTensor when offset, sizes or strides address elements outside the storage.
    """
    if not isinstance(storage, Storage):
        raise InvalidTensor(f"tensor built from a {type(storage).__name__}, not a storage record")
    size, stride, numel = check_geometry(len(storage.array), offset, size, stride,
                                         f"tensor on storage record data/{storage.key}")
    flat = storage.array
    contiguous = tuple(math.prod(size[i + 1:]) for i in range(len(size)))
    if stride == contiguous or numel <= 1:
        array = flat[offset:offset + numel].reshape(size)
    else:
        itemsize = flat.dtype.itemsize
        array = np.ascontiguousarray(np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False))
    return bf16_to_f32(array) if storage.bf16 else array


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


def max_inflated_bytes() -> int:
    """The most bytes the compressed records of one zip may inflate to (``MINDONE_MAX_INFLATED_BYTES``)."""
    value = os.environ.get(INFLATE_LIMIT_ENV, "")
    try:
        return int(float(value)) if value.strip() else DEFAULT_MAX_INFLATED_BYTES
    except ValueError as err:
        raise ConfigError(f"{INFLATE_LIMIT_ENV}={value!r}: not a number of bytes") from err


def check_archive(archive: zipfile.ZipFile, path: Path, limit: int | None = None) -> None:
    """Refuse a zip whose records claim more data than the file holds, before anything is read.

    ``torch.save`` stores records uncompressed, so each lies inside the file and its size is real.
    A compressed record's size is only a claim until it is inflated (a few KB can inflate to many
    GB): the compressed records together may declare at most ``limit`` bytes (default
    :func:`max_inflated_bytes`). Raises CheckpointError naming the record.
    """
    limit = max_inflated_bytes() if limit is None else limit
    file_size = path.stat().st_size
    inflated = 0
    for info in archive.infolist():
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size or info.header_offset + info.compress_size > file_size:
                raise CheckpointError(f"{path}: zip record {info.filename} declares {info.file_size} bytes, "
                                      f"more than the file holds; the file is corrupt or crafted")
            continue
        inflated += info.file_size
        if inflated > limit:
            raise CheckpointError(f"{path}: compressed zip record {info.filename} would inflate the records to "
                                  f"{inflated} bytes, above the limit of {limit} (torch never compresses checkpoints; "
                                  f"set {INFLATE_LIMIT_ENV} to allow more)")


def _record_array(archive: zipfile.ZipFile, path: Path, name: str, dtype: np.dtype) -> np.ndarray:
    """A storage record as a flat array: memory-mapped when stored uncompressed (torch's way), else inflated."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return np.frombuffer(archive.read(name), dtype=np.uint8)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise InvalidTensor(f"storage record {name}: no local zip header at byte {info.header_offset}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.compress_size > path.stat().st_size:
        raise InvalidTensor(f"storage record {name}: data runs past the end of the file")
    if not info.compress_size:
        return np.zeros(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(info.compress_size,))


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, archive: zipfile.ZipFile, root: str, path: Path):
        super().__init__(fh)
        self._archive = archive
        self._root = root
        self._path = path
        self._storages: dict[str, Storage] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        return _opaque_class(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Storage:
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self._storages:
            raw = _record_array(self._archive, self._path, f"{self._root}/data/{key}", storage_type.dtype)
            if len(raw) % storage_type.dtype.itemsize:
                raise InvalidTensor(f"storage record data/{key}: {len(raw)} bytes, not a whole number of "
                                    f"{storage_type.name} elements")
            self._storages[key] = Storage(raw.view(storage_type.dtype), storage_type.name == "BFloat16Storage", key)
        return self._storages[key]


def read_torch_checkpoint(path: str | Path, max_inflated: int | None = None) -> Any:
    """Unpickle a torch zip checkpoint into plain Python containers holding NumPy arrays.

    Storage records are memory-mapped (torch stores them uncompressed); ``max_inflated`` bounds what
    compressed records may inflate to (see :func:`check_archive`).
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (files saved by torch < 1.6 are not supported; "
                              "re-save with a recent torch or convert to safetensors)")
    with zipfile.ZipFile(path) as archive:
        check_archive(archive, path, max_inflated)
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: zip file without a single data.pkl record (not a torch checkpoint)")
        root = pickles[0][: -len("/data.pkl")]
        byteorder = f"{root}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian torch checkpoints are not supported")
        with archive.open(pickles[0]) as fh:
            try:
                return RestrictedUnpickler(fh, archive, root, path).load()
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
                raise CheckpointError(f"{path}: cannot read torch checkpoint ({err})") from err

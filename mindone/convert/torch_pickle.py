"""Read PyTorch zip checkpoints (``torch.save``, .ckpt / .bin) without torch and without running code.

A torch zip file holds ``<root>/data.pkl`` (a pickle describing the object tree) and one raw byte
record per storage in ``<root>/data/<key>``. Pickles can name any Python callable, which is how a
malicious checkpoint runs code; this unpickler resolves only the handful of torch/collections names a
state dict needs, builds NumPy arrays straight from the storage records, and turns every other
global into an inert placeholder (e.g. a PyTorch Lightning callback object stored beside the weights).
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from mindone.convert.safetensors_io import bf16_to_f32
from mindone.utils.cli import UserError

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,  # widened to float32 after the tensor view is built
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


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


def _check_geometry(storage: Any, offset: Any, size: Any, stride: Any) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(size, stride, numel) once they are known to address only elements inside ``storage``.

    The file gives offset, sizes and strides; unchecked, ``as_strided`` would read memory outside the
    storage buffer. Every element index ``offset + sum(i_k * stride_k)`` must lie in the storage, i.e.
    the largest, ``offset + sum((size_k - 1) * stride_k)``, must be below its length (Python ints:
    no overflow). For a contiguous tensor that is ``offset + numel <= length``. Tensors with no
    elements read nothing and need only non-negative numbers.
    """
    if not isinstance(storage, Storage):
        raise InvalidTensor(f"tensor built from a {type(storage).__name__}, not a storage record")
    where = f"tensor on storage record data/{storage.key}"
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
    length = len(storage.array)
    if numel and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= length:
        raise InvalidTensor(f"{where}: offset {offset}, size {size}, stride {stride} reach past the end of "
                            f"the storage ({length} elements); the file is corrupt or crafted")
    return size, stride, numel


def _rebuild_tensor(storage: Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a view of the storage (copied only when not a plain reshape).

    Raises InvalidTensor when offset, sizes or strides address elements outside the storage.
    """
    size, stride, numel = _check_geometry(storage, offset, size, stride)
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


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, archive: zipfile.ZipFile, root: str):
        super().__init__(fh)
        self._archive = archive
        self._root = root
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
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and isinstance(pid[1], StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self._storages:
            raw = self._archive.read(f"{self._root}/data/{key}")
            if len(raw) % storage_type.dtype.itemsize:
                raise InvalidTensor(f"storage record data/{key}: {len(raw)} bytes, not a whole number of "
                                    f"{storage_type.name} elements")
            self._storages[key] = Storage(np.frombuffer(raw, dtype=storage_type.dtype),
                                          storage_type.name == "BFloat16Storage", key)
        return self._storages[key]


def read_torch_checkpoint(path: str | Path) -> Any:
    """Unpickle a torch zip checkpoint into plain Python containers holding NumPy arrays."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a PyTorch zip checkpoint (files saved by torch < 1.6 are not supported; "
                        "re-save with a recent torch or convert to safetensors)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise UserError(f"{path}: zip file without a single data.pkl record (not a torch checkpoint)")
        root = pickles[0][: -len("/data.pkl")]
        byteorder = f"{root}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise UserError(f"{path}: big-endian torch checkpoints are not supported")
        with archive.open(pickles[0]) as fh:
            try:
                return RestrictedUnpickler(fh, archive, root).load()
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
                raise UserError(f"{path}: cannot read torch checkpoint ({err})") from err

"""Read and write MindSpore ``.ckpt`` files in NumPy, one tensor at a time, without MindSpore.

A MindSpore checkpoint is a protobuf ``Checkpoint`` message: a repeated ``Value`` (field 1), each a
``tag`` (the parameter name, field 1) and a ``TensorProto`` (field 2: repeated int64 ``dims`` = 1,
string ``tensor_type`` = 2 such as ``"Float32"``, bytes ``tensor_content`` = 3). MindSpore writes one
``Checkpoint`` per value and concatenates them (the same message on the wire), splitting a tensor
above 512 MB into consecutive values with the same tag; it may end the file with ``crc_num`` and a
10-byte checksum.

``mindspore.load_checkpoint`` reads the whole file into memory and first compares its size with the
*free* RAM, which leaves out the page cache: right after a 5 GB file is written it often refuses to
load it on a machine with 20 GB available. This reader memory-maps the file and returns NumPy views
of each tensor's bytes, so loading needs no second copy and no memory guess. Every length and size
in the file is checked against the file before it is used, so a corrupt or crafted file fails with
the reason instead of reading past the end or allocating what it claims.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from mindone.convert.mapped_pages import release_pages
from mindone.convert.safetensors_io import bf16_to_f32
from mindone.errors import CheckpointError
from mindone.utils.atomic import atomic_path

DTYPES = {"Float64": np.float64, "Float32": np.float32, "Float16": np.float16, "Int64": np.int64,
          "Int32": np.int32, "Int16": np.int16, "Int8": np.int8, "UInt64": np.uint64, "UInt32": np.uint32,
          "UInt16": np.uint16, "UInt8": np.uint8, "Bool": np.bool_}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
SLICE_BYTES = 512 * 1024 * 1024  # MindSpore's own split size; any reader of its files handles it
_CRC_TRAILER = b"crc_num"
_MAX_DIMS = 64
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class CheckpointFormatError(ValueError):
    """The bytes are not a well-formed MindSpore checkpoint (the message says where and why)."""


def _varint(buf: mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of the protobuf varint at ``pos``; at most 10 bytes, all before ``end``."""
    value = shift = 0
    for i in range(10):
        if pos + i >= end:
            raise CheckpointFormatError(f"byte {pos}: varint runs past the end of its message")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise CheckpointFormatError(f"byte {pos}: varint longer than 10 bytes")


def _fields(buf: mmap.mmap, pos: int, end: int) -> Iterable[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of each field in ``buf[pos:end]``.

    For varints the third item is the value (and the fourth the next position); length-delimited
    payloads are checked to lie inside the enclosing message before they are yielded.
    """
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CheckpointFormatError(f"byte {start}: field number 0 (not a protobuf message)")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise CheckpointFormatError(f"byte {start}: field {number} declares {length} bytes, only "
                                            f"{end - pos} remain in its message (truncated or not a checkpoint)")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            if width > end - pos:
                raise CheckpointFormatError(f"byte {start}: fixed-width field {number} runs past its message")
            yield number, wire, pos, pos + width
            pos += width
        else:
            raise CheckpointFormatError(f"byte {start}: unsupported protobuf wire type {wire} (field {number})")


def _text(buf: mmap.mmap, begin: int, end: int, what: str) -> str:
    try:
        return bytes(buf[begin:end]).decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointFormatError(f"byte {begin}: {what} is not UTF-8") from err


def _parse_tensor(buf: mmap.mmap, begin: int, end: int) -> tuple[list[int], str, tuple[int, int]]:
    """(dims, tensor_type, (content start, content end)) of one TensorProto."""
    dims: list[int] = []
    kind, content = None, (begin, begin)
    for number, wire, a, b in _fields(buf, begin, end):
        if number == 1 and wire == _VARINT:
            dims.append(a)
        elif number == 1 and wire == _LEN:  # packed repeated int64
            pos = a
            while pos < b:
                dim, pos = _varint(buf, pos, b)
                dims.append(dim)
        elif number == 2 and wire == _LEN:
            kind = _text(buf, a, b, "tensor_type")
        elif number == 3 and wire == _LEN:
            content = (a, b)
        if len(dims) > _MAX_DIMS:
            raise CheckpointFormatError(f"byte {begin}: tensor with more than {_MAX_DIMS} dimensions")
    if kind is None:
        raise CheckpointFormatError(f"byte {begin}: tensor without a tensor_type")
    if any(d >= 1 << 63 for d in dims):  # int64 on the wire: a negative value is a 10-byte varint
        raise CheckpointFormatError(f"byte {begin}: tensor with a negative dimension")
    return dims, kind, content


def _scan(buf: mmap.mmap, end: int) -> dict[str, tuple[list[int], str, list[tuple[int, int]]]]:
    """tag -> (dims, tensor_type, content ranges in file order) of every value in the file."""
    entries: dict[str, tuple[list[int], str, list[tuple[int, int]]]] = {}
    previous = None
    for number, wire, a, b in _fields(buf, 0, end):
        if number != 1 or wire != _LEN:
            raise CheckpointFormatError(f"byte {a}: top-level field {number} (wire type {wire}) is not a "
                                        "checkpoint value")
        tag, tensor = None, None
        for inner, inner_wire, c, d in _fields(buf, a, b):
            if inner == 1 and inner_wire == _LEN:
                tag = _text(buf, c, d, "parameter name")
            elif inner == 2 and inner_wire == _LEN:
                tensor = _parse_tensor(buf, c, d)
            elif inner == 3:
                raise CheckpointFormatError(f"byte {c}: map tensors (MapParameter) are not supported")
        if tag is None or tensor is None:
            raise CheckpointFormatError(f"byte {a}: checkpoint value without a name or a tensor")
        dims, kind, content = tensor
        if tag in entries:
            if tag != previous:
                raise CheckpointFormatError(f"byte {a}: parameter {tag} appears twice")
            if entries[tag][:2] != (dims, kind):
                raise CheckpointFormatError(f"byte {a}: slices of {tag} disagree on its shape or type")
            entries[tag][2].append(content)
        else:
            entries[tag] = (dims, kind, [content])
        previous = tag
    return entries


def _array(raw: np.ndarray, ranges: list[tuple[int, int]], dims: list[int], kind: str, name: str) -> np.ndarray | str:
    """The value of one parameter from its content ranges, once their total size matches dims x type."""
    nbytes = sum(b - a for a, b in ranges)
    if kind == "str":  # MindSpore stores a Python str as a NumPy unicode scalar (UTF-32)
        data = b"".join(bytes(raw[a:b]) for a, b in ranges)
        if len(data) % 4:
            raise CheckpointFormatError(f"{name}: string of {len(data)} bytes is not UTF-32")
        return str(np.frombuffer(data, f"<U{len(data) // 4}")[0]) if data else ""
    if kind == "BFloat16":
        dtype, widen = np.dtype(np.uint16), True
    elif kind in DTYPES:
        dtype, widen = np.dtype(DTYPES[kind]), False
    else:
        raise CheckpointFormatError(f"{name}: unsupported tensor type {kind!r:.40}")
    shape = tuple(dims)
    numel = math.prod(shape)
    if shape == (0,) and nbytes == dtype.itemsize:  # MindSpore writes dims [0] for some scalars
        shape, numel = (), 1
    if numel * dtype.itemsize != nbytes:
        raise CheckpointFormatError(f"{name}: shape {shape} of {kind} needs {numel * dtype.itemsize} bytes, "
                                    f"the file holds {nbytes}")
    if len(ranges) == 1:
        flat = raw[ranges[0][0]:ranges[0][1]].view(dtype)
    else:
        flat = np.concatenate([raw[a:b] for a, b in ranges]).view(dtype)
    array = flat.reshape(shape)
    return bf16_to_f32(array) if widen else array


def read_mindspore_checkpoint(path: str | Path) -> dict[str, np.ndarray | str]:
    """Every parameter of a MindSpore ``.ckpt``: NumPy arrays viewing the memory-mapped file.

    String entries (``save_checkpoint``'s ``append_dict``) come back as ``str``; bfloat16 is widened
    to float32 (exact). Raises CheckpointError saying why the file cannot be read (not a checkpoint,
    truncated, a size that does not match its shape, an encrypted file ...).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size == 0:
                raise CheckpointError(f"{path}: empty file, not a MindSpore checkpoint")
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from err
    end = size - 17 if size >= 17 and buf[size - 17:size - 10] == _CRC_TRAILER else size
    try:
        entries = _scan(buf, end)
        if not entries:
            raise CheckpointFormatError("no parameters in the file")
        raw = np.frombuffer(buf, dtype=np.uint8)
        return {name: _array(raw, ranges, dims, kind, name) for name, (dims, kind, ranges) in entries.items()}
    except CheckpointFormatError as err:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({err})") from err


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_field(number: int, length: int) -> bytes:
    """Key and length of a length-delimited field (the payload follows)."""
    return _encode_varint(number << 3 | _LEN) + _encode_varint(length)


def _tensor_kind(name: str, array: np.ndarray) -> str:
    if array.dtype.newbyteorder("=") not in _NAMES:
        raise ValueError(f"{name}: dtype {array.dtype} cannot be stored in a MindSpore checkpoint")
    return _NAMES[array.dtype.newbyteorder("=")]


def write_mindspore_checkpoint(path: str | Path, tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]
                               ) -> None:
    """Write ``tensors`` (name -> array, dtype kept) as a MindSpore ``.ckpt`` that ``load_checkpoint`` reads.

    Streams one tensor at a time (a generator of ``(name, array)`` pairs works), so memory stays at
    the largest tensor; the file appears at ``path`` only once complete.
    """
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    seen: set[str] = set()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for name, value in items:
            if name in seen:
                raise ValueError(f"{name}: two tensors with this name")
            seen.add(name)
            array = np.asarray(value)
            kind = _tensor_kind(name, array)
            flat = memoryview(np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
                              .reshape(-1)).cast("B")
            dims = b"".join(b"\x08" + _encode_varint(d) for d in array.shape)
            tag = name.encode("utf-8")
            for start in range(0, max(len(flat), 1), SLICE_BYTES):
                chunk = flat[start:start + SLICE_BYTES]
                tensor_head = dims + _length_field(2, len(kind)) + kind.encode() + _length_field(3, len(chunk))
                tensor_len = len(tensor_head) + len(chunk)
                value_head = _length_field(1, len(tag)) + tag + _length_field(2, tensor_len)
                fh.write(_length_field(1, len(value_head) + tensor_len) + value_head + tensor_head)
                fh.write(chunk)
            release_pages(array)  # a memory-mapped source's pages, once written

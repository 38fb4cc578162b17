"""Weight file readers: the NumPy safetensors reader/writer and the torch-free restricted pickle reader."""

from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from mindone.convert.safetensors_io import read_safetensors, write_safetensors
from mindone.convert.torch_pickle import Opaque, read_torch_checkpoint
from mindone.errors import CheckpointError


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"f32": rng.standard_normal((3, 4)).astype(np.float32), "f16": rng.standard_normal(7).astype(np.float16),
            "f64": np.array([1.5, -2.25]), "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
            "i32": np.array([-1, 2], np.int32), "u8": np.arange(5, dtype=np.uint8), "bool": np.array([True, False]),
            "scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 4), np.float32)}


def test_safetensors_writer_is_read_by_the_reference_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = sample_arrays()
    write_safetensors(tmp_path / "a.safetensors", arrays, metadata={"format": "pt"})
    loaded = st.load_file(str(tmp_path / "a.safetensors"))
    assert sorted(loaded) == sorted(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name
    mine = read_safetensors(tmp_path / "a.safetensors")
    assert all(np.array_equal(mine[n], a) and mine[n].dtype == a.dtype for n, a in arrays.items())


def test_safetensors_reader_reads_reference_files_including_bf16(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = sample_arrays()
    st.save_file(arrays, str(tmp_path / "b.safetensors"))
    mine = read_safetensors(tmp_path / "b.safetensors")
    assert all(np.array_equal(mine[n], a) and mine[n].dtype == a.dtype for n, a in arrays.items())
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    bf16 = torch.tensor([1.0, -2.5, 3.140625, 1e-3], dtype=torch.bfloat16)
    save_file({"w": bf16}, str(tmp_path / "bf16.safetensors"))
    widened = read_safetensors(tmp_path / "bf16.safetensors")["w"]
    assert widened.dtype == np.float32 and np.array_equal(widened, bf16.float().numpy())


def test_safetensors_reader_rejects_garbage(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors: not a readable safetensors file"):
        read_safetensors(tmp_path / "bad.safetensors")


@pytest.mark.torch
def test_restricted_reader_matches_torch_on_a_lightning_style_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from mindone.convert.sources import _torch_load

    base = torch.randn(6, 4)
    state = {"w32": torch.randn(3, 5), "w16": torch.randn(4, 2).half(), "wbf16": torch.randn(3).to(torch.bfloat16),
             "ids": torch.arange(10), "flag": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
             "param": torch.nn.Parameter(torch.randn(2, 2)), "transposed": base.t(), "rows": base[2:4],
             "column": base[:, 1], "base": base}
    # Lightning-style wrapper with a non-tensor object that torch's weights-only loader refuses
    torch.save({"state_dict": state, "global_step": 7, "hparams": argparse.Namespace(lr=1e-4)}, tmp_path / "m.ckpt")
    expected = {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy() for k, v in state.items()}
    for loaded in (read_torch_checkpoint(tmp_path / "m.ckpt"), _torch_load(tmp_path / "m.ckpt")):
        assert loaded["global_step"] == 7
        got = loaded["state_dict"]
        assert sorted(got) == sorted(expected)
        for name, array in expected.items():
            assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name
    assert isinstance(read_torch_checkpoint(tmp_path / "m.ckpt")["hparams"], Opaque)


class _Exploit:
    """Unpickling this object runs a shell command (the classic malicious-checkpoint payload)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.torch
def test_restricted_reader_never_executes_code_from_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "payload": _Exploit(str(marker))}, tmp_path / "evil.ckpt")
    assert b"system" in (tmp_path / "evil.ckpt").read_bytes()  # the payload really is in the file
    loaded = read_torch_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    assert isinstance(loaded["payload"], Opaque) and "system" in loaded["payload"].qualname
    assert np.array_equal(loaded["w"], np.ones(2, np.float32))
    from mindone.convert.sources import read_source

    tensors, layout = read_source(tmp_path / "evil.ckpt")  # torch path refuses, restricted reader takes over
    assert not marker.exists() and list(tensors) == ["w"] and layout == "ldm"


def test_non_zip_pickles_are_refused_with_one_line(tmp_path):
    (tmp_path / "old.ckpt").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(CheckpointError, match="old.ckpt: not a PyTorch zip checkpoint"):
        read_torch_checkpoint(tmp_path / "old.ckpt")


class _Global:
    """A module-level name written into a pickle as is (``torch._utils._rebuild_tensor_v2`` without torch)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only checks that a reduce function is callable
        raise NotImplementedError


class _Tensor:
    """Pickles the way torch.save writes a tensor, with whatever offset, size and stride the test wants."""

    def __init__(self, key: str, numel: int, offset, size, stride):
        self.key, self.numel, self.offset, self.size, self.stride = key, numel, offset, size, stride

    def __reduce__(self):
        storage = ("storage", _Global("torch", "FloatStorage"), self.key, "cpu", self.numel)
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (_PersistentId(storage), self.offset, self.size, self.stride, False, OrderedDict()))


class _PersistentId:
    def __init__(self, pid: tuple):
        self.pid = pid


class _TorchStylePickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _PersistentId) else None


def write_torch_style_zip(path, state: dict, storages: dict[str, np.ndarray | bytes]) -> None:
    """A torch.save-layout zip (``archive/data.pkl`` + ``archive/data/<key>``) holding ``state``."""
    import io
    import zipfile

    buffer = io.BytesIO()
    _TorchStylePickler(buffer, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, array in storages.items():
            raw = array if isinstance(array, bytes) else np.ascontiguousarray(array, np.float32).tobytes()
            archive.writestr(f"archive/data/{key}", raw)


def test_crafted_writer_matches_torch_and_valid_geometry_reads_back(tmp_path):
    base = np.arange(12, dtype=np.float32)
    state = {"rows": _Tensor("0", 12, 4, (2, 3), (3, 1)), "transposed": _Tensor("0", 12, 0, (4, 3), (1, 4)),
             "broadcast": _Tensor("0", 12, 11, (2, 5), (0, 0)), "empty": _Tensor("0", 12, 12, (0, 7), (7, 1)),
             "last": _Tensor("0", 12, 11, (1,), (1,))}
    write_torch_style_zip(tmp_path / "ok.ckpt", state, {"0": base})
    expected = {"rows": base[4:10].reshape(2, 3), "transposed": base.reshape(3, 4).T,
                "broadcast": np.full((2, 5), 11, np.float32), "empty": np.zeros((0, 7), np.float32),
                "last": np.array([11], np.float32)}
    got = read_torch_checkpoint(tmp_path / "ok.ckpt")
    for name, array in expected.items():
        assert got[name].shape == array.shape and np.array_equal(got[name], array), name
    try:
        import torch
    except ImportError:
        return
    loaded = torch.load(tmp_path / "ok.ckpt", weights_only=True)  # the crafted layout is the real one
    assert all(np.array_equal(loaded[n].numpy(), a) for n, a in expected.items())


@pytest.mark.parametrize("offset, size, stride, problem", [
    (0, (3, 3), (1, 3), "reach past the end of the storage"),  # strided, max index 8 of 6
    (5, (2, 2), (1, 2), "reach past the end of the storage"),  # strided, offset pushes it out
    (4, (3,), (1,), "reach past the end of the storage"),  # contiguous: offset + numel = 7 > 6
    (6, (1,), (1,), "reach past the end of the storage"),  # a single element just past the end
    (0, (1 << 62, 1 << 62), (1 << 62, 1), "reach past the end of the storage"),  # would overflow int64
    (-2, (2,), (1,), "negative storage offset, size or stride"),
    (3, (2, 2), (-1, 1), "negative storage offset, size or stride"),
    (0, (2, -1), (1, 1), "negative storage offset, size or stride"),
    (0, (2, 2), (1,), "2 sizes but 1 strides"),
    (0.5, (2,), (1,), "must be integers"),
])
def test_tensor_geometry_outside_the_storage_is_refused(tmp_path, offset, size, stride, problem):
    write_torch_style_zip(tmp_path / "crafted.ckpt", {"ok": _Tensor("0", 6, 0, (6,), (1,)),
                                                      "bad": _Tensor("1", 6, offset, size, stride)},
                          {"0": np.zeros(6), "1": np.zeros(6)})
    message = rf"crafted\.ckpt: cannot read torch checkpoint \(tensor on storage record data/1: .*{problem}"
    with pytest.raises(CheckpointError, match=message):
        read_torch_checkpoint(tmp_path / "crafted.ckpt")
    from mindone.convert.sources import read_source

    with pytest.raises(CheckpointError, match=message):  # with torch installed: torch.load fails, then the same error
        read_source(tmp_path / "crafted.ckpt")


def test_storage_record_of_partial_elements_is_refused(tmp_path):
    write_torch_style_zip(tmp_path / "cut.ckpt", {"w": _Tensor("0", 2, 0, (1,), (1,))}, {"0": b"\x00" * 7})
    with pytest.raises(CheckpointError, match=r"cut\.ckpt: .*storage record data/0: 7 bytes, not a whole number of "
                                              r"FloatStorage elements"):
        read_torch_checkpoint(tmp_path / "cut.ckpt")


def _peak_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.timeout(60)
def test_a_tiny_file_claiming_a_huge_tensor_allocates_nothing(tmp_path):
    """Stride 0 lets a 4-byte storage describe a (16000, 16000) tensor: 1 GB once copied. Refused."""
    write_torch_style_zip(tmp_path / "bomb.ckpt", {"w": _Tensor("0", 1, 0, (16000, 16000), (0, 0))},
                          {"0": np.zeros(1)})
    assert (tmp_path / "bomb.ckpt").stat().st_size < 1000
    before = _peak_kb()
    message = (r"bomb\.ckpt: cannot read torch checkpoint \(tensor on storage record data/0: size \(16000, 16000\) "
               r"has 256000000 elements, more than its storage holds \(1\)")
    with pytest.raises(CheckpointError, match=message) as err:
        read_torch_checkpoint(tmp_path / "bomb.ckpt")
    assert "\n" not in str(err.value)
    from mindone.convert.sources import read_source

    with pytest.raises(CheckpointError, match=message):  # with torch installed: torch.load's view is checked too
        read_source(tmp_path / "bomb.ckpt")
    assert _peak_kb() - before < 100_000  # kB


def _deflated_zip(path, storage: bytes) -> None:
    """A torch-layout zip whose storage record is deflate-compressed (torch never does this)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    _TorchStylePickler(buffer, protocol=2).dump({"w": _Tensor("0", len(storage) // 4, 0, (len(storage) // 4,), (1,))})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", storage, compress_type=zipfile.ZIP_DEFLATED)


@pytest.mark.timeout(60)
def test_zip_bomb_storage_is_refused_before_inflating(tmp_path, monkeypatch):
    _deflated_zip(tmp_path / "zbomb.ckpt", bytes(64 << 20))  # 64 MB of zeros in ~64 KB
    assert (tmp_path / "zbomb.ckpt").stat().st_size < 200_000
    monkeypatch.setenv("MINDONE_MAX_INFLATED_BYTES", str(8 << 20))
    before = _peak_kb()
    message = (r"zbomb\.ckpt: compressed zip record archive/data/0 would inflate the records to 67108864 bytes, "
               r"above the limit of 8388608 .*set MINDONE_MAX_INFLATED_BYTES")
    with pytest.raises(CheckpointError, match=message):
        read_torch_checkpoint(tmp_path / "zbomb.ckpt")
    from mindone.convert.sources import read_source

    with pytest.raises(CheckpointError, match=message):  # torch would inflate it too: checked before torch.load
        read_source(tmp_path / "zbomb.ckpt")
    assert _peak_kb() - before < 30_000  # kB: the 64 MB were never inflated
    monkeypatch.setenv("MINDONE_MAX_INFLATED_BYTES", str(100 << 20))  # the limit is the user's to raise
    assert read_torch_checkpoint(tmp_path / "zbomb.ckpt")["w"].shape == (16 << 20,)


def test_stored_records_are_memory_mapped_not_copied(tmp_path):
    base = np.arange(1 << 20, dtype=np.float32)
    write_torch_style_zip(tmp_path / "m.ckpt", {"w": _Tensor("0", 1 << 20, 0, (1024, 1024), (1024, 1))}, {"0": base})
    w = read_torch_checkpoint(tmp_path / "m.ckpt")["w"]
    assert np.array_equal(w, base.reshape(1024, 1024)) and not w.flags.owndata and not w.flags.writeable
    from mindone.convert.mapped_pages import _mapping_of

    assert _mapping_of(w) is not None


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    import json
    import struct

    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


@pytest.mark.parametrize("header, data_len, problem", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, 16, r"lie outside the data section"),
    ({"w": {"dtype": "F32", "shape": [16000, 16000], "data_offsets": [0, 16]}}, 16,
     r"shape \(16000, 16000\) of F32 needs 1024000000 bytes, data_offsets give 16"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [12, 8]}}, 16, r"lie outside the data section"),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, 16, "not a list of non-negative integers"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0]}}, 16, "are not two non-negative integers"),
    ({"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, 16, "unsupported dtype 'C64'"),
    ({"w": [1, 2]}, 16, "header entry is a list"),
])
def test_safetensors_headers_that_do_not_fit_the_file_are_refused(tmp_path, header, data_len, problem):
    (tmp_path / "bad.safetensors").write_bytes(_safetensors_bytes(header, bytes(data_len)))
    with pytest.raises(CheckpointError, match=rf"bad\.safetensors: not a readable safetensors file \(tensor w: .*{problem}"):
        read_safetensors(tmp_path / "bad.safetensors")


def test_safetensors_header_length_beyond_the_file_is_refused(tmp_path):
    import struct

    (tmp_path / "cut.safetensors").write_bytes(struct.pack("<Q", 1 << 20) + b'{"w": {}}')
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: .*header length 1048576 exceeds the file \(17 bytes\)"):
        read_safetensors(tmp_path / "cut.safetensors")


def test_a_stored_record_claiming_more_than_the_file_holds_is_refused(tmp_path):
    import struct

    write_torch_style_zip(tmp_path / "long.ckpt", {"w": _Tensor("0", 4, 0, (4,), (1,))}, {"0": np.ones(4)})
    data = bytearray((tmp_path / "long.ckpt").read_bytes())
    name = b"archive/data/0"
    for signature, sizes_at in ((b"PK\x01\x02", 20), (b"PK\x03\x04", 18)):  # central and local header
        header = data.find(signature)
        while data[header + (46 if signature == b"PK\x01\x02" else 30):][: len(name)] != name:
            header = data.find(signature, header + 4)
        data[header + sizes_at: header + sizes_at + 8] = struct.pack("<II", 0x7FFFFFFF, 0x7FFFFFFF)
    (tmp_path / "long.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"long\.ckpt: zip record archive/data/0 declares 2147483647 bytes, more than "
                                                    r"the file holds"):
        read_torch_checkpoint(tmp_path / "long.ckpt")

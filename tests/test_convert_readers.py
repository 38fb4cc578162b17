"""Weight file readers: the NumPy safetensors reader/writer and the torch-free restricted pickle reader."""

from __future__ import annotations

import argparse
import os
import pickle

import numpy as np
import pytest

from mindone.convert.safetensors_io import read_safetensors, write_safetensors
from mindone.convert.torch_pickle import Opaque, read_torch_checkpoint
from mindone.utils.cli import UserError


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
    with pytest.raises(UserError, match="bad.safetensors: not a readable safetensors file"):
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
    with pytest.raises(UserError, match="old.ckpt: not a PyTorch zip checkpoint"):
        read_torch_checkpoint(tmp_path / "old.ckpt")

"""The memory-mapped MindSpore .ckpt reader/writer: compatible with MindSpore both ways, independent of
free memory, and safe on crafted files."""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

import mindone.convert.mindspore_ckpt as ckpt_io  # noqa: E402
from mindone.convert.mapped_pages import release_pages  # noqa: E402
from mindone.convert.mindspore_ckpt import read_mindspore_checkpoint, write_mindspore_checkpoint  # noqa: E402
from mindone.errors import CheckpointError  # noqa: E402


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"f32": rng.standard_normal((3, 4)).astype(np.float32), "f16": rng.standard_normal(7).astype(np.float16),
            "f64": np.array([1.5, -2.25]), "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
            "i32": np.array([-1, 2], np.int32), "u8": np.arange(5, dtype=np.uint8), "bool": np.array([True, False]),
            "scalar": np.array(3.5, np.float32), "wide": rng.standard_normal((2, 3, 4, 5)).astype(np.float32)}


def assert_same(got, expected):
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


def test_reads_what_mindspore_writes_including_bf16_strings_and_crc(tmp_path):
    arrays = sample_arrays()
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()], str(tmp_path / "a.ckpt"),
                       append_dict={"epoch": 3, "note": "héllo"})
    got = read_mindspore_checkpoint(tmp_path / "a.ckpt")
    assert got.pop("note") == "héllo" and int(got.pop("epoch")) == 3
    assert_same(got, arrays)
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(arrays["f32"])}], str(tmp_path / "crc.ckpt"), crc_check=True)
    assert (tmp_path / "crc.ckpt").read_bytes()[-17:-10] == b"crc_num"  # the trailer really is there
    assert_same(read_mindspore_checkpoint(tmp_path / "crc.ckpt"), {"w": arrays["f32"]})
    bf16 = ms.Tensor(np.array([1.0, -2.5, 3.140625], np.float32)).astype(ms.bfloat16)
    ms.save_checkpoint([{"name": "b", "data": bf16}], str(tmp_path / "bf16.ckpt"))
    widened = read_mindspore_checkpoint(tmp_path / "bf16.ckpt")["b"]
    assert widened.dtype == np.float32 and np.array_equal(widened, [1.0, -2.5, 3.140625])


def test_mindspore_reads_what_we_write_including_split_tensors(tmp_path, monkeypatch):
    arrays = {**sample_arrays(), "empty": np.zeros((0, 4), np.float32)}
    write_mindspore_checkpoint(tmp_path / "ours.ckpt", arrays)
    loaded = {n: p.asnumpy() for n, p in ms.load_checkpoint(str(tmp_path / "ours.ckpt")).items()}
    assert_same(loaded, arrays)
    assert_same(read_mindspore_checkpoint(tmp_path / "ours.ckpt"), arrays)
    # a tensor above the slice size goes out as consecutive values, as MindSpore itself writes them
    monkeypatch.setattr(ckpt_io, "SLICE_BYTES", 16)
    write_mindspore_checkpoint(tmp_path / "split.ckpt", (item for item in arrays.items()))  # a generator works too
    assert (tmp_path / "split.ckpt").read_bytes().count(b"wide") == 30  # 480 bytes in 16-byte slices
    assert_same({n: p.asnumpy() for n, p in ms.load_checkpoint(str(tmp_path / "split.ckpt")).items()}, arrays)
    assert_same(read_mindspore_checkpoint(tmp_path / "split.ckpt"), arrays)


def test_loading_does_not_depend_on_free_memory(tmp_path, monkeypatch):
    """The issue: with the page cache full of the file just written, MindSpore saw too little *free*
    memory and refused the file. Report almost no free memory: MindSpore refuses, the loaders do not."""
    from mindspore.nn.utils import no_init_parameters

    from mindone.convert import load_sd_weights
    from mindone.models.config import build_model, load_model_config
    from mindone.train.checkpoint import load_parameters

    ms.set_seed(5)
    model = build_model(load_model_config("tiny"))
    state = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    write_mindspore_checkpoint(tmp_path / "tiny.ckpt", state)
    real_sysconf = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 16 if name == "SC_AVPHYS_PAGES" else real_sysconf(name))
    with pytest.raises(ValueError, match="exceeds current available memory"):
        ms.load_checkpoint(str(tmp_path / "tiny.ckpt"))
    with no_init_parameters():
        fresh = build_model(load_model_config("tiny"))
    assert load_sd_weights(fresh, tmp_path / "tiny.ckpt")["loaded"] == len(state)
    assert all(np.array_equal(p.asnumpy(), state[n]) for n, p in fresh.parameters_and_names())
    ms.set_seed(6)
    other = build_model(load_model_config("tiny"))
    load_parameters(list(other.parameters_and_names()), tmp_path / "tiny.ckpt")  # training's resume path
    assert all(np.array_equal(p.asnumpy(), state[n]) for n, p in other.parameters_and_names())


def test_released_pages_leave_the_resident_set_and_the_values_intact(tmp_path):
    def rss_file_kb() -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))

    big = np.arange(16 << 20, dtype=np.float32)  # 64 MB
    write_mindspore_checkpoint(tmp_path / "big.ckpt", {"big": big})
    mapped = read_mindspore_checkpoint(tmp_path / "big.ckpt")["big"]
    before = rss_file_kb()
    assert float(mapped.sum(dtype=np.float64)) == float(big.sum(dtype=np.float64))  # touches every page
    touched = rss_file_kb()
    assert touched - before > 50_000
    assert release_pages(mapped) > 60 << 20
    assert touched - rss_file_kb() > 50_000
    assert np.array_equal(mapped[::4096], big[::4096])  # still valid: pages fault back in from the file
    assert release_pages(np.ones(1 << 20)) == 0  # arrays owning their memory are left alone


def _value(tag: bytes, tensor: bytes) -> bytes:
    """One top-level checkpoint value, encoded by hand (the crafted files below bend its fields)."""
    inner = b"\x0a" + bytes([len(tag)]) + tag + b"\x12" + ckpt_io._encode_varint(len(tensor)) + tensor
    return b"\x0a" + ckpt_io._encode_varint(len(inner)) + inner


def _tensor(dims, kind: bytes, content: bytes, declared: int | None = None) -> bytes:
    head = b"".join(b"\x08" + ckpt_io._encode_varint(d % (1 << 64)) for d in dims)
    length = len(content) if declared is None else declared
    return head + b"\x12" + bytes([len(kind)]) + kind + b"\x1a" + ckpt_io._encode_varint(length) + content


CRAFTED = {
    # claims a (16000, 16000) float tensor (1 GB) over 4 bytes of content
    "huge_shape": (_value(b"w", _tensor([16000, 16000], b"Float32", b"\0" * 4)),
                   r"w: shape \(16000, 16000\) of Float32 needs 1024000000 bytes, the file holds 4"),
    # a content field declaring 2^40 bytes in a file of a few dozen
    "huge_length": (_value(b"w", _tensor([4], b"Float32", b"\0" * 16, declared=1 << 40)),
                    r"declares 1099511627776 bytes, only \d+ remain"),
    "truncated": (_value(b"w", _tensor([4], b"Float32", b"\0" * 16))[:-5], r"declares \d+ bytes, only \d+ remain"),
    "negative_dim": (_value(b"w", _tensor([-1, 4], b"Float32", b"")), "negative dimension"),
    "endless_varint": (b"\x0a" + b"\xff" * 40, "varint longer than 10 bytes"),
    "unknown_type": (_value(b"w", _tensor([1], b"Complex1024", b"\0" * 4)), "unsupported tensor type 'Complex1024'"),
    "duplicate": (_value(b"w", _tensor([1], b"Float32", b"\0" * 4)) + _value(b"v", _tensor([1], b"Float32", b"\0" * 4))
                  + _value(b"w", _tensor([1], b"Float32", b"\0" * 4)), "parameter w appears twice"),
    "text": (b"this is a README, not weights\n", "not a checkpoint value|not a protobuf message|wire type"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_files_fail_with_the_reason_without_allocating(tmp_path, case):
    data, reason = CRAFTED[case]
    (tmp_path / "bad.ckpt").write_bytes(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=rf"bad\.ckpt: not a readable MindSpore checkpoint \(.*({reason})") as err:
        read_mindspore_checkpoint(tmp_path / "bad.ckpt")
    assert "\n" not in str(err.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB: nothing like the claim
    from mindone.convert.sources import read_source

    with pytest.raises(CheckpointError, match=rf"bad\.ckpt: not a readable MindSpore checkpoint .*; not a torch zip"):
        read_source(tmp_path / "bad.ckpt")


def test_writer_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="complex64 cannot be stored"):
        write_mindspore_checkpoint(tmp_path / "c.ckpt", {"c": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError, match="two tensors with this name"):
        write_mindspore_checkpoint(tmp_path / "d.ckpt", [("a", np.zeros(1)), ("a", np.ones(1))])
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind

"""Annotation data never runs code, never leaves the place the user named, and never hangs the loader.

Each test feeds a crafted input (the ones a security review confirmed, and more of the same kind) and checks
that nothing ran, nothing outside the named places was read, nothing hung, and the error is one line.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mindone.data.annotations import read_files_annotations, read_shard_list, resolve_annotation_files
from mindone.data.files_dataset import FilesReader
from mindone.data.loader import build_sample_stream
from mindone.data.locations import Root, UnsafeLocation
from mindone.data.tar_stream import RawSample, read_samples
from mindone.data.workers import NoUsableSample
from tests.helpers.synthetic_data import fake_tokenizer, make_clean_dataset

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "examples" / "stable_diffusion_v2" / "train_text_to_image.py"


def write_stats(root: Path, rows: list[tuple[str, int]], part: int = 1) -> Path:
    csv = root / f"part_{part}_stats.csv"
    csv.write_text("file_path,num_samples\n" + "".join(f'"{p}",{n}\n' for p, n in rows))
    return csv


def run_train(data: Path, out: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(TRAIN), "--config", str(REPO / "configs" / "train" / "tiny_cpu.yaml"),
           "--dataset_type", "webdataset", "--data_path", str(data), "--output_dir", str(out),
           "--max_train_steps", "1", *extra]
    env = dict(os.environ, GLOG_v="3")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


@pytest.mark.timeout(240)
def test_a_stats_csv_row_cannot_run_a_command_through_the_trainer(tmp_path):
    make_clean_dataset(tmp_path, num_shards=1, per_shard=8)
    write_stats(tmp_path, [("pipe:touch PWNED; cat part_1/00000.tar", 100)])
    result = run_train(tmp_path, tmp_path / "out", cwd=tmp_path)
    assert not (tmp_path / "PWNED").exists()
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "part_1_stats.csv:2" in lines[0] and "is a command" in lines[0]
    assert "Traceback" not in result.stderr


def test_values_put_into_a_pipe_template_are_quoted_for_the_shell(tmp_path):
    make_clean_dataset(tmp_path, num_shards=1, per_shard=3)
    odd = tmp_path / "part_1" / "a b;$(touch PWNED2).tar"
    odd.write_bytes((tmp_path / "part_1" / "00000.tar").read_bytes())
    csv = write_stats(tmp_path, [("x.tar; touch PWNED", 3), ("part_1/a b;$(touch PWNED2).tar", 3)])
    shards = read_shard_list([csv], shard_root=f"pipe:cd {tmp_path} && cat {{}}")
    assert [n for _, n in zip(shards.urls, shards.sizes)] == [3, 3]
    first = list(read_samples(shards.urls[0], [0], retries=0))
    second = list(read_samples(shards.urls[1], [0, 2], retries=0))
    assert first == [(0, "unreadable_shard")]  # "x.tar; touch PWNED" is one (missing) file name
    assert [s.key for _, s in second] == ["000000000", "000000002"]  # an odd but real name still reads
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_roots_that_no_reader_can_open_are_refused():
    with pytest.raises(UnsafeLocation, match=r"needs \{\}"):
        Root.parse("pipe:aws s3 cp s3://bucket/laion -")
    with pytest.raises(UnsafeLocation, match="pipe: template"):
        Root.parse("s3://bucket/laion")
    assert Root.parse("https://host/laion").resolve("part 1/0.tar", where="x") == "https://host/laion/part%201/0.tar"


@pytest.mark.parametrize("value, why", [
    ("../outside/00000.tar", "climbs out"),
    ("part_1/../../outside/00000.tar", "climbs out"),
    ("/etc/passwd", "outside the data root"),
    ("file:///etc/passwd", "outside the data root"),
    ("http://169.254.169.254/latest/meta-data", "outside the data root"),
    ("s3://bucket/x.tar", "outside the data root"),
])
def test_stats_csv_values_stay_inside_the_data_root(tmp_path, value, why):
    data = tmp_path / "data"
    make_clean_dataset(data, num_shards=1, per_shard=2)
    csv = write_stats(data, [("part_1/00000.tar", 2), (value, 5)])
    with pytest.raises(UnsafeLocation, match=why) as err:
        read_shard_list([csv])
    assert f"{csv}:3 file_path" in str(err.value) and "--allow_outside_data_root" in str(err.value)
    assert "\n" not in str(err.value)
    if not value.startswith(("file:", "s3:")):
        assert len(read_shard_list([csv], allow_outside_root=True).urls) == 2


def test_an_http_root_admits_its_own_urls_only(tmp_path):
    csv = write_stats(tmp_path, [("https://mirror/laion/part_1/0.tar", 4), ("part_1/1.tar", 4)])
    shards = read_shard_list([csv], shard_root="https://mirror/laion")
    assert shards.urls == ["https://mirror/laion/part_1/0.tar", "https://mirror/laion/part_1/1.tar"]
    with pytest.raises(UnsafeLocation, match="outside the data root"):
        read_shard_list([csv], shard_root="https://other/laion")


def test_a_shard_symlinked_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    make_clean_dataset(outside, num_shards=1, per_shard=2)
    data = tmp_path / "data"
    (data / "part_1").mkdir(parents=True)
    os.symlink(outside / "part_1" / "00000.tar", data / "part_1" / "00000.tar")
    csv = write_stats(data, [("part_1/00000.tar", 2)])
    with pytest.raises(UnsafeLocation, match="symlink to a place outside"):
        read_shard_list([csv])
    assert read_shard_list([csv], allow_outside_root=True).urls == [str(data / "part_1" / "00000.tar")]


def test_files_csv_paths_stay_inside_and_symlinks_out_are_skipped(tmp_path):
    data = tmp_path / "data"
    make_clean_dataset(data, num_shards=1, per_shard=3)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((data / "part_1" / "00000" / "000000000.jpg").read_bytes())
    csv = data / "part_1.csv"
    original = csv.read_text()
    csv.write_text(original + '"../secret.jpg","escape"\n')
    with pytest.raises(UnsafeLocation, match=r"part_1.csv:5 dir.*climbs out"):
        read_files_annotations([csv])
    csv.write_text(original + f'"{secret}","absolute"\n')
    with pytest.raises(UnsafeLocation, match=r"part_1.csv:5 dir.*outside the data root"):
        read_files_annotations([csv])
    # A symlink inside the folder that points out of it: listed, but never opened.
    os.symlink(secret, data / "part_1" / "00000" / "link.jpg")
    csv.write_text(original + '"part_1/00000/link.jpg","link"\n')
    reader = FilesReader(read_files_annotations([csv]))
    assert list(reader.read(3, [0])) == [(0, "outside_data_root")]
    assert isinstance(list(reader.read(0, [0]))[0][1], RawSample)  # the rows inside still read
    allowed = FilesReader(read_files_annotations([csv], allow_outside_root=True))
    assert list(allowed.read(3, [0]))[0][1].files["jpg"] == secret.read_bytes()


@pytest.mark.timeout(30)
def test_a_fifo_or_device_in_the_data_never_blocks(tmp_path):
    data = tmp_path / "data"
    make_clean_dataset(data, num_shards=1, per_shard=2)
    os.mkfifo(data / "part_1" / "00000" / "fifo.jpg")
    os.symlink("/dev/zero", data / "part_1" / "00000" / "zero.jpg")
    csv = data / "part_1.csv"
    csv.write_text(csv.read_text() + '"part_1/00000/fifo.jpg","fifo"\n"part_1/00000/zero.jpg","zero"\n')
    reader = FilesReader(read_files_annotations([csv], allow_outside_root=True))
    assert list(reader.read(2, [0])) == [(0, "missing_image")]
    assert list(reader.read(3, [0])) == [(0, "missing_image")]
    os.mkfifo(data / "part_1" / "fifo.tar")
    assert list(read_samples(str(data / "part_1" / "fifo.tar"), [0])) == [(0, "unreadable_shard")]


def shard_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_oversized_members_are_skipped_unread(tmp_path):
    shard = tmp_path / "big.tar"
    shard.write_bytes(shard_bytes({"a.jpg": b"x" * 10, "a.txt": b"small", "b.jpg": b"y" * 300_000, "b.txt": b"big",
                                   "c.jpg": b"z" * 10, "c.txt": b"small"}))
    got = list(read_samples(str(shard), [0, 1, 2], max_member_bytes=100_000))
    assert [item if isinstance(item, str) else item.key for _, item in got] == ["a", "oversized_member", "c"]
    piped = list(read_samples(f"pipe:cat {shard}", [1, 2], retries=0, max_member_bytes=100_000))  # cannot seek
    assert [item if isinstance(item, str) else item.key for _, item in piped] == ["oversized_member", "c"]


@pytest.mark.timeout(30)
def test_compressed_shards_are_not_decompressed(tmp_path):
    bomb = tmp_path / "bomb.tar"
    # ~200 MB of zeros in one member compress to ~200 KB: decompressing it is the cost a bomb imposes.
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as gz:
        info = tarfile.TarInfo("a.jpg")
        info.size = 200 << 20
        gz.write(info.tobuf())
        chunk = bytes(1 << 20)
        for _ in range(200):
            gz.write(chunk)
    bomb.write_bytes(raw.getvalue())
    start = time.perf_counter()
    assert list(read_samples(str(bomb), [0])) == [(0, "unreadable_shard")]
    assert list(read_samples(f"pipe:cat {bomb}", [0], retries=0)) == [(0, "unreadable_shard")]
    assert time.perf_counter() - start < 5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_source_that_yields_nothing_ends_quickly(tmp_path, monkeypatch, num_workers):
    monkeypatch.setattr("mindone.data.tar_stream.RETRY_DELAY_S", 0.0)
    make_clean_dataset(tmp_path, num_shards=12, per_shard=4)
    stream = build_sample_stream("webdataset", tmp_path, fake_tokenizer, image_size=32, batch_size=2, rank=0,
                                 world_size=1, num_workers=num_workers, shard_root="pipe:true {}")
    start = time.perf_counter()
    with pytest.raises((NoUsableSample, RuntimeError), match="no usable sample: the first 4 shards"):
        list(stream)
    assert time.perf_counter() - start < 20


@pytest.mark.timeout(240)
def test_the_trainer_reports_an_unreadable_dataset_in_one_line(tmp_path):
    make_clean_dataset(tmp_path, num_shards=2, per_shard=4)
    for shard in (tmp_path / "part_1").glob("*.tar"):
        shard.write_bytes(b"not a tar" * 100)
    result = run_train(tmp_path, tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "no usable sample" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_the_loader_counts_what_it_refused(tmp_path):
    data = tmp_path / "data"
    make_clean_dataset(data, num_shards=1, per_shard=4)
    (tmp_path / "secret.jpg").write_bytes((data / "part_1" / "00000" / "000000001.jpg").read_bytes())
    os.symlink(tmp_path / "secret.jpg", data / "part_1" / "00000" / "escape.jpg")
    csv = data / "part_1.csv"
    csv.write_text(csv.read_text() + '"part_1/00000/escape.jpg","a way out"\n')
    stream = build_sample_stream("files", resolve_annotation_files(data, "files"), fake_tokenizer, image_size=32,
                                 batch_size=1, rank=0, world_size=1, num_workers=0, shuffle=False)
    keys = [s["key"] for s in stream]
    counts: Counter = stream.last_epoch_counts
    assert counts["outside_data_root"] == 1 and "escape" not in keys and len(keys) == 5


def test_retries_stop_only_while_nothing_has_been_read(tmp_path, monkeypatch):
    from mindone.data.annotations import ShardList
    from mindone.data.webdataset_dataset import WebdatasetReader

    monkeypatch.setattr("mindone.data.tar_stream.RETRY_DELAY_S", 0.0)
    make_clean_dataset(tmp_path, num_shards=1, per_shard=2)
    good = tmp_path / "part_1" / "00000.tar"
    # Fails on its first run, works after: a transient object-store error.
    flaky = f"pipe:test -e {tmp_path}/seen || {{ touch {tmp_path}/seen; exit 1; }}; cat {good}"
    reader = WebdatasetReader(ShardList([str(good), flaky], np.asarray([2, 2])))
    assert isinstance(list(reader.read(0, [0]))[0][1], RawSample)
    assert isinstance(list(reader.read(1, [0]))[0][1], RawSample)  # retried: the source has worked before
    (tmp_path / "seen").unlink()
    suspect = WebdatasetReader(ShardList(["pipe:exit 1", flaky, str(good)], np.asarray([2, 2, 2])))
    assert list(suspect.read(0, [0])) == [(0, "unreadable_shard")]
    assert list(suspect.read(1, [0])) == [(0, "unreadable_shard")]  # nothing read yet: not retried
    assert isinstance(list(suspect.read(2, [0]))[0][1], RawSample)
    assert list(suspect.read(0, [1])) == [(1, "unreadable_shard")]  # remembered, not reopened

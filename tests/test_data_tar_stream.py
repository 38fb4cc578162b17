"""Reading tar shards: grouping by key, header-only skipping, truncation, URL and pipe sources."""

from __future__ import annotations

import http.server
import io
import shlex
import tarfile
import threading
from pathlib import Path

import pytest

from mindone.data.annotations import read_files_annotations, read_shard_list, resolve_annotation_files
from mindone.data.tar_stream import RawSample, read_samples
from mindone.errors import DataError
from tests.helpers.synthetic_data import make_clean_dataset, write_dataset, regular_member


def test_wanted_samples_are_grouped_and_others_skipped(tmp_path):
    make_clean_dataset(tmp_path, num_shards=1, per_shard=6)
    shard = str(tmp_path / "part_1" / "00000.tar")
    got = list(read_samples(shard, [1, 4, 5]))
    assert [i for i, _ in got] == [1, 4, 5]
    assert [s.key for _, s in got] == ["000000001", "000000004", "000000005"]
    assert all(set(s.files) == {"jpg", "txt", "json"} for _, s in got)


class CountingReader(io.RawIOBase):
    """A seekable file that counts the bytes actually read (to prove skipping by header)."""

    def __init__(self, path: Path | int):
        self.fh = open(path, "rb")
        self.bytes_read = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.fh.seek(offset, whence)

    def tell(self):
        return self.fh.tell()

    def readinto(self, buf):
        n = self.fh.readinto(buf)
        self.bytes_read += n
        return n


def test_skipped_members_are_not_read_from_local_files(tmp_path, monkeypatch):
    members = [regular_member(0, i) for i in range(40)]
    for i, m in enumerate(members):
        m.image = bytes([i]) * 20000  # big members make the difference between seeking and reading obvious
    write_dataset(tmp_path, [members])
    shard = tmp_path / "part_1" / "00000.tar"
    import mindone.data.tar_stream as ts

    readers = []

    def counting_open(path, mode="rb", buffering=-1):
        readers.append(CountingReader(path))  # the reader opens a file descriptor it checked
        return readers[-1]

    monkeypatch.setattr(ts, "open", counting_open, raising=False)
    got = list(read_samples(str(shard), [39]))
    assert got[0][1].key == "000000039"
    payload = sum(len(v) for v in got[0][1].files.values())
    # 120 members: their headers (512 B each) plus the one wanted sample, not the whole shard
    assert got[0][1].files["jpg"] == bytes([39]) * 20000
    assert readers[0].bytes_read < 120 * 512 + payload + 4 * 10240 < shard.stat().st_size / 5


def test_truncated_and_missing_shards_report_instead_of_raising(tmp_path):
    shards = [[regular_member(0, i) for i in range(8)]]
    write_dataset(tmp_path, shards, truncate={0: 0.5})
    shard = str(tmp_path / "part_1" / "00000.tar")
    got = list(read_samples(shard, list(range(8))))
    assert [i for i, _ in got] == list(range(8))
    reasons = [x for _, x in got if isinstance(x, str)]
    assert 2 <= len(reasons) <= 6 and set(reasons) == {"truncated_shard"}
    assert all(isinstance(x, RawSample) for _, x in got[: 8 - len(reasons)])
    missing = list(read_samples(str(tmp_path / "nope.tar"), [0, 1]))
    assert missing == [(0, "unreadable_shard"), (1, "unreadable_shard")]


def test_pipe_source_streams_and_can_stop_early(tmp_path):
    make_clean_dataset(tmp_path, num_shards=1, per_shard=5)
    shard = tmp_path / "part_1" / "00000.tar"
    got = list(read_samples(f"pipe:cat {shlex.quote(str(shard))}", [0, 2]))
    assert [s.key for _, s in got] == ["000000000", "000000002"]
    assert list(read_samples("pipe:exit 3", [0], retries=0)) == [(0, "unreadable_shard")]


@pytest.mark.timeout(60)
def test_http_source_with_retries(tmp_path, monkeypatch):
    make_clean_dataset(tmp_path, num_shards=1, per_shard=5)
    monkeypatch.setattr("mindone.data.tar_stream.RETRY_DELAY_S", 0.0)
    requests: list[str] = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def do_GET(self):
            requests.append(self.path)
            if self.path.startswith("/flaky") and requests.count(self.path) == 1:
                self.send_error(503)  # a transient object-store error: retried
                return
            self.path = self.path.replace("/flaky", "", 1)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        shards = read_shard_list([tmp_path / "part_1_stats.csv"], shard_root=base)
        assert shards.urls == [f"{base}/part_1/00000.tar"]
        got = list(read_samples(shards.urls[0], [3, 4]))
        assert [s.key for _, s in got] == ["000000003", "000000004"]
        assert list(read_samples(f"{base}/missing.tar", [0])) == [(0, "unreadable_shard")]
        assert requests.count("/missing.tar") == 1  # 404 is not retried
        flaky = list(read_samples(f"{base}/flaky/part_1/00000.tar", [2]))
        assert flaky[0][1].key == "000000002" and requests.count("/flaky/part_1/00000.tar") == 2
    finally:
        server.shutdown()
        server.server_close()


def test_annotation_resolution_and_errors(tmp_path):
    make_clean_dataset(tmp_path, num_shards=1, per_shard=2, part=1)
    make_clean_dataset(tmp_path, num_shards=1, per_shard=3, part=10)
    make_clean_dataset(tmp_path, num_shards=1, per_shard=4, part=2)
    stats = resolve_annotation_files(tmp_path, "webdataset")
    assert [p.name for p in stats] == ["part_1_stats.csv", "part_2_stats.csv", "part_10_stats.csv"]
    assert read_shard_list(stats).sizes.tolist() == [2, 4, 3]
    only = resolve_annotation_files(tmp_path, "files", parts=[2])
    ann = read_files_annotations(only)
    assert len(ann) == 4 and Path(ann.paths[0]).is_file()
    listed = resolve_annotation_files(f"{tmp_path / 'part_1.csv'},{tmp_path / 'part_2.csv'}", "files")
    assert len(read_files_annotations(listed)) == 6
    template = read_shard_list(stats[:1], shard_root="pipe:aws s3 cp s3://b/laion/{} -")
    assert template.urls == ["pipe:aws s3 cp s3://b/laion/part_1/00000.tar -"]
    with pytest.raises(DataError, match="no part_<N>.csv files for parts"):
        resolve_annotation_files(tmp_path, "files", parts=[7])
    with pytest.raises(DataError, match="no such file"):
        resolve_annotation_files(tmp_path / "absent", "files")
    (tmp_path / "bad_stats.csv").write_text("path,count\nx.tar,3\n")
    with pytest.raises(DataError, match="missing column"):
        read_shard_list([tmp_path / "bad_stats.csv"])
    (tmp_path / "bad2.csv").write_text("file_path,num_samples\nx.tar,lots\n")
    with pytest.raises(DataError, match=r"bad2.csv:2: num_samples 'lots'"):
        read_shard_list([tmp_path / "bad2.csv"])


def test_packed_strings_round_trip():
    from mindone.data.annotations import PackedStrings

    a, b = PackedStrings(["x", "", "café ü"]), PackedStrings(["last"])
    both = PackedStrings.concat([a, b])
    assert len(both) == 4 and [both[i] for i in range(4)] == ["x", "", "café ü", "last"]


def test_indices_that_go_back_or_repeat_are_read_in_the_order_asked(tmp_path):
    # A plan that wraps around a small dataset asks for [3, 4, 0]; padding can repeat an index.
    make_clean_dataset(tmp_path, num_shards=1, per_shard=5)
    shard = str(tmp_path / "part_1" / "00000.tar")
    got = list(read_samples(shard, [3, 4, 0, 0, 2]))
    assert [i for i, _ in got] == [3, 4, 0, 0, 2]
    assert [s.key for _, s in got] == ["000000003", "000000004", "000000000", "000000000", "000000002"]

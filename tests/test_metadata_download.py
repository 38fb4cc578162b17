"""laion_download_metadata against a local HTTP server serving generated parquet files."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import laion_download_metadata as cli
from helpers_metadata import DOWNLOAD_CLI, run_cli
from laion_utils.http_download import DownloadError, RetryPolicy, download_file, partial_path
from laion_utils.synthetic_metadata import write_synthetic_metadata

FAST = RetryPolicy(retries=3, backoff=0.01, max_backoff=0.02, timeout=5)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _serve(self, body: bool):
        srv = self.server
        name = self.path.lstrip("/")
        srv.log.append((self.command, name, self.headers.get("Range")))
        host = self.headers.get("Host", "").split(":")[0]
        srv.auth_log.append((self.command, host, self.headers.get("Authorization")))
        if name.startswith("redirect/"):  # like the Hub: 302 to a CDN on another host
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{srv.server_address[1]}/{name[len('redirect/'):]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.token and host == "127.0.0.1" and self.headers.get("Authorization") != f"Bearer {srv.token}":
            self.send_error(401, "Unauthorized")
            return
        if srv.fail.get((self.command, name), 0) > 0:
            srv.fail[(self.command, name)] -= 1
            self.send_error(500, "transient")
            return
        data = srv.files.get(name)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.ranges and body:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        if srv.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if body:
            cut = srv.cut.pop(name, None)
            self.wfile.write(data[start:cut] if cut else data[start:])

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("served")
    out = {}
    for i in (1, 2, 3):
        p = write_synthetic_metadata(root / f"2B-en-4.5_{i}.parquet", 3000, seed=i)
        out[p.name] = p.read_bytes()
    return out


@pytest.fixture
def server(files):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.fail, srv.cut, srv.log, srv.ranges = dict(files), {}, {}, [], True
    srv.auth_log, srv.token = [], None
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _gets(srv, name):
    return [entry for entry in srv.log if entry[0] == "GET" and entry[1] == name]


@pytest.mark.timeout(60)
def test_download_parts_then_skip_complete(server, files, tmp_path):
    args = ["--base_url", server.url, "--parts", "1-2,3", "--output_dir", str(tmp_path), "--no_progress"]
    assert cli.main(args) == 0
    for name, data in files.items():
        assert (tmp_path / name).read_bytes() == data
        assert pq.ParquetFile(tmp_path / name).metadata.num_rows == 3000
    gets = len([e for e in server.log if e[0] == "GET"])
    assert cli.main(args) == 0  # second run: sizes match, nothing fetched again
    assert len([e for e in server.log if e[0] == "GET"]) == gets == 3
    assert not list(tmp_path.glob(".*"))  # no temp files left


@pytest.mark.timeout(60)
def test_resume_partial_with_range(server, files, tmp_path):
    name = "2B-en-4.5_2.parquet"
    data = files[name]
    partial_path(tmp_path / name).write_bytes(data[:1000])
    assert download_file(f"{server.url}/{name}", tmp_path / name, FAST, progress=False) == "resumed"
    assert (tmp_path / name).read_bytes() == data
    assert _gets(server, name) == [("GET", name, "bytes=1000-")]
    assert not partial_path(tmp_path / name).exists()


@pytest.mark.timeout(60)
def test_partial_restarts_when_server_ignores_range(server, files, tmp_path):
    server.ranges = False
    name = "2B-en-4.5_1.parquet"
    partial_path(tmp_path / name).write_bytes(b"x" * 500)  # stale bytes must not survive
    download_file(f"{server.url}/{name}", tmp_path / name, FAST, progress=False)
    assert (tmp_path / name).read_bytes() == files[name]


@pytest.mark.timeout(60)
def test_complete_file_of_wrong_size_is_fetched_again(server, files, tmp_path):
    name = "2B-en-4.5_3.parquet"
    (tmp_path / name).write_bytes(b"old")
    assert download_file(f"{server.url}/{name}", tmp_path / name, FAST, progress=False) == "downloaded"
    assert (tmp_path / name).read_bytes() == files[name]


@pytest.mark.timeout(60)
def test_retries_transient_500_and_cut_connection(server, files, tmp_path):
    name = "2B-en-4.5_1.parquet"
    server.fail[("GET", name)] = 2
    server.fail[("HEAD", name)] = 1
    server.cut[name] = 4096  # first successful GET stops after 4 KiB: resumed by the next attempt
    policy = RetryPolicy(retries=5, backoff=0.01, max_backoff=0.02, timeout=5)
    assert download_file(f"{server.url}/{name}", tmp_path / name, policy, progress=False) == "resumed"
    assert (tmp_path / name).read_bytes() == files[name]
    gets = _gets(server, name)
    assert len(gets) == 4 and gets[-1][2] == "bytes=4096-"


@pytest.mark.timeout(60)
def test_gives_up_after_retries_and_keeps_no_final_file(server, tmp_path):
    name = "2B-en-4.5_2.parquet"
    server.fail[("HEAD", name)] = 100
    with pytest.raises(DownloadError, match=r"HTTP 500 .*gave up after 3 retries"):
        download_file(f"{server.url}/{name}", tmp_path / name, FAST, progress=False)
    assert not (tmp_path / name).exists()


@pytest.mark.timeout(60)
def test_404_is_reported_clearly(server, tmp_path):
    proc = run_cli(DOWNLOAD_CLI, "--base_url", server.url, "--parts", "1-4", "--output_dir", str(tmp_path),
                   "--no_progress", "--retries", "2", "--backoff", "0.01", "--workers", "2")
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "2B-en-4.5_4.parquet: HTTP 404" in errors[0]
    assert "3 downloaded" in proc.stderr and "1 failed" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"2B-en-4.5_{i}.parquet" for i in (1, 2, 3)]
    # no retry on a permanent error
    assert len([e for e in server.log if e[1] == "2B-en-4.5_4.parquet"]) == 1


def test_file_pattern_override_and_dry_run(tmp_path, capsys):
    cli.main(["--subset", "laion-high-resolution", "--parts", "1,128", "--output_dir", str(tmp_path), "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("https://huggingface.co/datasets/laion/laion-high-resolution/resolve/main/part-00000-")
    assert "part-00127-" in lines[1]
    cli.main(["--subset", "laion-art", "--base_url", "http://mirror/x/", "--file_pattern", "art_{n:03d}.parquet",
              "--num_files", "4", "--parts", "2-3", "--output_dir", str(tmp_path), "--dry_run"])
    out = capsys.readouterr().out.splitlines()
    assert [ln.split(" -> ")[0] for ln in out] == ["http://mirror/x/art_002.parquet", "http://mirror/x/art_003.parquet"]


@pytest.mark.timeout(60)
def test_token_for_gated_files_is_not_forwarded_to_another_host(server, files, tmp_path):
    server.token = "secret"
    name = "2B-en-4.5_1.parquet"
    with pytest.raises(DownloadError, match=r"HTTP 401"):
        download_file(f"{server.url}/{name}", tmp_path / name, FAST, progress=False)
    assert len(server.auth_log) == 1  # a 401 is not retried
    assert download_file(f"{server.url}/redirect/{name}", tmp_path / name, FAST, progress=False,
                         token="secret") == "downloaded"
    assert (tmp_path / name).read_bytes() == files[name]
    hosts = {(cmd, host): auth for cmd, host, auth in server.auth_log[1:]}
    assert hosts[("HEAD", "127.0.0.1")] == hosts[("GET", "127.0.0.1")] == "Bearer secret"
    assert hosts[("HEAD", "localhost")] is None and hosts[("GET", "localhost")] is None  # HEAD stays HEAD

"""laion_download_metadata against a local HTTP server serving generated parquet files."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mindone.laion.http_download import DownloadError, RetryPolicy, download_file, partial_path, validator_path
from mindone.laion.synthetic_metadata import write_synthetic_metadata
from tests.helpers.metadata import DOWNLOAD_CLI, run_cli
from tests.helpers.tools import load_tool

from mindone.utils.cli import ONE_LINE_ERRORS  # noqa: E402

cli = load_tool("laion_download_metadata")

FAST = RetryPolicy(retries=3, backoff=0.01, max_backoff=0.02, timeout=5)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _serve(self, body: bool):
        srv = self.server
        name = self.path.lstrip("/")
        srv.log.append((self.command, name, self.headers.get("Range")))
        srv.if_range_log.append((self.command, name, self.headers.get("If-Range")))
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
        if self.command == "HEAD" and srv.head_status:  # a mirror that only answers GET
            self.send_error(srv.head_status, "HEAD refused")
            return
        data = srv.files.get(name)
        if data is None:
            self.send_error(404, "Not Found")
            return
        # validators follow the content, as a real server's do: the file changes, they change
        etag = f'"{hashlib.sha1(data).hexdigest()[:16]}"' if srv.etags else None
        last_modified = srv.last_modified.get(name)
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        range_ok = if_range is None or srv.ignore_if_range or if_range in (etag, last_modified)
        if rng and srv.ranges and body and range_ok:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        if srv.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if body or srv.head_validators:
            if etag:
                self.send_header("ETag", etag)
            if last_modified:
                self.send_header("Last-Modified", last_modified)
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
    srv.if_range_log, srv.head_status, srv.etags, srv.last_modified = [], None, True, {}
    srv.head_validators, srv.ignore_if_range = True, False
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
    args = ["--subset", "improved_aesthetics_4.5plus", "--base_url", server.url, "--parts", "1-2,3", "--output_dir", str(tmp_path), "--no_progress"]
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
    proc = run_cli(DOWNLOAD_CLI, "--subset", "improved_aesthetics_4.5plus", "--base_url", server.url, "--parts", "1-4", "--output_dir", str(tmp_path),
                   "--no_progress", "--retries", "2", "--backoff", "0.01", "--workers", "2")
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "2B-en-4.5_4.parquet: HTTP 404" in errors[0]
    assert "3 downloaded" in proc.stderr and "1 failed" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"2B-en-4.5_{i}.parquet" for i in (1, 2, 3)]
    # no retry on a permanent error
    assert len([e for e in server.log if e[1] == "2B-en-4.5_4.parquet"]) == 1


def test_file_pattern_override_and_dry_run(tmp_path, capsys):
    cli.main(["--parts", "1,128", "--output_dir", str(tmp_path), "--dry_run"])  # the default: Re-LAION research-safe
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("https://huggingface.co/datasets/laion/relaion2B-en-research-safe/resolve/main/"
                               "part-00000-339dc23d-0869-4dc0-9390-b4036fcc80c2-c000.snappy.parquet")
    assert "part-00127-" in lines[1] and len(lines) == 2
    cli.main(["--subset", "laion-art", "--base_url", "http://mirror/x/", "--file_pattern", "art_{n:03d}.parquet",
              "--num_files", "4", "--parts", "2-3", "--output_dir", str(tmp_path), "--dry_run"])
    out = capsys.readouterr().out.splitlines()
    assert [ln.split(" -> ")[0] for ln in out] == ["http://mirror/x/art_002.parquet", "http://mirror/x/art_003.parquet"]


@pytest.mark.parametrize("subset", ["improved_aesthetics_4.5plus", "laion-art", "laion2B-en-joined",
                                    "laion-high-resolution"])
def test_a_withdrawn_subset_without_a_mirror_says_what_to_use_instead(tmp_path, subset):
    with pytest.raises(ONE_LINE_ERRORS, match=rf"--subset {subset}: withdrawn by LAION on 2023-12-19.*--base_url.*"
                                               r"relaion2B-en-research-safe"):
        cli.main(["--subset", subset, "--output_dir", str(tmp_path / "out"), "--dry_run"])
    assert not (tmp_path / "out").exists()


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status", [405, 403, 501])
def test_mirror_refusing_head_is_asked_with_get(server, files, tmp_path, status):
    server.head_status = status
    name = "2B-en-4.5_3.parquet"
    assert download_file(f"{server.url}/{name}", tmp_path / name, FAST, progress=False) == "downloaded"
    assert (tmp_path / name).read_bytes() == files[name]
    assert [e[0] for e in server.log] == ["HEAD", "GET", "GET"]  # refused HEAD, GET for the size, the download
    # the size read from the GET's headers is enough to see the file is complete
    assert download_file(f"{server.url}/{name}", tmp_path / name, FAST, progress=False) == "skipped"
    assert len(_gets(server, name)) == 3
    assert not list(tmp_path.glob(".*"))
    # a GET refused too is still a clear, permanent error naming the URL
    with pytest.raises(DownloadError, match=r"2B-en-4.5_9.parquet: HTTP 404"):
        download_file(f"{server.url}/2B-en-4.5_9.parquet", tmp_path / "x.parquet", FAST, progress=False)


def _start_partial(server, tmp_path, name: str) -> Path:
    """A download cut after 4 KiB and not retried: leaves the partial and its validator sidecar."""
    server.cut[name] = 4096
    with pytest.raises(DownloadError):
        download_file(f"{server.url}/{name}", tmp_path / name, RetryPolicy(retries=0, timeout=5), progress=False)
    partial = partial_path(tmp_path / name)
    assert partial.stat().st_size == 4096 and validator_path(partial).is_file()
    return partial


@pytest.mark.timeout(60)
@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_resume_sends_if_range_with_the_recorded_validator(server, files, tmp_path, validator):
    name = "2B-en-4.5_2.parquet"
    if validator == "last_modified":
        server.etags = False
        server.last_modified[name] = "Mon, 01 Jan 2024 00:00:00 GMT"
    _start_partial(server, tmp_path, name)
    recorded = f'"{hashlib.sha1(files[name]).hexdigest()[:16]}"' if validator == "etag" else server.last_modified[name]
    assert download_file(f"{server.url}/{name}", tmp_path / name, FAST, progress=False) == "resumed"
    assert (tmp_path / name).read_bytes() == files[name]
    assert _gets(server, name)[-1] == ("GET", name, "bytes=4096-")
    assert server.if_range_log[-1] == ("GET", name, recorded)
    assert not list(tmp_path.glob(".*"))  # partial and sidecar gone


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["head_says", "if_range_says", "206_says", "last_modified_says"])
def test_file_changed_on_the_server_restarts_instead_of_splicing(server, files, tmp_path, how):
    """The partial holds the start of version 1; the server now has version 2 of the same size."""
    name = "2B-en-4.5_1.parquet"
    if how == "last_modified_says":
        server.etags = False
        server.last_modified[name] = "Mon, 01 Jan 2024 00:00:00 GMT"
    _start_partial(server, tmp_path, name)
    new = files[name][:100] + files[name][100:][::-1]  # same size and start: only a validator tells them apart
    server.files[name] = new
    if how == "last_modified_says":
        server.last_modified[name] = "Tue, 02 Jan 2024 00:00:00 GMT"
    if how in ("if_range_says", "206_says"):
        server.head_validators = False  # nothing to compare before the GET: If-Range (or the 206) must tell
    server.ignore_if_range = how == "206_says"  # a server serving the range of whatever it has now
    result = download_file(f"{server.url}/{name}", tmp_path / name, FAST, progress=False)
    assert (tmp_path / name).read_bytes() == new and result == "downloaded"
    assert not list(tmp_path.glob(".*"))

"""Issue 17, tools side, for the download tools and the configs: a metadata row never makes img2dataset
read a local file (only http(s) URLs are handed over unless --allow_non_http_urls), a metadata server
never chooses where a file is written, the local servers listen on loopback only, and yaml never builds
Python objects.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mindone.errors import ConfigError
from mindone.utils.cli import ONE_LINE_ERRORS, UserError
from tests.helpers.tools import load_tool

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools" / "laion_data_utils"


# -- 4. only http(s) URLs of the metadata reach img2dataset ------------------------------------------------------

DOWNLOAD = TOOLS / "laion_download_imgs.sh"
SMALL = ["--processes_count", "1", "--thread_count", "4", "--timeout", "2", "--image_size", "64"]


def url_rows(urls: list) -> dict:
    return {"URL": urls, "TEXT": [f"caption {i}" for i in range(len(urls))], "similarity": [0.3] * len(urls)}


def run_download(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run(["bash", str(DOWNLOAD), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_url_screen_judges_schemes_as_urllib_sees_them():
    import pyarrow as pa

    from mindone.laion.url_guard import screen_urls

    urls = ["http://a/1.jpg", "HTTPS://a/2.jpg", "  https://a/3.jpg", "<URL:http://a/4.jpg>", None, "file:///etc/passwd",
            "<URL:file:///etc/passwd>", " FILE:///etc/shadow", "ftp://h/x.jpg", "data:image/png;base64,AAAA", "/etc/passwd",
            "HTTP://[::1"]  # fmt: skip
    keep, screen = screen_urls(pa.table({"URL": urls}), "URL")
    assert list(keep) == [True] * 5 + [False] * 7
    assert (screen.rows, screen.refused) == (12, 7)
    assert screen.describe() == ("7 of 12 rows have a URL that is not http(s) (1 without a scheme, 1 (unparsable), 1 data:, "
                                 "3 file:, 1 ftp:)")


@pytest.mark.timeout(200)
def test_file_urls_in_metadata_never_reach_the_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers.image_server import ImageServer, make_jpeg

    secret = tmp_path / "private" / "secret.jpg"  # an image, so img2dataset would keep it if it read it
    secret.parent.mkdir()
    secret.write_bytes(make_jpeg(48, 40, seed=99))
    meta = tmp_path / "meta"
    meta.mkdir()
    with ImageServer() as srv:
        urls = [srv.url("good", 1), secret.as_uri(), srv.url("good", 2), f"<URL:{secret.as_uri()}>"]
        pq.write_table(pa.table(url_rows(urls)), meta / "part_1.parquet")
        for name, extra in (("default", []), ("allowed", ["--allow_non_http_urls"])):
            out = tmp_path / name
            proc = run_download(["1", "--metadata_dir", str(meta), "--output_dir", str(out), *SMALL, *extra])
            assert proc.returncode == 0, proc.stderr[-2000:]
            shards = [tarfile.open(p) for p in sorted((out / "part_1").glob("*.tar"))]
            jpgs = [t.extractfile(m).read() for t in shards for m in t.getmembers() if m.name.endswith(".jpg")]
            listed = pd_urls(out / "part_1")
            if name == "default":  # only the http rows were handed over; the refusal is counted and named
                assert len(jpgs) == 2 and secret.read_bytes() not in jpgs and listed == sorted(urls[0::2])
                assert f"part 1: {meta / 'part_1.parquet'}: 2 of 4 rows have a URL that is not http(s) (2 file:)" in proc.stderr
            else:  # the flag hands the file:// rows to img2dataset, which reads the file: what the default prevents
                assert len(jpgs) == 4 and secret.read_bytes() in jpgs and len(listed) == 4


def pd_urls(part_dir: Path) -> list[str]:
    import pandas as pd

    frames = [pd.read_parquet(p) for p in sorted(part_dir.glob("[0-9]*.parquet"))]
    return sorted(pd.concat(frames)["url"].tolist()) if frames else []


@pytest.mark.spark
@pytest.mark.timeout(300)
def test_file_urls_never_reach_the_shards_with_pyspark(tmp_path):
    """The same on a real local Spark master: the executors download the http rows only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers.image_server import ImageServer, make_jpeg

    secret = tmp_path / "secret.jpg"
    secret.write_bytes(make_jpeg(48, 40, seed=98))
    meta, out = tmp_path / "meta", tmp_path / "out"
    meta.mkdir()
    with ImageServer() as srv:
        urls = [srv.url("good", 3), secret.as_uri(), srv.url("good", 4)]
        pq.write_table(pa.table(url_rows(urls)), meta / "part_1.parquet")
        proc = run_download(["1", "--metadata_dir", str(meta), "--output_dir", str(out), *SMALL, "--distributor", "pyspark",
                             "--spark_master", "local[1]"], timeout=280)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = [tarfile.open(p) for p in sorted((out / "part_1").glob("*.tar"))]
    jpgs = [t.extractfile(m).read() for t in shards for m in t.getmembers() if m.name.endswith(".jpg")]
    assert len(jpgs) == 2 and secret.read_bytes() not in jpgs and pd_urls(out / "part_1") == sorted(urls[0::2])
    assert "1 of 3 rows have a URL that is not http(s) (1 file:)" in proc.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("distributor", ["multiprocessing", "pyspark"])
def test_both_distributors_are_handed_only_http_rows(tmp_path, monkeypatch, distributor):
    """What img2dataset.download receives, for either distributor (the call itself is recorded, not run)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mindone.laion import img2dataset_launch as launch

    laion_download_imgs = load_tool("laion_download_imgs")
    for key in [k for k in os.environ if k.startswith("LAION_")]:
        monkeypatch.delenv(key)
    handed: list[dict] = []
    monkeypatch.setattr(launch, "run_img2dataset", lambda kwargs, **_: handed.append(kwargs))
    urls = ["http://h/1.jpg", "file:///etc/passwd", "https://h/2.jpg", "ftp://h/3.jpg"]
    pq.write_table(pa.table(url_rows(urls)), tmp_path / "part_1.parquet")
    (tmp_path / "part_2.txt").write_text("\n".join(["https://h/4.jpg", "file:///etc/hostname", "http://h/5.jpg"]) + "\n")
    common = ["--metadata_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--distributor", distributor]
    with pytest.raises(UserError, match="not complete"):  # nothing was downloaded
        laion_download_imgs.main(["1", *common])
    with pytest.raises(UserError, match="not complete"):
        laion_download_imgs.main(["2", *common, "--input_format", "txt"])
    for kwargs, kept in zip(handed, (urls[0::2], ["https://h/4.jpg", "http://h/5.jpg"]), strict=True):
        assert kwargs["distributor"] == distributor and kwargs["input_format"] == "parquet"
        copy = pq.read_table(kwargs["url_list"])
        assert copy.column(kwargs["url_col"]).to_pylist() == kept
        assert Path(kwargs["url_list"]).parent == Path(kwargs["output_folder"])
    assert handed[1]["caption_col"] is None and handed[0]["caption_col"] == "TEXT"


def test_metadata_with_no_http_row_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(url_rows(["file:///etc/passwd", "gopher://h/x"])), tmp_path / "part_1.parquet")
    proc = run_download(["1", "--metadata_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")], timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(tmp_path / "part_1.parquet") in lines[0]
    assert "2 of 2 rows have a URL that is not http(s) (1 file:, 1 gopher:)" in lines[0] and "--allow_non_http_urls" in lines[0]



def test_metadata_that_cannot_be_checked_is_one_line(tmp_path, monkeypatch):
    laion_download_imgs = load_tool("laion_download_imgs")

    for key in [k for k in os.environ if k.startswith("LAION_")]:
        monkeypatch.delenv(key)
    (tmp_path / "part_1.jsonl").write_text('{"link": "file:///etc/passwd", "TEXT": "x"}\n')
    with pytest.raises(UserError, match=r"part 1: .*part_1.jsonl: cannot check its 'URL' column as jsonl") as err:
        laion_download_imgs.main(["1", "--metadata_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--input_format", "jsonl"])
    assert "\n" not in str(err.value) and not (tmp_path / "o").exists()


# -- 3. a metadata server never chooses where a file is written ------------------------------------------------------


class _HostileMirror:
    """Answers every file with a Content-Disposition naming a path outside, or redirects it somewhere odd."""

    def __init__(self, body: bytes) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):  # noqa: N802
                self.answer(body=False)

            def do_GET(self):  # noqa: N802
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                route = self.path.strip("/").split("/", 1)[0]
                targets = {"ftp": "ftp://127.0.0.1:9/x.parquet", "file": "file:///etc/passwd",
                           "climb": "/../../../named/../../laion-art.parquet"}  # fmt: skip
                if route in targets:
                    self.send_response(302)
                    self.send_header("Location", targets[route])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Disposition", 'attachment; filename="../../escaped.parquet"')
                self.send_header("Content-Length", str(len(mirror.body)))
                self.end_headers()
                if body:
                    self.wfile.write(mirror.body)

        self.body = body
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def __enter__(self) -> str:
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


@pytest.mark.timeout(60)
def test_server_answers_never_choose_the_file_name(tmp_path):
    laion_download_metadata = load_tool("laion_download_metadata")

    out = tmp_path / "a" / "b" / "out"
    fast = ["--retries", "0", "--timeout", "5", "--no_progress", "--subset", "laion-art", "--output_dir", str(out)]
    with _HostileMirror(b"PAR1 parquet bytes") as base:
        for route in ("named", "climb"):  # Content-Disposition "../../escaped.parquet"; a redirect climbing with ..
            assert laion_download_metadata.main([*fast, "--base_url", f"{base}/{route}"]) == 0
            assert files_under(tmp_path) == ["a/b/out/laion-art.parquet"]
            (out / "laion-art.parquet").unlink()
        # urllib itself refuses file://; ftp:// it would follow, this tool does not
        for route, refusal in (("ftp", "redirect to 'ftp://127.0.0.1:9/x.parquet' refused"), ("file", "'file:///etc/passwd' is not allowed")):
            with pytest.raises(UserError, match=f"HTTP 302 .*{refusal}") as err:
                laion_download_metadata.main([*fast, "--base_url", f"{base}/{route}"])
            assert "\n" not in str(err.value) and f"{base}/{route}/laion-art.parquet" in str(err.value)
            assert files_under(tmp_path) == []


@pytest.mark.parametrize("pattern", ["../x{n}.parquet", "/tmp/x{n}.parquet", "sub/x{n}.parquet", ".."])
def test_file_pattern_that_holds_a_path_is_one_line(tmp_path, pattern):
    laion_download_metadata = load_tool("laion_download_metadata")

    with pytest.raises(ONE_LINE_ERRORS, match="not a plain file name") as err:
        laion_download_metadata.main(["--subset", "laion-art", "--output_dir", str(tmp_path / "out"), "--file_pattern", pattern,
                                      "--base_url", "http://127.0.0.1:9", "--dry_run"])  # fmt: skip
    assert "--file_pattern: part 1 gives" in str(err.value) and files_under(tmp_path) == []


# -- 6. the local servers of the tests and the demo listen on loopback only ------------------------------------------


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (None when it has none)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent for a UDP connect
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _answers(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_local_servers_bind_loopback_only(tmp_path):
    import urllib.parse

    from mindone.utils.loopback import serve_directory
    from tests.helpers.image_server import ImageServer

    outside = _outside_address()
    with ImageServer() as plain, ImageServer(https=True) as tls, serve_directory(tmp_path) as demo:
        for base in (plain.base_url, tls.base_url, demo):
            url = urllib.parse.urlsplit(base)
            assert url.hostname == "127.0.0.1" and _answers("127.0.0.1", url.port), base
            if outside is not None:  # the same port on the machine's network address: nobody there
                assert not _answers(outside, url.port), (base, outside)
        assert plain._server.server_address[0] == tls._server.server_address[0] == "127.0.0.1"


# -- 5. yaml is only ever loaded safely ------------------------------------------------------------------------------


def test_no_unsafe_yaml_loading_anywhere():
    import re

    unsafe = re.compile(r"yaml\.(load|load_all|unsafe_load|full_load|full_load_all)\(|\b(Unsafe|Full)?Loader\b")
    sources = [p for top in ("tools", "mindone", "examples", "scripts", "benchmarks", "tests") for p in (REPO / top).rglob("*.py")]
    hits = [f"{p.relative_to(REPO)}:{n}" for p in sources if p.name not in (Path(__file__).name, "test_security_tools.py")
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if unsafe.search(line)]  # fmt: skip
    assert len(sources) > 50 and hits == []


def test_config_yaml_with_python_tags_runs_nothing(tmp_path, monkeypatch):
    laion_filter_metadata = load_tool("laion_filter_metadata")

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "filter.yaml"
    config.write_text('data_dir: !!python/object/apply:os.system ["touch PWNED"]\n')
    with pytest.raises(ConfigError, match=f"--config {config}: invalid yaml") as err:
        laion_filter_metadata.main(["--config", str(config)])
    assert "\n" not in str(err.value) and not (tmp_path / "PWNED").exists()


def test_insecure_ssl_uses_img2datasets_own_option_when_it_has_one(monkeypatch):
    """img2dataset after 1.47.0 (PR #397) has download(ignore_ssl_certificate=...): the launcher passes it and
    leaves img2dataset's Downloader alone; the pinned 1.47.0 gets the Downloader subclass instead."""
    import importlib

    import img2dataset

    from mindone.laion import cert_patch
    from mindone.laion import img2dataset_launch as launch

    i2d_main = importlib.import_module("img2dataset.main")
    seen = []

    def newer_download(url_list, output_folder="images", ignore_ssl_certificate: bool = False):
        seen.append(("newer", ignore_ssl_certificate, i2d_main.Downloader))

    def pinned_download(url_list, output_folder="images"):
        seen.append(("pinned", None, i2d_main.Downloader))

    stock = i2d_main.Downloader
    for fake in (newer_download, pinned_download):
        monkeypatch.setattr(img2dataset, "download", fake)
        launch.run_img2dataset({"url_list": "x.parquet"}, insecure_ssl=True)
    assert seen == [("newer", True, stock), ("pinned", None, cert_patch.InsecureDownloader)]
    assert i2d_main.Downloader is stock  # restored after the call

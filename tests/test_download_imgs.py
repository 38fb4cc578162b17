"""laion_download_imgs.sh against a local fault-injecting HTTP/HTTPS server (tests/helpers/image_server.py).

img2dataset really runs (1 process, few threads, 2 s timeout); each bad URL must come back with the
reason img2dataset recorded, HTTPS with a self-signed certificate must fail by default and succeed with
--insecure_ssl, and a run killed mid-shard must resume without counting the broken shard.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.image_server import BIG_SIZE, EXPECTED_OUTCOME, ImageServer, good_size
from tests.helpers.tools import load_tool

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "laion_data_utils" / "laion_download_imgs.sh"
STATS_TOOL = REPO / "tools" / "laion_data_utils" / "laion_gen_data_stats.py"
CSV_TOOL = REPO / "tools" / "laion_data_utils" / "laion_gen_csv_annot.py"
SMALL = ["--processes_count", "1", "--thread_count", "8", "--timeout", "2", "--image_size", "64"]
GOOD_ROUTES = [r for r, (ok, _) in EXPECTED_OUTCOME.items() if ok]


def run(cmd: list[str], env: dict | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}")
    return proc


def laion_rows(urls: list[str]) -> dict:
    n = len(urls)
    return {
        "URL": urls,
        "TEXT": [f"caption number {i}, with a comma" for i in range(n)],
        "WIDTH": [640.0] * n,
        "HEIGHT": [480.0] * n,
        "similarity": [0.30 + 0.001 * i for i in range(n)],
        "punsafe": [0.01] * n,
        "pwatermark": [0.1] * n,
        "AESTHETIC_SCORE": [5.0 + 0.01 * i for i in range(n)],
        "hash": list(range(n)),
    }


def shard_parquets(part_dir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(part_dir.glob("[0-9]*.parquet"))], ignore_index=True)


def tar_members(part_dir: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every tar, read the slow sure way (tarfile, full data)."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(part_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


@pytest.fixture(scope="module")
def servers():
    with ImageServer(stall_seconds=6) as http, ImageServer(https=True) as https:
        yield http, https


@pytest.fixture(scope="module")
def webdataset_run(tmp_path_factory, servers):
    """Part 1: every HTTP route + HTTPS good images, default settings (certificates verified)."""
    http, https = servers
    root = tmp_path_factory.mktemp("dl")
    meta, out = root / "meta", root / "data"
    meta.mkdir()
    urls = [http.url(route, i) for route in EXPECTED_OUTCOME for i in range(2 if EXPECTED_OUTCOME[route][0] else 1)]
    https_urls = [https.url("good", i) for i in range(3)]
    pq.write_table(pa.table(laion_rows(urls + https_urls)), meta / "part_1.parquet")
    proc = run(["bash", str(SCRIPT), "1", "--metadata_dir", str(meta), "--output_dir", str(out), *SMALL,
                "--number_sample_per_shard", "8", "--", "--max_image_area", "100000"])  # fmt: skip
    return {"root": root, "out": out, "part": out / "part_1", "urls": urls, "https_urls": https_urls, "log": proc.stderr}


@pytest.mark.timeout(120)
def test_every_url_accounted_for_with_its_reason(webdataset_run):
    part = webdataset_run["part"]
    status = shard_parquets(part).set_index("url")
    samples = tar_members(part)
    by_url = {json.loads(s["json"])["url"]: s for s in samples.values()}
    for url in webdataset_run["urls"]:
        route = url.split("/")[3]
        should_succeed, reason = EXPECTED_OUTCOME[route]
        row = status.loc[url]
        if should_succeed:
            assert row["status"] == "success", (url, row["error_message"])
            sample = by_url[url]
            assert sample["txt"].decode() == row["caption"]
            meta = json.loads(sample["json"])
            # keep_ratio + resize_only_if_bigger: big images shrink so the short side is 64, small ones stay
            if route == "big":
                assert min(meta["width"], meta["height"]) == 64 and (meta["original_width"], meta["original_height"]) == BIG_SIZE
            else:
                assert (meta["width"], meta["height"]) == (meta["original_width"], meta["original_height"])
            # the LAION score columns the metadata has were kept (auto save_additional_columns)
            assert {"similarity", "AESTHETIC_SCORE", "pwatermark", "punsafe", "hash"} <= meta.keys()
        else:
            assert row["status"] != "success" and url not in by_url, url
            assert reason in row["error_message"], (url, row["error_message"])
    # _stats.json agree with the tars
    successes = sum(json.loads(p.read_text())["successes"] for p in part.glob("*_stats.json"))
    assert successes == len(samples) == len(GOOD_ROUTES) * 2


@pytest.mark.timeout(120)
def test_https_self_signed_fails_by_default(webdataset_run):
    status = shard_parquets(webdataset_run["part"]).set_index("url")
    for url in webdataset_run["https_urls"]:
        assert status.loc[url, "status"] == "failed_to_download"
        assert "CERTIFICATE_VERIFY_FAILED" in status.loc[url, "error_message"]


@pytest.mark.timeout(120)
def test_stats_csv_matches_real_tar_contents(webdataset_run):
    out, part = webdataset_run["out"], webdataset_run["part"]
    run([sys.executable, str(STATS_TOOL), "--data_dir", str(out), "--all_stats", "--strict"])
    stats = pd.read_csv(out / "part_1_stats.csv")
    assert list(stats.columns) == ["file_path", "num_samples"]
    assert sorted(stats["file_path"]) == sorted(f"part_1/{p.name}" for p in part.glob("*.tar"))
    for file_path, n in zip(stats["file_path"], stats["num_samples"], strict=True):
        with tarfile.open(out / file_path) as tar:
            keys = {m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".jpg")}
        assert n == len(keys)
    assert pd.read_csv(out / "all_stats.csv")["num_samples"].sum() == len(GOOD_ROUTES) * 2
    # the training loader's tar reader finds every counted sample of img2dataset's real tars
    from mindone.data.tar_stream import read_samples

    for file_path, n in zip(stats["file_path"], stats["num_samples"], strict=True):
        got = list(read_samples(str(out / file_path), list(range(n))))
        assert len(got) == n and not any(isinstance(sample, str) for _, sample in got)
    # post-download filter at stats time: aesthetic grows with the row index, so a threshold drops a prefix
    filtered = webdataset_run["root"] / "filtered"
    run([sys.executable, str(STATS_TOOL), "--data_dir", str(out), "--min_aesthetic", "5.05", "--filtered_output_dir", str(filtered)])
    metas = [json.loads(s["json"]) for s in tar_members(part).values()]
    kept = [json.loads(s["json"]) for s in tar_members(filtered / "part_1").values()]
    assert sorted(m["url"] for m in kept) == sorted(m["url"] for m in metas if m["AESTHETIC_SCORE"] >= 5.05)
    assert 0 < len(kept) < len(metas)
    assert pd.read_csv(filtered / "part_1_stats.csv")["num_samples"].sum() == len(kept)


@pytest.mark.timeout(150)
def test_insecure_ssl_patch_tsv_input_files_format(tmp_path, servers):
    """cc12m-style tsv (url/caption columns, as Re-LAION's), files output, --insecure_ssl via its env var: HTTPS
    succeeds. --url_col / --caption_col are left at auto: the lower-case names are found by themselves."""
    http, https = servers
    urls = [https.url("good", i) for i in range(4)] + [https.url("missing", 0), http.url("good", 7)]
    tsv = tmp_path / "cc12m.tsv"
    tsv.write_text("url\tcaption\n" + "".join(f"{u}\tcaption {i}\n" for i, u in enumerate(urls)))
    (tmp_path / "part_5").mkdir()  # a part folder without shards must not break the csv tool
    proc = run(["bash", str(SCRIPT), "2", "--url_list", str(tsv), "--input_format", "tsv",
                "--output_dir", str(tmp_path), "--output_format", "files", *SMALL],
               env={"LAION_INSECURE_SSL": "1"})  # fmt: skip
    assert "certificate verification is DISABLED" in proc.stderr
    status = shard_parquets(tmp_path / "part_2").set_index("url")
    assert all(status.loc[u, "status"] == "success" for u in urls[:4] + urls[5:])
    assert "404" in status.loc[urls[4], "error_message"]  # the patch does not hide real errors
    run([sys.executable, str(CSV_TOOL), "--data_dir", str(tmp_path)])
    annot = pd.read_csv(tmp_path / "part_2.csv")
    assert list(annot.columns) == ["dir", "text"] and len(annot) == 5
    for rel, text in zip(annot["dir"], annot["text"], strict=True):
        path = tmp_path / rel
        assert path.is_file() and rel.startswith("part_2/00000/")
        assert path.with_suffix(".txt").read_text() == text


@pytest.mark.timeout(150)
def test_killed_run_resumes_and_never_counts_a_broken_shard(tmp_path, servers):
    http, _ = servers
    meta, out = tmp_path / "meta", tmp_path / "data"
    meta.mkdir()
    # shard 0: 4 good; shard 1: a stall (keeps the shard open while we kill) + 3 good; shard 2: 2 good
    urls = [http.url("good", i) for i in range(4)] + [http.url("stall", 0)] + [http.url("good", i) for i in range(4, 9)]
    pq.write_table(pa.table(laion_rows(urls)), meta / "part_3.parquet")
    cmd = ["bash", str(SCRIPT), "3", "--metadata_dir", str(meta), "--output_dir", str(out), *SMALL,
           "--thread_count", "1", "--number_sample_per_shard", "4"]  # fmt: skip
    env = {**os.environ, "PYTHON": sys.executable, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out / "part_3"
    try:
        deadline = time.time() + 60
        while not ((part / "00000_stats.json").exists() and (part / "00001.tar").exists()):
            assert time.time() < deadline and proc.poll() is None, "download did not reach shard 1"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher, img2dataset and its spawned workers
        proc.wait()
    assert not (part / "00001_stats.json").exists()
    # the unfinished shard is not counted
    run([sys.executable, str(STATS_TOOL), "--data_dir", str(out)])
    assert list(pd.read_csv(out / "part_3_stats.csv")["file_path"]) == ["part_3/00000.tar"]
    assert run([sys.executable, str(STATS_TOOL), "--data_dir", str(out), "--strict"], check=False).returncode == 2
    # a finished shard whose tar lost its end (stats json kept) must be detected and redone on resume
    tar0 = part / "00000.tar"
    tar0.write_bytes(tar0.read_bytes()[:1500])
    run(cmd)
    run([sys.executable, str(STATS_TOOL), "--data_dir", str(out), "--strict"])
    stats = pd.read_csv(out / "part_3_stats.csv")
    assert list(stats["file_path"]) == ["part_3/00000.tar", "part_3/00001.tar", "part_3/00002.tar"]
    assert list(stats["num_samples"]) == [4, 3, 2]
    assert len(tar_members(part)) == 9


# ---- settings, pass-through and errors (no download) ----

from mindone.errors import ConfigError  # noqa: E402
from mindone.laion import img2dataset_launch as launch  # noqa: E402
from mindone.utils.cli import ONE_LINE_ERRORS  # noqa: E402


@pytest.fixture()
def dry_run(monkeypatch, capsys):
    """Run the launcher in-process with --dry_run; returns the per-part json it prints."""
    laion_download_imgs = load_tool("laion_download_imgs")

    monkeypatch.setattr(laion_download_imgs, "setup_cli_logging", lambda: None)

    def _run(args: list[str], env: dict | None = None) -> list[dict]:
        for key in [k for k in os.environ if k.startswith("LAION_")]:
            monkeypatch.delenv(key)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        assert laion_download_imgs.main(["--dry_run", *args]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    return _run


@pytest.fixture()
def three_parts(tmp_path):
    for i in (1, 2, 3):
        pq.write_table(pa.table({"URL": ["http://x/a.jpg"], "TEXT": ["a"], "similarity": [0.3], "aesthetic": [6.0],
                                 "LANGUAGE": ["en"], "pwatermark": [0.1]}), tmp_path / f"part_{i}.parquet")  # fmt: skip
    return tmp_path


@pytest.mark.timeout(60)
def test_defaults_env_vars_range_and_passthrough(three_parts, dry_run):
    parts = dry_run(["1-3", "--", "--encode_quality", "90", "--extract_exif=false", "--disallowed_header_directives", "noai,noindex"],
                    env={"LAION_METADATA_DIR": str(three_parts), "LAION_OUTPUT_DIR": "/data/out", "LAION_IMAGE_SIZE": "256"})
    assert [p["part"] for p in parts] == [1, 2, 3]
    kw = parts[1]["img2dataset"]
    assert kw["url_list"] == str(three_parts / "part_2.parquet") and kw["output_folder"] == "/data/out/part_2"
    assert kw["image_size"] == 256  # from the environment
    assert (kw["output_format"], kw["resize_mode"], kw["resize_only_if_bigger"], kw["skip_reencode"]) == ("webdataset", "keep_ratio", True, True)
    assert kw["processes_count"] == launch.default_processes() and kw["thread_count"] == launch.default_threads()
    # only the LAION score columns this metadata has, in the documented order
    assert kw["save_additional_columns"] == ["similarity", "pwatermark", "aesthetic", "LANGUAGE"]
    assert kw["incremental_mode"] == "incremental"
    # forwarded img2dataset options, typed from img2dataset.download's signature
    assert kw["encode_quality"] == 90 and kw["extract_exif"] is False and kw["disallowed_header_directives"] == ["noai", "noindex"]
    # a flag wins over its environment variable; "1 2" list form
    parts = dry_run(["1", "2", "--image_size", "384", "--metadata_dir", str(three_parts), "--output_dir", "o"], env={"LAION_IMAGE_SIZE": "256"})
    assert [p["img2dataset"]["image_size"] for p in parts] == [384, 384]


@pytest.mark.timeout(60)
def test_pyspark_kwargs(three_parts, dry_run):
    (p,) = dry_run(["2", "--metadata_dir", str(three_parts), "--output_dir", "o", "--distributor", "pyspark",
                    "--spark_master", "spark://head:7077", "--insecure_ssl", "--", "--subjob_size", "64"])  # fmt: skip
    assert p["spark_master"] == "spark://head:7077" and p["insecure_ssl"] is True
    assert p["img2dataset"]["distributor"] == "pyspark" and p["img2dataset"]["subjob_size"] == 64


@pytest.mark.timeout(60)
def test_bad_part_is_one_clear_line(three_parts):
    for part, message in (("0", "part id 0 is invalid"), ("1-4", "part_4.parquet not found")):
        cmd = ["bash", str(SCRIPT), part, "--metadata_dir", str(three_parts), "--output_dir", str(three_parts / "o")]
        proc = run(cmd, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (three_parts / "o").exists()  # nothing started when any part of the range is missing


@pytest.mark.parametrize(
    "args, message",
    [
        (["x"], "part id 'x' is not a number"),
        (["1", "--", "--image_size", "64"], "--image_size is a launcher option"),
        (["1", "--", "--no_such_option", "1"], "img2dataset has no option --no_such_option"),
        (["1", "--", "--encode_quality", "high"], "cannot read 'high' as int"),
        (["1", "--caption_col", "caption"], "no column 'caption' for --caption_col"),
        (["1", "--save_additional_columns", "punsafe"], "column 'punsafe' is not in the input"),
        (["1", "--spark_master", "local[2]"], "--spark_master needs --distributor pyspark"),
    ],
)
def test_bad_settings_raise_user_errors(three_parts, args, message, monkeypatch):
    laion_download_imgs = load_tool("laion_download_imgs")

    monkeypatch.setattr(laion_download_imgs, "setup_cli_logging", lambda: None)
    with pytest.raises(ONE_LINE_ERRORS, match=message.replace("[", r"\[")):
        common = ["--metadata_dir", str(three_parts), "--output_dir", str(three_parts / "o"), "--dry_run"]
        laion_download_imgs.main(common + args)


def test_help_lists_flags_and_env_vars():
    out = run(["bash", str(SCRIPT), "--help"]).stdout
    for name in ("metadata_dir", "output_dir", "output_format", "image_size", "processes_count", "thread_count",
                 "timeout", "retries", "number_sample_per_shard", "url_col", "caption_col", "save_additional_columns",
                 "distributor", "spark_master", "insecure_ssl"):  # fmt: skip
        assert f"--{name}" in out and f"LAION_{name.upper()}" in out


def test_part_id_forms():
    assert launch.parse_part_ids(["1-3"]) == [1, 2, 3]
    assert launch.parse_part_ids(["1", "2", "3"]) == [1, 2, 3]
    assert launch.parse_part_ids(["5,7", "6-6"]) == [5, 7, 6]
    with pytest.raises(ConfigError):
        launch.parse_part_ids(["3-1"])


def test_auto_extra_columns_are_the_filter_vocabulary_names_of_the_score_columns():
    from mindone.data.filter_vocab import COLUMN_ALIASES

    for column in launch.SAVED_COLUMNS:  # a new alias in the vocabulary is kept without a change here
        assert set(COLUMN_ALIASES[column]) <= set(launch.DEFAULT_EXTRA_COLUMNS), column
    # the names of LAION-5B's own columns, in their documented order
    laion = [c for c in launch.DEFAULT_EXTRA_COLUMNS if c in ("similarity", "hash", "punsafe", "pwatermark",
                                                              "AESTHETIC_SCORE", "aesthetic", "LANGUAGE")]
    assert laion == ["similarity", "hash", "punsafe", "pwatermark", "AESTHETIC_SCORE", "aesthetic", "LANGUAGE"]
    columns = ["url", "caption", "width", "original_width", "similarity", "lang", "aesthetic_score", "status"]
    assert launch.choose_extra_columns("auto", columns, "url", "caption") == ["similarity", "aesthetic_score", "lang"]


def test_cert_patch_is_scoped_and_restored(servers):
    """In-process: only img2dataset's downloader skips verification, only while patched, then restored."""
    import importlib
    import pickle
    import urllib.request

    import img2dataset.downloader as i2d_downloader
    from mindone.laion import cert_patch

    _, https = servers
    url = https.url("good", 1)

    def img2dataset_fetch():
        return i2d_downloader.download_image((0, url), timeout=5, user_agent_token=None, disallowed_header_directives=None)

    assert "CERTIFICATE_VERIFY_FAILED" in img2dataset_fetch()[2]
    with cert_patch._patched_downloader_module():
        key, stream, err = img2dataset_fetch()
        assert err is None and stream.getvalue() == https.image(good_size(1), 1)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(url, timeout=5)  # the rest of the process still verifies
    assert "CERTIFICATE_VERIFY_FAILED" in img2dataset_fetch()[2]
    i2d_main = importlib.import_module("img2dataset.main")
    stock = i2d_main.Downloader
    with cert_patch.insecure_downloads():
        assert i2d_main.Downloader is cert_patch.InsecureDownloader
    assert i2d_main.Downloader is stock
    # spawned workers rebuild the object by importing its class: it must pickle by reference to this module
    assert b"mindone.laion.cert_patch" in pickle.dumps(cert_patch.InsecureDownloader)


def test_resume_refuses_a_different_shard_layout(tmp_path):
    kwargs = {"url_list": "meta/part_1.parquet", "input_format": "parquet", "number_sample_per_shard": 10000,
              "output_format": "webdataset"}  # fmt: skip
    part = tmp_path / "part_1"
    launch.check_resume_settings(part, kwargs, 25000)
    launch.check_resume_settings(part, dict(kwargs), 25000)  # same layout: fine
    with pytest.raises(ConfigError, match="number_sample_per_shard=10000, now 5000"):
        launch.check_resume_settings(part, {**kwargs, "number_sample_per_shard": 5000}, 25000)
    with pytest.raises(ConfigError, match="input_rows=25000, now 26000"):
        launch.check_resume_settings(part, kwargs, 26000)
    assert not list(part.glob("*.json"))  # img2dataset would take any *.json for a finished shard


@pytest.mark.spark
@pytest.mark.timeout(300)
def test_pyspark_distributor_with_the_certificate_patch_in_the_executors(tmp_path, servers):
    """--distributor pyspark on a real local Spark master: the patched downloader travels to the executors,
    so self-signed HTTPS images download there too; a stock run on the same master fails them."""
    http, https = servers
    urls = [https.url("good", i) for i in range(4)] + [http.url("good", 11), http.url("missing", 1)]
    meta = tmp_path / "meta"
    meta.mkdir()
    pq.write_table(pa.table(laion_rows(urls)), meta / "part_1.parquet")
    for name, extra in (("patched", ["--insecure_ssl"]), ("stock", [])):
        out = tmp_path / name
        run(["bash", str(SCRIPT), "1", "--metadata_dir", str(meta), "--output_dir", str(out), *SMALL,
             "--distributor", "pyspark", "--spark_master", "local[1]", "--number_sample_per_shard", "3", *extra],
            timeout=280)
        status = shard_parquets(out / "part_1").set_index("url")
        assert len(status) == len(urls)  # two shards, every row accounted for
        https_ok = [status.loc[u, "status"] == "success" for u in urls[:4]]
        assert all(https_ok) if name == "patched" else not any(https_ok)
        assert status.loc[urls[4], "status"] == "success" and "404" in status.loc[urls[5], "error_message"]
        assert len(tar_members(out / "part_1")) == (5 if name == "patched" else 1)

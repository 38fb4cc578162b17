"""laion_download_imgs.sh --retry_failed against the fault-injecting server (tests/helpers/image_server.py).

A part is downloaded with ``--retries 0`` (so img2dataset's own retry does not heal the flaky routes), then
retried: the server's request counts per URL show what each round fetched. The classifier and the plan
are tested on their own, without a network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mindone.errors import ConfigError
from mindone.laion.retry_failed import DEFAULT_RETRY_ERRORS, RetryPlan, classify, first_free_shard, parse_retry_errors
from mindone.laion.retry_round import publish
from mindone.utils.cli import ONE_LINE_ERRORS
from tests.helpers.image_server import FLAKY_FIRST_ERROR, ImageServer
from tests.helpers.processes import kill_tree
from tests.helpers.tools import load_tool
from tests.test_download_imgs import REPO, SCRIPT, STATS_TOOL, laion_rows, run, shard_parquets

FAST = ["--processes_count", "1", "--thread_count", "8", "--timeout", "2", "--image_size", "64", "--retries", "0"]
# part 1: 19 rows in shards of 8 -> shards 00000..00002
ROUTES = [("good", 6), ("flaky503", 3), ("flaky429", 2), ("flakystall", 2), ("missing", 3), ("error", 2), ("notimage", 1)]
HEALED = {"flaky503", "flaky429", "flakystall"}


def tar_samples(part: Path) -> list[tuple[str, str, dict]]:
    """(tar name, member key, sample json) of every sample of every tar of the part."""
    out = []
    for tar_path in sorted(part.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    out.append((tar_path.name, member.name[: -len(".json")], json.loads(tar.extractfile(member).read())))
    return out


def route_of(url: str) -> str:
    return url.split("/")[3]


@pytest.fixture(scope="module")
def server():
    with ImageServer(stall_seconds=4, slow_seconds=0.6) as srv:
        yield srv


@pytest.fixture(scope="module")
def rounds(tmp_path_factory, server):
    """Part 1: the first download, retry round 1, round 2, a third run retrying only timeouts."""
    root = tmp_path_factory.mktemp("retry")
    meta, out = root / "meta", root / "data"
    meta.mkdir()
    urls = [server.url(route, i) for route, count in ROUTES for i in range(count)]
    pq.write_table(pa.table(laion_rows(urls)), meta / "part_1.parquet")
    common = ["bash", str(SCRIPT), "1", "--output_dir", str(out), *FAST, "--number_sample_per_shard", "8"]
    run([*common, "--metadata_dir", str(meta)])
    part = out / "part_1"
    state = {"part": part, "out": out, "urls": urls, "first_status": shard_parquets(part)}
    run([sys.executable, str(STATS_TOOL), "--data_dir", str(out)])
    state["csv0"] = pd.read_csv(out / "part_1_stats.csv")
    state["hits0"] = {u: server.hit_count(u) for u in urls}
    for n in (1, 2):
        state[f"stdout{n}"] = run([*common, "--retry_failed"]).stdout
        state[f"hits{n}"] = {u: server.hit_count(u) for u in urls}
        state[f"report{n}"] = json.loads((part / "retry_failed" / "report.json").read_text())
        state[f"csv{n}"] = pd.read_csv(out / "part_1_stats.csv")
        state[f"samples{n}"] = tar_samples(part)
    state["stdout3"] = run([*common, "--retry_failed", "--retry_errors", "timeout"]).stdout
    state["hits3"] = {u: server.hit_count(u) for u in urls}
    return state


@pytest.mark.timeout(240)
def test_first_download_has_the_failures_the_server_injects(rounds):
    status = rounds["first_status"].set_index("url")
    assert all(n == 1 for n in rounds["hits0"].values())
    for url in rounds["urls"]:
        route = route_of(url)
        if route == "good":
            assert status.loc[url, "status"] == "success"
        else:
            assert status.loc[url, "status"] != "success"
        if route in FLAKY_FIRST_ERROR:
            assert FLAKY_FIRST_ERROR[route] in status.loc[url, "error_message"], url


@pytest.mark.timeout(240)
def test_round_one_fetches_exactly_the_transient_failures(rounds):
    for url in rounds["urls"]:
        route = route_of(url)
        # 5xx / 429 / timeouts fetched once more (the 500s fail again); successes, 404s, decode errors never
        expected = 2 if route in HEALED | {"error"} else 1
        assert rounds["hits1"][url] == expected, (url, rounds["hits1"][url])
    report = rounds["report1"]
    assert report["round"] == 1 and report["selected"] == 9 and report["healed"] == 7
    assert report["retry_errors"] == sorted(DEFAULT_RETRY_ERRORS)
    nonzero = lambda counts: {k: v for k, v in counts.items() if v}  # noqa: E731
    assert nonzero(report["before"]) == {"success": 6, "http_5xx": 5, "http_429": 2, "timeout": 2, "http_404": 3, "decode": 1}
    assert nonzero(report["after"]) == {"success": 13, "http_5xx": 2, "http_404": 3, "decode": 1}
    # the printed table says the same
    lines = {line.split()[0]: line.split()[1:] for line in rounds["stdout1"].splitlines() if line[:1].isalpha()}
    assert lines["success"] == ["-", "6", "13"] and lines["http_5xx"] == ["yes", "5", "2"]
    assert lines["http_404"] == ["no", "3", "3"] and lines["timeout"] == ["yes", "2", "0"]


@pytest.mark.timeout(240)
def test_new_shards_follow_the_existing_ones_with_unique_keys(rounds):
    part = rounds["part"]
    assert rounds["report1"]["shards"] == ["00003", "00004"] and rounds["report2"]["shards"] == ["00005"]
    assert sorted(p.name for p in part.glob("*_stats.json")) == [f"0000{i}_stats.json" for i in range(6)]
    samples = rounds["samples2"]
    keys = [key for _, key, _ in samples]
    assert len(keys) == len(set(keys)) == 13
    assert all(meta["key"] == key for _, key, meta in samples)  # the json key is the member name
    parquet_keys = shard_parquets(part)["key"]
    assert parquet_keys.is_unique and set(keys) <= set(parquet_keys)
    by_url = Counter(meta["url"] for _, _, meta in samples)
    assert max(by_url.values()) == 1
    healed = {u for u in rounds["urls"] if route_of(u) in HEALED}
    assert {meta["url"] for tar, _, meta in samples if tar in ("00003.tar", "00004.tar")} == healed
    # a retried sample says which row it is: the key of that row in the first download
    first_keys = rounds["first_status"].set_index("url")["key"]
    assert all(meta["retry_of"] == first_keys[meta["url"]] for tar, _, meta in samples if tar >= "00003")
    assert not (part / "retry_failed" / "round_1").exists() and not (part / "retry_failed" / "round_1.parquet").exists()


@pytest.mark.timeout(240)
def test_stats_csv_counts_rise_by_the_healed_rows(rounds):
    csv0, csv1 = rounds["csv0"], rounds["csv1"]
    assert csv0["num_samples"].sum() == 6 and csv1["num_samples"].sum() == 6 + 7
    assert list(csv1["file_path"]) == [f"part_1/0000{i}.tar" for i in range(5)]
    assert list(csv1["num_samples"][:3]) == list(csv0["num_samples"])


@pytest.mark.timeout(240)
def test_later_rounds_request_only_what_still_fails(rounds):
    for url in rounds["urls"]:
        again = route_of(url) == "error"  # the 500s fail every time: retried again; nothing healed is
        assert rounds["hits2"][url] == rounds["hits1"][url] + again, url
    report = rounds["report2"]
    assert report["round"] == 2 and report["selected"] == 2 and report["healed"] == 0
    assert report["before"] == report["after"] == rounds["report1"]["after"]
    # --retry_errors timeout: nothing left of that class: no request, no round, no shard
    assert rounds["hits3"] == rounds["hits2"]
    assert "part 1: nothing to retry (timeout)" in rounds["stdout3"]
    assert not (rounds["part"] / "00006_stats.json").exists()
    ledger = json.loads((rounds["part"] / "retry_failed" / "ledger.json").read_text())
    assert [(r["round"], r["state"], r["first_shard"], r["rows"]) for r in ledger["rounds"]] == [(1, "done", 3, 9), (2, "done", 5, 2)]


@pytest.mark.timeout(240)
def test_dry_run_counts_and_the_retry_errors_override(rounds, monkeypatch, capsys):
    tool = load_tool("laion_download_imgs")
    monkeypatch.setattr(tool, "setup_cli_logging", lambda: None)
    for key in [k for k in os.environ if k.startswith("LAION_")]:
        monkeypatch.delenv(key)
    capsys.readouterr()
    args = ["1", "--output_dir", str(rounds["out"]), "--retry_failed", "--dry_run"]
    assert tool.main(args) == 0 and tool.main([*args, "--retry_errors", "default,http_404,decode"]) == 0
    default, wider = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert default["selected"] == 2 and wider["selected"] == 2 + 3 + 1 and default["rows"] == 19


@pytest.mark.timeout(240)
def test_another_shard_layout_is_refused_before_anything_is_written(rounds, monkeypatch):
    tool = load_tool("laion_download_imgs")
    monkeypatch.setattr(tool, "setup_cli_logging", lambda: None)
    ledger = rounds["part"] / "retry_failed" / "ledger.json"
    before = ledger.read_text()
    with pytest.raises(ONE_LINE_ERRORS, match="was downloaded with number_sample_per_shard=8, now 4"):
        tool.main(["1", "--output_dir", str(rounds["out"]), "--retry_failed", "--retry_errors", "all",
                   "--number_sample_per_shard", "4"])
    assert ledger.read_text() == before and not (rounds["part"] / "retry_failed" / "round_3.parquet").exists()


@pytest.mark.timeout(240)
def test_a_killed_round_resumes_without_duplicates(tmp_path, server):
    meta, out = tmp_path / "meta", tmp_path / "data"
    meta.mkdir()
    urls = [server.url("good", 50 + i) for i in range(2)] + [server.url("flakyslow", i) for i in range(6)]
    pq.write_table(pa.table(laion_rows(urls)), meta / "part_2.parquet")
    common = ["bash", str(SCRIPT), "2", "--output_dir", str(out), *FAST, "--number_sample_per_shard", "2"]
    run([*common, "--metadata_dir", str(meta)])
    part, staging = out / "part_2", out / "part_2" / "retry_failed" / "round_1"
    cmd = [*common, "--retry_failed", "--thread_count", "1"]
    env = {**os.environ, "PYTHON": sys.executable, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not ((staging / "00004_stats.json").exists() and (staging / "00005.tar").exists()):
            assert time.time() < deadline and proc.poll() is None, "the round did not reach its second shard"
            time.sleep(0.05)
    finally:
        kill_tree(proc.pid)  # the launcher, img2dataset's pool and its logger
        proc.wait()
    assert not (part / "00004_stats.json").exists()  # nothing published from an unfinished round
    done_urls = list(pd.read_parquet(staging / "00004.parquet")["url"])
    hits_at_kill = {u: server.hit_count(u) for u in urls}
    stdout = run(cmd).stdout
    assert "retry round 1: 6 rows retried into shards 00004, 00005, 00006, 6 downloaded" in stdout
    for url in done_urls:  # the finished shard of the round is not downloaded again
        assert server.hit_count(url) == hits_at_kill[url] == 2
    assert all(server.hit_count(u) == 1 for u in urls[:2])
    samples = tar_samples(part)
    assert len(samples) == 8 and len({k for _, k, _ in samples}) == 8
    assert sorted(meta["url"] for _, _, meta in samples) == sorted(urls)
    assert pd.read_csv(out / "part_2_stats.csv")["num_samples"].sum() == 8
    assert not staging.exists()
    # the plain download command afterwards finds the part complete: no request, the retried shards kept
    hits = {u: server.hit_count(u) for u in urls}
    run([*common, "--metadata_dir", str(meta)])
    assert {u: server.hit_count(u) for u in urls} == hits and len(tar_samples(part)) == 8


# ---- without a download ----

@pytest.mark.parametrize(("status", "message", "expected"), [
    # messages img2dataset 1.47 recorded for the routes of tests/helpers/image_server.py and for urllib errors
    ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
    ("failed_to_download", "HTTP Error 403: Forbidden", "http_403"),
    ("failed_to_download", "HTTP Error 410: Gone", "http_410"),
    ("failed_to_download", "HTTP Error 451: Unavailable For Legal Reasons", "http_4xx"),
    ("failed_to_download", "HTTP Error 429: Too Many Requests", "http_429"),
    ("failed_to_download", "HTTP Error 503: Service Unavailable", "http_5xx"),
    ("failed_to_download", "HTTP Error 500: Internal Server Error", "http_5xx"),
    ("failed_to_download", "HTTP Error 408: Request Timeout", "timeout"),
    ("failed_to_download", "timed out", "timeout"),
    ("failed_to_download", "<urlopen error timed out>", "timeout"),
    ("failed_to_download", "_ssl.c:990: The handshake operation timed out", "timeout"),
    ("failed_to_download", "IncompleteRead(10 bytes read, 90 more expected)", "connection"),
    ("failed_to_download", "Remote end closed connection without response", "connection"),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection"),
    ("failed_to_download", "[Errno 104] Connection reset by peer", "connection"),
    ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>", "dns"),
    ("failed_to_download", "<urlopen error [Errno -3] Temporary failure in name resolution>", "dns"),
    ("failed_to_download", "<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
                           "certificate (_ssl.c:1006)>", "ssl"),
    ("failed_to_download", "<urlopen error [SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)>", "ssl"),
    ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", "disallowed"),
    ("failed_to_download", "hash mismatch", "hash_mismatch"),
    ("failed_to_download", "<urlopen error no host given>", "invalid_url"),
    ("failed_to_download", "Invalid IPv6 URL", "invalid_url"),
    ("failed_to_download", "<urlopen error [Errno 2] No such file or directory: '/nonexistent'>", "invalid_url"),
    ("failed_to_download", "something img2dataset never said", "other"),
    ("failed_to_resize", "Image decoding error", "decode"),
    ("failed_to_resize", "image area too large", "resize"),
    ("failed_to_resize", "image too small", "resize"),
    ("success", None, "success"),
])  # fmt: skip
def test_classifier_on_real_img2dataset_messages(status, message, expected):
    assert classify(status, message) == expected


def test_retry_errors_default_expansion_and_unknown_names():
    assert set(DEFAULT_RETRY_ERRORS) == {"timeout", "http_5xx", "http_429", "connection", "dns", "ssl"}
    assert parse_retry_errors("default,resize") == {*DEFAULT_RETRY_ERRORS, "resize"}
    assert "http_404" in parse_retry_errors("all") and "success" not in parse_retry_errors("all")
    with pytest.raises(ConfigError, match="unknown error class 'http_5XX'"):
        parse_retry_errors("timeout,http_5XX")


def test_plan_takes_each_rows_latest_record():
    records = pd.DataFrame([
        ("k1", 0, "failed_to_download", "HTTP Error 503: Service Unavailable"),  # healed in round 1
        ("k1", 3, "success", None),
        ("k2", 0, "failed_to_download", "timed out"),  # failed again in round 1: a candidate again
        ("k2", 3, "failed_to_download", "HTTP Error 502: Bad Gateway"),
        ("k3", 1, "failed_to_download", "HTTP Error 503: Service Unavailable"),  # now gone for good
        ("k3", 4, "failed_to_download", "HTTP Error 404: Not Found"),
        ("k4", 1, "success", None),
        ("k5", 2, "failed_to_download", "HTTP Error 404: Not Found"),
    ], columns=["identity", "shard", "status", "error_message"])  # fmt: skip
    plan = RetryPlan.from_records(records.sample(frac=1, random_state=3), DEFAULT_RETRY_ERRORS)
    assert plan.candidates == ["k2"] and plan.rows == 5
    counts = plan.counts()
    assert (counts["success"], counts["http_5xx"], counts["http_404"], counts["timeout"]) == (2, 1, 2, 0)
    assert RetryPlan.from_records(records, {"http_404"}).candidates == ["k3", "k5"]


def test_first_free_shard_and_publish_finishes_an_interrupted_move(tmp_path):
    assert first_free_shard(["00000", "00001", "retry_failed", ""], expected=None) == 2
    assert first_free_shard(["00000"], expected=4) == 4  # ids the first download still owes are not taken
    staging, part = tmp_path / "round_1", tmp_path / "part"
    staging.mkdir()
    part.mkdir()
    for name in ("00004.tar", "00004.parquet", "00004_stats.json", "00005.tar", "00005.parquet", "00005_stats.json"):
        (staging / name).write_text(name)
    os.replace(staging / "00004.tar", part / "00004.tar")  # killed after the first move
    publish(staging, part, ["00004", "00005"])
    assert sorted(p.name for p in part.iterdir()) == sorted(["00004.tar", "00004.parquet", "00004_stats.json",
                                                             "00005.tar", "00005.parquet", "00005_stats.json"])
    assert not list(staging.iterdir())


def test_missing_part_folder_or_shard_parquet_is_one_line(tmp_path, monkeypatch):
    tool = load_tool("laion_download_imgs")
    monkeypatch.setattr(tool, "setup_cli_logging", lambda: None)
    with pytest.raises(ONE_LINE_ERRORS, match=f"{tmp_path / 'part_3'}: no such folder"):
        tool.main(["3", "--output_dir", str(tmp_path), "--retry_failed"])
    (tmp_path / "part_4").mkdir()
    (tmp_path / "part_4" / "00000.tar").write_bytes(b"")
    with pytest.raises(ONE_LINE_ERRORS, match=f"{tmp_path / 'part_4'}: no finished shard with a status parquet"):
        tool.main(["4", "--output_dir", str(tmp_path), "--retry_failed"])
    proc = run(["bash", str(SCRIPT), "3", "--output_dir", str(tmp_path), "--retry_failed"], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"laion_download_imgs.py: error: {tmp_path / 'part_3'}: no such folder (download the part first)"]
    help_text = run(["bash", str(SCRIPT), "--help"]).stdout
    assert "LAION_RETRY_FAILED" in help_text and "LAION_RETRY_ERRORS" in help_text

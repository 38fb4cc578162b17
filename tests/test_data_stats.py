"""laion_gen_data_stats.py and the header-only tar scan it relies on.

Shards are written here the way img2dataset writes them (webdataset TarWriter, then ``_stats.json``); the
counts are checked against a full read of each tar with ``tarfile``, the slow sure way.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from mindone.data.filters import SampleFilters
from mindone.laion.sample_filters import filters_from_args, passes
from mindone.laion.shard_state import prepare_resume
from mindone.laion.tar_stats import scan_tar

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "laion_data_utils" / "laion_gen_data_stats.py"


def write_shard(part_dir: Path, shard: int, samples: list[dict], stats: bool = True, successes: int | None = None) -> Path:
    """A webdataset shard like img2dataset's: ``{key}.jpg/.txt/.json``; ``samples`` items may omit jpg or txt."""
    import webdataset as wds

    part_dir.mkdir(parents=True, exist_ok=True)
    path = part_dir / f"{shard:05d}.tar"
    with open(path, "wb") as fh, wds.TarWriter(fh) as sink:
        for i, s in enumerate(samples):
            key = f"{shard:05d}{i:04d}"
            record = {"__key__": key, "json": json.dumps({"key": key, **s.get("meta", {})})}
            if s.get("jpg", True):
                record["jpg"] = b"\xff\xd8" + bytes(s.get("nbytes", 3000))
            if "txt" in s:
                record["txt"] = s["txt"]
            sink.write(record)
    if stats:
        n_images = sum(1 for s in samples if s.get("jpg", True))
        (part_dir / f"{shard:05d}_stats.json").write_text(
            json.dumps({"count": len(samples), "successes": n_images if successes is None else successes})
        )
    return path


def tarfile_count(path: Path) -> int:
    """Complete samples by reading every member with tarfile (the baseline truth)."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return sum(1 for v in members.values() if "jpg" in v and "txt" in v)


def run_tool(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def good(n: int, **meta) -> list[dict]:
    return [{"txt": f"caption {i}", "meta": meta} for i in range(n)]


def test_scan_counts_equal_full_read(tmp_path):
    samples = good(5) + [{"jpg": False, "txt": "caption only"}, {"txt": None}, {"txt": ""}, {"txt": "ok", "nbytes": 70_000}]
    samples[6] = {"jpg": True}  # image without caption
    path = write_shard(tmp_path, 0, samples)
    scan = scan_tar(path)
    assert scan.ok and scan.num_samples == tarfile_count(path) == 7  # the empty caption counts: the loader indexes it
    assert (scan.num_images, scan.missing_caption, scan.empty_caption, scan.missing_image) == (8, 1, 1, 1)


def test_long_member_names_and_pax_headers(tmp_path):
    path = tmp_path / "long.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3):
            for ext, data in (("jpg", b"x" * 1000), ("txt", "légende ünïcode".encode())):
                info = tarfile.TarInfo(f"{'d' * 120}/{'k' * 110}{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    scan = scan_tar(path)
    assert scan.ok and scan.num_samples == 3


@pytest.mark.parametrize("cut", ["mid_header", "mid_data", "at_member_boundary", "no_end_marker"])
def test_truncated_tar_is_detected(tmp_path, cut):
    path = write_shard(tmp_path, 0, good(6))
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    last = members[-1]
    end_of_last = last.offset_data + (last.size + 511) // 512 * 512
    offsets = {
        "mid_header": members[4].offset + 100,
        "mid_data": members[4].offset_data + 10,
        "at_member_boundary": members[6].offset,  # clean cut between two members: only the end marker is missing
        "no_end_marker": end_of_last,
    }
    path.write_bytes(data[: offsets[cut]])
    scan = scan_tar(path)
    assert not scan.ok and "truncated" in scan.error


def test_cli_writes_stats_and_leaves_out_bad_shards(tmp_path):
    part1, part2 = tmp_path / "part_1", tmp_path / "part_2"
    write_shard(part1, 0, good(7))
    write_shard(part1, 1, good(4) + [{"jpg": True}])  # one image without caption: 4 samples
    write_shard(part1, 2, good(5), stats=False)  # unfinished: no _stats.json
    bad = write_shard(part1, 3, good(5))
    bad.write_bytes(bad.read_bytes()[:9000])  # truncated after img2dataset reported it done
    write_shard(part1, 4, good(5), successes=9)  # disagrees with its _stats.json
    write_shard(part2, 0, good(3))
    proc = run_tool("--data_dir", str(tmp_path), "--all_stats")
    for shard in ("00002.tar: no readable", "00003.tar: unreadable tar: truncated", "00004.tar: holds 5 images but _stats.json reports 9"):
        assert f"part_1/{shard}" in proc.stderr
    stats1 = pd.read_csv(tmp_path / "part_1_stats.csv")
    assert list(stats1.itertuples(index=False, name=None)) == [("part_1/00000.tar", 7), ("part_1/00001.tar", 4)]
    for rel, n in stats1.itertuples(index=False, name=None):
        assert n == tarfile_count(tmp_path / rel)
    assert list(pd.read_csv(tmp_path / "part_2_stats.csv")["file_path"]) == ["part_2/00000.tar"]
    assert pd.read_csv(tmp_path / "all_stats.csv")["num_samples"].tolist() == [7, 4, 3]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    # --strict: the same problems are fatal, one line; the bad part gets no csv, and its earlier one (listing
    # shards the scan rejects now or may reject) is removed rather than left for a loader to read
    proc = run_tool("--data_dir", str(tmp_path), "--strict", "--all_stats", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("laion_gen_data_stats.py: error: 3 shard(s) left out")
    assert "no stats csv for part(s) 1 (removed the earlier" in last and "part_1_stats.csv" in last and "all_stats.csv" in last
    assert not (tmp_path / "part_1_stats.csv").exists() and not (tmp_path / "all_stats.csv").exists()
    assert list(pd.read_csv(tmp_path / "part_2_stats.csv")["file_path"]) == ["part_2/00000.tar"]  # clean part: written
    proc = run_tool("--data_dir", str(tmp_path), "--strict", check=False)
    assert proc.returncode == 2 and "no stats csv for part(s) 1 (none existed)" in proc.stderr.strip().splitlines()[-1]


def test_part_that_lost_its_good_shards_gets_a_csv_listing_none(tmp_path):
    """The csv reflects the current scan: a part with no good shard left must not keep its old list."""
    from mindone.data.annotations import read_shard_list, resolve_annotation_files
    from mindone.errors import DataError

    shards = [write_shard(tmp_path / "part_1", i, good(4)) for i in range(2)]
    write_shard(tmp_path / "part_2", 0, good(3))
    run_tool("--data_dir", str(tmp_path))
    assert pd.read_csv(tmp_path / "part_1_stats.csv")["num_samples"].tolist() == [4, 4]
    for shard in shards:  # both shards go bad after the first scan
        shard.write_bytes(shard.read_bytes()[:2000])
    proc = run_tool("--data_dir", str(tmp_path))
    assert "part 1: no complete tar shard" in proc.stderr
    stats1 = pd.read_csv(tmp_path / "part_1_stats.csv")
    assert list(stats1.columns) == ["file_path", "num_samples"] and len(stats1) == 0  # header only
    # the loader skips the empty part, and stops with one line when it is all there is
    listed = read_shard_list(resolve_annotation_files(tmp_path, "webdataset"))
    assert listed.urls == [str((tmp_path / "part_2" / "00000.tar").resolve())] and listed.num_samples == 3
    with pytest.raises(DataError, match="no shard with samples"):
        read_shard_list(resolve_annotation_files(tmp_path, "webdataset", parts=[1]))
    assert not list(tmp_path.glob(".*.tmp"))


def test_filtered_csv_lists_only_this_scans_shards(tmp_path):
    data, out = tmp_path / "data", tmp_path / "filtered"
    write_shard(data / "part_1", 0, good(4, AESTHETIC_SCORE=6.0))
    second = write_shard(data / "part_1", 1, good(3, AESTHETIC_SCORE=6.0))
    flags = ("--data_dir", str(data), "--min_aesthetic", "5", "--filtered_output_dir", str(out))
    run_tool(*flags)
    assert pd.read_csv(out / "part_1_stats.csv")["file_path"].tolist() == ["part_1/00000.tar", "part_1/00001.tar"]
    second.write_bytes(second.read_bytes()[:2000])  # the source shard goes bad: its old filtered copy is stale
    run_tool(*flags)
    assert pd.read_csv(out / "part_1_stats.csv")["file_path"].tolist() == ["part_1/00000.tar"]
    for shard in (data / "part_1").glob("*.tar"):
        shard.unlink()
    run_tool(*flags)
    assert len(pd.read_csv(out / "part_1_stats.csv")) == 0 and len(pd.read_csv(data / "part_1_stats.csv")) == 0


def test_bad_data_dir_is_one_line(tmp_path):
    proc = run_tool("--data_dir", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "is not a folder" in proc.stderr


def test_missing_part_is_one_line_naming_it(tmp_path):
    write_shard(tmp_path / "part_1", 0, good(2))
    proc = run_tool("--data_dir", str(tmp_path), "--parts", "1", "99", "7", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and f"--parts: no folder part_99, part_7 in {tmp_path}" in lines[0]
    assert not (tmp_path / "part_1_stats.csv").exists()


def test_post_download_filters_write_filtered_shards(tmp_path):
    samples = []
    for i in range(12):
        meta = {"original_width": 300 + 50 * i, "original_height": 600, "similarity": 0.2 + 0.01 * i,
                "AESTHETIC_SCORE": 4.0 + 0.2 * i, "pwatermark": 0.05 * i}  # fmt: skip
        samples.append({"txt": f"c{i}", "meta": meta})
    samples[3]["meta"] = {}  # no scores at all: unjudged, passes (same rule as the training loader)
    write_shard(tmp_path / "data" / "part_1", 0, samples)
    write_shard(tmp_path / "data" / "part_1", 1, samples[:4])
    flt = SampleFilters(min_width=500, min_aesthetic=5.0, max_pwatermark=0.5)  # what the loader would apply
    expected = [f"c{i}" for i, s in enumerate(samples) if passes(flt, {"key": "k", **s["meta"]})]
    # by hand: i>=4 for width (300+50i>=500), i>=5 for aesthetic, i<=10 for watermark, plus the unjudged one
    assert expected == ["c3"] + [f"c{i}" for i in range(5, 11)]
    data, out = tmp_path / "data", tmp_path / "filtered"
    proc = run_tool("--data_dir", str(data), "--min_width", "500", "--min_aesthetic", "5.0", "--max_pwatermark", "0.5",
                    "--filtered_output_dir", str(out), "--all_stats")  # fmt: skip
    assert pd.read_csv(data / "part_1_stats.csv")["num_samples"].tolist() == [12, 4]  # the source counts stay whole
    stats = pd.read_csv(out / "part_1_stats.csv")
    assert list(stats.itertuples(index=False, name=None)) == [("part_1/00000.tar", len(expected)), ("part_1/00001.tar", 1)]
    with tarfile.open(out / "part_1" / "00000.tar") as tar:
        captions = [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    assert captions == expected
    assert pd.read_csv(out / "all_stats.csv")["num_samples"].sum() == len(expected) + 1
    assert "filtered_min_width" in proc.stderr
    # filters without an output folder: refused with one line rather than writing counts the tars do not match
    proc = run_tool("--data_dir", str(data), "--min_aesthetic", "5", check=False)
    assert proc.returncode == 2 and "need --filtered_output_dir" in proc.stderr


def test_filter_flags_build_the_loader_filter():
    from mindone.laion.sample_filters import FILTER_OPTIONS
    from mindone.utils.config import build_parser

    parser = build_parser(FILTER_OPTIONS, "filters")
    flt = filters_from_args(parser.parse_args(["--min_size", "512", "--max_punsafe", "0.98"]))
    assert flt == SampleFilters(min_size=512, max_punsafe=0.98)
    assert passes(flt, {"original_width": 600, "original_height": 512, "punsafe": 0.5})
    assert not passes(flt, {"original_width": 600, "original_height": 500})
    assert not filters_from_args(parser.parse_args([])).active


def test_prepare_resume_removes_partial_and_bad_shards(tmp_path):
    part = tmp_path / "part_1"
    write_shard(part, 0, good(3))
    write_shard(part, 1, good(3), stats=False)  # killed mid-shard
    (part / "00001.parquet").write_bytes(b"partial")
    bad = write_shard(part, 2, good(3))
    bad.write_bytes(bad.read_bytes()[:700])
    report = prepare_resume(part, "webdataset")
    assert report.done == 1 and report.invalidated == ["00002"] and sorted(report.partial_removed) == ["00001"]
    assert sorted(p.name for p in part.iterdir()) == ["00000.tar", "00000_stats.json"]


def test_drop_list_writes_filtered_shards(tmp_path):
    samples = [{"txt": f"c{i}", "meta": {}} for i in range(5)]
    write_shard(tmp_path / "data" / "part_1", 0, samples)
    write_shard(tmp_path / "data" / "part_2", 0, samples)
    keys = sorted(m.name.split(".")[0] for m in tarfile.open(tmp_path / "data" / "part_1" / "00000.tar") if m.name.endswith(".txt"))
    drop = tmp_path / "drop.txt"
    drop.write_text(f"part_1/00000/{keys[1]}\npart_1/00000/{keys[3]}\n")
    out = tmp_path / "filtered"
    proc = run_tool("--data_dir", str(tmp_path / "data"), "--drop_list", str(drop), "--filtered_output_dir", str(out))
    assert pd.read_csv(out / "part_1_stats.csv")["num_samples"].tolist() == [3]
    assert pd.read_csv(out / "part_2_stats.csv")["num_samples"].tolist() == [5]  # same keys, other part: kept
    assert "filtered_drop_list" in proc.stderr

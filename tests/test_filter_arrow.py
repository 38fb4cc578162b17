"""End-to-end tests of laion_filter_metadata.py with the embedded (arrow) engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mindone.errors import ConfigError
from mindone.laion.synthetic_metadata import write_synthetic_metadata
from mindone.utils.cli import ONE_LINE_ERRORS
from tests.helpers.metadata import (FILTER_CLI, canonical, make_variant_inputs, read_dir, reference_filter,
                                   run_cli, run_filter_main)
from tests.helpers.tools import load_tool

cli = load_tool("laion_filter_metadata")

ROWS = 4000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return make_variant_inputs(tmp_path_factory.mktemp("meta"), rows=ROWS)


def run(*args: str) -> dict:
    return run_filter_main(cli, *args)


def test_seed_001_command_as_written(inputs, tmp_path):
    data = inputs["improved_aesthetics_4.5plus"]
    out = tmp_path / "laion_2b_en_filtered"
    proc = run_cli(FILTER_CLI, "--data_dir", str(data), "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr
    src = read_dir(data)
    expected = reference_filter(src, "improved_aesthetics_4.5plus").reset_index(drop=True)
    got = read_dir(out, "part_*.parquet")
    # no shuffle: input order kept, every input column kept, same values
    pd.testing.assert_frame_equal(got, expected)
    assert sorted(p.name for p in out.iterdir()) == ["filter_report.json", "part_1.parquet", "part_2.parquet",
                                                      "part_3.parquet"]
    report = json.loads((out / "filter_report.json").read_text())
    assert [f["rows_in"] for f in report["files"]] == [ROWS] * 3
    assert report["rows_out"] == len(expected) == sum(p["rows"] for p in report["parts"])
    sizes = [p["rows"] for p in report["parts"]]
    assert max(sizes) - min(sizes) <= 1
    # first-failing-condition attribution, recomputed in pandas
    w, h = src.WIDTH.astype(float), src.HEIGHT.astype(float)
    alive = pd.Series(True, index=src.index)
    exp_removed = {}
    for name, ok in (("width>=512", w >= 512), ("height>=512", h >= 512),
                     ("punsafe<=0.98", src.punsafe.astype(float) <= 0.98),
                     ("aesthetic>=4.5", src.AESTHETIC_SCORE.astype(float) >= 4.5)):
        exp_removed[name] = int((alive & ~ok).sum())
        assert report["failed_by_condition"][name] == int((~ok).sum())
        alive &= ok
    assert report["removed_by_condition"] == exp_removed
    assert sum(exp_removed.values()) + report["rows_after_conditions"] == report["rows_in"]


@pytest.mark.parametrize("variant", ["laion-art", "laion2B-en-joined", "laion-high-resolution"])
def test_other_variants_and_missing_column(inputs, tmp_path, variant):
    data = inputs[variant]
    out = tmp_path / "out"
    if variant != "laion-art":  # no aesthetic column: one clear line, unless told to skip
        proc = run_cli(FILTER_CLI, "--data_dir", str(data), "--output_dir", str(out))
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "AESTHETIC_SCORE/aesthetic" in lines[0] and f"{variant}_1.parquet" in lines[0]
        assert not out.exists()
        report = run("--data_dir", str(data), "--output_dir", str(out), "--skip_missing_columns")
        assert report["skipped_conditions"] == {"aesthetic>=4.5": [f"{variant}_{i}.parquet" for i in (1, 2, 3)]}
    else:
        report = run("--data_dir", str(data), "--output_dir", str(out))
    expected = reference_filter(read_dir(data), variant).reset_index(drop=True)
    pd.testing.assert_frame_equal(read_dir(out, "part_*.parquet"), expected, check_dtype=False)
    assert report["rows_out"] == len(expected)


def test_optional_conditions_from_yaml_with_flag_override(inputs, tmp_path):
    data = inputs["laion-art"]
    cfg = tmp_path / "filter.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(data), "max_pwatermark": 0.5, "language": "en,de",
                                   "min_similarity": 0.3, "min_caption_length": 5, "max_caption_length": 80,
                                   "min_width": 300}))
    out = tmp_path / "out"
    report = run("--config", str(cfg), "--output_dir", str(out), "--min_width", "256", "--num_parts", "2")
    src = read_dir(data)
    f = lambda c: src[c].astype(float)  # noqa: E731
    n = src.TEXT.str.len()
    keep = ((f("WIDTH") >= 256) & (f("HEIGHT") >= 512) & (f("punsafe") <= 0.98) & (f("aesthetic") >= 4.5)
            & (f("pwatermark") <= 0.5) & (f("similarity") >= 0.3) & src.LANGUAGE.isin(["en", "de"])
            & (n >= 5) & (n <= 80))
    expected = src[keep.fillna(False).astype(bool)].reset_index(drop=True)
    assert len(expected) > 20
    pd.testing.assert_frame_equal(read_dir(out, "part_*.parquet"), expected, check_dtype=False)
    assert report["conditions"][0] == "width>=256" and len(report["parts"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_widht: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'min_widht'"):
        cli.main(["--config", str(bad), "--data_dir", str(data), "--output_dir", str(tmp_path / "o2")])
    bad.write_text("engine: sparky\n")
    with pytest.raises(ConfigError, match="key 'engine': 'sparky' is not one of arrow, spark"):
        cli.main(["--config", str(bad), "--data_dir", str(data), "--output_dir", str(tmp_path / "o2")])


@pytest.mark.parametrize("key,columns", [("url", ["URL"]), ("url_text", ["URL", "TEXT"]), ("hash", ["hash"])])
def test_dedup_keeps_first_occurrence(inputs, tmp_path, key, columns):
    data = inputs["improved_aesthetics_4.5plus"]
    out = tmp_path / "out"
    report = run("--data_dir", str(data), "--output_dir", str(out), "--dedup", key, "--shuffle_buckets", "3")
    filtered = reference_filter(read_dir(data), "improved_aesthetics_4.5plus")
    has_null = filtered[columns].isna().any(axis=1)
    expected = pd.concat([filtered[~has_null].drop_duplicates(subset=columns, keep="first"), filtered[has_null]])
    got = read_dir(out, "part_*.parquet")
    assert report["dedup_removed"] == len(filtered) - len(expected) > 0
    assert canonical(got) == canonical(expected)
    assert report["buckets"] == 3


def test_global_shuffle_is_a_seeded_permutation(inputs, tmp_path):
    data = inputs["improved_aesthetics_4.5plus"]
    plain = reference_filter(read_dir(data), "improved_aesthetics_4.5plus").reset_index(drop=True)
    outs = {}
    scratch = tmp_path / "scratch"
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        report = run("--data_dir", str(data), "--output_dir", str(tmp_path / name), "--shuffle", "--seed",
                     str(seed), "--shuffle_buckets", "4", "--rows_per_part", "1000", "--tmp_dir", str(scratch))
        outs[name] = read_dir(tmp_path / name, "part_*.parquet")
        assert [p["rows"] for p in report["parts"]][:-1] == [1000] * (len(report["parts"]) - 1)
    assert canonical(outs["a"]) == canonical(plain)
    assert list(scratch.iterdir()) == []  # bucket files removed
    pd.testing.assert_frame_equal(outs["a"], outs["b"])  # same seed, same order
    assert not outs["a"]["URL"].equals(outs["c"]["URL"])  # other seed, other order
    assert not outs["a"]["URL"].equals(plain["URL"])
    # the first part mixes rows from every input file
    src = pd.concat([pq.read_table(f).to_pandas().assign(src=i) for i, f in enumerate(sorted(data.iterdir()))])
    key = ["URL", "TEXT", "hash", "__index_level_0__"]
    first = outs["a"].iloc[:1000][key].merge(src[key + ["src"]].drop_duplicates(key), on=key)
    assert set(first["src"]) == {0, 1, 2}


def test_existing_output_refused_and_overwrite(inputs, tmp_path):
    data = inputs["laion-art"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = run_cli(FILTER_CLI, "--data_dir", str(data), "--output_dir", str(out))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "precious"
    run("--data_dir", str(data), "--output_dir", str(out), "--overwrite")
    assert not (out / "keep.txt").exists() and (out / "part_1.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging dir left behind
    with pytest.raises(ONE_LINE_ERRORS, match="overlaps the input"):
        cli.main(["--data_dir", str(data), "--output_dir", str(data / "sub"), "--no_progress"])


def _corrupt_middle(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[100:len(raw) // 2] = b"\x17" * (len(raw) // 2 - 100)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", ["garbage", "truncated", "corrupt_pages", "wrong_type", "empty_dir"])
def test_bad_input_is_one_line_and_writes_nothing(inputs, tmp_path, case):
    data = tmp_path / "in"
    data.mkdir()
    good = inputs["improved_aesthetics_4.5plus"] / "improved_aesthetics_4.5plus_1.parquet"
    if case != "empty_dir":
        (data / "a_1.parquet").write_bytes(good.read_bytes())
    bad = data / "b_2.parquet"
    if case == "garbage":
        bad.write_text("URL,TEXT\nhttp://x,y\n")
    elif case == "truncated":
        bad.write_bytes(good.read_bytes()[:-5000])
    elif case == "corrupt_pages":
        bad.write_bytes(good.read_bytes())
        _corrupt_middle(bad)
    elif case == "wrong_type":
        t = pq.read_table(good)
        t = t.set_column(t.schema.get_field_index("WIDTH"), "WIDTH", t["WIDTH"].cast(pa.string()))
        pq.write_table(t, bad)
    out = tmp_path / "out"
    proc = run_cli(FILTER_CLI, "--data_dir", str(data), "--output_dir", str(out), "--no_progress")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert (str(data) if case == "empty_dir" else "b_2.parquet") in lines[0]
    if case == "wrong_type":
        assert "'WIDTH'" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no staging


@pytest.mark.parametrize("engine", ["arrow", "spark"])  # the check runs before either engine starts
def test_type_clash_in_an_unused_column_names_the_column_and_files(inputs, tmp_path, engine):
    data = tmp_path / "in"
    data.mkdir()
    src = pq.read_table(inputs["improved_aesthetics_4.5plus"] / "improved_aesthetics_4.5plus_1.parquet")
    pq.write_table(src, data / "a_1.parquet")
    pq.write_table(src, data / "a_2.parquet")
    clash = src.set_column(src.schema.get_field_index("hash"), "hash", src["hash"].cast(pa.string()))
    pq.write_table(clash, data / "a_3.parquet")  # no condition reads hash: only the output schema sees it
    out = tmp_path / "out"
    proc = run_cli(FILTER_CLI, "--data_dir", str(data), "--output_dir", str(out), "--engine", engine, "--no_progress")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"column 'hash' is string in {data / 'a_3.parquet'} but int64 in {data / 'a_1.parquet'}" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.timeout(120)
def test_killed_run_leaves_no_part_files_and_rerun_works(tmp_path):
    data = tmp_path / "in"
    for i in range(3):
        write_synthetic_metadata(data / f"x_{i + 1}.parquet", 60_000, "laion-art", seed=i)
    out = tmp_path / "out"
    cmd = [sys.executable, str(FILTER_CLI), "--data_dir", str(data), "--output_dir", str(out), "--no_progress",
           "--batch_rows", "500", "--min_width", "0", "--min_height", "0", "--num_parts", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list(tmp_path.glob(".out.*.tmp/part_1.parquet")):
            time.sleep(0.02)
        assert list(tmp_path.glob(".out.*.tmp/part_1.parquet")), "the run never started writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    assert not list(tmp_path.rglob("part_*.parquet")) or all(".tmp" in str(p) for p in tmp_path.rglob("part_*"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # the dead run's staging is gone
    assert json.loads((out / "filter_report.json").read_text())["rows_out"] == len(read_dir(out, "part_*.parquet"))


def test_check_task_prints_seed_figures(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    pq.write_table(pa.table({"AESTHETIC_SCORE": pa.array([5.0, 4.6, None, float("nan")], pa.float32()),
                             "punsafe": [0.1, 0.5, 0.97, None], "similarity": [0.2, 0.3, 0.27, 0.4],
                             "pwatermark": [0.9, 0.1, 0.85, float("nan")]}), data / "p_1.parquet")
    proc = run_cli(FILTER_CLI, "--task", "check", "--data_dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "count: 4", "min aesthetic score: 4.6", "max punsafe: 0.97",
        "fraction with similarity < 0.28: 0.5", "fraction with pwatermark > 0.8: 0.5"]


def test_relaion_schema_filters_on_the_original_size(tmp_path):
    """Re-LAION's columns (lower case, an img2dataset output): the size conditions read original_width /
    original_height (what WIDTH/HEIGHT were), not the re-download's width / height; no aesthetic column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "relaion"
    data.mkdir()
    original = [(600, 800), (400, 900), (1024, 512), (800, 300)]  # kept: the 1st and the 3rd
    table = pa.table({
        "url": [f"http://x/{i}.jpg" for i in range(4)], "caption": [f"c{i}" for i in range(4)],
        "similarity": [0.3] * 4, "hash": list(range(4)), "pwatermark": [0.1] * 4, "punsafe": [0.01, 0.01, 0.01, 0.99],
        "key": [f"{i:09d}" for i in range(4)], "status": ["success"] * 4, "error_message": [None] * 4,
        "width": [256] * 4, "height": [256] * 4,  # the re-download's size: would fail every row
        "original_width": [w for w, _ in original], "original_height": [h for _, h in original],
    })
    pq.write_table(table, data / "part-00000-339dc23d-0869-4dc0-9390-b4036fcc80c2-c000.snappy.parquet")
    out = tmp_path / "out"
    report = run("--data_dir", str(data), "--output_dir", str(out), "--min_aesthetic", "none")
    kept = read_dir(out, "part_*.parquet")
    assert kept["url"].tolist() == ["http://x/0.jpg", "http://x/2.jpg"] and report["rows_out"] == 2
    assert report["failed_by_condition"]["punsafe<=0.98"] == 1

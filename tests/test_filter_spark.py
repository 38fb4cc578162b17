"""The spark engine returns the same rows and counts as the arrow engine (real local SparkSession)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers.metadata import FILTER_CLI, canonical, make_inputs, read_dir, run_cli
from tests.helpers.tools import load_tool

cli = load_tool("laion_filter_metadata")

pytestmark = [pytest.mark.spark, pytest.mark.timeout(300)]


@pytest.fixture(scope="session")
def spark():
    if shutil.which("java") is None:
        pytest.skip("java not found: the spark engine needs a JDK")
    from mindone.laion.spark_session import create_session

    # The project's own session (its local executors run this interpreter); it lives for the whole test
    # run, so every later Spark test joins it.
    session = create_session(app_name="test_filter_spark", master="local[2]", driver_memory="1g", conf={
        "spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2", "spark.sql.adaptive.enabled": "false"})
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory) -> Path:
    """Files of two schema variants side by side (AESTHETIC_SCORE vs aesthetic, float vs int widths)."""
    root = tmp_path_factory.mktemp("mixed")
    make_inputs(root, "improved_aesthetics_4.5plus", files=2, rows=3000, seed=1)
    make_inputs(root, "laion-art", files=1, rows=3000, seed=2)
    return root


def _run_both(spark, tmp_path: Path, data: Path, *flags: str) -> tuple[dict, dict]:
    reports = {}
    for engine in ("arrow", "spark"):
        out = tmp_path / engine
        args = cli.parse_options(["--data_dir", str(data), "--output_dir", str(out), "--engine", engine,
                                  "--no_progress", *flags])
        cli.run_filter(args, spark=spark)
        reports[engine] = json.loads((out / "filter_report.json").read_text())
    return reports["arrow"], reports["spark"]


def _same_counts(a: dict, s: dict) -> None:
    for key in ("files", "rows_in", "removed_by_condition", "failed_by_condition", "rows_after_conditions",
                "dedup_removed", "rows_out", "conditions", "skipped_conditions"):
        assert a[key] == s[key], key


def test_plain_filter_same_rows_mixed_schemas(spark, mixed_dir, tmp_path):
    a, s = _run_both(spark, tmp_path, mixed_dir, "--num_parts", "2")
    _same_counts(a, s)
    assert a["rows_out"] > 500
    arrow_rows = read_dir(tmp_path / "arrow", "part_*.parquet")
    spark_rows = read_dir(tmp_path / "spark", "part_*.parquet")
    assert list(arrow_rows.columns) == list(spark_rows.columns)  # every input column, same order
    assert "AESTHETIC_SCORE" in arrow_rows.columns and "aesthetic" in arrow_rows.columns
    assert canonical(arrow_rows) == canonical(spark_rows)
    assert len(s["parts"]) == 2 and sorted(p.name for p in (tmp_path / "spark").iterdir()) == [
        "filter_report.json", "part_1.parquet", "part_2.parquet"]


def test_dedup_shuffle_string_conditions_and_skipped_columns(spark, tmp_path_factory, tmp_path):
    data = tmp_path_factory.mktemp("hires")
    make_inputs(data, "laion-high-resolution", files=1, rows=3000, seed=3)
    make_inputs(data, "improved_aesthetics_4.5plus", files=1, rows=3000, seed=4)  # no LANGUAGE column
    a, s = _run_both(spark, tmp_path, data, "--skip_missing_columns", "--language", "en,de",
                     "--min_caption_length", "3", "--max_caption_length", "90", "--max_pwatermark", "0.6",
                     "--min_similarity", "0.29", "--dedup", "url_text", "--shuffle", "--seed", "7",
                     "--shuffle_buckets", "3", "--rows_per_part", "400")
    _same_counts(a, s)
    assert a["skipped_conditions"] == {"aesthetic>=4.5": ["laion-high-resolution_1.parquet"],
                                       "language in en,de": ["improved_aesthetics_4.5plus_1.parquet"]}
    assert a["removed_by_condition"]["language in en,de"] > 0 and a["dedup_removed"] > 0 and a["rows_out"] > 100
    assert canonical(read_dir(tmp_path / "arrow", "part_*.parquet")) == canonical(
        read_dir(tmp_path / "spark", "part_*.parquet"))


@pytest.mark.timeout(120)
def test_cli_spark_engine_own_session_matches_arrow(tmp_path):
    """The CLI end to end with --engine spark: create_session with --master/--driver_memory, then the job."""
    if shutil.which("java") is None:
        pytest.skip("java not found: the spark engine needs a JDK")
    data = tmp_path / "in"
    make_inputs(data, "improved_aesthetics_4.5plus", files=2, rows=800, seed=5)
    common = ["--data_dir", str(data), "--no_progress", "--num_parts", "2"]
    arrow = run_cli(FILTER_CLI, *common, "--output_dir", str(tmp_path / "arrow"))
    assert arrow.returncode == 0, arrow.stderr
    spark = run_cli(FILTER_CLI, *common, "--output_dir", str(tmp_path / "spark"), "--engine", "spark",
                    "--master", "local[1]", "--driver_memory", "700m", timeout=110)
    assert spark.returncode == 0, spark.stderr[-3000:]
    assert "spark session: master local[1], driver memory 700m" in spark.stderr  # the flags reached the session
    a, s = (json.loads((tmp_path / e / "filter_report.json").read_text()) for e in ("arrow", "spark"))
    _same_counts(a, s)
    assert s["engine"] == "spark" and a["rows_out"] > 100
    assert canonical(read_dir(tmp_path / "arrow", "part_*.parquet")) == canonical(read_dir(tmp_path / "spark", "part_*.parquet"))


@pytest.mark.parametrize("codec,expected", [("zstd", "ZSTD"), ("none", "UNCOMPRESSED")])
def test_compression_flag_reaches_spark_writer(spark, mixed_dir, tmp_path, codec, expected):
    a, s = _run_both(spark, tmp_path, mixed_dir, "--num_parts", "2", "--compression", codec)
    _same_counts(a, s)
    for engine in ("arrow", "spark"):
        for p in sorted((tmp_path / engine).glob("part_*.parquet")):
            meta = pq.ParquetFile(p).metadata
            if meta.num_row_groups:
                assert meta.row_group(0).column(0).compression == expected, (engine, p.name)
    assert canonical(read_dir(tmp_path / "arrow", "part_*.parquet")) == canonical(
        read_dir(tmp_path / "spark", "part_*.parquet"))

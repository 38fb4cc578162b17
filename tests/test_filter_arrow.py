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

from mindone.errors import DataError
from mindone.laion.synthetic_metadata import write_synthetic_metadata
from mindone.utils.cli import ONE_LINE_ERRORS
from tests.helpers.metadata import FILTER_CLI, canonical, make_inputs, read_dir, reference_filter, run_cli
from tests.helpers.tools import load_tool

cli = load_tool("laion_filter_metadata")

ROWS = 4000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("meta")
    out = {}
    for seed, variant in enumerate(("improved_aesthetics_4.5plus", "laion-art", "laion2B-en-joined",
                                    "laion-high-resolution")):
        out[variant] = root / variant
        make_inputs(out[variant], variant, files=3, rows=ROWS, seed=seed)
    return out


def run(*args: str) -> dict:
    cli.main([*args, "--no_progress"])
    out = Path(args[args.index("--output_dir") + 1])
    return json.loads((out / "filter_report.json").read_text())


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
    with pytest.raises(cli.UserError, match="unknown key 'min_widht'"):
        cli.main(["--config", str(bad), "--data_dir", str(data), "--output_dir", str(tmp_path / "o2")])
    bad.write_text("engine: sparky\n")
    with pytest.raises(cli.UserError, match="key 'engine': 'sparky' is not one of arrow, spark"):
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


@pytest.mark.parametrize("batch_rows", ["7", "65536"])
def test_pass_2_reads_only_unspilled_columns_and_joins_pass_1s_back(inputs, tmp_path, monkeypatch, batch_rows):
    # row groups of ROWS // 3 rows and batches that do not divide them: pass 2 slices pass 1's masks and rows
    from mindone.laion import filter_arrow

    data = inputs["improved_aesthetics_4.5plus"]
    read = []
    real_iter = pq.ParquetFile.iter_batches

    def spy(self, *args, columns=None, **kwargs):
        read.append(columns)
        return real_iter(self, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    kept = run("--data_dir", str(data), "--output_dir", str(tmp_path / "a"), "--batch_rows", batch_rows)
    conditions = {"WIDTH", "HEIGHT", "punsafe", "AESTHETIC_SCORE"}
    assert read and all(cols and not conditions & set(cols) for cols in read), read
    # row groups too big to read whole: pass 1 reads them in --batch_rows batches
    monkeypatch.setattr(filter_arrow, "WHOLE_ROW_GROUP_ROWS", 0)
    batched = run("--data_dir", str(data), "--output_dir", str(tmp_path / "b"), "--batch_rows", batch_rows)
    expected = reference_filter(read_dir(data), "improved_aesthetics_4.5plus").reset_index(drop=True)
    for out in ("a", "b"):
        got = read_dir(tmp_path / out, "part_*.parquet")
        assert list(got.columns) == list(expected.columns)  # spilled columns back in the input's order
        pd.testing.assert_frame_equal(got, expected)
    for key in ("files", "removed_by_condition", "failed_by_condition", "parts"):
        assert kept[key] == batched[key]
    assert not list((tmp_path / "a").glob(".laion_scratch*")), "scratch files left in the output"


def test_files_of_condition_columns_only_and_no_conditions(tmp_path):
    # nothing left to read in pass 2 unless it reads the condition columns; no condition: nothing spilled
    data = tmp_path / "in"
    data.mkdir()
    table = pa.table({"WIDTH": [600.0, 100.0, None, 800.0], "HEIGHT": [600.0, 900.0, 700.0, 512.0]})
    pq.write_table(table, data / "a.parquet", row_group_size=3)
    off = ["--min_aesthetic", "none", "--max_punsafe", "none", "--skip_missing_columns"]
    run("--data_dir", str(data), "--output_dir", str(tmp_path / "a"), *off)
    assert pq.read_table(tmp_path / "a" / "part_1.parquet").to_pydict() == {"WIDTH": [600.0, 800.0],
                                                                            "HEIGHT": [600.0, 512.0]}
    run("--data_dir", str(data), "--output_dir", str(tmp_path / "b"), *off, "--min_width", "none",
        "--min_height", "none")
    assert pq.read_table(tmp_path / "b" / "part_1.parquet").equals(table)


def test_mapped_reader_matches_pyarrow_and_returns_its_pages(tmp_path):
    from mindone.laion.mapped_parquet import MappedParquet

    path = tmp_path / "x.parquet"
    write_synthetic_metadata(path, 30_000, "improved_aesthetics_4.5plus", seed=3, row_group_rows=7_000)
    src = MappedParquet(path)
    assert src.file.num_row_groups == 5
    got = []
    for rg in range(src.file.num_row_groups):
        got += list(src.file.iter_batches(batch_size=3_000, row_groups=[rg]))
        src.release(rg)  # pages dropped from this process; the batches already read stay valid
    src.close()
    pd.testing.assert_frame_equal(pa.Table.from_batches(got).to_pandas(), pq.read_table(path).to_pandas())  # NaN == NaN
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), empty)
    src = MappedParquet(empty)
    assert src.file.metadata.num_rows == 0
    src.close()


def test_numeric_masks_from_buffers_respect_offsets_chunks_and_nulls():
    from mindone.laion.conditions import Condition

    values = [600.0, None, float("nan"), 512.0, 0.98, None, 700.0, 100.0, 513.0, None, 0.97]
    for typ in (pa.float64(), pa.float32(), pa.int64(), pa.int32(), pa.uint16()):
        vals = [v if v is None or pa.types.is_floating(typ) else (0 if v != v else int(v)) for v in values]
        col = pa.array(vals, typ)
        for cond in (Condition("width", ">=", 512.0), Condition("punsafe", "<=", 0.98)):
            for arr in (col, col.slice(3), col.slice(1, 6), pa.chunked_array([col.slice(0, 5), col.slice(5)]),
                        pa.chunked_array([], typ), pa.array([None] * 5, typ)):
                assert cond.numpy_mask(arr).tolist() == cond.arrow_mask(arr).to_pylist(), (typ, cond, arr)


def test_plain_run_does_not_import_pandas(inputs, tmp_path):
    # pandas costs 0.2 s of start-up: only dedup/shuffle need it (pyarrow pulls it in on pa.array/pa.scalar)
    code = ("import sys, laion_filter_metadata as cli; cli.main(sys.argv[1:]); "
            "print('pandas' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, "--data_dir", str(inputs["laion-art"]),
                           "--output_dir", str(tmp_path / "o"), "--no_progress"],
                          capture_output=True, text=True, cwd=FILTER_CLI.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def _codecs(out: Path) -> set[str]:
    codecs = set()
    for p in sorted(out.glob("part_*.parquet")):
        meta = pq.ParquetFile(p).metadata
        for rg in range(meta.num_row_groups):
            codecs |= {meta.row_group(rg).column(c).compression for c in range(meta.num_columns)}
    return codecs


@pytest.mark.parametrize("codec,expected", [("snappy", "SNAPPY"), ("zstd", "ZSTD"), ("lz4", "LZ4"),
                                            ("gzip", "GZIP"), ("none", "UNCOMPRESSED")])
def test_compression_flag_sets_the_parts_codec(inputs, tmp_path, codec, expected):
    data = inputs["improved_aesthetics_4.5plus"]
    run("--data_dir", str(data), "--output_dir", str(tmp_path / "o"), "--compression", codec)
    p = tmp_path / "o" / "part_1.parquet"
    assert pq.ParquetFile(p).metadata.row_group(0).column(0).compression == expected
    assert _codecs(tmp_path / "o") == {expected}
    want = reference_filter(read_dir(data), "improved_aesthetics_4.5plus").reset_index(drop=True)
    pd.testing.assert_frame_equal(read_dir(tmp_path / "o", "part_*.parquet"), want)


def test_compression_default_yaml_and_bad_value(inputs, tmp_path):
    data = inputs["laion-art"]
    run("--data_dir", str(data), "--output_dir", str(tmp_path / "default"))
    assert _codecs(tmp_path / "default") == {"SNAPPY"}  # the behaviour before the flag existed
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(data), "compression": "zstd"}))
    run("--config", str(cfg), "--output_dir", str(tmp_path / "yaml"))
    assert _codecs(tmp_path / "yaml") == {"ZSTD"}
    run("--config", str(cfg), "--output_dir", str(tmp_path / "flag"), "--compression", "none")  # flag wins
    assert _codecs(tmp_path / "flag") == {"UNCOMPRESSED"}
    # the bucketed (shuffle) path writes with the same codec
    run("--data_dir", str(data), "--output_dir", str(tmp_path / "shuf"), "--shuffle", "--compression", "gzip")
    assert _codecs(tmp_path / "shuf") == {"GZIP"}
    cfg.write_text("compression: brotli\n")
    with pytest.raises(cli.UserError, match="key 'compression': 'brotli' is not one of snappy, zstd, lz4, gzip, none"):
        cli.main(["--config", str(cfg), "--data_dir", str(data), "--output_dir", str(tmp_path / "bad")])
    with pytest.raises(SystemExit):
        cli.parse_options(["--data_dir", str(data), "--output_dir", str(tmp_path / "bad"), "--compression", "lzo"])


def test_partition_writer_holds_the_caller_back_on_a_big_table(tmp_path):
    """A whole shuffle bucket is queued in row-group slices, so the caller cannot read ahead without bound."""
    import threading

    from mindone.laion.partition_writer import PartitionWriter

    gate = threading.Event()

    def held(table):  # the writer thread stops here until the gate opens
        gate.wait(30)
        return table

    table = pa.table({"i": pa.array(range(100), pa.int64())})
    writer = PartitionWriter(tmp_path, table.schema, [60, 40], row_group_rows=10, queue_depth=1, transform=held)
    caller = threading.Thread(target=writer.write, args=(table,))
    caller.start()
    caller.join(0.5)
    assert caller.is_alive(), "write() of 10 row groups returned while the writer had taken none"
    gate.set()
    caller.join(30)
    assert writer.close() == [60, 40]
    got = [pq.read_table(tmp_path / f"part_{i}.parquet").column("i").to_pylist() for i in (1, 2)]
    assert got == [list(range(60)), list(range(60, 100))]


def test_full_scratch_disk_is_one_line_and_publishes_nothing(inputs, tmp_path, monkeypatch):
    import errno as errno_

    from mindone.laion import condition_spill

    def full(self, batch, keep):
        raise OSError(errno_.ENOSPC, "No space left on device")

    monkeypatch.setattr(condition_spill.SpillWriter, "add", full)
    out = tmp_path / "out"
    proc_err = None
    try:
        run("--data_dir", str(inputs["improved_aesthetics_4.5plus"]), "--output_dir", str(out))
    except ONE_LINE_ERRORS as err:
        proc_err = str(err)
    assert proc_err and "no space left" in proc_err and "--tmp_dir" in proc_err and "\n" not in proc_err
    assert not out.exists() and not list(tmp_path.glob(".out.*")), "partial output left behind"


def test_spilled_rows_must_match_the_second_read(tmp_path):
    # pass 2 asking for more or fewer kept rows than pass 1 spilled means the input changed in between
    from mindone.laion.condition_spill import RowCursor

    path = tmp_path / "rows.arrows"
    batch = pa.record_batch({"WIDTH": pa.array([1.0, 2.0, 3.0])})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write(batch)
        writer.write(batch)
    cursor = RowCursor(path, Path("in.parquet"))
    assert cursor.take(2).column("WIDTH").to_pylist() == [1.0, 2.0]
    assert cursor.take(3).column("WIDTH").to_pylist() == [3.0, 1.0, 2.0]  # across spilled batches
    with pytest.raises(DataError, match="in.parquet: more rows pass"):
        cursor.finish()
    cursor = RowCursor(path, Path("in.parquet"))
    with pytest.raises(DataError, match="in.parquet: fewer rows pass"):
        cursor.take(7)
    cursor.finish()  # exactly used up: no error

"""The embedded (arrow) filter engine's internals: its two passes, the mapped parquet reader, compression, the
partition writer and scratch-disk errors (laion_filter_metadata.py; the end-to-end behaviour is in
test_filter_arrow.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mindone.errors import ConfigError, DataError
from mindone.laion.synthetic_metadata import write_synthetic_metadata
from mindone.utils.cli import ONE_LINE_ERRORS
from tests.helpers.metadata import FILTER_CLI, make_variant_inputs, read_dir, reference_filter, run_filter_main
from tests.helpers.tools import load_tool

cli = load_tool("laion_filter_metadata")

ROWS = 4000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return make_variant_inputs(tmp_path_factory.mktemp("meta"), rows=ROWS)


def run(*args: str) -> dict:
    return run_filter_main(cli, *args)


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
    with pytest.raises(ConfigError, match="key 'compression': 'brotli' is not one of snappy, zstd, lz4, gzip, none"):
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

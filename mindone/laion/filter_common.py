"""What both filter engines share: the input inspection, the plan, and the per-condition counters.

Inputs are checked before anything is written: every file must be a readable parquet file with the
columns (and column types) the conditions and the dedup key need. Rows in per file come from the
parquet footers, so both engines report them identically.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mindone.errors import DataError
from mindone.laion.conditions import Condition
from mindone.laion.schema import resolve_columns

DEDUP_KEYS = {"url": ("url",), "url_text": ("url", "text"), "hash": ("hash",)}


@dataclass
class InputFile:
    """One input parquet file, its footer facts and its column resolution."""

    path: Path
    rows: int
    schema: pa.Schema
    uncompressed_bytes: int
    columns: dict[str, str | None]  # logical -> physical (None: absent, condition skipped)


@dataclass(kw_only=True)
class FilterPlan:
    """Everything an engine needs to run a filter job (keyword arguments only: three of them are ints)."""

    inputs: list[InputFile]
    conditions: list[Condition]
    output_schema: pa.Schema
    dedup: str | None = None  # None | "url" | "url_text" | "hash"
    shuffle: bool = False
    seed: int = 0
    num_parts: int | None = None
    rows_per_part: int | None = None
    batch_rows: int = 65_536
    bucket_mb: int = 256
    num_buckets: int | None = None
    scratch_dir: Path | None = None
    # parquet codec of the output parts (both engines): snappy (like LAION's own files), zstd, lz4, gzip
    # or none (pyarrow and Spark both accept these names). snappy by default; "none" writes
    # 11% faster at 20 M rows but a third bigger (docs/benchmarks.md, "Metadata filtering")
    compression: str = "snappy"


@dataclass
class FilterStats:
    """Counts reported in filter_report.json; filled by an engine."""

    condition_names: list[str]
    rows_in: dict[str, int] = field(default_factory=dict)
    rows_kept: dict[str, int] = field(default_factory=dict)  # rows passing every condition, per file
    removed_first: np.ndarray | None = None  # per condition: rows whose first failing condition it is
    failed_any: np.ndarray | None = None  # per condition: rows failing it (independently)
    dedup_removed: int = 0
    shuffle_buckets: int | None = None

    def __post_init__(self) -> None:
        k = len(self.condition_names)
        self.removed_first = np.zeros(k, np.int64)
        self.failed_any = np.zeros(k, np.int64)


def _natural_key(path: Path) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


def list_parquet_files(data_dir: Path) -> list[Path]:
    """Input files of ``data_dir`` in natural order (``_2`` before ``_10``).

    Hidden files, ``_SUCCESS``-style markers, ``.crc``/``.tmp``/``.partial`` files and ``.json`` reports
    are ignored; any other file must be parquet (a stray file is reported, not silently skipped).
    """
    if not data_dir.is_dir():
        raise DataError(f"--data_dir {data_dir}: not a directory")
    files = [p for p in data_dir.iterdir()
             if p.is_file() and not p.name.startswith((".", "_")) and not p.name.endswith((".crc", ".tmp", ".partial", ".json"))]
    if not files:
        raise DataError(f"--data_dir {data_dir}: no input files (expected *.parquet)")
    return sorted(files, key=_natural_key)


def needed_columns(conditions: list[Condition], dedup: str | None) -> list[str]:
    cols = [c.logical for c in conditions]
    if dedup:
        cols += list(DEDUP_KEYS[dedup])
    return list(dict.fromkeys(cols))


def inspect_inputs(files: list[Path], conditions: list[Condition], dedup: str | None,
                   skip_missing: bool) -> list[InputFile]:
    """Read each file's footer, resolve and type-check the needed columns; one DataError per problem."""
    out = []
    cond_cols = list(dict.fromkeys(c.logical for c in conditions))
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
            schema = meta.schema.to_arrow_schema().remove_metadata()
        except (pa.ArrowException, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"{path}: not a readable parquet file ({first})") from None
        columns = resolve_columns(schema, cond_cols, str(path), skip_missing)
        if dedup:
            columns.update(resolve_columns(schema, list(DEDUP_KEYS[dedup]), str(path), skip_missing=False))
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        out.append(InputFile(path, meta.num_rows, schema, size, columns))
    return out


def _unify(schemas: list[pa.Schema]) -> pa.Schema:
    return pa.unify_schemas(schemas, promote_options="permissive")


def unify_output_schema(inputs: list[InputFile]) -> pa.Schema:
    """One schema holding every input column (types widened when files disagree, e.g. int vs float).

    Both engines write every input column, so a column no condition reads must still agree across files;
    when it does not, the error names the column and the two files (arrow's own message names neither).
    """
    try:
        return _unify([f.schema for f in inputs])
    except pa.ArrowException as err:
        raise DataError(_type_clash(inputs) or f"input files have incompatible schemas: {str(err).splitlines()[0]}") from None


def _type_clash(inputs: list[InputFile]) -> str | None:
    """``column 'x' is T1 in B but T2 in A`` for the first file whose schema does not merge with the earlier ones."""
    merged: pa.Schema | None = None
    first_seen: dict[str, list[tuple[pa.DataType, Path]]] = {}  # column -> each distinct type and its first file
    for f in inputs:
        try:
            merged = f.schema if merged is None else _unify([merged, f.schema])
        except pa.ArrowException:
            for field in f.schema:
                for typ, path in first_seen.get(field.name, []):
                    try:
                        _unify([pa.schema([pa.field(field.name, typ)]), pa.schema([field])])
                    except pa.ArrowException:
                        return (f"column {field.name!r} is {field.type} in {f.path} but {typ} in {path} (every input "
                                "column is written out, so its type must agree across files: cast it, or move one "
                                "file out of --data_dir)")
            return f"{f.path}: its columns' types do not merge with those of the files before it"
        for field in f.schema:
            types = first_seen.setdefault(field.name, [])
            if all(typ != field.type for typ, _ in types):
                types.append((field.type, f.path))
    return None


def part_sizes(total: int, num_parts: int | None, rows_per_part: int | None) -> list[int]:
    """Rows in each output part: ``num_parts`` near-equal parts, or parts of ``rows_per_part`` rows.

    An empty result still gets one (empty) part so that the schema is published.
    """
    if rows_per_part:
        n = max(1, math.ceil(total / rows_per_part))
        return [min(rows_per_part, total - i * rows_per_part) for i in range(n)] if total else [0]
    n = max(1, min(num_parts or 1, total))
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]

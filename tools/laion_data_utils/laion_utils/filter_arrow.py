"""The embedded filter engine: pyarrow, streaming record batches, bounded memory.

Plain filter + repartition: a first pass reads only the condition columns to count the surviving rows
(so the parts can be sized exactly) and keeps their row masks (one bit per row), a second pass streams
every column through those masks into the part writer, whose thread filters, encodes and writes while
this one decodes the next batches. With dedup or shuffle, the surviving rows go through an external
bucket pass instead (:mod:`laion_utils.shuffle_external`). Peak memory is one batch + one row group
(+ one bucket), whatever the input size.

Inputs are memory-mapped (no ``read()`` copy out of the page cache: a fifth of a scan's CPU time) and
each row group's pages are handed back to the kernel once it is decoded, so RSS does not grow with the
file. (A file truncated by another process while it is being read would crash the run with SIGBUS
instead of an error; the staging directory still keeps partial outputs out of sight.)
"""

from __future__ import annotations

import logging
import mmap
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from laion_utils.filter_common import DEDUP_KEYS, FilterPlan, FilterStats, InputFile, part_sizes
from laion_utils.partition_writer import PartitionWriter
from mindone.utils.cli import UserError

log = logging.getLogger(__name__)
KEY_PREFIX = "__laion_key_"  # dedup keys, copied under logical names while in buckets
WHOLE_ROW_GROUP_ROWS = 1 << 20  # pass 1 reads row groups up to this size in one call (<= 8 B a row a column)
MASK_CACHE_ROWS = 1 << 28  # pass 1's row masks are kept (1 bit a row, <= 32 MiB) up to this many input rows


class _NoBar:
    """What a disabled tqdm bar does, without importing tqdm (20 ms of start-up on a plain run)."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def _bar(iterable=None, disable: bool = False, **kwargs):
    if disable:
        return _NoBar() if iterable is None else iterable
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)


def align(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder/cast ``table`` to ``schema``, adding absent columns as nulls."""
    if table.schema.equals(schema):
        return table
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _chunk_end(col: pq.ColumnChunkMetaData) -> int:
    start = col.dictionary_page_offset if col.has_dictionary_page and col.dictionary_page_offset else col.data_page_offset
    return start + col.total_compressed_size


class _MappedParquet:
    """A parquet file read through a read-only memory map; ``release(rg)`` drops row group ``rg``'s pages.

    Reading through the map saves the kernel's copy into a read buffer. Without the release, every page
    read would stay in this process's RSS until the file is closed (a LAION part is 3+ GB).
    """

    def __init__(self, path: Path) -> None:
        self._map = None
        with open(path, "rb") as fh:
            try:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):  # empty file, or a filesystem without mmap: plain reads
                pass
        self.file = pq.ParquetFile(pa.BufferReader(pa.py_buffer(self._map)) if self._map is not None else path)
        meta = self.file.metadata
        self._ends = []  # byte offset where each row group's column chunks end
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            self._ends.append(max((_chunk_end(rg.column(j)) for j in range(rg.num_columns)), default=0))
        self._released = 0

    def close(self) -> None:
        self.file = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # an arrow buffer still points into the map: the GC unmaps it later
                pass
            self._map = None

    def release(self, row_group: int) -> None:
        if self._map is None or not hasattr(self._map, "madvise"):
            return
        end = (self._ends[row_group] // mmap.PAGESIZE) * mmap.PAGESIZE
        if end > self._released:
            self._map.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = end


class _Scanner:
    """Iterates the inputs' batches, applies the conditions, and counts what each condition removes."""

    def __init__(self, plan: FilterPlan, stats: FilterStats | None, progress: bool, desc: str) -> None:
        self.plan, self.stats, self.progress, self.desc = plan, stats, progress, desc
        self.masks: dict[Path, np.ndarray] | None = None  # packed keep bits per file, from count()

    def _masks(self, f: InputFile, batch: pa.RecordBatch) -> np.ndarray:
        n = batch.num_rows
        alive, left = None, n  # rows passing every condition so far, and how many
        for i, cond in enumerate(self.plan.conditions):
            physical = f.columns.get(cond.logical)
            if physical is None:  # absent column, --skip_missing_columns given
                continue
            ok = cond.numpy_mask(batch.column(physical))
            if alive is None:
                alive = ok if ok.flags.writeable else ok.copy()
            else:
                np.logical_and(alive, ok, out=alive)
            if self.stats is not None:
                # removed first here = alive before - alive after (no temporaries for ~ok, alive & ~ok)
                self.stats.failed_any[i] += n - int(np.count_nonzero(ok))
                now = int(np.count_nonzero(alive))
                self.stats.removed_first[i] += left - now
                left = now
        return np.ones(n, bool) if alive is None else alive

    def count(self) -> int:
        """Pass 1 on the condition columns only: fills the stats, keeps the masks for :meth:`batches`."""
        keep_masks = sum(f.rows for f in self.plan.inputs) <= MASK_CACHE_ROWS
        self.masks = {} if keep_masks else None
        total, pieces, current = 0, [], None
        for f, _, keep in self.batches(columns_only=True):
            total += int(np.count_nonzero(keep))
            if keep_masks:
                if f.path != current:
                    self._pack(current, pieces)
                    current, pieces = f.path, []
                pieces.append(keep)
        self._pack(current, pieces)
        return total

    def _pack(self, path: Path | None, pieces: list[np.ndarray]) -> None:
        if path is not None and self.masks is not None:
            self.masks[path] = np.packbits(np.concatenate(pieces)) if pieces else np.zeros(0, np.uint8)

    def batches(self, columns_only: bool = False,
                masks: dict[Path, np.ndarray] | None = None) -> Iterator[tuple[InputFile, pa.RecordBatch | pa.Table, np.ndarray]]:
        """Yield ``(file, batch, keep_mask)``; ``columns_only`` reads just the condition columns.

        ``masks`` (from :meth:`count`): each file's keep bits, used instead of evaluating the conditions.
        """
        total = sum(f.rows for f in self.plan.inputs)
        with _bar(total=total, unit="row", unit_scale=True, desc=self.desc, disable=not self.progress) as bar:
            for f in self.plan.inputs:
                cols = None
                if columns_only:
                    cols = sorted({f.columns[c.logical] for c in self.plan.conditions if f.columns.get(c.logical)})
                kept, known, offset = 0, None, 0
                try:
                    if columns_only and not cols:  # nothing to evaluate: all rows pass
                        kept = f.rows
                        bar.update(f.rows)
                        yield f, pa.table({}), np.ones(f.rows, bool)
                    else:
                        if masks is not None:
                            known = np.unpackbits(masks.get(f.path, np.zeros(0, np.uint8)), count=f.rows).view(bool)
                        src = _MappedParquet(f.path)
                        try:
                            for rg in range(src.file.num_row_groups):
                                rg_rows = src.file.metadata.row_group(rg).num_rows
                                if columns_only and rg_rows <= WHOLE_ROW_GROUP_ROWS:
                                    # just the condition columns: a whole row group at once costs less than batches
                                    pieces = src.file.read_row_group(rg, columns=cols).to_batches()
                                else:
                                    pieces = src.file.iter_batches(batch_size=self.plan.batch_rows, row_groups=[rg],
                                                                   columns=cols)
                                for batch in pieces:
                                    n = batch.num_rows
                                    keep = known[offset:offset + n] if known is not None else self._masks(f, batch)
                                    offset += n
                                    kept += int(np.count_nonzero(keep))
                                    bar.update(n)
                                    yield f, batch, keep
                                src.release(rg)  # decoded: its pages can leave this process's RSS
                        finally:
                            src.close()
                except (pa.ArrowException, OSError) as err:
                    first = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise UserError(f"{f.path}: cannot read ({first})") from None
                if known is not None and offset != f.rows:
                    raise UserError(f"{f.path}: {f.rows} rows in its footer but {offset} read (changed during the run?)")
                if self.stats is not None:
                    self.stats.rows_in[f.path.name] = f.rows
                    self.stats.rows_kept[f.path.name] = kept


def run_arrow(plan: FilterPlan, out_dir: Path, progress: bool = True) -> tuple[FilterStats, list[int]]:
    """Filter (+ dedup, + shuffle) ``plan.inputs`` into ``out_dir/part_<N>.parquet``; returns stats, part rows."""
    stats = FilterStats([c.name for c in plan.conditions])
    if plan.dedup or plan.shuffle:
        if plan.scratch_dir is not None:
            plan.scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".laion_buckets.", suffix=".tmp", dir=plan.scratch_dir or out_dir))
        try:
            return stats, _run_bucketed(plan, stats, out_dir, scratch, progress)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    # pass 1: count survivors from the condition columns only, to size the parts exactly
    counter = _Scanner(plan, stats, progress, "count")
    total = counter.count()
    sizes = part_sizes(total, plan.num_parts, plan.rows_per_part)
    writer = PartitionWriter(out_dir, plan.output_schema, sizes, transform=lambda t: align(t, plan.output_schema),
                             compression=plan.compression)
    try:
        for _, batch, keep in _Scanner(plan, None, progress, "filter").batches(masks=counter.masks):
            kept = int(np.count_nonzero(keep))
            if kept:  # filtered in the writer thread, overlapping the next read (not at all if every row passes)
                writer.write(batch, None if kept == batch.num_rows else keep)
        return stats, writer.close()
    except BaseException:
        writer.abort()
        raise


def _run_bucketed(plan: FilterPlan, stats: FilterStats, out_dir: Path, scratch: Path, progress: bool) -> list[int]:
    from laion_utils import dedup as dd  # pandas: imported only when needed (0.2 s of start-up)
    from laion_utils.shuffle_external import BucketScatter, choose_num_buckets

    estimated = sum(f.uncompressed_bytes for f in plan.inputs)
    k = choose_num_buckets(estimated, plan.bucket_mb, plan.num_buckets)
    stats.shuffle_buckets = k
    log.info("bucket pass: %d bucket(s) in %s", k, scratch)
    key_names = [KEY_PREFIX + c for c in DEDUP_KEYS[plan.dedup]] if plan.dedup else []
    schema = plan.output_schema
    if plan.dedup:
        # keys copied under logical names, so files spelling them differently (URL / url) compare equal
        key_types = {"url": pa.string(), "text": pa.string(), "hash": pa.int64()}
        for logical, name in zip(DEDUP_KEYS[plan.dedup], key_names):
            schema = schema.append(pa.field(name, key_types[logical]))
        schema = schema.append(pa.field(dd.ORD, pa.int64()))
    rng = np.random.default_rng([plan.seed, 0])
    scatter = BucketScatter(scratch, k, schema)
    ordinal = 0
    # pass A: filter and scatter the surviving rows into buckets
    for f, batch, keep in _Scanner(plan, stats, progress, "scatter").batches():
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        if plan.dedup:
            for logical, name in zip(DEDUP_KEYS[plan.dedup], key_names):
                table = table.append_column(name, table.column(f.columns[logical]))
            table = table.append_column(dd.ORD, pa.array(np.arange(ordinal, ordinal + n, dtype=np.int64)))
        ordinal += n
        table = align(table.filter(pa.array(keep)), schema)
        if plan.dedup:
            h, _ = dd.key_hash(table, key_names, plan.seed)
            buckets = (h % np.uint64(k)).astype(np.int64)
        else:
            buckets = rng.integers(0, k, table.num_rows)
        scatter.add(table, buckets)
    scatter.close()
    perm_rng = np.random.default_rng([plan.seed, 1])
    if not plan.dedup:
        sizes = part_sizes(int(scatter.counts.sum()), plan.num_parts, plan.rows_per_part)
        return _drain_buckets(scatter, plan, sizes, out_dir, perm_rng, progress)
    # pass B: dedup each bucket alone and write it back; pass C streams the deduped buckets out
    deduped = BucketScatter(scratch / "dedup", k, plan.output_schema)
    for i, table in _bar(scatter.buckets(), total=k, desc="dedup", unit="bucket", disable=not progress):
        before = table.num_rows
        table = dd.dedup_table(table, key_names)
        stats.dedup_removed += before - table.num_rows
        if plan.shuffle:
            table = table.take(pa.array(perm_rng.permutation(table.num_rows)))
        else:
            table = table.sort_by(dd.ORD)
        deduped.add(table.drop_columns(key_names + [dd.ORD]), np.full(table.num_rows, i))
    deduped.close()
    sizes = part_sizes(int(deduped.counts.sum()), plan.num_parts, plan.rows_per_part)
    return _drain_buckets(deduped, plan, sizes, out_dir, None, progress)


def _drain_buckets(scatter, plan: FilterPlan, sizes: list[int], out_dir: Path,
                   perm_rng: np.random.Generator | None, progress: bool) -> list[int]:
    """Stream buckets in order (each permuted when ``perm_rng`` is given) into the part files."""
    writer = PartitionWriter(out_dir, plan.output_schema, sizes, compression=plan.compression)
    try:
        for _, table in _bar(scatter.buckets(), total=scatter.num_buckets, desc="write", unit="bucket",
                             disable=not progress):
            if perm_rng is not None:
                table = table.take(pa.array(perm_rng.permutation(table.num_rows)))
            writer.write(table)
        return writer.close()
    except BaseException:
        writer.abort()
        raise

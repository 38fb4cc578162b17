"""The embedded filter engine: pyarrow, streaming record batches, bounded memory.

Plain filter + repartition: a first pass reads only the condition columns, to count the surviving rows
(so the parts can be sized exactly), files in parallel; it spills each file's keep mask (a byte a row)
and its surviving rows' condition values to scratch files, so the second pass decodes only the other
columns (decoding seed 001's four condition columns costs a tenth of a scan). The second pass streams
those columns through the masks into the part writer, whose thread filters, joins the spilled columns
back, encodes and writes while this one decodes the next batches. With dedup or shuffle, the surviving rows go
through an external bucket pass instead (:mod:`mindone.laion.shuffle_external`). Peak memory is one
batch + one row group (+ one bucket), whatever the input size.

Inputs are memory-mapped (no ``read()`` copy out of the page cache) and each row group's pages are
handed back to the kernel once it is decoded, so RSS does not grow with the file. (A file truncated by
another process while it is being read would crash the run with SIGBUS instead of an error; the
staging directory still keeps partial outputs out of sight.)
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from mindone.laion.filter_common import DEDUP_KEYS, FilterPlan, FilterStats, InputFile, part_sizes
from mindone.laion.condition_spill import ConditionSpill
from mindone.laion.mapped_parquet import MappedParquet
from mindone.laion.partition_writer import PartitionWriter, bool_array
from mindone.utils.cli import UserError

log = logging.getLogger(__name__)
KEY_PREFIX = "__laion_key_"  # dedup keys, copied under logical names while in buckets
WHOLE_ROW_GROUP_ROWS = 1 << 20  # pass 1 reads row groups up to this size in one call (<= 8 B a row a column)
QUEUED_ROWS = 12 * 65_536  # batches waiting for the part writer, in rows
PASS_1_THREADS = 4  # at most this many files evaluated at once in pass 1 (and no more than the cores)


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


class _Scanner:
    """Iterates the inputs' batches, applies the conditions, and counts what each condition removes."""

    def __init__(self, plan: FilterPlan, stats: FilterStats | None, progress: bool, desc: str) -> None:
        self.plan, self.stats, self.progress, self.desc = plan, stats, progress, desc

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

    def count(self, spill: ConditionSpill) -> int:
        """Pass 1 on the condition columns only: fills the stats, and ``spill`` for :meth:`batches`.

        Files are evaluated in parallel threads (decoding and numpy release the GIL): one thread
        would leave a core idle while it computes a row group's masks.
        """

        def one(f: InputFile) -> tuple[int, FilterStats | None]:
            local = FilterStats(self.stats.condition_names) if self.stats is not None else None
            kept, writer = 0, None
            try:
                for _, batch, keep in _Scanner(self.plan, local, False, self.desc).batches(True, files=[f], bar=bar):
                    if writer is None:  # spill the condition columns, unless pass 2 would have none left to read
                        rest = set(f.schema.names) - set(batch.schema.names)
                        writer = spill.writer(f, batch.schema if batch.num_columns and rest else None)
                    writer.add(batch, keep)
                    kept += int(np.count_nonzero(keep))
            finally:
                if writer is not None:
                    writer.close()
            return kept, local

        workers = max(1, min(PASS_1_THREADS, os.cpu_count() or 1, len(self.plan.inputs)))
        total_rows = sum(f.rows for f in self.plan.inputs)
        with _bar(total=total_rows, unit="row", unit_scale=True, desc=self.desc, disable=not self.progress) as bar, \
                ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, self.plan.inputs))
        if self.stats is not None:  # merged in input order, so the report lists files as given
            for _, local in results:
                self.stats.rows_in.update(local.rows_in)
                self.stats.rows_kept.update(local.rows_kept)
                self.stats.removed_first += local.removed_first
                self.stats.failed_any += local.failed_any
        return sum(kept for kept, _ in results)

    def batches(self, columns_only: bool = False, spill: ConditionSpill | None = None,
                files: list[InputFile] | None = None, bar=None,
                ) -> Iterator[tuple[InputFile, pa.RecordBatch | pa.Table, np.ndarray]]:
        """Yield ``(file, batch, keep_mask)``; ``columns_only`` reads just the condition columns.

        ``spill`` (from :meth:`count`): each file's keep mask is read from it instead of evaluating the
        conditions, and the columns it holds are not read (:meth:`ConditionSpill.cursor` has them).
        ``files``: a subset of the inputs; ``bar``: a progress bar to update instead of a new one.
        """
        files = self.plan.inputs if files is None else files
        total = sum(f.rows for f in files)
        with (nullcontext(bar) if bar is not None else
              _bar(total=total, unit="row", unit_scale=True, desc=self.desc, disable=not self.progress)) as bar:
            for f in files:
                cols, known = None, None
                if columns_only:
                    cols = sorted({f.columns[c.logical] for c in self.plan.conditions if f.columns.get(c.logical)})
                elif spill is not None:
                    known = spill.keep_mask(f) if f.path in spill.columns else np.zeros(0, bool)
                    if spill.columns.get(f.path):
                        skip = set(spill.columns[f.path])
                        cols = [n for n in f.schema.names if n not in skip]
                kept, offset = 0, 0
                try:
                    if columns_only and not cols:  # nothing to evaluate: all rows pass
                        kept = f.rows
                        bar.update(f.rows)
                        yield f, pa.table({}), np.ones(f.rows, bool)
                    else:
                        src = MappedParquet(f.path)
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


def _keep_freed_pages() -> None:
    """Let Arrow's jemalloc keep freed pages for 10 s instead of 1 s before handing them back.

    Every batch allocates and frees the same sizes; pages handed back are faulted in and zeroed
    again by the next batch (a third of a run's system time). Process-wide, so only for this tool.
    """
    try:
        pa.jemalloc_set_decay_ms(10_000)
    except (NotImplementedError, pa.ArrowException):  # Arrow built without jemalloc, or another pool
        pass


def run_arrow(plan: FilterPlan, out_dir: Path, progress: bool = True) -> tuple[FilterStats, list[int]]:
    """Filter (+ dedup, + shuffle) ``plan.inputs`` into ``out_dir/part_<N>.parquet``; returns stats, part rows."""
    stats = FilterStats([c.name for c in plan.conditions])
    _keep_freed_pages()
    if plan.scratch_dir is not None:
        plan.scratch_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".laion_scratch.", suffix=".tmp", dir=plan.scratch_dir or out_dir))
    try:
        if plan.dedup or plan.shuffle:
            return stats, _run_bucketed(plan, stats, out_dir, scratch, progress)
        return stats, _run_plain(plan, stats, out_dir, scratch, progress)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise UserError(f"no space left for the scratch files in {scratch.parent} or the parts in {out_dir}: "
                        "free some, or give --tmp_dir on another disk") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_plain(plan: FilterPlan, stats: FilterStats, out_dir: Path, scratch: Path, progress: bool) -> list[int]:
    # pass 1: the condition columns only: counts the survivors (to size the parts exactly) and spills them
    spill = ConditionSpill(scratch, plan.inputs)
    total = _Scanner(plan, stats, progress, "count").count(spill)
    sizes = part_sizes(total, plan.num_parts, plan.rows_per_part)
    # a deep queue (in rows, whatever --batch_rows) lets the writer thread catch up after slow batches
    # instead of stalling the reader: 4 -> 12 batches of 64 Ki rows is ~6% of wall time, +120 MB RSS
    depth = max(4, QUEUED_ROWS // max(1, plan.batch_rows))
    writer = PartitionWriter(out_dir, plan.output_schema, sizes, transform=lambda t: align(t, plan.output_schema),
                             compression=plan.compression, queue_depth=depth)
    current, cursor = None, None
    try:
        for f, batch, keep in _Scanner(plan, None, progress, "filter").batches(spill=spill):
            if f.path != current:
                if cursor is not None:
                    cursor.finish()
                current, cursor = f.path, spill.cursor(f) if spill.columns.get(f.path) else None
            kept = int(np.count_nonzero(keep))
            if kept:  # filtered in the writer thread, overlapping the next read (not at all if every row passes)
                spilled = cursor.take(kept) if cursor is not None else None
                writer.write(batch, None if kept == batch.num_rows else keep, spilled)
        if cursor is not None:
            cursor.finish()
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _run_bucketed(plan: FilterPlan, stats: FilterStats, out_dir: Path, scratch: Path, progress: bool) -> list[int]:
    from mindone.laion import dedup as dd  # pandas: imported only when needed (0.2 s of start-up)
    from mindone.laion.shuffle_external import BucketScatter, choose_num_buckets

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
        table = align(table.filter(bool_array(keep)), schema)
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

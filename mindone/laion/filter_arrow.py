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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from mindone.errors import DataError, MindoneError
from mindone.laion.filter_common import DEDUP_KEYS, FilterPlan, FilterStats, InputFile, part_sizes
from mindone.laion.condition_spill import ConditionSpill
from mindone.laion.mapped_parquet import MappedParquet
from mindone.laion.partition_writer import PartitionWriter, bool_array

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


# The passes over the inputs. Each yields ``(file, batch, keep_mask)`` (or counts them) in input order:
#   _count_pass    plain run, pass 1: the condition columns only; counts, and spills masks + values;
#   _spilled_pass  plain run, pass 2: the other columns, each batch's mask read back from the spill;
#   _scan_pass     dedup / shuffle run: every column, the conditions evaluated on each batch.
# Read errors of an input become one line naming it (_read_errors); scratch-disk errors stay OSErrors.


@contextmanager
def _read_errors(f: InputFile) -> Iterator[None]:
    try:
        yield
    except (pa.ArrowException, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{f.path}: cannot read ({first})") from None


def _read_file(plan: FilterPlan, f: InputFile, columns: list[str] | None, bar,
               whole_row_groups: bool = False) -> Iterator[pa.RecordBatch]:
    """``f``'s batches (``columns`` only; None: all), each row group's pages handed back once decoded.

    ``whole_row_groups``: a row group up to WHOLE_ROW_GROUP_ROWS rows is read in one call (cheaper for a
    few narrow columns) instead of in ``plan.batch_rows`` batches.
    """
    src = MappedParquet(f.path)
    try:
        for rg in range(src.file.num_row_groups):
            rg_rows = src.file.metadata.row_group(rg).num_rows
            if whole_row_groups and rg_rows <= WHOLE_ROW_GROUP_ROWS:
                pieces = src.file.read_row_group(rg, columns=columns).to_batches()
            else:
                pieces = src.file.iter_batches(batch_size=plan.batch_rows, row_groups=[rg], columns=columns)
            for batch in pieces:
                bar.update(batch.num_rows)
                yield batch
            src.release(rg)  # decoded: its pages can leave this process's RSS
    finally:
        src.close()


def _condition_mask(plan: FilterPlan, f: InputFile, batch: pa.RecordBatch, stats: FilterStats) -> np.ndarray:
    """Rows of ``batch`` passing every condition; counts what each condition removes into ``stats``."""
    n = batch.num_rows
    alive, left = None, n  # rows passing every condition so far, and how many
    for i, cond in enumerate(plan.conditions):
        physical = f.columns.get(cond.logical)
        if physical is None:  # absent column, --skip_missing_columns given
            continue
        ok = cond.numpy_mask(batch.column(physical))
        if alive is None:
            alive = ok if ok.flags.writeable else ok.copy()
        else:
            np.logical_and(alive, ok, out=alive)
        # removed first here = alive before - alive after (no temporaries for ~ok, alive & ~ok)
        stats.failed_any[i] += n - int(np.count_nonzero(ok))
        now = int(np.count_nonzero(alive))
        stats.removed_first[i] += left - now
        left = now
    return np.ones(n, bool) if alive is None else alive


def _judged_batches(plan: FilterPlan, f: InputFile, columns: list[str] | None, stats: FilterStats, bar,
                    whole_row_groups: bool = False) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """``f``'s batches with their keep masks, the conditions evaluated here; rows in / kept into ``stats``."""
    kept = 0
    with _read_errors(f):
        for batch in _read_file(plan, f, columns, bar, whole_row_groups):
            keep = _condition_mask(plan, f, batch, stats)
            kept += int(np.count_nonzero(keep))
            yield batch, keep
    stats.rows_in[f.path.name] = f.rows
    stats.rows_kept[f.path.name] = kept


def _unjudged_file(f: InputFile, stats: FilterStats, bar) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """A file with no condition column to read (each skipped): all its rows pass, nothing is read."""
    bar.update(f.rows)
    yield pa.table({}), np.ones(f.rows, bool)
    stats.rows_in[f.path.name] = f.rows
    stats.rows_kept[f.path.name] = f.rows


def _count_pass(plan: FilterPlan, stats: FilterStats, spill: ConditionSpill, progress: bool) -> int:
    """Pass 1 on the condition columns only: fills ``stats`` and ``spill``; returns the rows kept.

    Files are evaluated in parallel threads (decoding and numpy release the GIL): one thread would
    leave a core idle while it computes a row group's masks.
    """

    def one(f: InputFile) -> tuple[int, FilterStats]:
        local = FilterStats(stats.condition_names)
        columns = sorted({f.columns[c.logical] for c in plan.conditions if f.columns.get(c.logical)})
        batches = (_judged_batches(plan, f, columns, local, bar, whole_row_groups=True) if columns
                   else _unjudged_file(f, local, bar))
        kept, writer = 0, None
        try:
            for batch, keep in batches:
                if writer is None:  # spill the condition columns, unless pass 2 would have none left to read
                    rest = set(f.schema.names) - set(batch.schema.names)
                    writer = spill.writer(f, batch.schema if batch.num_columns and rest else None)
                writer.add(batch, keep)
                kept += int(np.count_nonzero(keep))
        finally:
            if writer is not None:
                writer.close()
        return kept, local

    workers = max(1, min(PASS_1_THREADS, os.cpu_count() or 1, len(plan.inputs)))
    total_rows = sum(f.rows for f in plan.inputs)
    with _bar(total=total_rows, unit="row", unit_scale=True, desc="count", disable=not progress) as bar, \
            ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, plan.inputs))
    for _, local in results:  # merged in input order, so the report lists files as given
        stats.rows_in.update(local.rows_in)
        stats.rows_kept.update(local.rows_kept)
        stats.removed_first += local.removed_first
        stats.failed_any += local.failed_any
    return sum(kept for kept, _ in results)


def _spilled_pass(plan: FilterPlan, spill: ConditionSpill, progress: bool,
                  ) -> Iterator[tuple[InputFile, pa.RecordBatch, np.ndarray]]:
    """Pass 2: each file's columns not in ``spill`` (:meth:`ConditionSpill.cursor` has those), with pass 1's masks."""
    total = sum(f.rows for f in plan.inputs)
    with _bar(total=total, unit="row", unit_scale=True, desc="filter", disable=not progress) as bar:
        for f in plan.inputs:
            known = spill.keep_mask(f) if f.path in spill.columns else np.zeros(0, bool)
            spilled = set(spill.columns.get(f.path) or ())
            columns = [n for n in f.schema.names if n not in spilled] if spilled else None
            offset = 0
            with _read_errors(f):
                for batch in _read_file(plan, f, columns, bar):
                    n = batch.num_rows
                    keep = known[offset:offset + n]
                    offset += n
                    yield f, batch, keep
            if offset != f.rows:
                raise DataError(f"{f.path}: {f.rows} rows in its footer but {offset} read (changed during the run?)")


def _scan_pass(plan: FilterPlan, stats: FilterStats, progress: bool,
               ) -> Iterator[tuple[InputFile, pa.RecordBatch, np.ndarray]]:
    """One pass over every column of every file, the conditions evaluated on each batch; fills ``stats``."""
    total = sum(f.rows for f in plan.inputs)
    with _bar(total=total, unit="row", unit_scale=True, desc="scatter", disable=not progress) as bar:
        for f in plan.inputs:
            for batch, keep in _judged_batches(plan, f, None, stats, bar):
                yield f, batch, keep


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
        raise MindoneError(f"no space left for the scratch files in {scratch.parent} or the parts in {out_dir}: "
                           "free some, or give --tmp_dir on another disk") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_plain(plan: FilterPlan, stats: FilterStats, out_dir: Path, scratch: Path, progress: bool) -> list[int]:
    # pass 1: the condition columns only: counts the survivors (to size the parts exactly) and spills them
    spill = ConditionSpill(scratch, plan.inputs)
    total = _count_pass(plan, stats, spill, progress)
    sizes = part_sizes(total, plan.num_parts, plan.rows_per_part)
    # a deep queue (in rows, whatever --batch_rows) lets the writer thread catch up after slow batches
    # instead of stalling the reader: 4 -> 12 batches of 64 Ki rows is ~6% of wall time, +120 MB RSS
    depth = max(4, QUEUED_ROWS // max(1, plan.batch_rows))
    writer = PartitionWriter(out_dir, plan.output_schema, sizes, transform=lambda t: align(t, plan.output_schema),
                             compression=plan.compression, queue_depth=depth)
    current, cursor = None, None
    try:
        for f, batch, keep in _spilled_pass(plan, spill, progress):
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
    for f, batch, keep in _scan_pass(plan, stats, progress):
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

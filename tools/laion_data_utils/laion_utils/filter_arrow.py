"""The embedded filter engine: pyarrow, streaming record batches, bounded memory.

Plain filter + repartition: a first pass reads only the condition columns to count the surviving rows
(so the parts can be sized exactly), a second pass streams every column through the conditions into the
part writer. With dedup or shuffle, the surviving rows go through an external bucket pass instead
(:mod:`laion_utils.shuffle_external`). Peak memory is one batch + one row group (+ one bucket), whatever
the input size.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from laion_utils import dedup as dd
from laion_utils.filter_common import DEDUP_KEYS, FilterPlan, FilterStats, InputFile, part_sizes
from laion_utils.partition_writer import PartitionWriter
from laion_utils.shuffle_external import BucketScatter, choose_num_buckets
from mindone.utils.cli import UserError

log = logging.getLogger(__name__)
KEY_PREFIX = "__laion_key_"  # dedup keys, copied under logical names while in buckets


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
        alive = np.ones(batch.num_rows, bool)
        for i, cond in enumerate(self.plan.conditions):
            physical = f.columns.get(cond.logical)
            if physical is None:  # absent column, --skip_missing_columns given
                continue
            ok = cond.numpy_mask(batch.column(physical))
            if self.stats is not None:
                self.stats.failed_any[i] += batch.num_rows - int(np.count_nonzero(ok))
                self.stats.removed_first[i] += int(np.count_nonzero(alive & ~ok))
            alive &= ok
        return alive

    def batches(self, columns_only: bool = False) -> Iterator[tuple[InputFile, pa.Table, np.ndarray]]:
        """Yield ``(file, batch, keep_mask)``; ``columns_only`` reads just the condition columns."""
        total = sum(f.rows for f in self.plan.inputs)
        with tqdm(total=total, unit="row", unit_scale=True, desc=self.desc, disable=not self.progress) as bar:
            for f in self.plan.inputs:
                cols = None
                if columns_only:
                    cols = sorted({f.columns[c.logical] for c in self.plan.conditions if f.columns.get(c.logical)})
                kept = 0
                try:
                    pf = pq.ParquetFile(f.path)
                    if columns_only and not cols:  # nothing to evaluate: all rows pass
                        kept = f.rows
                        yield f, pa.table({}), np.ones(f.rows, bool)
                    else:
                        for batch in pf.iter_batches(batch_size=self.plan.batch_rows, columns=cols):
                            keep = self._masks(f, batch)
                            kept += int(np.count_nonzero(keep))
                            bar.update(batch.num_rows)
                            yield f, pa.Table.from_batches([batch]), keep
                except (pa.ArrowException, OSError) as err:
                    first = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise UserError(f"{f.path}: cannot read ({first})") from None
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
    total = sum(int(np.count_nonzero(keep)) for _, _, keep in _Scanner(plan, stats, progress, "count").batches(True))
    sizes = part_sizes(total, plan.num_parts, plan.rows_per_part)
    writer = PartitionWriter(out_dir, plan.output_schema, sizes, transform=lambda t: align(t, plan.output_schema))
    try:
        for _, table, keep in _Scanner(plan, None, progress, "filter").batches():
            writer.write(table, keep)  # filtered in the writer thread, overlapping the next read
        return stats, writer.close()
    except BaseException:
        writer.abort()
        raise


def _run_bucketed(plan: FilterPlan, stats: FilterStats, out_dir: Path, scratch: Path, progress: bool) -> list[int]:
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
    for f, table, keep in _Scanner(plan, stats, progress, "scatter").batches():
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
    for i, table in tqdm(scatter.buckets(), total=k, desc="dedup", unit="bucket", disable=not progress):
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


def _drain_buckets(scatter: BucketScatter, plan: FilterPlan, sizes: list[int], out_dir: Path,
                   perm_rng: np.random.Generator | None, progress: bool) -> list[int]:
    """Stream buckets in order (each permuted when ``perm_rng`` is given) into the part files."""
    writer = PartitionWriter(out_dir, plan.output_schema, sizes)
    try:
        for _, table in tqdm(scatter.buckets(), total=scatter.num_buckets, desc="write", unit="bucket",
                             disable=not progress):
            if perm_rng is not None:
                table = table.take(pa.array(perm_rng.permutation(table.num_rows)))
            writer.write(table)
        return writer.close()
    except BaseException:
        writer.abort()
        raise

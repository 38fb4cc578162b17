"""The spark filter engine: same semantics as the arrow engine, for clusters (or ``local[*]``).

Each input file is read as its own DataFrame so that its columns are resolved on their own (files of
different subsets spell columns differently), cast to the unified output schema and unioned. One
aggregation gives the per-file and per-condition counts; the write goes to a scratch folder inside
the staging dir and the Spark part files are renamed ``part_<N>.parquet``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mindone.laion.filter_common import DEDUP_KEYS, FilterPlan, FilterStats

log = logging.getLogger(__name__)

_FILE, _ROW, _FAIL, _RAND, _RN = "__laion_file", "__laion_row", "__laion_fail", "__laion_rand", "__laion_rn"


def _spark_type(typ: pa.DataType):
    from pyspark.sql import types as T

    table = {pa.string(): T.StringType(), pa.large_string(): T.StringType(), pa.int64(): T.LongType(),
             pa.int32(): T.IntegerType(), pa.int16(): T.ShortType(), pa.int8(): T.ByteType(),
             pa.float64(): T.DoubleType(), pa.float32(): T.FloatType(), pa.bool_(): T.BooleanType(),
             pa.binary(): T.BinaryType()}
    return table.get(typ)


def create_session(master: str, driver_memory: str, progress: bool = True):
    """The metadata filter's SparkSession (:mod:`mindone.laion.spark_session`)."""
    from mindone.laion.spark_session import create_session as spark_session

    return spark_session(app_name="laion_filter_metadata", master=master, driver_memory=driver_memory,
                         progress=progress)


def run_spark(plan: FilterPlan, out_dir: Path, spark) -> tuple[FilterStats, list[int]]:
    """Run ``plan`` on ``spark``, writing ``out_dir/part_<N>.parquet``; returns stats and rows per part."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    stats = FilterStats([c.name for c in plan.conditions])
    key_names = [f"__laion_key_{k}" for k in DEDUP_KEYS[plan.dedup]] if plan.dedup else []
    frames = []
    for idx, f in enumerate(plan.inputs):
        df = spark.read.parquet(str(f.path))
        oks = []
        for cond in plan.conditions:
            physical = f.columns.get(cond.logical)
            if physical is None:
                oks.append(F.lit(True))
            else:
                oks.append(cond.spark_column(physical, pa.types.is_floating(f.schema.field(physical).type)))
        fail = F.lit(-1)
        for i in reversed(range(len(oks))):
            fail = F.when(~oks[i], F.lit(i)).otherwise(fail)
        cols = []
        for field in plan.output_schema:
            if field.name in f.schema.names:
                cols.append(F.col(f"`{field.name}`").cast(_spark_type(field.type)).alias(field.name))
            else:
                cols.append(F.lit(None).cast(_spark_type(field.type)).alias(field.name))
        cols += [F.lit(idx).alias(_FILE), F.col("_metadata.row_index").alias(_ROW), fail.alias(_FAIL)]
        cols += [(~ok).alias(f"__laion_failed_{i}") for i, ok in enumerate(oks)]
        if plan.dedup:
            cols += [F.col(f"`{f.columns[k]}`").alias(name) for k, name in zip(DEDUP_KEYS[plan.dedup], key_names)]
        frames.append(df.select(*cols))
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)

    aggs = [F.count(F.lit(1)).alias("rows"), F.sum(F.when(F.col(_FAIL) == -1, 1).otherwise(0)).alias("kept")]
    for i in range(len(plan.conditions)):
        aggs.append(F.sum(F.when(F.col(_FAIL) == i, 1).otherwise(0)).alias(f"first_{i}"))
        aggs.append(F.sum(F.col(f"__laion_failed_{i}").cast("long")).alias(f"any_{i}"))
    for row in df.groupBy(_FILE).agg(*aggs).collect():
        name = plan.inputs[row[_FILE]].path.name
        stats.rows_in[name] = int(row["rows"])
        stats.rows_kept[name] = int(row["kept"] or 0)
        for i in range(len(plan.conditions)):
            stats.removed_first[i] += int(row[f"first_{i}"] or 0)
            stats.failed_any[i] += int(row[f"any_{i}"] or 0)
    for f in plan.inputs:  # empty files produce no group
        stats.rows_in.setdefault(f.path.name, 0)
        stats.rows_kept.setdefault(f.path.name, 0)

    kept = df.filter(F.col(_FAIL) == -1)
    total = sum(stats.rows_kept.values())
    if plan.dedup:
        has_key = F.lit(True)
        for name in key_names:
            has_key = has_key & F.col(name).isNotNull()
        window = Window.partitionBy(*key_names).orderBy(_FILE, _ROW)
        firsts = kept.filter(has_key).withColumn(_RN, F.row_number().over(window)).filter(F.col(_RN) == 1)
        kept = firsts.drop(_RN).unionByName(kept.filter(~has_key))
        after = kept.count()
        stats.dedup_removed = total - after
        total = after
    out_cols = [F.col(f"`{name}`") for name in plan.output_schema.names]
    if plan.rows_per_part:
        n = max(1, math.ceil(total / plan.rows_per_part))
    else:
        n = max(1, min(plan.num_parts or 1, total))
    if plan.shuffle:
        kept = kept.withColumn(_RAND, F.rand(plan.seed))
        kept = kept.repartitionByRange(n, _RAND).sortWithinPartitions(_RAND)
    else:
        kept = kept.repartition(n)
    scratch = out_dir / "_spark_output"
    kept.select(*out_cols).write.mode("overwrite").option("compression", plan.compression).parquet(str(scratch))
    return stats, _publish_spark_parts(scratch, out_dir, plan.output_schema)


def _publish_spark_parts(scratch: Path, out_dir: Path, schema: pa.Schema) -> list[int]:
    """Rename Spark's part files (non-empty ones, in partition order) to ``part_<N>.parquet``."""
    files = sorted(p for p in scratch.glob("part-*.parquet"))
    rows = []
    for path in files:
        n = pq.ParquetFile(path).metadata.num_rows
        if n or not rows and path == files[-1]:
            rows.append(n)
            os.replace(path, out_dir / f"part_{len(rows)}.parquet")
    if not rows:
        pq.write_table(schema.empty_table(), out_dir / "part_1.parquet")
        rows.append(0)
    for leftover in scratch.iterdir():
        leftover.unlink()
    scratch.rmdir()
    return rows

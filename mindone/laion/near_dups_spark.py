"""The near-duplicate pass on Spark: shards hashed in executors, candidates found by one shuffle per band.

1. ``parallelize(shard tasks)`` + ``mapPartitions``: each executor hashes its shards with
   :func:`mindone.laion.near_dups.hash_shard` (same per-shard cache files: the cache folder must be on a
   file system every executor sees) and sends the signatures back; the driver concatenates them in shard
   order, as the local run does.
2. Exact duplicates are merged on the driver (:func:`mindone.laion.hash_groups.merge_exact`, one sort).
3. The distinct signatures are parallelised; each emits ``((band, band key), index)`` for every band, a
   ``groupByKey`` gathers each bucket (the one shuffle, keyed by band value), and executors verify every
   pair of a bucket of at most ``max_bucket`` items exactly (:func:`mindone.laion.hash_groups.verified`);
   larger buckets are skipped and counted, as in the local run. The near pairs (few) are collected and
   merged on the driver, so the groups, the keep rule and the drop list are the local run's.

The driver holds every signature and sample id (about 100 bytes a sample): fine for tens of millions of
samples; beyond that, run per subset of parts.
"""

from __future__ import annotations

import logging

import numpy as np

from mindone.laion.hash_groups import (DEFAULT_MAX_BUCKET, GroupStats, band_key, bands, choose_blocks, labels_of,
                                       merge_exact, union, verified)
from mindone.laion.near_dups import ShardHashes, ShardTask, hash_shard

logger = logging.getLogger(__name__)


def create_session(master: str, driver_memory: str = "4g"):
    """The near-duplicate pass's SparkSession (:mod:`mindone.laion.spark_session`): local executors run this
    interpreter (it has the project and Pillow)."""
    from mindone.laion.spark_session import create_session as spark_session

    return spark_session(app_name="laion_find_near_dups", master=master, driver_memory=driver_memory)


def hash_shards_spark(spark, tasks: list[ShardTask], *, data_dir: str, cache_dir: str,
                      max_member_bytes: int) -> tuple[list[ShardHashes], int]:  # fmt: skip
    """The signatures of every shard (in ``tasks`` order) and how many came from cache files."""

    def run(items):
        for index, task in items:
            result, cached = hash_shard(data_dir, cache_dir, task, max_member_bytes)
            yield index, result, cached

    slices = max(1, min(len(tasks), spark.sparkContext.defaultParallelism * 4))
    found = spark.sparkContext.parallelize(list(enumerate(tasks)), slices).mapPartitions(run).collect()
    found.sort(key=lambda item: item[0])
    return [result for _, result, _ in found], sum(1 for *_, cached in found if cached)


def near_groups_spark(spark, hashes: np.ndarray, colours: np.ndarray, *, max_distance: int,
                      max_colour_distance: float, blocks: int | None = None,
                      max_bucket: int = DEFAULT_MAX_BUCKET) -> tuple[np.ndarray, GroupStats]:  # fmt: skip
    """:func:`mindone.laion.hash_groups.near_groups`, with the banding and pair checks done by Spark."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    colours = np.ascontiguousarray(colours, dtype=np.uint64)
    parent = np.arange(len(hashes), dtype=np.int64)
    stats = GroupStats(items=len(hashes))
    reps = merge_exact(hashes, colours, parent)
    stats.distinct_signatures = len(reps)
    stats.blocks = blocks or choose_blocks(max_distance, len(reps))
    plan = bands(max_distance, stats.blocks)
    stats.bands = len(plan)
    sc = spark.sparkContext
    rows = sc.parallelize(list(zip(reps.tolist(), hashes[reps].tolist(), colours[reps].tolist())),
                          max(1, sc.defaultParallelism * 4))

    def keyed(part):
        part = list(part)
        if not part:
            return
        index = np.asarray([p[0] for p in part], dtype=np.int64)
        h = np.asarray([p[1] for p in part], dtype=np.uint64)
        c = np.asarray([p[2] for p in part], dtype=np.uint64)
        for band_no, band in enumerate(plan):
            for key, i, hv, cv in zip(band_key(h, band).tolist(), index.tolist(), h.tolist(), c.tolist()):
                yield (band_no, key), (i, hv, cv)

    def pairs(bucket):
        members = list(bucket[1])
        if len(members) < 2:
            return [("pairs", (np.empty(0, np.int64), np.empty(0, np.int64)))]
        if len(members) > max_bucket:
            return [("capped", len(members))]
        index = np.asarray([m[0] for m in members], dtype=np.int64)
        h = np.asarray([m[1] for m in members], dtype=np.uint64)
        c = np.asarray([m[2] for m in members], dtype=np.uint64)
        i, j = np.triu_indices(len(members), k=1)
        a, b = verified(i, j, h, c, max_distance, max_colour_distance)
        return [("candidates", len(i)), ("pairs", (index[a], index[b]))]

    results = rows.mapPartitions(keyed).groupByKey().flatMap(pairs).filter(
        lambda r: r[0] != "pairs" or len(r[1][0])).collect()
    found_a = [r[1][0] for r in results if r[0] == "pairs"]
    found_b = [r[1][1] for r in results if r[0] == "pairs"]
    stats.candidates = sum(r[1] for r in results if r[0] == "candidates")
    stats.capped_buckets = sum(1 for r in results if r[0] == "capped")
    stats.capped_items = sum(r[1] for r in results if r[0] == "capped")
    if found_a:
        a, b = np.concatenate(found_a), np.concatenate(found_b)
        stats.near_pairs = len(a)
        union(parent, a, b)
    return labels_of(parent), stats

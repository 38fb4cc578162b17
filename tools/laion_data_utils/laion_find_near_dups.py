"""Find near-duplicate images in a download and write a drop list: D/near_duplicates_drop.txt + _report.json.

Every sample of the finished shards of D/part_<id> gets a perceptual hash (64-bit dHash) and a colour code;
samples whose hashes differ in at most --max_distance bits (and whose colours agree) form a group, and all
but one of each group go on the drop list: the one kept has the highest aesthetic score in its json, then
the largest original size, then the smallest sample id. docs/near_duplicates.md explains the choices.

A sample is named part_<id>/<shard>/<key> on the drop list (img2dataset keys repeat across parts). Give
the list to the stats / csv tools (--drop_list, with --filtered_output_dir for tars) or to the trainer
(--filter_drop_list): all three leave out the same samples, counted as filtered_drop_list.

Hashes are cached per shard (--cache_dir, default D/near_dups_cache), written atomically: a killed run,
run again, hashes only the shards it had not finished. --distributor pyspark hashes and groups on Spark.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from mindone.laion import near_dups
from mindone.laion.hash_groups import DEFAULT_MAX_BUCKET, near_groups
from mindone.laion.shard_filter import DEFAULT_MAX_MEMBER_BYTES
from mindone.utils.cli import UserError, existing_folder, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser

logger = logging.getLogger("laion_find_near_dups")

OPTIONS: list[Option] = [
    Option("data_dir", str, None, "folder holding the part_<id> folders of a download", required=True, group=None),
    Option("parts", str, None, "only these part ids (default: every part_<id> folder)", multiple=True, group=None),
    Option("dataset_type", str, "webdataset", "layout of the download: webdataset (part_<id>/00000.tar) or files "
           "(part_<id>/00000/<key>.jpg)", choices=near_dups.LAYOUTS, group=None),
    Option("max_distance", int, near_dups.DEFAULT_MAX_DISTANCE, "largest Hamming distance (bits of 64) between "
           "the hashes of near duplicates; 8 catches resizes, re-encodes, overlays and crops of ~1-2%% a side",
           group=None),
    Option("max_colour_distance", int, near_dups.DEFAULT_MAX_COLOUR_DISTANCE, "largest difference of a "
           "quarter's mean colour channel, in steps of 8/255 (keeps recoloured images apart)", group=None),
    Option("output", str, None, "the drop list to write (default: <data_dir>/near_duplicates_drop.txt); the "
           "report goes beside it as <name>_report.json", group=None),
    Option("cache_dir", str, None, "per-shard hash files (default: <data_dir>/near_dups_cache)", group=None),
    Option("processes", int, min(8, os.cpu_count() or 1), "hashing worker processes on this machine (one shard "
           "each at a time)", group=None),
    Option("blocks", int, None, "split the 64 bits into this many blocks (> max_distance; unset: chosen for "
           "the number of samples, docs/near_duplicates.md)", group=None),
    Option("max_bucket", int, DEFAULT_MAX_BUCKET, "a band bucket with more distinct hashes is skipped in that "
           "band and counted in the report (bounds the pairs checked)", group=None),
    Option("max_member_mb", int, DEFAULT_MAX_MEMBER_BYTES >> 20, "refuse a shard holding a member larger than this",
           group=None),
    Option("distributor", str, "multiprocessing", "multiprocessing (this machine) or pyspark (hashing in "
           "executors, grouping by one shuffle per band)", choices=("multiprocessing", "pyspark"), group=None),
    Option("spark_master", str, None, "with --distributor pyspark: Spark master URL (spark://host:7077, local[8]); "
           "the data and cache folders must be shared by the executors", group=None),
    Option("spark_driver_memory", str, "4g", "with --distributor pyspark: spark.driver.memory", group=None),
]
PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    return options_parser(OPTIONS, __doc__, **PARSER)


def _hash_one(job):
    return near_dups.hash_shard(*job)


def hash_local(tasks, data_dir: Path, cache_dir: Path, processes: int, max_member_bytes: int):
    """Every shard's signatures, in ``tasks`` order; ``processes`` workers; and how many came from cache."""
    jobs = [(data_dir, cache_dir, task, max_member_bytes) for task in tasks]
    bar = tqdm(total=len(jobs), desc="hash shards", unit="shard")
    results, cached = [], 0
    if processes <= 1 or len(jobs) <= 1:
        found = map(_hash_one, jobs)
        pool = None
    else:
        pool = get_context("fork").Pool(min(processes, len(jobs)))
        found = pool.imap(_hash_one, jobs)
    try:
        for result, from_cache in found:
            results.append(result)
            cached += from_cache
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return results, cached


def main(argv: Sequence[str] | None = None) -> int:
    args = resolve_config(OPTIONS, argv, __doc__, **PARSER)
    setup_cli_logging()
    data_dir = existing_folder(args.data_dir, "--data_dir")
    if not 0 <= args.max_distance < 64:
        raise UserError(f"--max_distance must be 0..63, got {args.max_distance}")
    if args.blocks is not None and not args.max_distance < args.blocks <= 64:
        raise UserError(f"--blocks must be more than --max_distance and at most 64, got {args.blocks}")
    if args.processes < 1 or args.max_bucket < 2 or args.max_member_mb < 1 or args.max_colour_distance < 0:
        raise UserError("--processes and --max_member_mb must be at least 1, --max_bucket at least 2, "
                        "--max_colour_distance at least 0")
    if args.spark_master and args.distributor != "pyspark":
        raise UserError("--spark_master needs --distributor pyspark")
    out = Path(args.output) if args.output else data_dir / "near_duplicates_drop.txt"
    report_path = out.with_name(out.stem.removesuffix("_drop") + "_report.json")
    cache_dir = Path(args.cache_dir) if args.cache_dir else data_dir / "near_dups_cache"
    tasks, problems = near_dups.list_shards(data_dir, args.parts, args.dataset_type)
    for line in problems:
        logger.warning(line)
    if not tasks:
        raise UserError(f"--data_dir {data_dir}: no finished {args.dataset_type} shard to hash")
    start = time.time()
    spark = None
    max_member_bytes = args.max_member_mb << 20
    if args.distributor == "pyspark":
        from mindone.laion import near_dups_spark

        spark = near_dups_spark.create_session(args.spark_master or "local[*]", args.spark_driver_memory)
        shards, cached = near_dups_spark.hash_shards_spark(spark, tasks, data_dir=str(data_dir),
                                                           cache_dir=str(cache_dir), max_member_bytes=max_member_bytes)
    else:
        shards, cached = hash_local(tasks, data_dir, cache_dir, args.processes, max_member_bytes)
    hashed_s = time.time() - start
    sig = near_dups.Signatures.concat(shards)
    logger.info("%d samples in %d shards hashed in %.1f s (%d shards from the cache), %d undecodable",
                len(sig.ids), len(shards), hashed_s, cached, sig.undecodable)
    settings = dict(max_distance=args.max_distance, max_colour_distance=args.max_colour_distance)
    if spark is not None:
        labels, stats = near_dups_spark.near_groups_spark(spark, sig.hashes, sig.colours, blocks=args.blocks,
                                                          max_bucket=args.max_bucket, **settings)
    else:
        bar = tqdm(desc="group (bands)", unit="band")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        labels, stats = near_groups(sig.hashes, sig.colours, blocks=args.blocks, max_bucket=args.max_bucket,
                                    progress=progress, **settings)
        bar.close()
    drop = near_dups.choose_kept(labels, sig)
    extra = {"shards": len(shards), "shards_from_cache": cached, "shards_left_out": len(problems),
             "distributor": args.distributor, "seconds": {"hash": round(hashed_s, 1),
                                                           "total": round(time.time() - start, 1)}}
    report = near_dups.write_results(out, report_path, sig, labels, drop, stats=stats, settings=settings, extra=extra)
    if stats.capped_buckets:
        logger.warning("%d band buckets over --max_bucket %d were skipped (%d items): see the report",
                       stats.capped_buckets, args.max_bucket, stats.capped_items)
    logger.info("%d groups, %d of %d samples dropped: %s (report %s)", report["groups"], report["dropped"],
                report["samples"], out, report_path)
    if spark is not None:
        spark.stop()
    return 0


if __name__ == "__main__":
    run_main(main)

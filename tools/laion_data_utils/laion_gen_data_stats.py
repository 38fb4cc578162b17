"""Write D/part_<id>_stats.csv (file_path,num_samples) for every part_<id> folder of webdataset shards.

num_samples is counted from each tar's headers (samples with both an image and a caption member) and
checked against the shard's _stats.json; a shard that is unfinished, truncated, unreadable or disagrees
with its _stats.json is reported and left out (--strict makes that an error).

Each run replaces (atomically) the csv of every part it scans, so the csv always reflects this scan: a
part with no good shard left gets a header-only csv, which the training loader skips (and a loader given
only such parts stops with one line, "no shard with samples"). With --strict, a part holding a shard
that has to be left out gets no csv at all: its existing part_<id>_stats.csv (and all_stats.csv, with
--all_stats) is removed, and the error line names what was removed.

Post-download filters (--min_size, --min_aesthetic, ...) need --filtered_output_dir F: the samples whose
json passes are copied into F/part_<id>/ shards, with F/part_<id>_stats.csv. Train on F and the counts are
exact. (Or keep D and give the training loader the same thresholds: build_dataset(filters=...).) The same
holds for --drop_list FILE: the samples it names (part_<id>/<shard>/<key>, e.g. the near-duplicate list of
laion_find_near_dups.py) are left out of the copies; the trainer's --filter_drop_list skips the same ones.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from mindone.data.annotations import ALL_STATS_CSV, annotation_csv_name, write_annotation_csv
from mindone.laion.annotations import PartStats, remove_stale, select_parts, tar_part_stats
from mindone.laion.sample_filters import FILTER_OPTIONS, describe, filters_from_args
from mindone.laion.shard_filter import DEFAULT_MAX_MEMBER_BYTES, ShardFilterError, filter_shard
from mindone.utils.cli import UserError, existing_folder, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser

logger = logging.getLogger("laion_gen_data_stats")


OPTIONS: list[Option] = [
    Option("data_dir", str, None, "folder holding the part_<id> folders of a download", required=True, group=None),
    Option("parts", str, None, "only these part ids (default: every part_<id> folder)", multiple=True, group=None),
    Option("strict", bool, False, "exit with an error if any shard has to be left out; such a part gets no csv: its "
           "existing part_<id>_stats.csv (and all_stats.csv with --all_stats) is removed, never kept stale",
           action="store_true", group=None),
    Option("all_stats", bool, False, "also write all_stats.csv covering every part", action="store_true", group=None),
    Option("workers", int, 8, "shards checked at once (I/O-bound on cold or network disks)", group=None),
    Option("filtered_output_dir", str, None, "with filters: write the passing samples as new shards here", group=None),
    Option("max_member_mb", int, DEFAULT_MAX_MEMBER_BYTES >> 20, "with filters: refuse a shard holding a member "
           "larger than this (each member is read whole)", group=None),
    Option("allow_outside_data_dir", bool, False, "also list shards/images that are symlinks leading out of "
           "--data_dir (default: left out unread, reported)", action="store_true", group=None),
    *FILTER_OPTIONS,
]
PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    return options_parser(OPTIONS, __doc__, **PARSER)


def write_part_stats(root: Path, part_id: str, stats: PartStats) -> None:
    path = write_annotation_csv(root / annotation_csv_name(part_id, "webdataset"), "webdataset", stats.rows)
    logger.info("%s: %d shards, %d samples", path, len(stats.rows), stats.total)


def main(argv: Sequence[str] | None = None) -> int:
    args = resolve_config(OPTIONS, argv, __doc__, **PARSER)
    setup_cli_logging()
    data_dir = existing_folder(args.data_dir, "--data_dir")
    filters = filters_from_args(args)
    if filters.active and not args.filtered_output_dir:
        raise UserError("post-download filters need --filtered_output_dir (or give them to the training loader instead)")
    if args.max_member_mb < 1:
        raise UserError(f"--max_member_mb must be at least 1, got {args.max_member_mb}")
    out_dir = Path(args.filtered_output_dir) if args.filtered_output_dir else None
    if out_dir is not None and out_dir.resolve() == data_dir.resolve():
        raise UserError("--filtered_output_dir must differ from --data_dir")
    parts = select_parts(data_dir, args.parts)
    all_rows: dict[Path, list[tuple[str, int]]] = {data_dir: [], **({out_dir: []} if out_dir else {})}
    problems: list[str] = []
    reasons: Counter = Counter()
    withheld: list[str] = []  # --strict: parts left without a csv
    removed: list[str] = []  # stale csvs deleted for them
    for part_id, part_dir in tqdm(parts, desc="parts", unit="part"):
        stats = tar_part_stats(data_dir, part_dir, args.workers, allow_outside=args.allow_outside_data_dir)
        for line in stats.problems:
            logger.warning(line)
        problems += stats.problems
        if args.strict and stats.problems:
            # nothing is written for a part that is not clean, and an earlier csv of it must not outlive the scan
            withheld.append(part_id)
            for root in all_rows:
                if remove_stale(root / annotation_csv_name(part_id, "webdataset")):
                    removed.append(str(root / annotation_csv_name(part_id, "webdataset")))
            continue
        if not stats.rows:
            logger.warning("part %s: no complete tar shard; its stats csv lists none (a loader skips the part)", part_id)
        write_part_stats(data_dir, part_id, stats)
        all_rows[data_dir] += stats.rows
        if out_dir is not None:
            for rel, _ in tqdm(stats.rows, desc=f"filter part_{part_id}", unit="shard", leave=False):
                try:
                    filter_shard(data_dir / rel, out_dir / rel, filters, reasons, max_member_bytes=args.max_member_mb << 20)
                except ShardFilterError as err:
                    raise UserError(str(err)) from None
            out_part = out_dir / f"part_{part_id}"
            # only the copies of this scan's shards: a copy left from an earlier run must not be listed
            names = [Path(rel).name[: -len(".tar")] for rel, _ in stats.rows]
            filtered = tar_part_stats(out_dir, out_part, only=names) if out_part.is_dir() else PartStats()
            write_part_stats(out_dir, part_id, filtered)
            all_rows[out_dir] += filtered.rows
    if args.strict and problems:
        if args.all_stats:
            removed += [str(root / ALL_STATS_CSV) for root in all_rows if remove_stale(root / ALL_STATS_CSV)]
        fate = f"removed the earlier {', '.join(removed)}" if removed else "none existed"
        raise UserError(f"{len(problems)} shard(s) left out, first: {problems[0]}; --strict: no stats csv for "
                        f"part(s) {', '.join(withheld)} ({fate})")
    if args.all_stats:
        for root, rows in all_rows.items():
            write_annotation_csv(root / ALL_STATS_CSV, "webdataset", rows)
    if out_dir is not None:
        logger.info("filters %s dropped: %s", describe(filters), dict(reasons) or "nothing")
    logger.info("%d samples in %d shards%s", sum(n for _, n in all_rows[data_dir]), len(all_rows[data_dir]),
                f"; {len(problems)} shard(s) left out" if problems else "")  # fmt: skip
    return 0


if __name__ == "__main__":
    run_main(main)

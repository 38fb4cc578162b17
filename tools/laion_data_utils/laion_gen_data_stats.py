"""Write D/part_<id>_stats.csv (file_path,num_samples) for every part_<id> folder of webdataset shards.

num_samples is counted from each tar's headers (samples with both an image and a caption member) and
checked against the shard's _stats.json; a shard that is unfinished, truncated, unreadable or disagrees
with its _stats.json is reported and left out (--strict makes that an error). Post-download filters, when
given, read each sample's json and count only the samples that pass; the data loader must then be given
the same filters so that it yields exactly the counted samples.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from mindone.utils.cli import UserError, run_main, setup_cli_logging

from laion_utils.annotations import find_part_dirs, tar_part_stats, write_csv
from laion_utils.sample_filters import SampleFilter

logger = logging.getLogger("laion_gen_data_stats")
HEADER = ("file_path", "num_samples")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="folder holding the part_<id> folders of a download")
    parser.add_argument("--parts", nargs="*", help="only these part ids (default: every part_<id> folder)")
    parser.add_argument("--strict", action="store_true", help="exit with an error if any shard has to be left out")
    parser.add_argument("--all_stats", action="store_true", help="also write D/all_stats.csv covering every part")
    SampleFilter.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging()
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data_dir {data_dir} is not a folder")
    sample_filter = SampleFilter.from_args(args)
    parts = find_part_dirs(data_dir)
    if args.parts:
        wanted = set(args.parts)
        parts = [p for p in parts if p[0] in wanted]
        missing = wanted - {p[0] for p in parts}
        if missing:
            raise UserError(f"--parts: no folder {data_dir}/part_{sorted(missing)[0]}")
    if not parts:
        raise UserError(f"--data_dir {data_dir} has no part_<id> folders")
    if sample_filter.active:
        logger.info("post-download filters: %s (give the loader the same filters)", sample_filter.describe())
    all_rows: list[tuple[str, int]] = []
    problems: list[str] = []
    for part_id, part_dir in tqdm(parts, desc="parts", unit="part"):
        stats = tar_part_stats(data_dir, part_dir, sample_filter)
        for line in stats.problems:
            logger.warning(line)
        problems += stats.problems
        if args.strict and stats.problems:
            continue  # nothing is written for a part that is not clean
        if not stats.rows:
            logger.warning("part %s: no complete tar shard, no stats csv written", part_id)
            continue
        write_csv(data_dir / f"part_{part_id}_stats.csv", HEADER, stats.rows)
        all_rows += stats.rows
        extra = f", {stats.filtered_out} filtered out" if sample_filter.active else ""
        logger.info("part %s: %d shards, %d samples%s", part_id, len(stats.rows), stats.total, extra)
    if args.strict and problems:
        raise UserError(f"{len(problems)} shard(s) left out, first: {problems[0]}")
    if args.all_stats:
        write_csv(data_dir / "all_stats.csv", HEADER, all_rows)
    logger.info("%d samples in %d shards%s", sum(n for _, n in all_rows), len(all_rows),
                f"; {len(problems)} shard(s) left out" if problems else "")  # fmt: skip
    return 0


if __name__ == "__main__":
    run_main(main)

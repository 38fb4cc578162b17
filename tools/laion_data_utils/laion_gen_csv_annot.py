"""Write D/part_<id>.csv (dir,text) for every part_<id> folder downloaded with output_format=files.

dir is the image path relative to D (part_1/00000/000000000.jpg), text its caption. Only shards img2dataset
finished and whose content agrees with their _stats.json are listed. A sample without an image, without a
caption file or with an empty caption is skipped and counted, never given a made-up caption.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from mindone.utils.cli import UserError, run_main, setup_cli_logging

from laion_utils.annotations import files_part_annotations, find_part_dirs, write_csv
from laion_utils.sample_filters import add_filter_arguments, describe, filters_from_args

logger = logging.getLogger("laion_gen_csv_annot")
HEADER = ("dir", "text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="folder holding the part_<id> folders of a files-format download")
    parser.add_argument("--parts", nargs="*", help="only these part ids (default: every part_<id> folder)")
    parser.add_argument("--strict", action="store_true", help="exit with an error if any shard has to be left out")
    add_filter_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging()
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data_dir {data_dir} is not a folder")
    sample_filter = filters_from_args(args)
    parts = find_part_dirs(data_dir)
    if args.parts:
        parts = [p for p in parts if p[0] in set(args.parts)]
    if not parts:
        raise UserError(f"--data_dir {data_dir} has no part_<id> folders" + (" matching --parts" if args.parts else ""))
    if sample_filter.active:
        logger.info("post-download filters: %s", describe(sample_filter))
    skipped: Counter = Counter()
    problems: list[str] = []
    total = 0
    for part_id, part_dir in tqdm(parts, desc="parts", unit="part"):
        annot = files_part_annotations(data_dir, part_dir, sample_filter)
        for line in annot.problems:
            logger.warning(line)
        problems += annot.problems
        skipped.update(annot.skipped)
        if args.strict and annot.problems:
            continue
        if not annot.rows:
            logger.warning("part %s: no captioned image in finished shards, no csv written", part_id)
            continue
        write_csv(data_dir / f"part_{part_id}.csv", HEADER, annot.rows)
        total += len(annot.rows)
        logger.info("part %s: %d samples", part_id, len(annot.rows))
    skipped = +skipped
    logger.info("%d samples written; skipped: %s", total, dict(skipped) or "none")
    if args.strict and problems:
        raise UserError(f"{len(problems)} shard(s) left out, first: {problems[0]}")
    return 0


if __name__ == "__main__":
    run_main(main)

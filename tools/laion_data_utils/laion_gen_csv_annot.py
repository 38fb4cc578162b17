"""Write D/part_<id>.csv (dir,text) for every part_<id> folder downloaded with output_format=files.

dir is the image path relative to D (part_1/00000/000000000.jpg), text its caption. Only shards img2dataset
finished and whose content agrees with their _stats.json are listed. A sample without an image, without a
caption file or with an empty caption is skipped and counted, never given a made-up caption.
Post-download filters (--min_size, ..., --drop_list FILE: the samples a drop list names, e.g. the
near-duplicate list of laion_find_near_dups.py) leave samples out of the csv, counted per filter; the
trainer's --filter_<name> flags skip the same samples.

Each run replaces (atomically) the csv of every part it scans: a part with no usable sample left gets a
header-only csv, which the training loader skips. With --strict, a part holding a shard that has to be
left out gets no csv: its existing part_<id>.csv is removed, and the error line says so.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from typing import Sequence

from tqdm import tqdm

from mindone.data.annotations import annotation_csv_name, write_annotation_csv
from mindone.laion.annotations import files_part_annotations, remove_stale, select_parts
from mindone.laion.sample_filters import FILTER_OPTIONS, describe, filters_from_args
from mindone.utils.cli import UserError, existing_folder, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser

logger = logging.getLogger("laion_gen_csv_annot")


OPTIONS: list[Option] = [
    Option("data_dir", str, None, "folder holding the part_<id> folders of a files-format download", required=True,
           group=None),
    Option("parts", str, None, "only these part ids (default: every part_<id> folder)", multiple=True, group=None),
    Option("strict", bool, False, "exit with an error if any shard has to be left out; such a part gets no csv "
           "(its existing part_<id>.csv is removed, never kept stale)", action="store_true", group=None),
    Option("allow_outside_data_dir", bool, False, "also list shards/images that are symlinks leading out of "
           "--data_dir (default: left out unread, reported)", action="store_true", group=None),
    *FILTER_OPTIONS,
]
PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    return options_parser(OPTIONS, __doc__, **PARSER)


def main(argv: Sequence[str] | None = None) -> int:
    args = resolve_config(OPTIONS, argv, __doc__, **PARSER)
    setup_cli_logging()
    data_dir = existing_folder(args.data_dir, "--data_dir")
    sample_filter = filters_from_args(args)
    parts = select_parts(data_dir, args.parts)
    if sample_filter.active:
        logger.info("post-download filters: %s", describe(sample_filter))
    skipped: Counter = Counter()
    problems: list[str] = []
    total = 0
    withheld: list[str] = []  # --strict: parts left without a csv
    removed: list[str] = []  # stale csvs deleted for them
    for part_id, part_dir in tqdm(parts, desc="parts", unit="part"):
        annot = files_part_annotations(data_dir, part_dir, sample_filter, allow_outside=args.allow_outside_data_dir)
        for line in annot.problems:
            logger.warning(line)
        problems += annot.problems
        skipped.update(annot.skipped)
        if args.strict and annot.problems:
            withheld.append(part_id)
            if remove_stale(data_dir / annotation_csv_name(part_id, "files")):
                removed.append(str(data_dir / annotation_csv_name(part_id, "files")))
            continue
        if not annot.rows:
            logger.warning("part %s: no captioned image in finished shards; its csv lists none (a loader skips the part)", part_id)
        write_annotation_csv(data_dir / annotation_csv_name(part_id, "files"), "files", annot.rows)
        total += len(annot.rows)
        logger.info("part %s: %d samples", part_id, len(annot.rows))
    skipped = +skipped
    logger.info("%d samples written; skipped: %s", total, dict(skipped) or "none")
    if args.strict and problems:
        fate = f"removed the earlier {', '.join(removed)}" if removed else "none existed"
        raise UserError(f"{len(problems)} shard(s) left out, first: {problems[0]}; --strict: no csv for "
                        f"part(s) {', '.join(withheld)} ({fate})")
    return 0


if __name__ == "__main__":
    run_main(main)

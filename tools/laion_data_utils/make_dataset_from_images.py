"""Make a training dataset from your own captioned images, in the same layout as a LAION download.

    python make_dataset_from_images.py --image_dir pokemon/ --output_dir data/ [--output_format files]

Captions: metadata.jsonl ({"file_name", "text"} per line), metadata.csv (file_name,text), or a .txt beside
each image. Output: data/part_1/00000.tar ... + data/part_1_stats.csv (webdataset), or data/part_1/00000/
... + data/part_1.csv (files). Train with --dataset_type webdataset|files on data/ as with LAION. Images
without a caption (or with an empty one) and unreadable images are skipped and counted.

Rerunning replaces the part: the new shards are built in a hidden folder beside it and swapped in at the
end, the old csv removed just before the swap, so a run killed at any point leaves either the old part
with its csv or no csv at all, never a csv pointing at shards that are gone.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Sequence

from mindone.data.annotations import annotation_csv_name, write_annotation_csv
from mindone.laion.annotations import files_part_annotations, tar_part_stats
from mindone.laion.own_images import build_dir_for, collect_samples, merge_counts, publish_part, sweep_leftovers, write_shards
from mindone.utils.cli import UserError, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser

logger = logging.getLogger("make_dataset_from_images")


OPTIONS: list[Option] = [
    Option("image_dir", str, None, "folder of images (searched recursively) and captions", required=True, group=None),
    Option("output_dir", str, None, "dataset folder; the part goes to <output_dir>/part_<part_id>", required=True,
           group=None),
    Option("output_format", str, "webdataset", "webdataset: tar shards + part_<id>_stats.csv; files: one folder per "
           "shard + part_<id>.csv (default: webdataset)", choices=("webdataset", "files"), group=None),
    Option("part_id", str, "1", "part folder name suffix (default: 1)", group=None),
    Option("samples_per_shard", int, 10000, "images per tar / folder (default: 10000)", group=None),
    Option("image_size", int, None, "shrink images whose smaller side exceeds this (re-encoded as jpg); default keeps "
           "the original bytes", group=None),
    Option("allow_outside_image_dir", bool, False, "read images and captions that are symlinks leading out of "
           "--image_dir (default: skipped and counted)", action="store_true", group=None),
]
PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    return options_parser(OPTIONS, __doc__, **PARSER)


def checked_rows(out: Path, build_dir: Path, output_format: str) -> list[tuple[str, object]]:
    """The csv rows of the shards just written (paths relative to ``out``); UserError if one does not check out."""
    if output_format == "webdataset":
        scanned = tar_part_stats(out, build_dir)
        problems, rows = scanned.problems, scanned.rows
    else:
        annot = files_part_annotations(out, build_dir)
        problems, rows = annot.problems, annot.rows
    if problems:
        raise UserError(f"written shards do not check out: {problems[0]}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = resolve_config(OPTIONS, argv, __doc__, **PARSER)
    setup_cli_logging()
    if args.samples_per_shard < 1:
        raise UserError(f"--samples_per_shard must be at least 1, got {args.samples_per_shard}")
    image_dir, out = Path(args.image_dir), Path(args.output_dir)
    collected = collect_samples(image_dir, allow_outside=args.allow_outside_image_dir)
    if not collected.samples:
        raise UserError(f"--image_dir {image_dir}: no captioned image found (skipped: {merge_counts(collected.skipped) or 'none'})")
    part_dir = out / f"part_{args.part_id}"
    if image_dir.resolve().is_relative_to(part_dir.resolve()):
        raise UserError(f"--image_dir {image_dir} is inside {part_dir}, which this run replaces: use another --output_dir or --part_id")
    for leftover in sweep_leftovers(part_dir):
        logger.info("removed %s, left by an interrupted run", leftover)
    # Build beside the part, check, then swap it in: the old part and its csv stay usable until the swap,
    # and the csv is removed before it (see publish_part), so a killed run never leaves a csv pointing at
    # shards that are gone.
    build_dir = build_dir_for(part_dir)
    stale = [out / annotation_csv_name(args.part_id, kind) for kind in ("webdataset", "files")]  # either format's csv
    try:
        write_skips = write_shards(collected.samples, build_dir, args.output_format, args.samples_per_shard,
                                   args.image_size, image_dir)  # fmt: skip
        rows = checked_rows(out, build_dir, args.output_format)
        publish_part(build_dir, part_dir, stale)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    prefix = f"{build_dir.name}/"
    rows = [(f"{part_dir.name}/{rel[len(prefix):]}", value) for rel, value in rows]  # paths once swapped in
    write_annotation_csv(out / annotation_csv_name(args.part_id, args.output_format), args.output_format, rows)
    written = sum(n for _, n in rows) if args.output_format == "webdataset" else len(rows)
    logger.info("%d samples -> %s; skipped: %s", written, part_dir, merge_counts(collected.skipped, write_skips) or "none")
    return 0


if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""Filter LAION metadata parquet down to what SD 2.x training needs, then dedup/shuffle/repartition.

    python tools/laion_data_utils/laion_filter_metadata.py --data_dir laion_2b_en_ae4.5 --output_dir laion_2b_en_filtered

Defaults are seed 001's SD 2.1-base conditions: WIDTH>=512, HEIGHT>=512, punsafe<=0.98,
AESTHETIC_SCORE>=4.5. A null or NaN value fails every condition on its column. Output:
``part_1.parquet`` ... ``part_<N>.parquet`` (every input column kept) and ``filter_report.json``,
published atomically (nothing appears in --output_dir until the job has succeeded).
"""

from __future__ import annotations

import os

# before numpy loads: its BLAS threads would spin on sched_yield beside the decoding ones (~1% of a
# run's CPU), and nothing here does linear algebra
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path
from typing import Any, Sequence

from mindone.data.filter_vocab import METADATA_FILTERS
from mindone.laion.conditions import build_conditions
from mindone.laion.filter_common import FilterPlan, inspect_inputs, list_parquet_files, unify_output_schema
from mindone.laion.report import build_report, check_figures, format_check, write_report
from mindone.laion.staging import check_target, staged_directory
from mindone.utils.cli import UserError, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser

log = logging.getLogger("laion_filter_metadata")
COMPRESSION_CHOICES = ["snappy", "zstd", "lz4", "gzip", "none"]


def condition_value(raw: Any) -> Any:
    """A condition's flag or yaml value as given (a number, ``none``, a list of languages): read by
    :func:`mindone.laion.conditions.build_conditions`, which names the flag when it is not one."""
    return raw


CONDITIONS = "conditions (a value of 'none' turns a condition off)"
OPTIONS: list[Option] = [
    Option("task", str, "filter", "filter: write the filtered parts; check: print seed 001's check figures for --data_dir",
           choices=("filter", "check"), group=None),
    Option("data_dir", str, None, "folder of input parquet files (downloaded metadata, or a filtered output)", group=None),
    Option("output_dir", str, None, "folder to create with part_<N>.parquet and filter_report.json", group=None),
    # one flag per metadata filter of the vocabulary, its old names accepted too
    *[Option(spec.name, condition_value, spec.metadata_default, spec.metadata_help, aliases=spec.aliases,
             group=CONDITIONS) for spec in METADATA_FILTERS],
    Option("skip_missing_columns", bool, False, "skip a condition in files lacking its column (default: stop with an error)",
           action="store_true", group=CONDITIONS),
    Option("dedup", str, "none", "drop later rows repeating the key of an earlier row (first occurrence kept)",
           choices=("none", "url", "url_text", "hash"), group="output"),
    Option("shuffle", bool, False, "globally shuffle the output rows (seeded)", action="store_true", group="output"),
    Option("seed", int, 0, "seed of the shuffle", group="output"),
    Option("num_parts", int, None, "number of output parts (default: number of input files)", group="output"),
    Option("rows_per_part", int, None, "rows per output part (instead of --num_parts)", group="output"),
    Option("overwrite", bool, False, "replace an existing non-empty --output_dir", action="store_true", group="output"),
    Option("compression", str, "snappy", "parquet codec of the output parts (snappy: like LAION's own files; none: "
           "faster to write, parts about a third bigger)", choices=COMPRESSION_CHOICES, group="output"),
    Option("engine", str, "arrow", "arrow: embedded streaming engine (one machine); spark: pyspark (local or a cluster)",
           choices=("arrow", "spark"), group="engine"),
    Option("master", str, "local[*]", "spark master URL (spark engine)", group="engine"),
    Option("driver_memory", str, "8g", "spark driver memory (spark engine)", group="engine"),
    Option("batch_rows", int, 65_536, "rows per record batch (arrow engine)", group="engine"),
    Option("shuffle_bucket_mb", int, 256, "target size of one shuffle/dedup bucket; bounds peak memory (arrow engine)",
           group="engine"),
    Option("shuffle_buckets", int, 0, "number of buckets (0: from --shuffle_bucket_mb)", group="engine"),
    Option("tmp_dir", str, None, "scratch folder for shuffle/dedup buckets, or a plain run's pass-1 masks and condition "
           "values (default: inside the staging dir)", group="engine"),
    Option("no_progress", bool, False, "no progress bars", action="store_true", group="engine"),
    Option("verbose", bool, False, "debug logging", action="store_true", group="engine"),
]
PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter,
              config_help="yaml file whose keys are these flags' names (flags given here win)")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(OPTIONS, __doc__, **PARSER)


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags over yaml over defaults."""
    args = resolve_config(OPTIONS, argv, __doc__, **PARSER)
    if not args.data_dir:
        raise UserError("--data_dir is required")
    if args.task == "filter" and not args.output_dir:
        raise UserError("--output_dir is required for --task filter")
    if args.num_parts is not None and args.num_parts < 1:
        raise UserError("--num_parts must be >= 1")
    if args.rows_per_part is not None and args.rows_per_part < 1:
        raise UserError("--rows_per_part must be >= 1")
    if args.num_parts and args.rows_per_part:
        raise UserError("give --num_parts or --rows_per_part, not both")
    return args


def run_filter(args: argparse.Namespace, spark=None) -> dict[str, Any]:
    """Run the filter job described by parsed ``args``; returns the report. ``spark``: a session to reuse."""
    data_dir, out_dir = Path(args.data_dir), Path(args.output_dir)
    conditions = build_conditions(vars(args))
    dedup = None if args.dedup == "none" else args.dedup
    check_target(out_dir, args.overwrite, protect=[data_dir])
    inputs = inspect_inputs(list_parquet_files(data_dir), conditions, dedup, args.skip_missing_columns)
    skipped: dict[str, list[str]] = {}
    for f in inputs:
        for c in conditions:
            if f.columns.get(c.logical) is None:
                skipped.setdefault(c.name, []).append(f.path.name)
    for name, files in skipped.items():
        log.warning("condition %s skipped in %d file(s) lacking its column, e.g. %s", name, len(files), files[0])
    plan = FilterPlan(
        inputs=inputs, conditions=conditions, output_schema=unify_output_schema(inputs), dedup=dedup,
        shuffle=args.shuffle, seed=args.seed, num_parts=args.num_parts or (None if args.rows_per_part else len(inputs)),
        rows_per_part=args.rows_per_part, batch_rows=args.batch_rows, bucket_mb=args.shuffle_bucket_mb,
        num_buckets=args.shuffle_buckets or None, scratch_dir=Path(args.tmp_dir) if args.tmp_dir else None,
        compression=args.compression,
    )
    start = time.time()
    with staged_directory(out_dir) as staging:
        if args.engine == "arrow":
            from mindone.laion.filter_arrow import run_arrow

            stats, parts = run_arrow(plan, staging, progress=not args.no_progress)
        else:
            from mindone.laion.filter_spark import create_session, run_spark

            own = spark is None
            session = spark or create_session(args.master, args.driver_memory, progress=not args.no_progress)
            try:
                stats, parts = run_spark(plan, staging, session)
            finally:
                if own:
                    session.stop()
        report = build_report(plan, stats, parts, args.engine, time.time() - start, skipped)
        write_report(staging, report)
    log.info("%d rows in, %d after conditions, %d out in %d part(s) -> %s (%.1f s)", report["rows_in"],
             report["rows_after_conditions"], report["rows_out"], len(parts), out_dir, report["elapsed_s"])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_options(argv)
    setup_cli_logging(args.verbose)
    if args.task == "check":
        print(format_check(check_figures(Path(args.data_dir))))
        return 0
    run_filter(args)
    return 0


if __name__ == "__main__":
    run_main(main)

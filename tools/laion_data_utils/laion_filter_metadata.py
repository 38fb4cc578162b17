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

from mindone.data.filter_vocab import METADATA_FILTERS, canonical_names
from mindone.laion.conditions import build_conditions
from mindone.laion.filter_common import FilterPlan, inspect_inputs, list_parquet_files, unify_output_schema
from mindone.laion.report import build_report, check_figures, format_check, write_report
from mindone.laion.staging import check_target, staged_directory
from mindone.utils.cli import UserError, run_main, setup_cli_logging

log = logging.getLogger("laion_filter_metadata")
COMPRESSION_CHOICES = ["snappy", "zstd", "lz4", "gzip", "none"]

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="yaml file whose keys are these flags' names (flags given here win)")
    p.add_argument("--task", choices=["filter", "check"], default="filter",
                   help="filter: write the filtered parts; check: print seed 001's check figures for --data_dir")
    p.add_argument("--data_dir", help="folder of input parquet files (downloaded metadata, or a filtered output)")
    p.add_argument("--output_dir", help="folder to create with part_<N>.parquet and filter_report.json")
    g = p.add_argument_group("conditions (a value of 'none' turns a condition off)")
    for spec in METADATA_FILTERS:
        g.add_argument(f"--{spec.name}", *(f"--{a}" for a in spec.aliases), dest=spec.name,
                       default=spec.metadata_default, help=spec.metadata_help)
    g.add_argument("--skip_missing_columns", action="store_true",
                   help="skip a condition in files lacking its column (default: stop with an error)")
    o = p.add_argument_group("output")
    o.add_argument("--dedup", choices=["none", "url", "url_text", "hash"], default="none",
                   help="drop later rows repeating the key of an earlier row (first occurrence kept)")
    o.add_argument("--shuffle", action="store_true", help="globally shuffle the output rows (seeded)")
    o.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    o.add_argument("--num_parts", type=int, help="number of output parts (default: number of input files)")
    o.add_argument("--rows_per_part", type=int, help="rows per output part (instead of --num_parts)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output_dir")
    o.add_argument("--compression", choices=COMPRESSION_CHOICES, default="snappy",
                   help="parquet codec of the output parts (snappy: like LAION's own files; none: faster to "
                        "write, parts about a third bigger)")
    e = p.add_argument_group("engine")
    e.add_argument("--engine", choices=["arrow", "spark"], default="arrow",
                   help="arrow: embedded streaming engine (one machine); spark: pyspark (local or a cluster)")
    e.add_argument("--master", default="local[*]", help="spark master URL (spark engine)")
    e.add_argument("--driver_memory", default="8g", help="spark driver memory (spark engine)")
    e.add_argument("--batch_rows", type=int, default=65_536, help="rows per record batch (arrow engine)")
    e.add_argument("--shuffle_bucket_mb", type=int, default=256,
                   help="target size of one shuffle/dedup bucket; bounds peak memory (arrow engine)")
    e.add_argument("--shuffle_buckets", type=int, default=0, help="number of buckets (0: from --shuffle_bucket_mb)")
    e.add_argument("--tmp_dir", help="scratch folder for shuffle/dedup buckets, or a plain run's pass-1 masks and condition values "
                        "(default: inside the staging dir)")
    e.add_argument("--no_progress", action="store_true", help="no progress bars")
    e.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags over yaml over defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        import yaml  # 12 ms of start-up: only when a config is given

        path = Path(args.config)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"--config {path}: cannot read ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"--config {path}: expected a mapping of flag names to values")
        try:
            loaded = canonical_names(loaded)  # a filter's old name (max_watermark) is its name
        except ValueError as err:
            raise UserError(f"--config {path}: {err}") from None
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise UserError(f"--config {path}: unknown key {unknown[0]!r}")
        parser.set_defaults(**loaded)
        args = parser.parse_args(argv)
        for action in parser._actions:  # argparse does not check defaults against choices
            value = getattr(args, action.dest, None)
            if action.choices and value is not None and value not in action.choices:
                raise UserError(f"--config {path}: {action.dest}: {value!r} is not one of {', '.join(action.choices)}")
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

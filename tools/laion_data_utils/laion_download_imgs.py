"""Download the images of LAION metadata parts with img2dataset: part_N.parquet -> <output_dir>/part_N.

Every setting is a flag, and every flag can also come from an environment variable (LAION_ + the flag name
in capitals, e.g. LAION_OUTPUT_DIR) or a key of the --config yaml: the yaml beats the variable, a flag given
on the command line beats both. Options img2dataset has that are not listed here go after ``--`` and are
forwarded unchanged:

    laion_download_imgs.sh 1-3 --metadata_dir meta --output_dir data -- --encode_quality 90 --min_image_size 256

--retry_failed downloads again, into new shards of the same part, the rows of finished parts whose error
is of a class in --retry_errors (read from the parts' shard parquets; give the flags of the first run):

    laion_download_imgs.sh 1-3 --output_dir data --retry_failed [--retry_errors default,resize]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from mindone.data.filter_vocab import COLUMN_ALIASES
from mindone.laion import img2dataset_launch as launch
from mindone.laion.retry_failed import DEFAULT_RETRY_ERRORS, ERROR_CLASSES, format_table, parse_retry_errors
from mindone.laion.retry_round import plan_part, retry_part
from mindone.laion.shard_state import done_shard_names, prepare_resume
from mindone.laion.url_guard import UrlGuardError, http_only_kwargs
from mindone.utils.cli import UserError, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser

logger = logging.getLogger("laion_download_imgs")

ENV_PREFIX = "LAION_"


def _option(name: str, type_: Any = str, default: Any = None, help_: str = "", **kw: Any) -> Option:
    """A launcher option: its help states the default, its environment variable is LAION_<NAME>."""
    return Option(name, type_, default, f"{help_} (default: {default})", env=ENV_PREFIX + name.upper(), group=None,
                  **kw)


def _switch(name: str, default: bool, help_: str) -> Option:
    """A --name / --no-name switch (LAION_<NAME>=1|0)."""
    return _option(name, bool, default, help_, action="boolean_optional")


OPTIONS: list[Option] = [
    Option("parts", str, None, "part ids: 1, a range 1-3, or a list '1 2 3' / 1,2,3", multiple=True, positional=True,
           env=ENV_PREFIX + "PARTS", group=None),
    _option("metadata_dir", help_="folder holding part_<N>.<input_format>"),
    _option("output_dir", help_="images go to <output_dir>/part_<N>"),
    _option("url_list", help_="download this one file instead of <metadata_dir>/part_<N>.<input_format> (one part id "
            "names the output folder)"),
    _option("input_format", default="parquet", help_="parquet, csv, tsv, json, jsonl, txt (and .gz variants)"),
    _option("output_format", default="webdataset", help_="webdataset (tar shards), files (one folder per shard) or "
            "parquet"),
    _option("image_size", int, 512, "resize target (smaller side for keep_ratio)"),
    _option("resize_mode", default="keep_ratio", help_="img2dataset resize mode",
            choices=("keep_ratio", "center_crop", "border", "keep_ratio_largest", "no")),
    _switch("resize_only_if_bigger", True, "never upscale small images"),
    _switch("skip_reencode", True, "keep the original bytes when no resize is needed and the format already matches"),
    _option("processes_count", int, launch.default_processes(), "download processes; the default is this machine's "
            "CPU count"),
    _option("thread_count", int, launch.default_threads(), "download threads per process; the default is 32 per CPU, "
            "at most 256"),
    _option("timeout", int, 10, "seconds to wait for one image"),
    _option("retries", int, 1, "extra attempts per failed URL (one lifted a LAION download from 56%% to 77%% "
            "success, ten only to 78%%: rom1504/img2dataset#361)"),
    _option("number_sample_per_shard", int, 10000, "rows per shard (keep it fixed across reruns of a part)"),
    _option("url_col", default="auto", help_="url column of the metadata; auto: the first of "
            + "/".join(COLUMN_ALIASES["url"]) + " present (URL in LAION-5B, url in Re-LAION)"),
    _option("caption_col", default="auto", help_="caption column of the metadata; auto: the first of "
            + "/".join(COLUMN_ALIASES["text"]) + " present (TEXT in LAION-5B, caption in Re-LAION)"),
    _option("save_additional_columns", default="auto",
            help_="comma list of metadata columns to keep in each sample's json; 'auto' = those present among "
            + ", ".join(launch.DEFAULT_EXTRA_COLUMNS) + "; 'none'"),
    _option("distributor", default="multiprocessing", help_="multiprocessing (this machine) or pyspark",
            choices=("multiprocessing", "pyspark")),
    _option("spark_master", help_="with --distributor pyspark: Spark master URL (spark://host:7077, local[8]); "
            "unset = an existing session or img2dataset's local one. output_dir must be shared by the executors"),
    _switch("insecure_ssl", False, "accept invalid TLS certificates (logs a warning); default verifies them"),
    _switch("allow_non_http_urls", False, "hand rows whose URL is not http(s) (file://, ftp://, data:) to img2dataset, "
            "which would read them; by default they are left out of the download, counted and reported"),
    _switch("verify_resume", True, "before a rerun, check the shards already done and redo any that do not hold up"),
    _switch("dry_run", False, "print the img2dataset arguments of each part as json and exit (with --retry_failed: "
            "the rows per error class and how many would be retried)"),
    _switch("retry_failed", False, "download again the failed rows of each finished part whose error class is in "
            "--retry_errors, into new shards numbered after the part's; prints and writes "
            "<part>/retry_failed/report.json (rows per class before/after); needs no --metadata_dir"),
    _option("retry_errors", default=",".join(DEFAULT_RETRY_ERRORS), help_="with --retry_failed: the error classes "
            "to retry, a comma list; 'default' = this list, 'all' = every failure; classes: "
            + ", ".join(ERROR_CLASSES)),
]
PARSER = dict(prog="laion_download_imgs.sh", formatter_class=argparse.RawDescriptionHelpFormatter,
              epilog="Each option's environment variable is shown in brackets.")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(OPTIONS, __doc__, **PARSER)


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


LAUNCHER_OWNED = ("url_list", "output_folder", "output_format", "input_format", "image_size", "resize_mode",
                  "resize_only_if_bigger", "skip_reencode", "processes_count", "thread_count", "timeout", "retries",
                  "number_sample_per_shard", "url_col", "caption_col", "save_additional_columns", "distributor")  # fmt: skip


def _column(columns: list[str] | None, requested: str | None, logical: str) -> str | None:
    """``requested``, or for ``auto`` the first of the logical column's names present (LAION's upper-case name
    when the columns cannot be read before the download, e.g. txt input)."""
    if requested != "auto":
        return requested
    names = COLUMN_ALIASES[logical]
    present = [n for n in names if columns is not None and n in columns]
    return present[0] if present else names[0]


def part_kwargs(args: argparse.Namespace, input_path: Path, output_folder: str, extra: dict[str, Any]) -> dict[str, Any]:
    """img2dataset.download kwargs for one part."""
    columns = launch.input_columns(input_path, args.input_format)
    url_col, caption_col = (_column(columns, args.url_col, "url"), _column(columns, args.caption_col, "text"))
    if columns is not None:
        for flag_name, col in (("--url_col", url_col), ("--caption_col", caption_col)):
            if col and col not in columns:
                raise UserError(f"{input_path}: no column {col!r} for {flag_name} (has: {', '.join(columns)})")
    kwargs: dict[str, Any] = dict(
        url_list=str(input_path),
        output_folder=output_folder,
        output_format=args.output_format,
        input_format=args.input_format,
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        resize_only_if_bigger=args.resize_only_if_bigger,
        skip_reencode=args.skip_reencode,
        processes_count=args.processes_count,
        thread_count=args.thread_count,
        timeout=args.timeout,
        retries=args.retries,
        number_sample_per_shard=args.number_sample_per_shard,
        url_col=url_col,
        caption_col=caption_col or None,
        save_additional_columns=launch.choose_extra_columns(args.save_additional_columns, columns, url_col, caption_col),
        distributor=args.distributor,
        incremental_mode="incremental",  # resume; "overwrite" is broken in img2dataset 1.47
        enable_wandb=False,
    )
    kwargs.update(extra)
    return kwargs


def retry_parts(args: argparse.Namespace, part_ids: list[int], extra: dict[str, Any]) -> int:
    """--retry_failed: one retry round per part (mindone/laion/retry_round.py), then its per-class table."""
    if "://" in args.output_dir:
        raise UserError("--retry_failed reads the part folders: it needs a local --output_dir")
    retry = parse_retry_errors(args.retry_errors)

    def make_kwargs(source: Path, staging: Path, columns: list[str]) -> dict[str, Any]:
        """The part's own settings, for the round's input: its columns are those img2dataset saved."""
        caption = "caption" if "caption" in columns else None
        saved = ",".join(c for c in columns if c not in ("url", "caption"))
        round_args = argparse.Namespace(**{**vars(args), "input_format": "parquet", "url_col": "url",
                                           "caption_col": caption, "save_additional_columns": saved})
        return part_kwargs(round_args, source, str(staging), extra)

    def download(kwargs: dict[str, Any]) -> None:
        launch.run_img2dataset(kwargs, insecure_ssl=args.insecure_ssl, spark_master=args.spark_master)

    for pid in part_ids:
        part_dir = Path(args.output_dir) / f"part_{pid}"
        if args.dry_run:
            plan = plan_part(part_dir, retry)
            print(json.dumps({"part": pid, "retry_errors": sorted(retry), "rows": plan.rows,
                              "selected": len(plan.candidates), "counts": plan.counts()}))  # fmt: skip
            continue
        layout = {"output_format": args.output_format, "number_sample_per_shard": args.number_sample_per_shard,
                  "oom_shard_count": extra.get("oom_shard_count")}
        outcome = retry_part(part_dir, retry=retry, layout=layout, make_kwargs=make_kwargs, download=download,
                             verify_resume=args.verify_resume)  # fmt: skip
        if outcome.round is None:
            print(f"part {pid}: nothing to retry ({', '.join(outcome.retry_errors)})")
        else:
            print(f"part {pid}: retry round {outcome.round}: {outcome.selected} rows retried into shards "
                  f"{', '.join(outcome.shards)}, {outcome.healed} downloaded")
        print(format_table(outcome.before, outcome.after if outcome.round else None, outcome.retry_errors))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ours, theirs = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = resolve_config(OPTIONS, ours, __doc__, **PARSER)  # flags > --config yaml > LAION_* > defaults
    setup_cli_logging()
    part_ids = launch.parse_part_ids(args.parts)
    extra = launch.parse_passthrough(theirs)
    clash = sorted(set(extra) & set(LAUNCHER_OWNED + ("incremental_mode",)))
    if clash:
        raise UserError(f"--{clash[0]} is a launcher option: give it before -- (or via {ENV_PREFIX}{clash[0].upper()})")
    if args.output_dir is None:
        raise UserError("no output folder: set --output_dir or LAION_OUTPUT_DIR")
    if args.retry_failed:
        return retry_parts(args, part_ids, extra)
    if args.url_list is not None:
        if len(part_ids) != 1:
            raise UserError("--url_list downloads one file: give exactly one part id to name its output folder")
        if not Path(args.url_list).is_file():
            raise UserError(f"--url_list file {args.url_list} not found")
        inputs = {part_ids[0]: Path(args.url_list)}
    else:
        if args.metadata_dir is None:
            raise UserError("no metadata folder: set --metadata_dir or LAION_METADATA_DIR (or --url_list)")
        inputs = {pid: launch.part_file(args.metadata_dir, pid, args.input_format) for pid in part_ids}
    if args.distributor != "pyspark" and args.spark_master:
        raise UserError("--spark_master needs --distributor pyspark")

    # Remote outputs (s3://, hdfs://...) go straight to img2dataset; the resume check and the final
    # shard count read the local filesystem only.
    local_output = "://" not in args.output_dir
    unfinished = []
    for pid, input_path in inputs.items():
        output_folder = f"{args.output_dir.rstrip('/')}/part_{pid}"
        kwargs = part_kwargs(args, input_path, output_folder, extra)
        refused, input_rows = 0, None
        if not args.allow_non_http_urls:  # the same kwargs go to either distributor: both only see http(s) rows
            try:
                kwargs, screen = http_only_kwargs(kwargs, input_path, args.input_format, dry_run=args.dry_run)
            except UrlGuardError as err:
                raise UserError(f"part {pid}: {err}") from None
            refused = screen.refused
            if refused:
                input_rows = screen.rows - refused  # the rows of the copy img2dataset reads
                logger.warning("part %d: %s: %s; left out of the download (--allow_non_http_urls keeps them)",
                               pid, input_path, screen.describe())
        if args.dry_run:
            print(json.dumps({"part": pid, "spark_master": args.spark_master, "insecure_ssl": args.insecure_ssl,
                              "refused_non_http_urls": refused, "img2dataset": kwargs}))  # fmt: skip
            continue
        if input_rows is None:
            input_rows = launch.count_input_rows(input_path, args.input_format)
        if local_output:
            launch.check_resume_settings(Path(output_folder), kwargs, input_rows)
            resume = prepare_resume(Path(output_folder), args.output_format, verify_done=args.verify_resume)
            if resume.done:
                logger.info("part %d: %d shards already done, resuming", pid, resume.done)
        logger.info("part %d: %s -> %s", pid, input_path, output_folder)
        launch.run_img2dataset(kwargs, insecure_ssl=args.insecure_ssl, spark_master=args.spark_master)
        if not local_output:
            continue
        part_path = Path(output_folder)
        expected = launch.expected_shards(input_rows, args.number_sample_per_shard)
        done = len(done_shard_names(part_path)) if part_path.is_dir() else 0
        if expected is not None and done < expected:
            logger.error("part %d: %d of %d shards finished", pid, done, expected)
            unfinished.append(pid)
        else:
            logger.info("part %d: %d shards finished", pid, done)
    if unfinished:
        raise UserError(f"parts {unfinished} are not complete; rerun the same command to resume them")
    return 0


if __name__ == "__main__":
    run_main(main)

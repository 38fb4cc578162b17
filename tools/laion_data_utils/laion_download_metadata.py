#!/usr/bin/env python
"""Download LAION metadata parquet files (resumable, with retries and a progress bar).

    HF_TOKEN=hf_... python tools/laion_data_utils/laion_download_metadata.py \
        --subset relaion2B-en-research-safe --parts 1-8,12 --output_dir relaion2b_en

Parts are 1-based whatever the subset's own file numbering. Complete files are skipped, partial ones
resumed; nothing appears under its final name until it is complete. Re-LAION-5B is gated on the Hugging Face
Hub: accept its terms on the dataset page once, then pass a token (--token or $HF_TOKEN). The LAION-5B
subsets withdrawn in December 2023 (improved_aesthetics_4.5plus, laion-art, laion2B-en-joined,
laion-high-resolution) need --base_url pointing at a mirror you hold.
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from mindone.laion.http_download import DownloadError, RetryPolicy, download_file
from mindone.laion.subsets import DEFAULT_SUBSET, SUBSETS, check_source, get_subset, parse_parts
from mindone.utils.cli import UserError, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser

log = logging.getLogger("laion_download_metadata")


OPTIONS: list[Option] = [
    Option("subset", str, DEFAULT_SUBSET, "which LAION metadata subset (the Re-LAION ones are gated: --token; "
           "the withdrawn LAION-5B ones need --base_url)", choices=sorted(SUBSETS), group=None),
    Option("output_dir", str, None, "folder to download into (created if needed)", required=True, group=None),
    Option("parts", str, "all", "1-based parts to fetch, e.g. 1-8,12 (default: all)", group=None),
    Option("base_url", str, None, "mirror URL holding the files (default: the subset's Hugging Face URL)", group=None),
    Option("file_pattern", str, None, "override the file-name pattern, with {n} for the on-disk number, e.g. "
           "'part-{n:05d}.parquet'", group=None),
    Option("num_files", int, None, "override the number of files (with --file_pattern)", group=None),
    Option("first_index", int, None, "on-disk number of part 1 (with --file_pattern)", group=None),
    Option("token", str, None, "access token for gated datasets, sent as 'Authorization: Bearer' (default: $HF_TOKEN)",
           env="HF_TOKEN", group=None),
    Option("retries", int, 5, "retries per file on transient errors", group=None),
    Option("backoff", float, 2.0, "seconds before the first retry (doubles each time)", group=None),
    Option("max_backoff", float, 60.0, "longest wait between retries (s)", group=None),
    Option("timeout", float, 60.0, "socket timeout per request (s)", group=None),
    Option("workers", int, 1, "files downloaded in parallel", group=None),
    Option("dry_run", bool, False, "print the URLs and exit", action="store_true", group=None),
    Option("no_progress", bool, False, "no progress bars", action="store_true", group=None),
    Option("verbose", bool, False, "debug logging", action="store_true", group=None),
]
PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    return options_parser(OPTIONS, __doc__, **PARSER)


def main(argv: Sequence[str] | None = None) -> int:
    args = resolve_config(OPTIONS, argv, __doc__, **PARSER)
    setup_cli_logging(args.verbose)
    if args.workers < 1 or args.retries < 0:
        raise UserError("--workers must be >= 1 and --retries >= 0")
    subset = get_subset(args.subset, args.file_pattern, args.num_files, args.first_index)
    check_source(subset, args.base_url)
    if subset.gated and not args.token and not args.base_url and not args.dry_run:
        log.warning("%s is gated on the Hugging Face Hub: without --token / $HF_TOKEN (after accepting its terms "
                    "on the dataset page) the server answers 401", subset.name)
    parts = parse_parts(args.parts, subset.num_parts)
    base = (args.base_url or subset.base_url).rstrip("/")
    jobs = [(f"{base}/{subset.file_name(p)}", Path(args.output_dir) / subset.file_name(p)) for p in parts]
    if args.dry_run:
        for url, dest in jobs:
            print(f"{url} -> {dest}")
        return 0
    policy = RetryPolicy(args.retries, args.backoff, args.max_backoff, args.timeout)
    progress = not args.no_progress

    def one(i_job):
        i, (url, dest) = i_job
        try:
            position = i % args.workers if args.workers > 1 else None
            return url, download_file(url, dest, policy, progress, position, args.token)
        except DownloadError as err:
            return url, err

    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(one, enumerate(jobs)))
    counts: dict[str, int] = {}
    failures = [(url, r) for url, r in results if isinstance(r, DownloadError)]
    for _, r in results:
        key = "failed" if isinstance(r, DownloadError) else r
        counts[key] = counts.get(key, 0) + 1
    log.info("%s: %s -> %s", subset.name, ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), args.output_dir)
    if failures:
        for _, err in failures[1:]:
            log.error("%s", err)
        more = f" (and {len(failures) - 1} more, listed above)" if len(failures) > 1 else ""
        raise UserError(f"{failures[0][1]}{more}")
    return 0


if __name__ == "__main__":
    run_main(main)

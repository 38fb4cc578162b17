#!/usr/bin/env python
"""Download LAION metadata parquet files (resumable, with retries and a progress bar).

    python tools/laion_data_utils/laion_download_metadata.py --subset improved_aesthetics_4.5plus \
        --parts 1-8,12 --output_dir laion_2b_en_ae4.5

Parts are 1-based whatever the subset's own file numbering. Complete files are skipped, partial ones
resumed; nothing appears under its final name until it is complete.
"""

from __future__ import annotations

import argparse
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from mindone.laion.http_download import DownloadError, RetryPolicy, download_file
from mindone.laion.subsets import SUBSETS, get_subset, parse_parts
from mindone.utils.cli import UserError, run_main, setup_cli_logging

log = logging.getLogger("laion_download_metadata")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", default="improved_aesthetics_4.5plus", choices=sorted(SUBSETS),
                   help="which LAION metadata subset")
    p.add_argument("--output_dir", required=True, help="folder to download into (created if needed)")
    p.add_argument("--parts", default="all", help="1-based parts to fetch, e.g. 1-8,12 (default: all)")
    p.add_argument("--base_url", help="mirror URL holding the files (default: the subset's Hugging Face URL)")
    p.add_argument("--file_pattern",
                   help="override the file-name pattern, with {n} for the on-disk number, e.g. 'part-{n:05d}.parquet'")
    p.add_argument("--num_files", type=int, help="override the number of files (with --file_pattern)")
    p.add_argument("--first_index", type=int, help="on-disk number of part 1 (with --file_pattern)")
    p.add_argument("--token", default=os.environ.get("HF_TOKEN"),
                   help="access token for gated datasets, sent as 'Authorization: Bearer' (default: $HF_TOKEN)")
    p.add_argument("--retries", type=int, default=5, help="retries per file on transient errors")
    p.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry (doubles each time)")
    p.add_argument("--max_backoff", type=float, default=60.0, help="longest wait between retries (s)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout per request (s)")
    p.add_argument("--workers", type=int, default=1, help="files downloaded in parallel")
    p.add_argument("--dry_run", action="store_true", help="print the URLs and exit")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging(args.verbose)
    if args.workers < 1 or args.retries < 0:
        raise UserError("--workers must be >= 1 and --retries >= 0")
    subset = get_subset(args.subset, args.file_pattern, args.num_files, args.first_index)
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

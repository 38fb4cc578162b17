"""Images/s of one part downloaded over loopback HTTPS: certificate patch vs stock img2dataset.

Both runs download the same part from the same local HTTPS server as the download tests
(tests/helpers/image_server.py, self-signed certificate). The stock run verifies the certificate, trusted
through SSL_CERT_FILE; the patched run (--insecure_ssl: InsecureDownloader in every worker) skips
verification. Runs alternate, the median of each side is compared. Speed is counted from img2dataset's own
per-shard times in ``_stats.json`` (the download loop, without process start-up), and from wall time for
the whole call.

    .venv/bin/python -m benchmarks.bench_download_imgs [--images 2000] [--repeats 3] [--processes 1] [--threads 32] [--scheme http]

Run it from the checkout as a module (``-m``), as above: the server is test code (``tests.helpers``, not
installed), importable from the checkout's root.

Goal: patched / stock >= 0.95.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from mindone.laion.img2dataset_launch import run_img2dataset  # noqa: E402

try:
    from tests.helpers.image_server import ImageServer
except ModuleNotFoundError as err:  # run as a file: the checkout's root is not on sys.path
    sys.exit(f"{err}: run from the checkout's root as `python -m benchmarks.bench_download_imgs`")


@contextlib.contextmanager
def quiet_fds():
    """Silence img2dataset's progress prints (parent and spawned workers inherit fds 1 and 2)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def one_run(part: Path, out: Path, insecure: bool, args: argparse.Namespace) -> tuple[float, float, int]:
    """(images/s over shard download time, images/s over wall time, successes)."""
    kwargs = dict(url_list=str(part), output_folder=str(out), output_format="webdataset", input_format="parquet",
                  url_col="URL", caption_col="TEXT", image_size=512, resize_mode="keep_ratio", resize_only_if_bigger=True,
                  skip_reencode=True, processes_count=args.processes, thread_count=args.threads, timeout=10,
                  number_sample_per_shard=args.images_per_shard, enable_wandb=False)  # fmt: skip
    start = time.perf_counter()
    with quiet_fds():
        run_img2dataset(kwargs, insecure_ssl=insecure)
    wall = time.perf_counter() - start
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    successes = sum(s["successes"] for s in stats)
    shard_time = sum(s["duration"] for s in stats) / args.processes  # shards of one process run one after another
    return successes / shard_time, successes / wall, successes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--images_per_shard", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--scheme", choices=["https", "http"], default="https",
                        help="http measures the wrapper alone (no TLS, so nothing for the patch to skip)")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    with ImageServer(https=args.scheme == "https") as server, tempfile.TemporaryDirectory(prefix="bench_dl_") as tmp:
        if server.cert_file is not None:
            os.environ["SSL_CERT_FILE"] = str(server.cert_file)  # lets the stock (verifying) downloader trust it
        part = Path(tmp) / "part_1.parquet"
        urls = [server.url("good", i % 50) for i in range(args.images)]
        pq.write_table(pa.table({"URL": urls, "TEXT": [f"caption {i}" for i in range(args.images)]}), part)
        results: dict[str, list[tuple[float, float, int]]] = {"stock": [], "patched": []}
        for r in range(args.repeats):
            for name in ("stock", "patched") if r % 2 == 0 else ("patched", "stock"):
                res = one_run(part, Path(tmp) / f"{name}_{r}", name == "patched", args)
                assert res[2] == args.images, f"{name}: only {res[2]} of {args.images} images downloaded"
                results[name].append(res)
                print(f"run {r} {name:8s} {res[0]:8.1f} img/s (download loop)  {res[1]:8.1f} img/s (wall)", flush=True)
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in results.items()}
    print(f"\n{args.images} images over loopback {args.scheme.upper()}, {args.processes} process(es) x {args.threads} threads, median of {args.repeats}")
    print(f"stock img2dataset (verifying)   : {med['stock'][0]:8.1f} img/s loop, {med['stock'][1]:8.1f} img/s wall")
    print(f"patched (--insecure_ssl)        : {med['patched'][0]:8.1f} img/s loop, {med['patched'][1]:8.1f} img/s wall")
    print(f"ratio patched/stock             : {med['patched'][0] / med['stock'][0]:.3f} loop, {med['patched'][1] / med['stock'][1]:.3f} wall (goal >= 0.95)")


if __name__ == "__main__":
    main()

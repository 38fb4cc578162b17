"""Stats generation speed on webdataset shards of 10,000 samples: header scan vs reading every member.

Writes ``--shards`` shards of ``--samples`` samples (jpg of ``--image_kb`` KiB + txt + json, as img2dataset
writes them), then times, on the same files:
  - header scan: laion_utils.tar_stats.scan_tar (what laion_gen_data_stats.py uses),
  - naive baseline: tarfile iteration reading every member's bytes,
  - webdataset baseline: webdataset's tar iterator over every sample (how a loader would count).
Each contender runs twice: with a warm page cache (CPU work only), and cold (the files' cached pages are
dropped with posix_fadvise(DONTNEED) first), where the baselines also pay for reading every image byte
while the scan reads 512 bytes per member.

    .venv/bin/python benchmarks/bench_data_stats.py [--shards 2] [--samples 10000] [--image_kb 48]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools" / "laion_data_utils"))

from laion_utils.tar_stats import scan_tar  # noqa: E402


def write_shard(path: Path, samples: int, image_kb: int) -> None:
    image = os.urandom(image_kb * 1024)
    with tarfile.open(path, "w") as tar:
        for i in range(samples):
            key = f"{i:09d}"
            for ext, data in (("jpg", image), ("txt", f"caption {i}".encode()), ("json", json.dumps({"key": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def naive_tarfile(path: Path) -> int:
    keys: dict[str, set] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            key, ext = m.name.split(".", 1)
            if data is not None:
                keys.setdefault(key, set()).add(ext)
    return sum(1 for v in keys.values() if {"jpg", "txt"} <= v)


def webdataset_iter(path: Path) -> int:
    import webdataset as wds

    return sum(1 for s in wds.WebDataset(str(path), shardshuffle=False) if "jpg" in s and "txt" in s)


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def timed(fn, paths: list[Path], cold: bool) -> tuple[float, int]:
    drop_cache(paths) if cold else warm_cache(paths)
    start = time.perf_counter()
    total = sum(fn(p) for p in paths)
    return time.perf_counter() - start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--image_kb", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_stats_") as tmp:
        paths = [Path(tmp) / f"{i:05d}.tar" for i in range(args.shards)]
        for p in paths:
            write_shard(p, args.samples, args.image_kb)
        size_mb = sum(p.stat().st_size for p in paths) / 2**20
        contenders = (("header scan (laion_gen_data_stats)", lambda p: scan_tar(p).num_samples),
                      ("naive tarfile, reads every member", naive_tarfile),
                      ("webdataset tar iterator", webdataset_iter))  # fmt: skip
        results = {(name, cold): timed(fn, paths, cold) for cold in (False, True) for name, fn in contenders}
    print(f"{args.shards} shard(s) x {args.samples} samples, {size_mb:.0f} MiB")
    for cold in (False, True):
        print("cold page cache (posix_fadvise DONTNEED)" if cold else "warm page cache")
        t_scan = results[(contenders[0][0], cold)][0]
        for name, _ in contenders:
            t, n = results[(name, cold)]
            assert n == args.shards * args.samples, (name, n)
            ratio = "" if name == contenders[0][0] else f"  -> scan is {t / t_scan:.1f}x faster"
            print(f"  {name:36s}: {t:7.3f} s {n / t:10.0f} samples/s{ratio}")

if __name__ == "__main__":
    main()

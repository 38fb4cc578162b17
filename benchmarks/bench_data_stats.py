"""Stats generation speed on webdataset shards of 10,000 samples: header scan vs reading every member.

Writes ``--shards`` shards of ``--samples`` samples (jpg of ``--image_kb`` KiB + txt + json, as img2dataset
writes them), then times, on the same files:
  - header scan: mindone.laion.tar_stats.scan_tar, one shard after the other,
  - the CLI's part check: annotations.tar_part_stats (header scan + _stats.json check, 8 threads over shards),
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
import tarfile
import tempfile
import time
from pathlib import Path

from mindone.laion.annotations import tar_part_stats
from mindone.laion.tar_stats import scan_tar


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
    """Time ``fn(paths) -> samples`` after warming or dropping the page cache."""
    drop_cache(paths) if cold else warm_cache(paths)
    start = time.perf_counter()
    total = fn(paths)
    return time.perf_counter() - start, total


def per_shard(fn):
    return lambda paths: sum(fn(p) for p in paths)


def part_stats(paths: list[Path]) -> int:
    """What laion_gen_data_stats.py does for a part: check every shard (8 threads) against its _stats.json."""
    part_dir = paths[0].parent
    stats = tar_part_stats(part_dir.parent, part_dir)
    assert not stats.problems, stats.problems
    return stats.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--image_kb", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_stats_") as tmp:
        part = Path(tmp) / "part_1"
        part.mkdir()
        paths = [part / f"{i:05d}.tar" for i in range(args.shards)]
        for p in paths:
            write_shard(p, args.samples, args.image_kb)
            p.with_name(p.stem + "_stats.json").write_text(json.dumps({"count": args.samples, "successes": args.samples}))
        size_mb = sum(p.stat().st_size for p in paths) / 2**20
        contenders = (("header scan, one shard at a time", per_shard(lambda p: scan_tar(p).num_samples)),
                      ("tar_part_stats (the CLI), 8 threads", part_stats),
                      ("naive tarfile, reads every member", per_shard(naive_tarfile)),
                      ("webdataset tar iterator", per_shard(webdataset_iter)))  # fmt: skip
        results = {(name, cold): timed(fn, paths, cold) for cold in (False, True) for name, fn in contenders}
    print(f"{args.shards} shard(s) x {args.samples} samples, {size_mb:.0f} MiB")
    for cold in (False, True):
        print("cold page cache (posix_fadvise DONTNEED)" if cold else "warm page cache")
        t_scan = results[(contenders[0][0], cold)][0]
        for name, _ in contenders:
            t, n = results[(name, cold)]
            assert n == args.shards * args.samples, (name, n)
            ratio = "" if name.startswith(("header", "tar_part")) else f"  -> scan is {t / t_scan:.1f}x faster"
            print(f"  {name:36s}: {t:7.3f} s {n / t:10.0f} samples/s{ratio}")

if __name__ == "__main__":
    main()

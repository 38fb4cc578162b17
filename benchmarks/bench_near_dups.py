"""Near-duplicate pass: hashing speed per core against decoding alone, and the grouping's time and memory.

1. Hashing, one core, on ``--images`` photo-like JPEGs of ``--image_px`` px (what img2dataset writes at
   ``--image_size 512``); sides, interleaved ``--rounds`` times, best round each:
     - ``decode`` (the baseline): the full decode the training loader does (mindone.data.decode.decode_image),
     - ``hash``: mindone.laion.near_dups.signature (DCT-scaled decode with Image.draft + dHash + colour code),
     - ``draft decode``: the hash's reduced decode alone, to show what the hashing itself adds.
2. Grouping ``--items`` random 64-bit hashes (1 M by default; ``--items 10000000`` for 10 M) with 1 %% planted
   near pairs, at ``--max_distance`` (default: the tool's), in a worker process whose peak RSS (VmHWM, reset
   once the hashes are made) is read from /proc (Linux): time, peak RSS, bytes per item, against the baseline of comparing all pairs (n^2 / 2
   popcounts at the rate measured on a 4,000-item sample).

    .venv/bin/python benchmarks/bench_near_dups.py [--images 200] [--items 1000000] [--max_distance 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, for tests.helpers
from harness import best_round, interleaved_rounds, load_average, print_result, spawn_worker  # noqa: E402
from mindone.laion.hash_groups import near_groups, popcount  # noqa: E402
from tests.helpers.photos import jpeg, photo_like  # noqa: E402

# the worker imports no more than the grouping needs (its RSS is the figure); these are the tool's defaults
MAX_DISTANCE, MAX_COLOUR_DISTANCE = 8, 1


def bench_hashing(args: argparse.Namespace) -> None:
    from mindone.data.decode import decode_image
    from mindone.laion.near_dups import DECODE_SIDE, signature

    sides = {"decode": decode_image, "hash": signature, "draft decode": lambda data: decode_image(data, DECODE_SIDE)}
    images = [jpeg(photo_like(i, args.image_px, blobs=10, grain=10.0)) for i in range(args.images)]

    def run(side: str) -> dict:
        fn = sides[side]
        start = time.perf_counter()
        for data in images:
            fn(data)
        return {"step": (time.perf_counter() - start) / len(images)}

    best = best_round(interleaved_rounds(run, sides, args.rounds))
    base = best["decode"]["step"]
    print(f"hashing, one core: {args.images} JPEGs of {args.image_px} px, best of {args.rounds} rounds "
          f"(load {load_average()})")
    for side, result in best.items():
        rate = 1.0 / result["step"]
        print(f"  {side:<13} {rate:8.0f} images/s  {result['step'] * 1e3:6.2f} ms  x{base / result['step']:.2f} vs decode")


def random_hashes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 1 << 63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    planted = np.arange(0, n - 1, 100)  # 1 %: a neighbour a few bits away
    flips = rng.integers(0, 64, (len(planted), 3)).astype(np.uint64)
    hashes[planted + 1] = hashes[planted] ^ (np.uint64(1) << flips[:, 0]) ^ (np.uint64(1) << flips[:, 1])
    return hashes, np.zeros(n, dtype=np.uint64)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024  # kB


def group_worker(args: argparse.Namespace) -> None:
    hashes, colours = random_hashes(args.items)
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS: imports left out
        fh.write("5")
    before = _status_mib("VmRSS")
    start = time.perf_counter()
    labels, stats = near_groups(hashes, colours, max_distance=args.max_distance,
                                max_colour_distance=MAX_COLOUR_DISTANCE)
    seconds = time.perf_counter() - start
    print_result({"seconds": seconds, "peak_rss_mib": _status_mib("VmHWM"), "input_rss_mib": before,
                  "groups": int((np.bincount(labels) > 1).sum()), "blocks": stats.blocks, "bands": stats.bands,
                  "candidates": stats.candidates})


def bench_grouping(args: argparse.Namespace) -> None:
    sample, _ = random_hashes(4000, seed=1)
    i, j = np.triu_indices(len(sample), k=1)
    start = time.perf_counter()
    popcount(sample[i] ^ sample[j]) <= args.max_distance
    pairs_per_s = len(i) / (time.perf_counter() - start)
    result = spawn_worker(__file__, ["--group_worker", "--items", args.items, "--max_distance", args.max_distance],
                          label="grouping worker")
    all_pairs_s = args.items * (args.items - 1) / 2 / pairs_per_s
    print(f"grouping {args.items:,} random hashes (1% planted pairs), max distance {args.max_distance}: "
          f"{result['blocks']} blocks, {result['bands']} bands, {result['candidates']:,} candidate pairs")
    grown = result["peak_rss_mib"] - result["input_rss_mib"]
    print(f"  banded        {result['seconds']:8.1f} s  peak RSS {result['peak_rss_mib']:.0f} MiB, of which "
          f"{grown:.0f} MiB during the grouping ({grown * 2**20 / args.items:.0f} bytes/item; before it: interpreter, "
          f"numpy, the hashes), {result['groups']:,} groups")
    print(f"  all pairs     {all_pairs_s:8.0f} s  (estimated at {pairs_per_s / 1e6:.0f} M pairs/s)  "
          f"x{all_pairs_s / result['seconds']:.0f} vs banded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="JPEGs to hash per round")
    parser.add_argument("--image_px", type=int, default=512, help="their side in pixels")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the hashing sides")
    parser.add_argument("--items", type=int, default=1_000_000, help="hashes to group (10000000 for 10 M)")
    parser.add_argument("--max_distance", type=int, default=MAX_DISTANCE, help="grouping distance")
    parser.add_argument("--skip_hashing", action="store_true", help="only the grouping")
    parser.add_argument("--group_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.group_worker:
        group_worker(args)
        return
    from mindone.laion import near_dups

    assert (MAX_DISTANCE, MAX_COLOUR_DISTANCE) == (near_dups.DEFAULT_MAX_DISTANCE, near_dups.DEFAULT_MAX_COLOUR_DISTANCE)
    if not args.skip_hashing:
        bench_hashing(args)
    bench_grouping(args)


if __name__ == "__main__":
    sys.exit(main())

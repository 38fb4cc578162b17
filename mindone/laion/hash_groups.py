"""Group 64-bit perceptual hashes whose Hamming distance is at most ``k``, without comparing all pairs.

Input: per item a 64-bit hash and a 64-bit colour code (:mod:`mindone.laion.near_dups`); two items are
*near* when their hashes differ in at most ``max_distance`` bits and their colour codes are within
``max_colour_distance`` (:func:`colour_distance`, the largest difference of a quarter's mean colour). Output: a group label per item (the smallest item index
of its group), the connected components of the "near" relation (so A~B, B~C groups A with C even when A
and C are farther apart: a chain of small edits is one group).

Candidates (pigeonhole, the multi-index scheme of Manku et al. 2007 for simhash):

1. Items with the same hash *and* colour code are one group outright; only one representative of each
   such set goes on (a million all-black images cost one item, not 5e11 pairs).
2. The 64 bits are cut into ``B >= k + 1`` contiguous blocks. Two hashes within distance ``k`` differ in
   at most ``k`` blocks, so they agree exactly on at least ``B - k`` of them: on one of the ``C(B, B-k)``
   *bands* (a band is a choice of ``B - k`` blocks). ``B = k + 1`` is the plain "k+1 bands, one must match"
   rule; a larger ``B`` makes each band's key wider (fewer, smaller buckets) at the price of more bands.
   :func:`choose_blocks` picks ``B`` for the number of items: with 7-bit keys (``k = 8``, ``B = 9``) a
   bucket of 10 M random hashes holds 78,000 items, with ``B = 12`` (21-bit keys, 495 bands) about 5.
3. Per band, the representatives are sorted by their key (the band's bits) and every pair inside a run of equal keys is a candidate; it is kept when its exact
   Hamming distance and colour distance pass. Kept pairs are merged (union-find over item indices)
   after each band. Every pair within distance ``k`` shares a band, so the result equals the all-pairs
   comparison (tests/test_near_dups.py checks it against brute force) except for capped buckets below.

Memory: the hashes and colour codes (16 bytes/item), the union-find parents (8), one band's sorted keys
and order (8 + 8) and its candidates, generated and checked one offset at a time (at most 16 bytes per
item per step): measured 100-125 bytes per distinct signature whatever ``k`` (1.2 GB for 10 M items). Time
grows with the number of bands times the items times the bucket size: 36 min for 10 M items at k = 8 on one
core (benchmarks/bench_near_dups.py).

Worst case, a huge bucket: many *different* hashes sharing one band key (near-uniform images whose
hashes differ in a few noisy bits) would need ``n^2 / 2`` comparisons. A bucket of more than
``max_bucket`` items is not expanded: it is skipped in that band and counted (``capped_buckets``,
``capped_items`` in the report). Its pairs are still found through any other band they share; a pair
whose only shared bands are all capped is missed. Exact duplicates never reach a bucket (step 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

DEFAULT_MAX_BUCKET = 4096
MAX_BANDS = 1000  # choose_blocks never plans more bands than this
_M1, _M2, _M4 = (np.uint64(v) for v in (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F))
_H01 = np.uint64(0x0101010101010101)
COLOUR_FIELDS, COLOUR_BITS = 12, 5  # a colour code: 12 fields of 5 bits (see near_dups.colour_code)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy 1.x has no bitwise_count): the SWAR sum."""
    x = np.asarray(x, dtype=np.uint64)
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    with np.errstate(over="ignore"):  # the multiply wraps on purpose
        return ((x * _H01) >> np.uint64(56)).astype(np.int64)


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The largest difference between two colour codes over their 12 fields (quarter x channel), in 5-bit
    steps (0..31), elementwise over arrays of codes."""
    a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    worst = np.zeros(np.broadcast(a, b).shape, dtype=np.int64)
    mask = np.uint64((1 << COLOUR_BITS) - 1)
    for i in range(COLOUR_FIELDS):
        shift = np.uint64(COLOUR_BITS * i)
        diff = np.abs(((a >> shift) & mask).astype(np.int64) - ((b >> shift) & mask).astype(np.int64))
        np.maximum(worst, diff, out=worst)
    return worst


def block_edges(blocks: int) -> list[tuple[int, int]]:
    """``(offset, width)`` of ``blocks`` contiguous blocks covering 64 bits, as even as possible."""
    cuts = [round(64 * i / blocks) for i in range(blocks + 1)]
    return [(cuts[i], cuts[i + 1] - cuts[i]) for i in range(blocks)]


def _band_cost(blocks: int, k: int, n: int) -> float:
    bands = math.comb(blocks, blocks - k)
    key_bits = sum(sorted(w for _, w in block_edges(blocks))[: blocks - k])  # the narrowest band
    return bands * n * (1.0 + n / 2.0 ** min(key_bits, 64))


def choose_blocks(max_distance: int, n: int) -> int:
    """The block count ``B`` (``k + 1`` .. 64) with the least estimated work for ``n`` random hashes, at most
    ``MAX_BANDS`` bands."""
    k = max_distance
    best, best_cost = k + 1, math.inf
    for blocks in range(k + 1, 65):
        if math.comb(blocks, blocks - k) > MAX_BANDS:
            break
        cost = _band_cost(blocks, k, max(n, 2))
        if cost < best_cost:
            best, best_cost = blocks, cost
    return best


def bands(max_distance: int, blocks: int) -> list[list[tuple[int, int]]]:
    """Every band: the ``(offset, width)`` of its ``blocks - max_distance`` blocks."""
    if not 0 <= max_distance < blocks <= 64:
        raise ValueError(f"need 0 <= max_distance < blocks <= 64, got {max_distance}, {blocks}")
    edges = block_edges(blocks)
    return [[edges[i] for i in chosen] for chosen in combinations(range(blocks), blocks - max_distance)]


def band_key(hashes: np.ndarray, band: list[tuple[int, int]]) -> np.ndarray:
    """The band's bits of each hash, packed together (uint64)."""
    key = np.zeros(len(hashes), dtype=np.uint64)
    shift = 0
    for offset, width in band:
        key |= ((hashes >> np.uint64(offset)) & np.uint64((1 << width) - 1)) << np.uint64(shift)
        shift += width
    return key


@dataclass
class GroupStats:
    """What the grouping did (goes into the report)."""

    items: int = 0
    distinct_signatures: int = 0  # after merging exact duplicates
    blocks: int = 0
    bands: int = 0
    candidates: int = 0  # pairs compared exactly
    near_pairs: int = 0  # pairs that passed (a pair sharing several bands counts once per band)
    capped_buckets: int = 0
    capped_items: int = 0
    extra: dict = field(default_factory=dict)


def find_roots(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    root = parent[x]
    while True:
        up = parent[root]
        if np.array_equal(up, root):
            return root
        root = up


def union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Merge the groups of pairs ``(a[i], b[i])``: the larger root is hooked under the smaller one."""
    while len(a):
        ra, rb = find_roots(parent, a), find_roots(parent, b)
        differ = ra != rb
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))  # some hooks lose: the loop retries them


def labels_of(parent: np.ndarray) -> np.ndarray:
    """Each item's group label: the smallest index of its group."""
    labels = parent.copy()
    while True:
        up = labels[labels]
        if np.array_equal(up, labels):
            return labels
        labels = up


def run_pairs(sorted_keys: np.ndarray, max_bucket: int, stats: GroupStats):
    """Yield ``(i, j)`` position arrays of every pair inside each run of equal sorted keys, one offset at a
    time; runs longer than ``max_bucket`` are skipped and counted in ``stats``."""
    n = len(sorted_keys)
    if n < 2:
        return
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    lengths = np.diff(np.r_[starts, n])
    capped = lengths > max_bucket
    stats.capped_buckets += int(capped.sum())
    stats.capped_items += int(lengths[capped].sum())
    keep = (lengths >= 2) & ~capped
    starts, lengths = starts[keep], lengths[keep]
    # positions of runs still long enough for the offset, with the end of their run
    pos = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    end = np.repeat(starts + lengths, lengths)
    offset = 1
    while len(pos):
        alive = pos + offset < end
        pos, end = pos[alive], end[alive]
        if len(pos):
            yield pos, pos + offset
        offset += 1


def merge_exact(hashes: np.ndarray, colours: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Union items with the same hash and colour code; returns one representative index (the smallest) of
    each distinct signature, ascending."""
    order = np.lexsort((np.arange(len(hashes)), colours, hashes))
    new_run = np.r_[True, (hashes[order][1:] != hashes[order][:-1]) | (colours[order][1:] != colours[order][:-1])]
    union(parent, order, order[np.flatnonzero(new_run)][np.cumsum(new_run) - 1])
    return np.sort(order[new_run])


def verified(a: np.ndarray, b: np.ndarray, hashes: np.ndarray, colours: np.ndarray, max_distance: int,
             max_colour_distance: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The candidate pairs ``(a[i], b[i])`` (indices into ``hashes`` / ``colours``) that are near."""
    near = popcount(hashes[a] ^ hashes[b]) <= max_distance
    a, b = a[near], b[near]
    near = colour_distance(colours[a], colours[b]) <= max_colour_distance
    return a[near], b[near]


def near_groups(hashes: np.ndarray, colours: np.ndarray, *, max_distance: int, max_colour_distance: float,
                blocks: int | None = None, max_bucket: int = DEFAULT_MAX_BUCKET,
                progress=None) -> tuple[np.ndarray, GroupStats]:  # fmt: skip
    """Group labels (smallest member index) of items whose hashes are within ``max_distance`` bits and colour
    codes within ``max_colour_distance``; ``progress(bands_done, bands_total)`` is called after each band."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    colours = np.ascontiguousarray(colours, dtype=np.uint64)
    n = len(hashes)
    parent = np.arange(n, dtype=np.int64)
    stats = GroupStats(items=n)
    reps = merge_exact(hashes, colours, parent)
    stats.distinct_signatures = len(reps)
    if max_distance < 0:
        return labels_of(parent), stats
    stats.blocks = blocks or choose_blocks(max_distance, len(reps))
    plan = bands(max_distance, stats.blocks)
    stats.bands = len(plan)
    rep_hashes, rep_colours = hashes[reps], colours[reps]
    for done, band in enumerate(plan, start=1):
        keys = band_key(rep_hashes, band)
        order = np.argsort(keys)
        found_a, found_b = [], []
        for i, j in run_pairs(keys[order], max_bucket, stats):
            stats.candidates += len(i)
            a, b = verified(order[i], order[j], rep_hashes, rep_colours, max_distance, max_colour_distance)
            found_a.append(reps[a])
            found_b.append(reps[b])
        if found_a:
            a, b = np.concatenate(found_a), np.concatenate(found_b)
            stats.near_pairs += len(a)
            union(parent, a, b)
        if progress is not None:
            progress(done, len(plan))
    return labels_of(parent), stats

"""Near-duplicate images in a download: a perceptual hash per sample, groups, one kept per group, a drop list.

**Signature of an image.** Two 64-bit codes, from one reduced decode (JPEG DCT scaling, ``Image.draft``, to
at least 32 px a side, via :func:`mindone.data.decode.decode_image`):

- the *difference hash* (dHash): the grayscale image resized (Lanczos) to 9x8, one bit per horizontally
  adjacent pair, set when the right pixel is brighter; 64 bits. Chosen over the DCT pHash after measuring
  both on the planted set of tests/test_near_dups.py: resizing and re-encoding move either by 0-2 bits,
  but a small text overlay moved pHash by up to 20 bits and dHash by at most 6, a 2 % crop pHash by up to
  18 and dHash by up to 10, while distinct natural-looking images stayed 12+ bits apart under both. It
  needs no DCT, so no scipy; the few lines are written here rather than pulling in ``imagehash`` (and
  its PyWavelets) for one function.
- the *colour code*: the image's mean colour in each quarter (2x2 grid, RGB), 5 bits a channel, 60 bits.
  Both hashes see only brightness: a red and a blue circle on the same background hash alike (distance 0),
  and every flat image hashes to 0. Two samples are near duplicates only when their colour codes are close
  too: no quarter's mean channel differs by more than ``max_colour_distance`` 5-bit steps
  (:func:`mindone.laion.hash_groups.colour_distance`). Measured: resizes, re-encodes, crops and overlays
  differ by at most 1 step, the same scene with the shape in another colour by 2 or more.

**Default distance** ``DEFAULT_MAX_DISTANCE = 8`` (of 64 bits). Measured on the planted set
(tests/test_near_dups.py and the script behind it): a resize or JPEG re-encode moves dHash by <= 5 bits, a
small text overlay by <= 6, a crop of 1 % a side by <= 6 and of 2 % a side by 6-11 (mostly caught); distinct
natural-looking images were >= 12 bits apart. 8 is also what the grouping affords: its work grows with the
number of bands, C(B, k) (:mod:`mindone.laion.hash_groups`), 84 bands at k = 6, 495 at k = 8 and too many at
k = 10 for 10 M samples (benchmarks/bench_near_dups.py). Random 64-bit hashes are within 8 bits with
probability 2.8e-10: about 14,000 chance pairs among 10 M samples, before the colour check removes most.

**Per shard** (webdataset tar: the samples :mod:`mindone.data.wds_sample` defines, read as the stats-time
filter reads them; files layout: the rows ``laion_gen_csv_annot.py`` would list): sample ids
(:mod:`mindone.data.drop_list`), the two codes, the aesthetic score and the original pixel count from the
sample's json (NaN / 0 when absent). Samples whose image does not decode are counted and left alone (the
loader skips them anyway). The result is cached per shard in ``<cache_dir>/<part>/<shard>.npz``, written
atomically and tied to the shard's size and modification time, so a killed run redoes only the shards
without a valid cache file.

**Keep rule** (per group, deterministic): the highest aesthetic score from the json, then the largest
original size (width x height), then the smallest sample id; every other member is dropped.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mindone.data.caption import parse_meta
from mindone.data.decode import BadImage, decode_image
from mindone.data.drop_list import sample_id, write_drop_list
from mindone.data.filters import json_value
from mindone.data.wds_sample import META_EXT, group_members, image_ext, is_sample, split_name
from mindone.errors import DataError
from mindone.laion.annotations import files_part_annotations, select_parts, tar_part_stats
from mindone.laion.hash_groups import COLOUR_BITS, GroupStats
from mindone.laion.shard_filter import DEFAULT_MAX_MEMBER_BYTES, open_plain_tar, sample_members
from mindone.utils.atomic import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)

HASH_NAME = "dhash64+colour2x2"  # bump when the signature changes: older cache files are then recomputed
DEFAULT_MAX_DISTANCE = 8
DEFAULT_MAX_COLOUR_DISTANCE = 1  # 5-bit steps (8/255) of the largest quarter-channel difference
DECODE_SIDE = 32  # JPEGs are decoded at the smallest DCT scale with sides >= this
LAYOUTS = ("webdataset", "files")


def signature(data: bytes) -> tuple[int, int]:
    """``(dhash, colour code)`` of an encoded image; raises :class:`mindone.data.decode.BadImage`."""
    image = decode_image(data, DECODE_SIDE)
    gray = np.asarray(image.convert("L").resize((9, 8), Image.LANCZOS), dtype=np.int16)
    bits = (gray[:, 1:] > gray[:, :-1]).ravel()
    dhash = int.from_bytes(np.packbits(bits).tobytes(), "big")
    quarters = np.asarray(image.resize((2, 2), Image.BOX), dtype=np.uint8).ravel() >> (8 - COLOUR_BITS)
    colour = 0
    for i, value in enumerate(quarters.tolist()):
        colour |= value << (COLOUR_BITS * i)
    return dhash, colour


@dataclass
class ShardHashes:
    """The signatures of one shard's samples (arrays in sample order)."""

    shard: str  # part_<N>/<shard>
    keys: list[str] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    colours: list[int] = field(default_factory=list)
    aesthetic: list[float] = field(default_factory=list)  # NaN: not in the json
    pixels: list[int] = field(default_factory=list)  # original width x height, 0: not in the json
    undecodable: int = 0

    def add(self, key: str, image: bytes, meta: dict | None) -> None:
        try:
            dhash, colour = signature(image)
        except BadImage:
            self.undecodable += 1
            return
        meta = meta or {}
        width, height = json_value(meta, "width"), json_value(meta, "height")
        aesthetic = json_value(meta, "aesthetic")
        self.keys.append(key)
        self.hashes.append(dhash)
        self.colours.append(colour)
        self.aesthetic.append(np.nan if aesthetic is None else aesthetic)
        self.pixels.append(int(width * height) if width and height else 0)


@dataclass(frozen=True)
class ShardTask:
    """One shard to hash: its ``part_<N>/<shard>`` name, the layout, and for files its images (relative)."""

    shard: str
    layout: str
    images: tuple[str, ...] = ()


def list_shards(data_dir: Path, parts: list[str] | None, layout: str) -> tuple[list[ShardTask], list[str]]:
    """The finished shards of the chosen parts (what the stats / csv tools would list) and the problems
    (one line per shard left out)."""
    tasks, problems = [], []
    for _, part_dir in select_parts(data_dir, parts):
        if layout == "webdataset":
            stats = tar_part_stats(data_dir, part_dir)
            problems += stats.problems
            tasks += [ShardTask(rel[: -len(".tar")], layout) for rel, _ in stats.rows]
        else:
            annot = files_part_annotations(data_dir, part_dir)
            problems += annot.problems
            by_shard: dict[str, list[str]] = defaultdict(list)
            for rel, _ in annot.rows:
                by_shard[rel.rsplit("/", 1)[0]].append(rel)
            tasks += [ShardTask(shard, layout, tuple(images)) for shard, images in by_shard.items()]
    return tasks, problems


def _source_stamp(data_dir: Path, task: ShardTask) -> list[int]:
    path = data_dir / (f"{task.shard}.tar" if task.layout == "webdataset" else task.shard)
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, len(task.images)]


def cache_file(cache_dir: Path, shard: str) -> Path:
    return cache_dir / f"{shard}.npz"


def _read_cache(path: Path, stamp: list[int]) -> ShardHashes | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["hash_name"]) != HASH_NAME or z["stamp"].tolist() != stamp:
                return None
            return ShardHashes(str(z["shard"]), z["keys"].tolist(), z["hashes"].tolist(), z["colours"].tolist(),
                               z["aesthetic"].tolist(), z["pixels"].tolist(), int(z["undecodable"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None  # missing, half-written by another tool, or an older format: hash the shard again


def _write_cache(path: Path, stamp: list[int], result: ShardHashes) -> None:
    with atomic_open(path, "wb") as fh:
        np.savez(fh, hash_name=HASH_NAME, stamp=np.asarray(stamp, dtype=np.int64), shard=result.shard,
                 keys=np.asarray(result.keys, dtype=str), hashes=np.asarray(result.hashes, dtype=np.uint64),
                 colours=np.asarray(result.colours, dtype=np.uint64),
                 aesthetic=np.asarray(result.aesthetic, dtype=np.float64),
                 pixels=np.asarray(result.pixels, dtype=np.int64), undecodable=result.undecodable)


def _hash_tar(path: Path, shard: str, max_member_bytes: int) -> ShardHashes:
    result = ShardHashes(shard)
    with open_plain_tar(path) as tar:
        for key, group in group_members(sample_members(tar, path, max_member_bytes)):
            if is_sample(group):
                meta = parse_meta(group[META_EXT][2]) if META_EXT in group else None
                result.add(key, group[image_ext(group)][2], meta)
    return result


def _hash_files(data_dir: Path, task: ShardTask, max_member_bytes: int) -> ShardHashes:
    result = ShardHashes(task.shard)
    for rel in task.images:
        path = data_dir / rel
        if path.stat().st_size > max_member_bytes:
            result.undecodable += 1
            continue
        meta_path = path.with_name(f"{split_name(path.name)[0]}.{META_EXT}")
        meta = parse_meta(meta_path.read_bytes()) if meta_path.is_file() else None
        result.add(split_name(path.name)[0], path.read_bytes(), meta)
    return result


def hash_shard(data_dir: str | os.PathLike, cache_dir: str | os.PathLike, task: ShardTask,
               max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> tuple[ShardHashes, bool]:  # fmt: skip
    """The shard's signatures, from its cache file when valid (second item True), else computed and cached."""
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    stamp = _source_stamp(data_dir, task)
    cached = _read_cache(cache_file(cache_dir, task.shard), stamp)
    if cached is not None:
        return cached, True
    if task.layout == "webdataset":
        result = _hash_tar(data_dir / f"{task.shard}.tar", task.shard, max_member_bytes)
    else:
        result = _hash_files(data_dir, task, max_member_bytes)
    _write_cache(cache_file(cache_dir, task.shard), stamp, result)
    return result, False


@dataclass
class Signatures:
    """All hashed samples of a run, concatenated in shard order."""

    ids: np.ndarray  # str, part_<N>/<shard>/<key>
    hashes: np.ndarray  # uint64
    colours: np.ndarray  # uint64
    aesthetic: np.ndarray  # float64, NaN when unknown
    pixels: np.ndarray  # int64, 0 when unknown
    undecodable: int = 0

    @classmethod
    def concat(cls, shards: list[ShardHashes]) -> "Signatures":
        ids = [sample_id(s.shard, k) for s in shards for k in s.keys]
        return cls(np.asarray(ids, dtype=str), np.asarray([h for s in shards for h in s.hashes], dtype=np.uint64),
                   np.asarray([c for s in shards for c in s.colours], dtype=np.uint64),
                   np.asarray([a for s in shards for a in s.aesthetic], dtype=np.float64),
                   np.asarray([p for s in shards for p in s.pixels], dtype=np.int64),
                   sum(s.undecodable for s in shards))


def choose_kept(labels: np.ndarray, sig: Signatures) -> np.ndarray:
    """Boolean mask of the samples to drop: in every group of two or more, all but the one with the highest
    aesthetic score, then the largest original size, then the smallest sample id."""
    id_rank = np.argsort(np.argsort(sig.ids, kind="stable"), kind="stable")
    aesthetic = np.where(np.isnan(sig.aesthetic), -np.inf, sig.aesthetic)
    order = np.lexsort((id_rank, -sig.pixels, -aesthetic, labels))
    first = np.r_[True, labels[order][1:] != labels[order][:-1]]
    drop = np.ones(len(labels), dtype=bool)
    drop[order[first]] = False  # the first of each group (singletons included) is kept
    return drop


def write_results(out: Path, report_path: Path, sig: Signatures, labels: np.ndarray, drop: np.ndarray, *,
                  stats: GroupStats, settings: dict, extra: dict | None = None) -> dict:  # fmt: skip
    """Write the drop list and the json report (both atomically); returns the report."""
    sizes = np.bincount(labels, minlength=len(labels))
    in_group = sizes[labels] > 1
    per_part: dict[str, dict[str, int]] = {}
    parts = np.asarray([i.split("/", 1)[0] for i in sig.ids.tolist()], dtype=str)
    for part in sorted(set(parts.tolist())):
        mask = parts == part
        per_part[part] = {"samples": int(mask.sum()), "dropped": int(drop[mask].sum())}
    examples = []
    for label in np.unique(labels[in_group])[:20]:
        members = np.flatnonzero(labels == label)
        examples.append({"kept": str(sig.ids[members[~drop[members]][0]]), "dropped": sig.ids[members[drop[members]]].tolist()})
    report = {"hash": HASH_NAME, **settings, "samples": len(labels), "undecodable": sig.undecodable,
              "groups": int((sizes > 1).sum()), "largest_group": int(sizes.max()) if len(sizes) else 0,
              "dropped": int(drop.sum()), "per_part": per_part, "keep_rule": "highest aesthetic score, then largest "
              "original width x height, then smallest sample id",
              "grouping": {k: v for k, v in vars(stats).items() if k != "extra"}, **(extra or {}),
              "example_groups": examples, "drop_list": str(out)}  # fmt: skip
    header = (f"near duplicates: {report['dropped']} of {report['samples']} samples ({HASH_NAME}, max distance "
              f"{settings['max_distance']}); one sample id (part_<N>/<shard>/<key>) a line")
    write_drop_list(out, sig.ids[drop].tolist(), header=header)
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    return report


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise DataError(f"dataset_type: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout

"""Which img2dataset shards of a part folder are complete, and cleaning the ones that are not.

img2dataset writes a shard's data (``00000.tar`` or the ``00000/`` folder, plus ``00000.parquet``) first and
its ``00000_stats.json`` last, and on restart skips every shard whose ``_stats.json`` exists. So a run
killed mid-shard leaves data without a stats file: that shard is redone, and until then it must not be
counted. The remaining risk is a stats file beside bad data (killed while writing the json itself, a full
disk, a crash that lost unsynced tar blocks): :func:`prepare_resume` checks every done shard before a
relaunch and removes the ones that do not hold up, so img2dataset downloads them again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from mindone.data.wds_sample import CAPTION_EXT, image_ext, split_name
from mindone.laion.tar_stats import scan_tar

logger = logging.getLogger(__name__)

_SHARD_STEM = re.compile(r"^(\d+)$")
_STATS_NAME = re.compile(r"^(\d+)_stats\.json$")


@dataclass
class ShardCheck:
    """The verdict on one shard. ``num_samples`` counts complete image+caption samples actually present."""

    name: str  # "00000"
    data_path: Path  # the tar or the folder
    num_samples: int = 0
    reported_successes: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


SMALL_FILE_LIMIT = 1 << 20  # a _stats.json, a caption or a json sidecar is a few hundred bytes


def read_small_file(path: Path, limit: int = SMALL_FILE_LIMIT) -> bytes | None:
    """The bytes of a small regular file; None when it is larger than ``limit`` (not read whole) or is not
    a regular file (a FIFO is opened without blocking and never read). OSError when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = fh.read(limit + 1)
    return data if len(data) <= limit else None


def read_stats_json(path: Path) -> dict | None:
    """The parsed ``_stats.json``, or None when it is missing, unreadable, not a small regular file, or
    lacks ``successes``."""
    try:
        data = read_small_file(path)
        stats = json.loads(data) if data is not None else None
    except (OSError, ValueError, RecursionError):  # RecursionError: json nested deeper than the parser goes
        return None
    if not isinstance(stats, dict) or not isinstance(stats.get("successes"), int):
        return None
    return stats


def done_shard_names(part_dir: Path) -> list[str]:
    """Shard names that have a ``_stats.json`` (what img2dataset considers done), sorted."""
    names = []
    for entry in os.scandir(part_dir):
        match = _STATS_NAME.match(entry.name)
        if match:
            names.append(match.group(1))
    return sorted(names)


def scan_files_shard(folder: Path) -> tuple[list[tuple[str, str]], int, int]:
    """``([(image_name, caption_name)], missing_caption, missing_image)`` for a files-format shard folder.

    One file per member, named as in a tar (:mod:`mindone.data.wds_sample`: key split, image extensions and
    their precedence, the caption extension); a folder holds each name once, so a key is one sample.
    """
    by_key: dict[str, dict[str, str]] = {}
    for entry in os.scandir(folder):
        parts = split_name(entry.name)
        if parts and entry.is_file():  # regular files only: reading a FIFO or a device would block or never end
            by_key.setdefault(parts[0], {})[parts[1]] = entry.name
    pairs, missing_caption, missing_image = [], 0, 0
    for key in sorted(by_key):
        members = by_key[key]
        image = image_ext(members)
        if image and CAPTION_EXT in members:
            pairs.append((members[image], members[CAPTION_EXT]))
        elif image:
            missing_caption += 1
        else:
            missing_image += 1
    return pairs, missing_caption, missing_image


def check_shard(part_dir: Path, name: str, output_format: str) -> ShardCheck:
    """Check shard ``name`` of ``part_dir`` against its ``_stats.json`` (webdataset or files format)."""
    if output_format == "webdataset":
        data_path = part_dir / f"{name}.tar"
    elif output_format == "files":
        data_path = part_dir / name
    else:
        data_path = part_dir / f"{name}.parquet"
    check = ShardCheck(name=name, data_path=data_path)
    stats = read_stats_json(part_dir / f"{name}_stats.json")
    if stats is None:
        check.error = "missing or unreadable _stats.json (shard not finished)"
        return check
    check.reported_successes = stats["successes"]
    if output_format == "webdataset":
        if not data_path.is_file():
            check.error = "tar file missing"
            return check
        scan = scan_tar(data_path)
        if not scan.ok:
            check.error = f"unreadable tar: {scan.error}"
            return check
        check.num_samples = scan.num_samples
        images = scan.num_images
    elif output_format == "files":
        if not data_path.is_dir():
            check.error = "shard folder missing"
            return check
        pairs, missing_caption, _ = scan_files_shard(data_path)
        check.num_samples = len(pairs)
        images = len(pairs) + missing_caption
    else:  # parquet: img2dataset's own format; only the presence of the file can be checked cheaply
        if not data_path.is_file():
            check.error = "parquet file missing"
        return check
    if images != stats["successes"]:
        check.error = f"holds {images} images but _stats.json reports {stats['successes']} successes"
    return check


def _remove(path: Path) -> None:
    """Delete a shard's file or folder; a symlink is removed itself, never what it points at."""
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def remove_shard(part_dir: Path, name: str) -> None:
    """Delete every file of shard ``name`` (stats json first, so a crash here leaves it 'not done')."""
    for path in (part_dir / f"{name}_stats.json", part_dir / f"{name}.tar", part_dir / f"{name}.parquet", part_dir / name):
        _remove(path)


@dataclass
class ResumeReport:
    done: int = 0
    invalidated: list[str] = field(default_factory=list)
    partial_removed: list[str] = field(default_factory=list)


def prepare_resume(part_dir: Path, output_format: str, verify_done: bool = True) -> ResumeReport:
    """Make ``part_dir`` safe for img2dataset's incremental mode before a (re)launch.

    Shards without ``_stats.json`` are partial leftovers of a killed run: removed. Shards with one are
    checked (``verify_done``); a shard that fails the check is removed so it is downloaded again.
    """
    report = ResumeReport()
    if not part_dir.is_dir():
        return report
    done = set(done_shard_names(part_dir))
    for name in done:
        if verify_done:
            check = check_shard(part_dir, name, output_format)
            if not check.ok:
                logger.warning("%s/%s: %s; it will be downloaded again", part_dir, name, check.error)
                remove_shard(part_dir, name)
                report.invalidated.append(name)
                continue
        report.done += 1
    for entry in list(os.scandir(part_dir)):
        stem = entry.name.split(".", 1)[0]
        if _SHARD_STEM.match(stem) and stem not in done and stem not in report.partial_removed:
            remove_shard(part_dir, stem)
            report.partial_removed.append(stem)
    if report.partial_removed:
        logger.info("%s: removed partial shards of an interrupted run: %s", part_dir, sorted(report.partial_removed))
    return report

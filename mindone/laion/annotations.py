"""Annotation files training reads: per-part stats csv (webdataset) and per-part caption csv (files).

Layout (paths in the csv are relative to the data folder ``D``)::

    D/part_1/00000.tar, 00000_stats.json, ...   ->  D/part_1_stats.csv   file_path,num_samples
    D/part_1/00000/000000000.jpg + .txt, ...    ->  D/part_1.csv         dir,text

Only shards img2dataset finished (``_stats.json`` present) and whose content agrees with it are listed.

A downloaded folder is data: every path written to a csv is relative and lies inside ``D`` once symlinks
are resolved. A shard, image or caption reached through a link leading out of ``D`` is left out and
reported (``allow_outside=True``, the CLIs' ``--allow_outside_data_dir``, lists it anyway).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from mindone.data.drop_list import sample_id
from mindone.data.filters import SampleFilters
from mindone.data.locations import inside_root
from mindone.data.wds_sample import META_EXT, split_name
from mindone.errors import DataError
from mindone.laion.shard_state import check_shard, read_small_file, read_stats_json, scan_files_shard

logger = logging.getLogger(__name__)

_PART_DIR = re.compile(r"^part_([^/]+)$")
_SHARD_TAR = re.compile(r"^(\d+)\.tar$")


def find_part_dirs(data_dir: Path) -> list[tuple[str, Path]]:
    """``[(part_id, folder)]`` for every ``part_<id>`` folder of ``data_dir``, numeric ids in numeric order."""
    found = []
    for entry in os.scandir(data_dir):
        match = _PART_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((match.group(1), Path(entry.path)))
    return sorted(found, key=lambda p: (0, int(p[0]), "") if p[0].isdigit() else (1, 0, p[0]))


def select_parts(data_dir: Path, wanted: Sequence[str] | None) -> list[tuple[str, Path]]:
    """The ``part_<id>`` folders of ``data_dir``, only the ``wanted`` ids when given (``--parts``).

    A wanted id without its folder is a DataError naming it (and any other missing one); so is a data
    folder without any part folder.
    """
    parts = find_part_dirs(data_dir)
    if wanted:
        present = {pid for pid, _ in parts}
        missing = [pid for pid in dict.fromkeys(wanted) if pid not in present]
        if missing:
            names = ", ".join(f"part_{pid}" for pid in missing)
            raise DataError(f"--parts: no folder {names} in {data_dir}")
        parts = [p for p in parts if p[0] in set(wanted)]
    if not parts:
        raise DataError(f"--data_dir {data_dir} has no part_<id> folders")
    return parts


def remove_stale(path: Path) -> bool:
    """Delete ``path`` if it exists (a csv an earlier run wrote); True when something was removed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass
class PartStats:
    """Result of scanning one webdataset part folder."""

    rows: list[tuple[str, int]] = field(default_factory=list)  # (file_path relative to D, num_samples)
    problems: list[str] = field(default_factory=list)  # one line per shard left out

    @property
    def total(self) -> int:
        return sum(n for _, n in self.rows)


def _outside(path: Path, data_dir: Path, allow_outside: bool) -> bool:
    """True when ``path`` leads out of ``data_dir`` through a symlink (and that is not allowed)."""
    return not allow_outside and not inside_root(str(path), str(data_dir))


def tar_part_stats(data_dir: Path, part_dir: Path, workers: int = 8, only: Iterable[str] | None = None,
                   allow_outside: bool = False) -> PartStats:  # fmt: skip
    """Count the complete samples of every finished tar shard in ``part_dir`` (headers only).

    A shard is left out, with a line in ``problems``, when its ``_stats.json`` is missing (unfinished), its
    tar is truncated or unreadable, or the images it holds differ from the ``successes`` it reports.
    Shards are checked by ``workers`` threads: on a cold or network disk the small header reads wait on
    I/O (outside the GIL), so several shards in flight keep the device busy. ``only``: shard names
    (``00000``) to consider, the others in the folder are ignored. A tar that is a link leading out of
    ``data_dir`` (or lies in a part folder that is) is left out unread unless ``allow_outside``.
    """
    result = PartStats()
    names = sorted(m.group(1) for m in map(_SHARD_TAR.match, os.listdir(part_dir)) if m)
    if only is not None:
        keep = set(only)
        names = [n for n in names if n in keep]
    outside = {n for n in names if _outside(part_dir / f"{n}.tar", data_dir, allow_outside)}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checks = pool.map(lambda name: None if name in outside else check_shard(part_dir, name, "webdataset"), names)
        for name, check in zip(names, checks, strict=True):
            rel = f"{part_dir.relative_to(data_dir).as_posix()}/{name}.tar"
            if check is None:
                result.problems.append(f"{rel}: a symlink leading out of {data_dir}, left out unread "
                                       "(--allow_outside_data_dir lists it)")
            elif read_stats_json(part_dir / f"{name}_stats.json") is None:
                result.problems.append(f"{rel}: no readable {name}_stats.json (shard unfinished), left out")
            elif not check.ok:
                result.problems.append(f"{rel}: {check.error}, left out")
            else:
                result.rows.append((rel, check.num_samples))
    return result


@dataclass
class PartAnnotations:
    """Result of scanning one files-format part folder."""

    rows: list[tuple[str, str]] = field(default_factory=list)  # (image path relative to D, caption)
    skipped: Counter = field(default_factory=Counter)  # reason -> samples
    problems: list[str] = field(default_factory=list)  # shards left out


def files_part_annotations(data_dir: Path, part_dir: Path, sample_filter: SampleFilters | None = None,
                           allow_outside: bool = False) -> PartAnnotations:  # fmt: skip
    """Image/caption rows of every finished shard folder in ``part_dir``.

    A sample without an image or a caption file, or with an empty caption, is skipped and counted by
    reason; it never gets a made-up caption. A sample the filters drop is counted as ``filtered_<filter>``
    (its drop-list id is ``part_<N>/<shard>/<key>``, :mod:`mindone.data.drop_list`). One whose image, caption or json is a link leading out of
    ``data_dir`` is skipped unread and counted, unless ``allow_outside``.
    """
    import json

    result = PartAnnotations()
    shard_dirs = sorted(e.name for e in os.scandir(part_dir) if e.is_dir() and e.name.isdigit())
    for name in shard_dirs:
        rel_dir = f"{part_dir.relative_to(data_dir).as_posix()}/{name}"
        check = check_shard(part_dir, name, "files")
        if not check.ok:
            result.problems.append(f"{rel_dir}: {check.error}, left out")
            continue
        pairs, missing_caption, missing_image = scan_files_shard(check.data_path)
        result.skipped["no caption file"] += missing_caption
        result.skipped["no image file"] += missing_image
        folder_inside = not _outside(check.data_path, data_dir, allow_outside)
        for image, caption_file in pairs:
            meta_path = check.data_path / f"{split_name(image)[0]}.{META_EXT}"
            files = (check.data_path / image, check.data_path / caption_file, meta_path)
            # inside a folder that is inside D only a symlink can lead out: one lstat per file, not a realpath
            if not folder_inside or any(os.path.islink(p) and _outside(p, data_dir, allow_outside) for p in files):
                result.skipped["link leading out of the data folder"] += 1
                continue
            caption = read_small_file(check.data_path / caption_file)
            if caption is None:
                result.skipped["caption file not a regular file of at most 1 MiB"] += 1
                continue
            text = caption.decode("utf-8", errors="replace").strip()
            if not text:
                result.skipped["empty caption"] += 1
                continue
            if sample_filter is not None and sample_filter.active:
                meta = {}
                if sample_filter.needs_meta:
                    try:
                        meta = json.loads(read_small_file(meta_path) or b"{}")
                    except (OSError, ValueError, RecursionError):
                        meta = {}
                sid = sample_id(rel_dir, split_name(image)[0])
                reason = sample_filter.check(meta if isinstance(meta, dict) else {}, {}, sample_id=sid)
                if reason:
                    result.skipped[reason] += 1
                    continue
            result.rows.append((f"{rel_dir}/{image}", text))
    return result

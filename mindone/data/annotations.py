"""The annotation csvs: names, columns, writer and reader (the LAION tools and ``encode_latents.py`` write
them through :func:`write_annotation_csv`, the loader reads them here).

- files dataset: ``part_<N>.csv`` with columns ``dir,text``; ``dir`` is relative to the csv's folder
  (``part_1/00000/000000000.jpg``).
- webdataset (and latents): ``part_<N>_stats.csv`` with columns ``file_path,num_samples``; ``file_path`` is
  relative to the csv's folder (``part_1/00000.tar``) or to the user's ``shard_root``. ``all_stats.csv``
  (same columns) may list every part at once.

Files are written whole or not at all (temp file, then rename), with csv quoting, so a caption or file name
holding a comma or a quote reads back as written.

Csv values are data: what they may name (never a command, nothing outside the root unless allowed) is
:mod:`mindone.data.locations`'s contract.

``data_path`` may be a folder (every part in it, or the ``parts`` chosen), one csv file, or a list of
either (a comma-separated string works too).
"""

from __future__ import annotations

import csv as csv_module
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from mindone.data.locations import OUTSIDE_FLAG, Root, UnsafeLocation, is_under
from mindone.errors import ConfigError, DataError
from mindone.utils.atomic import atomic_open

FILES_COLUMNS = ("dir", "text")
STATS_COLUMNS = ("file_path", "num_samples")
ALL_STATS_CSV = "all_stats.csv"
_FILES_CSV = re.compile(r"^part_(\d+)\.csv$")
_STATS_CSV = re.compile(r"^part_(\d+)_stats\.csv$")


def annotation_csv_name(part_id: int | str, dataset_type: str) -> str:
    """``part_<id>.csv`` (files) or ``part_<id>_stats.csv`` (webdataset, latents)."""
    return f"part_{part_id}.csv" if dataset_type == "files" else f"part_{part_id}_stats.csv"


def part_of(csv_path: str | os.PathLike) -> int | None:
    """The part number an annotation csv's name gives (``part_3.csv``, ``part_3_stats.csv``: 3), else None."""
    name = Path(csv_path).name
    match = _FILES_CSV.match(name) or _STATS_CSV.match(name)
    return int(match.group(1)) if match else None


def write_annotation_csv(path: str | os.PathLike, dataset_type: str, rows: Iterable[Sequence]) -> Path:
    """Write ``rows`` (``(dir, text)`` for files, ``(file_path, num_samples)`` otherwise) under the right header,
    atomically: readers see the old file or the complete new one."""
    path = Path(path)
    header = FILES_COLUMNS if dataset_type == "files" else STATS_COLUMNS
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv_module.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _part_sort_key(path: Path, pattern: re.Pattern) -> tuple[int, str]:
    match = pattern.match(path.name)
    return (int(match.group(1)) if match else -1, path.name)


def resolve_annotation_files(
    data_path: str | os.PathLike | Sequence[str | os.PathLike],
    dataset_type: str,
    parts: Iterable[int] | None = None,
) -> list[Path]:
    """The annotation csv files selected by ``data_path`` (and ``parts``), in part order."""
    if dataset_type not in ("files", "webdataset", "latents"):
        raise ValueError(f"dataset_type: expected 'files', 'webdataset' or 'latents', got {dataset_type!r}")
    pattern = _FILES_CSV if dataset_type == "files" else _STATS_CSV
    kind = "part_<N>.csv" if dataset_type == "files" else "part_<N>_stats.csv"
    if isinstance(data_path, (str, os.PathLike)):
        entries = [e for e in str(data_path).split(",") if e.strip()]
    else:
        entries = [str(e) for e in data_path]
    if not entries:
        raise ConfigError("data_path: empty")
    wanted = None if parts is None else {int(p) for p in parts}
    found: list[Path] = []
    for entry in entries:
        path = Path(entry.strip()).expanduser()
        if path.is_dir():
            csvs = sorted((p for p in path.iterdir() if pattern.match(p.name)), key=lambda p: _part_sort_key(p, pattern))
            if wanted is not None:
                csvs = [p for p in csvs if _part_sort_key(p, pattern)[0] in wanted]
            if not csvs:
                which = f" for parts {sorted(wanted)}" if wanted is not None else ""
                raise DataError(f"data_path {path}: no {kind} files{which} (run the annotation tool first)")
            found.extend(csvs)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"data_path {path}: no such file or folder")
    return found


class PackedStrings:
    """Many strings in one utf-8 buffer plus offsets.

    Millions of Python ``str`` objects cost ~60 bytes each on top of their text, and forked workers
    copy the pages that reference counting touches; two numpy arrays cost the text plus 8 bytes a row
    and are shared copy-on-write for real.
    """

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    @classmethod
    def concat(cls, parts: Sequence["PackedStrings"]) -> "PackedStrings":
        out = cls([])
        out.data = np.concatenate([p.data for p in parts]) if parts else out.data
        starts = np.cumsum([0] + [len(p.data) for p in parts[:-1]])
        out.offsets = np.concatenate([[0]] + [p.offsets[1:] + start for p, start in zip(parts, starts)])
        return out

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        return self.data[self.offsets[index] : self.offsets[index + 1]].tobytes().decode("utf-8")


@dataclass
class FilesAnnotations:
    """Image paths (absolute) and captions of a files dataset, one row per sample.

    Row ``i`` came from csv ``k = searchsorted(row_starts, i, "right") - 1`` whose folder is ``roots[k]``:
    the place its image must stay inside when opened (symlinks included), unless ``allow_outside_root``.
    """

    paths: PackedStrings
    captions: PackedStrings  # may be empty strings
    roots: list[str]
    row_starts: np.ndarray  # int64, first row of each csv
    allow_outside_root: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def root_of(self, row: int) -> str:
        return self.roots[int(np.searchsorted(self.row_starts, row, side="right")) - 1]


@dataclass
class ShardList:
    """Tar shard locations (absolute path, URL or ``pipe:`` command) and their sample counts."""

    urls: list[str]
    sizes: np.ndarray  # int64

    @property
    def num_samples(self) -> int:
        return int(self.sizes.sum())


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read csv ({err})") from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas turns surplus leading fields into an index
        raise DataError(f"{path}: rows have more fields than the header (unquoted commas in a caption?)")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(frame.columns)})")
    return frame


def read_files_annotations(csv_files: Sequence[Path], *, allow_outside_root: bool = False) -> FilesAnnotations:
    """Concatenate ``dir,text`` csvs; paths become absolute (relative to each csv's folder, inside it)."""
    paths: list[PackedStrings] = []
    captions: list[PackedStrings] = []
    roots: list[str] = []
    for csv in csv_files:
        frame = _read_csv(csv, FILES_COLUMNS)
        root = Root(str(csv.resolve().parent), "local")
        paths.append(PackedStrings([
            root.resolve(d, where=f"{csv}:{row} dir", allow_outside_root=allow_outside_root)
            for row, d in enumerate(frame["dir"].tolist(), start=2)]))
        captions.append(PackedStrings(frame["text"].tolist()))
        roots.append(root.text)
        del frame
    if sum(len(p) for p in paths) == 0:
        raise DataError(f"{', '.join(map(str, csv_files))}: no rows")
    row_starts = np.cumsum([0] + [len(p) for p in paths[:-1]]).astype(np.int64)
    return FilesAnnotations(PackedStrings.concat(paths), PackedStrings.concat(captions), roots, row_starts,
                            allow_outside_root)


def read_shard_list(
    csv_files: Sequence[Path], shard_root: str | None = None, *, allow_outside_root: bool = False
) -> ShardList:
    """Concatenate ``file_path,num_samples`` csvs.

    Relative ``file_path`` values are joined to ``shard_root`` when given (a folder, a URL prefix, or a
    template containing ``{}``, e.g. ``pipe:aws s3 cp s3://bucket/laion/{} -``), else to the csv's folder,
    by the rules of :mod:`mindone.data.locations`. Shards with zero samples are dropped.
    """
    urls: list[str] = []
    sizes: list[int] = []
    user_root = Root.parse(shard_root) if shard_root is not None else None
    for csv in csv_files:
        frame = _read_csv(csv, STATS_COLUMNS)
        root = user_root or Root(str(csv.resolve().parent), "local")
        for row, (file_path, count) in enumerate(zip(frame["file_path"], frame["num_samples"]), start=2):
            try:
                n = int(float(count))
            except ValueError:
                raise DataError(f"{csv}:{row}: num_samples {count!r} is not a number") from None
            if n < 0:
                raise DataError(f"{csv}:{row}: num_samples {n} is negative")
            if n > 0:
                where = f"{csv}:{row} file_path"
                url = root.resolve(file_path, where=where, allow_outside_root=allow_outside_root)
                escapes = root.kind == "local" and not is_under(os.path.realpath(url), root.text)
                if escapes and not allow_outside_root:
                    raise UnsafeLocation(f"{where}: {file_path[:80]!r} is a symlink to a place outside the data "
                                         f"root {root.text!r} (pass {OUTSIDE_FLAG} to follow it)")
                urls.append(url)
                sizes.append(n)
    if not urls:
        raise DataError(f"{', '.join(map(str, csv_files))}: no shard with samples")
    return ShardList(urls, np.asarray(sizes, dtype=np.int64))

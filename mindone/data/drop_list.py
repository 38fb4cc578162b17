"""The drop list: samples a data tool decided to leave out (near duplicates, ...), named by sample id.

**Sample id.** ``<part folder>/<shard>/<key>``, e.g. ``part_1/00000/000010023``: the shard's path relative to
the data folder without ``.tar``, then the sample's key. The key alone is not enough: img2dataset numbers
keys ``<shard><index>`` from shard 0 in every download, and each ``part_<N>`` is a download of its own, so
``000010023`` is a sample of every part. The same string names the sample in both layouts (webdataset
``part_1/00000.tar`` member ``000010023.jpg``; files ``part_1/00000/000010023.jpg``), in the filtered copies
``laion_gen_data_stats.py --filtered_output_dir`` writes (same relative paths), and wherever the shards are
served from (``--shard_root`` folder, URL or ``pipe:`` template): only the last two components of a shard's
location are used (:func:`shard_name`).

**File.** UTF-8 text, one sample id per line, sorted; empty lines and lines starting with ``#`` are
ignored. Writers replace it atomically (:func:`write_drop_list`).

**Membership.** A loaded list (:class:`DropList`) holds the sorted 64-bit BLAKE2b digests of its ids: 8 bytes
per dropped sample (a numpy array, shared copy-on-write by the loader's forked workers) instead of the ~100
bytes of a Python string in a set. Two different ids share a digest with probability 2^-64: with 100 M
listed ids, checking 2 B samples drops about 0.01 samples wrongly. The stats tools and the loader use this
one test, so they drop the same samples even then. :func:`load_drop_list` caches the list per file (path,
size, modification time): the filters of every shard and sample share one copy.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from mindone.errors import DataError
from mindone.utils.atomic import atomic_open

# the last "<folder>/<name>.tar" of a location (a path, a URL with a query, a shell command line)
_SHARD = re.compile(r"""([^/\s'"]+)/([^/\s'"]+)\.tar(?=$|[\s'"?#&])""")


def shard_name(location: str) -> str:
    """``part_1/00000`` for ``/data/part_1/00000.tar``, ``https://h/laion/part_1/00000.tar?t=x``,
    ``pipe:aws s3 cp s3://b/part_1/00000.tar -`` or the relative ``part_1/00000.tar``."""
    matches = _SHARD.findall(location)
    if not matches:
        raise DataError(f"{location[:120]!r}: not a <folder>/<shard>.tar location, no sample id for it")
    folder, name = matches[-1]
    return f"{folder}/{name}"


def sample_id(shard: str, key: str) -> str:
    """The id of sample ``key`` of shard ``shard`` (:func:`shard_name`)."""
    return f"{shard}/{key}"


def files_sample_id(image_path: str) -> str:
    """The id of a files-layout image: ``.../part_1/00000/000010023.jpg`` -> ``part_1/00000/000010023``."""
    parts = os.path.splitext(image_path.replace("\\", "/"))[0].split("/")
    return "/".join(parts[-3:])


def digests(ids: Iterable[str]) -> np.ndarray:
    """The 64-bit BLAKE2b digest of each id (uint64, unsorted)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids),
                       dtype=np.uint64)


class DropList:
    """Membership test for a drop list: ``sample_id in drop_list``."""

    def __init__(self, ids: Iterable[str], source: str = "") -> None:
        self.digests = np.unique(digests(ids))
        self.source = source

    def __len__(self) -> int:
        return len(self.digests)

    def __contains__(self, sid: str) -> bool:
        digest = np.uint64(int.from_bytes(hashlib.blake2b(sid.encode(), digest_size=8).digest(), "little"))
        at = int(np.searchsorted(self.digests, digest))
        return at < len(self.digests) and self.digests[at] == digest


def read_ids(path: str | os.PathLike) -> list[str]:
    """The sample ids of a drop list file; DataError when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [line for line in (raw.strip() for raw in fh) if line and not line.startswith("#")]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"drop list {path}: cannot read it ({err})") from None


_CACHE: dict[tuple[str, int, int], DropList] = {}


def load_drop_list(path: str | os.PathLike) -> DropList:
    """The :class:`DropList` of ``path``, read once per file version."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as err:
        raise DataError(f"drop list {path}: cannot read it ({err.strerror})") from None
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE.clear()  # one list at a time: an older version of the file is not needed again
        _CACHE[key] = DropList(read_ids(real), source=str(path))
    return _CACHE[key]


def write_drop_list(path: str | os.PathLike, ids: Iterable[str], header: str = "") -> Path:
    """Write the sorted ``ids`` (atomically), after ``header`` lines given as ``# ...`` comments."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.writelines(f"# {line}\n" for line in header.splitlines())
        fh.writelines(f"{i}\n" for i in sorted(ids))
    return Path(path)

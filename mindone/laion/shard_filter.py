"""Stats-time post-download filtering for webdataset parts: write filtered copies of the shards.

The training loader addresses tar samples by position and takes each shard's sample count from the stats
csv, so a filtered count for an unfiltered tar would be wrong. Filtering at stats time therefore writes
new tars that hold only the passing samples (read sequentially, written atomically, ``_stats.json`` last
as img2dataset does); their stats csv is then exact and the loader needs no filters. The alternative is
to keep the tars and pass the same thresholds to the loader (``build_dataset(filters=...)``).

A shard is data: it is opened as an uncompressed tar only (no gzip/xz/bz2 bomb is inflated), and every
member is read whole only up to ``max_member_bytes`` (``--max_member_mb``); past that the shard is
refused with :class:`ShardFilterError` before its bytes are read. Nothing is extracted to disk; only
regular file members with a relative name free of ``..`` are copied (links, devices and names that an
extracting tool would write outside its folder are dropped).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections import Counter
from pathlib import Path, PurePosixPath

from mindone.data.filters import SampleFilters
from mindone.laion.tar_stats import split_key_ext
from mindone.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

DEFAULT_MAX_MEMBER_BYTES = 64 << 20  # an image img2dataset resized is well under this


class ShardFilterError(ValueError):
    """A shard that cannot be filtered safely (compressed, unreadable, or a member over the size cap)."""


def _group_passes(group: list[tuple[tarfile.TarInfo, bytes]], filters: SampleFilters, reasons: Counter) -> bool:
    meta: dict = {}
    for member, data in group:
        parts = split_key_ext(member.name)
        if parts and parts[1] == "json":
            try:
                loaded = json.loads(data)
            except (ValueError, RecursionError):  # not json, or nested deeper than the parser goes
                loaded = {}
            meta = loaded if isinstance(loaded, dict) else {}
    reason = filters.check(meta, {})
    if reason:
        reasons[reason] += 1
        return False
    return True


def _copyable(member: tarfile.TarInfo) -> bool:
    """A regular file whose name stays inside the folder a tar is extracted to."""
    name = PurePosixPath(member.name.replace("\\", "/"))
    return member.isfile() and not name.is_absolute() and ".." not in name.parts


def _open_plain_tar(src: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(src, "r:")  # "r:" never decompresses, unlike tarfile's default "r:*"
    except tarfile.ReadError as err:
        raise ShardFilterError(f"{src}: not an uncompressed tar ({err})") from None


def filter_shard(src: Path, dst: Path, filters: SampleFilters, reasons: Counter,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> tuple[int, int]:  # fmt: skip
    """Copy the sample groups of ``src`` whose json passes ``filters`` to ``dst``; returns (kept, total).

    Raises :class:`ShardFilterError` (and writes nothing) for a compressed tar or a member over ``max_member_bytes``.
    """
    start = time.time()
    kept = total = 0
    with _open_plain_tar(src) as tar_in, atomic_path(dst) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar_out:
            group: list[tuple[tarfile.TarInfo, bytes]] = []
            key = None

            def flush() -> None:
                nonlocal kept, total
                if not group:
                    return
                total += 1
                if _group_passes(group, filters, reasons):
                    kept += 1
                    for member, data in group:
                        tar_out.addfile(member, io.BytesIO(data))

            for member in tar_in:
                if not _copyable(member):
                    continue
                if member.size > max_member_bytes:
                    raise ShardFilterError(f"{src}: member {member.name!r} is {member.size} bytes, over the "
                                           f"{max_member_bytes >> 20} MiB cap (--max_member_mb raises it)")
                parts = split_key_ext(member.name)
                member_key = parts[0] if parts else member.name
                if member_key != key:
                    flush()
                    group, key = [], member_key
                group.append((member, tar_in.extractfile(member).read()))
            flush()
    stats = {"count": total, "successes": kept, "filtered_out": total - kept, "filters": filters.__dict__,
             "start_time": start, "end_time": time.time(), "source": str(src)}  # fmt: skip
    atomic_write_text(dst.with_name(dst.name[: -len(".tar")] + "_stats.json"), json.dumps(stats, indent=4))
    return kept, total

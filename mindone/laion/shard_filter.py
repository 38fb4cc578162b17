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

Samples are those of :mod:`mindone.data.wds_sample` (the loader's and the stats scan's): only complete
groups are judged and copied, so a copy holds nothing but samples and its ``successes`` equals the images
the stats scan finds in it. A group that is no sample (image without caption, lone json...) is left out.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections import Counter
from pathlib import Path, PurePosixPath

from mindone.data.drop_list import sample_id, shard_name
from mindone.data.filters import SampleFilters
from mindone.data.wds_sample import META_EXT, group_members, is_sample, split_name
from mindone.errors import DataError
from mindone.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

DEFAULT_MAX_MEMBER_BYTES = 64 << 20  # an image img2dataset resized is well under this


class ShardFilterError(DataError):
    """A shard that cannot be filtered safely (compressed, unreadable, or a member over the size cap)."""


Group = dict[str, tuple[str, tarfile.TarInfo, bytes]]  # extension -> (name, member, data)


def _group_passes(group: Group, filters: SampleFilters, reasons: Counter, sample_id: str) -> bool:
    meta: dict = {}
    if META_EXT in group and filters.needs_meta:
        try:
            loaded = json.loads(group[META_EXT][2])
        except (ValueError, RecursionError):  # not json, or nested deeper than the parser goes
            loaded = {}
        meta = loaded if isinstance(loaded, dict) else {}
    reason = filters.check(meta, {}, sample_id=sample_id)
    if reason:
        reasons[reason] += 1
        return False
    return True


def _copyable(member: tarfile.TarInfo) -> bool:
    """A regular file whose name stays inside the folder a tar is extracted to."""
    name = PurePosixPath(member.name.replace("\\", "/"))
    return member.isfile() and not name.is_absolute() and ".." not in name.parts


def open_plain_tar(src: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(src, "r:")  # "r:" never decompresses, unlike tarfile's default "r:*"
    except tarfile.ReadError as err:
        raise ShardFilterError(f"{src}: not an uncompressed tar ({err})") from None


def sample_members(tar_in: tarfile.TarFile, src: Path, max_member_bytes: int):
    """``(name, member, data)`` for the copyable sample members of ``tar_in``, in tar order; raises
    :class:`ShardFilterError` at the first one over ``max_member_bytes``, before reading it."""
    for member in tar_in:
        if not _copyable(member) or split_name(member.name) is None:
            continue
        if member.size > max_member_bytes:
            raise ShardFilterError(f"{src}: member {member.name!r} is {member.size} bytes, over the "
                                   f"{max_member_bytes >> 20} MiB cap (--max_member_mb raises it)")
        yield member.name, member, tar_in.extractfile(member).read()


def filter_shard(src: Path, dst: Path, filters: SampleFilters, reasons: Counter,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> tuple[int, int]:  # fmt: skip
    """Copy the samples of ``src`` that pass ``filters`` to ``dst``; returns (kept, samples). A drop list
    names samples ``<src's folder>/<src's name>/<key>`` (:mod:`mindone.data.drop_list`).

    Raises :class:`ShardFilterError` (and writes nothing) for a compressed tar or a member over ``max_member_bytes``.
    """
    start = time.time()
    kept = total = 0
    shard = shard_name(str(src))
    with open_plain_tar(src) as tar_in, atomic_path(dst) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar_out:
            for key, group in group_members(sample_members(tar_in, src, max_member_bytes)):
                if not is_sample(group):
                    continue
                total += 1
                if _group_passes(group, filters, reasons, sample_id(shard, key)):
                    kept += 1
                    for _, member, data in group.values():
                        tar_out.addfile(member, io.BytesIO(data))
    stats = {"count": total, "successes": kept, "filtered_out": total - kept, "filters": filters.__dict__,
             "start_time": start, "end_time": time.time(), "source": str(src)}  # fmt: skip
    atomic_write_text(dst.with_name(dst.name[: -len(".tar")] + "_stats.json"), json.dumps(stats, indent=4))
    return kept, total

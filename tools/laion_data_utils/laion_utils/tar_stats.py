"""Count complete samples in a webdataset tar from its headers alone, and detect truncation.

A tar is a sequence of 512-byte headers each followed by the member's data padded to 512 bytes, closed by
(at least) one all-zero block. Reading only the headers with ``os.pread`` and jumping over the data costs
one small read per member, whatever the image sizes, so a 10,000-sample shard is scanned in milliseconds
instead of reading its hundreds of megabytes (see benchmarks/bench_data_stats.py).

Sample grouping follows webdataset: the key is the member path up to the first dot of its base name, the
extension is the rest (``000010003.jpg`` -> key ``000010003``, ext ``jpg``).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp"})
CAPTION_EXTS = frozenset({"txt", "text", "caption"})
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


class TarFormatError(ValueError):
    """The file is not a complete, well-formed tar archive."""


@dataclass
class TarScan:
    """What a tar holds, per sample key. ``error`` is set when the archive is truncated or malformed."""

    path: str
    num_samples: int = 0  # keys with an image member and a caption member
    num_images: int = 0  # keys with an image member
    missing_caption: int = 0  # image without caption member
    empty_caption: int = 0  # samples (counted) whose caption member is 0 bytes; the loader skips them
    missing_image: int = 0  # caption (or json) without image
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def split_key_ext(name: str) -> tuple[str, str] | None:
    """``part/000001.jpg`` -> (``part/000001``, ``jpg``); None for names without an extension."""
    match = _KEY_EXT.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def _octal(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        value = int.from_bytes(field_bytes[1:], "big")
        return value
    text = field_bytes.replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    return stored == unsigned


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return records


def iter_tar_members(path: str | os.PathLike):
    """Yield ``(name, size, data_offset)`` of every regular file member.

    Raises :class:`TarFormatError` when the archive is truncated or malformed.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):  # headers only: kernel read-ahead would pull in the image bytes too
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        file_size = os.fstat(fd).st_size
        offset = 0
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            header = os.pread(fd, BLOCK, offset)
            if len(header) < BLOCK:
                raise TarFormatError(f"truncated: no end-of-archive marker (file ends at byte {file_size})")
            if header == _ZERO_BLOCK:
                return  # end-of-archive marker: the writer closed the archive
            # ustar/gnu/pax headers carry a magic; the byte-sum checksum (slow in Python) is checked otherwise
            if header[257:262] != b"ustar" and not _checksum_ok(header):
                raise TarFormatError(f"bad header at byte {offset}")
            size = _octal(header[124:136])
            typeflag = header[156:157]
            if typeflag not in (b"x", b"L", b"g") and "size" in pax:
                size = int(pax["size"])  # pax overrides the octal field for huge members
            data_start = offset + BLOCK
            data_end = data_start + size
            if data_end > file_size:
                raise TarFormatError(f"truncated: member at byte {offset} needs {data_end} bytes, file has {file_size}")
            if typeflag in (b"x", b"L"):
                payload = os.pread(fd, size, data_start)
                if typeflag == b"L":
                    long_name = payload.rstrip(b"\0").decode("utf-8", "replace")
                else:
                    pax = _pax_records(payload)
            elif typeflag == b"g":
                pass  # global pax header: no member
            else:
                if typeflag in (b"0", b"\0", b"7"):
                    name = long_name or pax.get("path")
                    if name is None:
                        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                        if header[257:262] == b"ustar":
                            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                            if prefix:
                                name = f"{prefix}/{name}"
                    yield name, size, data_start
                long_name, pax = None, {}
            offset = data_start + (data_end - data_start + BLOCK - 1) // BLOCK * BLOCK
    finally:
        os.close(fd)


def scan_tar(path: str | os.PathLike) -> TarScan:
    """Group the members of ``path`` into samples and count the complete (image + caption member) ones.

    For img2dataset shards that is every sample group of the tar, which is what the training loader indexes
    (``mindone.data`` addresses samples by their position in the tar and skips an empty caption at load
    time, so an empty caption is counted here, and reported in ``empty_caption``).

    Never raises for a bad archive: a truncated or unreadable file comes back with ``error`` set.
    """
    scan = TarScan(path=str(path))
    exts: dict[str, dict[str, int]] = defaultdict(dict)
    try:
        for name, size, _ in iter_tar_members(path):
            parts = split_key_ext(name)
            if parts is not None:
                exts[parts[0]][parts[1]] = size
    except (OSError, TarFormatError, ValueError) as err:
        scan.error = str(err)
        return scan
    for members in exts.values():
        has_image = not IMAGE_EXTS.isdisjoint(members)
        captions = [members[e] for e in CAPTION_EXTS if e in members]
        if has_image:
            scan.num_images += 1
        if has_image and captions:
            scan.num_samples += 1
            scan.empty_caption += max(captions) == 0
        elif has_image:
            scan.missing_caption += 1
        else:
            scan.missing_image += 1
    return scan


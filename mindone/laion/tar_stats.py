"""Count complete samples in a webdataset tar from its headers alone, and detect truncation and damage.

A tar is a sequence of 512-byte headers each followed by the member's data padded to 512 bytes, closed by
(at least) one all-zero block. Reading only the headers with ``os.pread`` and jumping over the data costs
one small read per member, whatever the image sizes, so a 10,000-sample shard is scanned in milliseconds
instead of reading its hundreds of megabytes (see benchmarks/bench_data_stats.py).

A shard is data, not trusted: every header's checksum is verified (in batches, with numpy: a Python byte
sum per header would add half again to the scan time), sizes must be plain octal or non-negative
base-256 and fit in the file, pax records must be well formed, and every step moves forward, so a
crafted tar ends as a :class:`TarFormatError` (reported like a truncated shard) after at most one step
per 512 bytes of file. Pax and GNU long-name payloads are the only member data read, and only up to
``MAX_EXTENDED_HEADER``.

What a sample is (key split, image and caption extensions, grouping of consecutive members, completeness)
is :mod:`mindone.data.wds_sample`'s contract, which the training loader follows too: ``num_samples`` is the
number of samples the loader can address in the shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mindone.data.wds_sample import CAPTION_EXT, group_members, image_ext, is_sample

BLOCK = 512
MAX_EXTENDED_HEADER = 1 << 20  # a pax / GNU long-name payload larger than this is refused
_CHECK_BATCH = 1024  # headers whose checksums are verified together
_ZERO_BLOCK = bytes(BLOCK)
_OCTAL_WEIGHTS = 8 ** np.arange(5, -1, -1, dtype=np.int64)  # of the checksum field's 6 digits


class TarFormatError(ValueError):
    """The file is not a complete, well-formed tar archive."""


@dataclass
class TarScan:
    """What a tar holds, per sample key. ``error`` is set when the archive is truncated or malformed."""

    path: str
    num_samples: int = 0  # complete groups (image and caption member): what the loader addresses
    num_images: int = 0  # groups with an image member
    missing_caption: int = 0  # image without caption member
    empty_caption: int = 0  # samples (counted) with a 0-byte caption member: the loader uses the json caption or skips
    missing_image: int = 0  # groups without an image (a caption, a json, only other extensions)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _octal(field_bytes: bytes) -> int:
    """A numeric header field: octal digits up to the first NUL (space padded), or GNU base-256.

    Anything else (a sign, ``0o``/``_`` that ``int`` would accept, a negative base-256 number) is a
    :class:`TarFormatError`.
    """
    text = field_bytes.partition(b"\0")[0].strip()
    if text.isdigit():
        try:
            return int(text, 8)
        except ValueError:  # an 8 or a 9
            pass
    elif not text:
        return 0
    elif field_bytes[0] == 0x80:  # GNU base-256 for sizes >= 8 GiB (0xff would be a negative number)
        return int.from_bytes(field_bytes[1:], "big")
    raise TarFormatError(f"numeric field {field_bytes!r} is not an octal number")


def _checksum_matches(header: bytes) -> bool:
    """The exact check for one header: any field layout, unsigned sum or the signed one old writers used."""
    try:
        stored = _octal(header[148:156])
    except TarFormatError:
        return False
    rest = header[:148] + header[156:]
    unsigned = sum(rest) + 8 * 32
    signed = unsigned - 256 * sum(1 for byte in rest if byte >= 128)
    return stored in (unsigned, signed)


def _first_bad_checksum(headers: list[bytes]) -> int | None:
    """Index of the first header whose checksum does not match, None when all do.

    One numpy pass (plain integer sums: a float matrix product would start BLAS threads that spin on a
    busy machine) confirms the headers whose field has the usual layout (6 octal digits, NUL) and whose
    unsigned sum matches; only the others are checked one by one.
    """
    rows = np.frombuffer(b"".join(headers), dtype=np.uint8).reshape(len(headers), BLOCK)
    field = rows[:, 148:156]
    total = rows.sum(axis=1, dtype=np.uint32).astype(np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * 32
    digits = field[:, :6].astype(np.int64) - 0x30
    usual = ((digits >= 0) & (digits <= 7)).all(axis=1) & (field[:, 6] == 0)
    confirmed = usual & ((digits * _OCTAL_WEIGHTS).sum(axis=1) == total)
    for index in np.flatnonzero(~confirmed):
        if not _checksum_matches(headers[index]):
            return int(index)
    return None


def _verify_checksums(headers: list[bytes], offsets: list[int]) -> None:
    bad = _first_bad_checksum(headers) if headers else None
    if bad is not None:
        raise TarFormatError(f"bad header at byte {offsets[bad]} (checksum mismatch)")


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``"<length> <key>=<value>\\n"`` records of a pax header; TarFormatError for a malformed one.

    Each length must cover more than its own prefix and end on the newline, so the parse always advances.
    """
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:  # trailing NULs: padding some writers leave
        space = data.find(b" ", pos, pos + 20)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise TarFormatError(f"malformed pax record at offset {pos} of its header")
        length = int(digits)
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise TarFormatError(f"malformed pax record at offset {pos} of its header (length {length})")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise TarFormatError(f"malformed pax record at offset {pos} of its header (no '=')")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos = end
    return records


def _pax_size(pax: dict[str, str], size: int) -> int:
    """The size a pax header sets for the next member (it overrides the octal field for huge members)."""
    if "size" not in pax:
        return size
    text = pax["size"].strip()
    if not (text.isascii() and text.isdigit()):
        raise TarFormatError(f"pax size {pax['size']!r} is not a non-negative number")
    return int(text)


def iter_tar_members(path: str | os.PathLike):
    """Yield ``(name, size, data_offset)`` of every regular file member.

    A member is yielded once its header and every header before it passed the checksum check (checked
    every ``_CHECK_BATCH`` headers). Raises :class:`TarFormatError` when the archive is truncated or
    malformed; the loop moves at least 512 bytes forward per header, so it always ends.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):  # headers only: kernel read-ahead would pull in the image bytes too
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        file_size = os.fstat(fd).st_size
        offset = 0
        long_name: str | None = None
        pax: dict[str, str] = {}
        headers: list[bytes] = []
        offsets: list[int] = []
        ready: list[tuple[str, int, int]] = []
        while True:
            header = os.pread(fd, BLOCK, offset)
            if len(header) < BLOCK:
                _verify_checksums(headers, offsets)
                raise TarFormatError(f"truncated: no end-of-archive marker (file ends at byte {file_size})")
            if header == _ZERO_BLOCK:
                break  # end-of-archive marker: the writer closed the archive
            headers.append(header)
            offsets.append(offset)
            typeflag = header[156:157]
            data_start = offset + BLOCK
            try:
                size = _octal(header[124:136])
                if pax and typeflag not in (b"x", b"L", b"g"):
                    size = _pax_size(pax, size)
                data_end = data_start + size
                if data_end > file_size:
                    raise TarFormatError(f"truncated: member at byte {offset} needs {data_end} bytes, file has {file_size}")
                if typeflag in (b"x", b"L"):
                    if size > MAX_EXTENDED_HEADER:
                        raise TarFormatError(f"extended header at byte {offset} is {size} bytes (limit {MAX_EXTENDED_HEADER})")
                    payload = os.pread(fd, size, data_start)
                    if len(payload) < size:
                        raise TarFormatError(f"truncated: member at byte {offset} ends early")
                    if typeflag == b"L":
                        long_name = payload.rstrip(b"\0").decode("utf-8", "replace")
                    else:
                        pax = _pax_records(payload)
                elif typeflag != b"g":  # a global pax header describes no member
                    if typeflag in (b"0", b"\0", b"7"):
                        name = long_name or pax.get("path")
                        if name is None:
                            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                            if header[257:262] == b"ustar":
                                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                                if prefix:
                                    name = f"{prefix}/{name}"
                        ready.append((name, size, data_start))
                    long_name, pax = None, {}
            except TarFormatError as err:
                _verify_checksums(headers, offsets)  # a damaged header is named as such first
                message = str(err)
                raise TarFormatError(message if message.startswith("truncated") else f"bad header at byte {offset}: {message}") from None
            offset = data_start + (size + BLOCK - 1) // BLOCK * BLOCK
            if len(headers) >= _CHECK_BATCH:
                _verify_checksums(headers, offsets)
                yield from ready
                headers, offsets, ready = [], [], []
        _verify_checksums(headers, offsets)
        yield from ready
    finally:
        os.close(fd)


def scan_tar(path: str | os.PathLike) -> TarScan:
    """Group the members of ``path`` into samples (:mod:`mindone.data.wds_sample`) and count the complete ones.

    For img2dataset shards that is every group of the tar. An empty caption member is counted (the loader
    falls back to the json caption, else skips the sample at load time) and reported in ``empty_caption``.

    Never raises for a bad archive: a truncated or unreadable file comes back with ``error`` set.
    """
    scan = TarScan(path=str(path))
    num_samples = empty_caption = missing_caption = missing_image = 0
    try:
        for _, members in group_members(iter_tar_members(path)):  # members: ext -> (name, size, offset)
            if is_sample(members):
                num_samples += 1
                empty_caption += members[CAPTION_EXT][1] == 0
            elif image_ext(members) is not None:
                missing_caption += 1
            else:
                missing_image += 1
    except (OSError, TarFormatError, ValueError) as err:
        scan.error = str(err)
        return scan
    scan.num_samples, scan.num_images = num_samples, num_samples + missing_caption
    scan.empty_caption, scan.missing_caption, scan.missing_image = empty_caption, missing_caption, missing_image
    return scan

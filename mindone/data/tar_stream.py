"""Stream samples out of a tar shard: a local file, an ``http(s)://`` URL, or a ``pipe:<command>``.

Shards are plain (uncompressed) tars, as img2dataset writes them: a compressed one is unreadable, since a
small compressed file could expand without bound. A member larger than ``max_member_bytes`` is never read
into memory: its sample comes out as bad with reason ``oversized_member``.

Members are grouped into samples as :mod:`mindone.data.wds_sample` specifies (``000010023.jpg``,
``000010023.txt`` and ``000010023.json`` form sample ``000010023``): sample ``i`` of a shard is its
``i``-th complete group, as the stats scan counts them. Only the wanted samples have their bytes read:
other groups, and groups that are no sample, are skipped by header (a seek on local files;
read-and-discard on streams, which cannot seek). A truncated or unreadable tar never raises: the wanted
samples it could not deliver come out as bad with reason ``truncated_shard`` / ``unreadable_shard``
(remote sources are retried first).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import IO, Iterator, Sequence

from mindone.data.wds_sample import IMAGE_EXTS, is_sample, split_name

logger = logging.getLogger(__name__)

URL_TIMEOUT_S = 60.0
MAX_MEMBER_BYTES = 64 << 20  # an image, caption or json larger than this is not a training sample
REMOTE_RETRIES = 2
RETRY_DELAY_S = 1.0


@dataclass
class RawSample:
    """The undecoded members of one sample: ``files`` maps extension (``jpg``, ``txt``...) to bytes."""

    key: str
    files: dict[str, bytes] = field(default_factory=dict)


def open_regular_file(path: str) -> IO[bytes]:
    """Open a regular file for reading; a FIFO, device or folder raises OSError instead of blocking or
    streaming forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return open(fd, "rb", buffering=1 << 20)


@contextlib.contextmanager
def open_shard(url: str) -> Iterator[tuple[IO[bytes], bool]]:
    """Open a shard for reading; yields ``(file object, seekable)``. Pipes are reaped on exit."""
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, bufsize=1 << 20)
        try:
            yield proc.stdout, False
        finally:
            if proc.poll() is None:
                proc.kill()  # we stopped early: the rest of the stream is not needed
            proc.stdout.close()
            code = proc.wait()
            if code not in (0, -9):
                logger.warning("%s: command exited with status %d", url, code)
    elif url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            yield response, False
    else:
        path = url[7:] if url.startswith("file://") else url
        with open_regular_file(path) as fh:
            yield fh, True


def ascending_runs(wanted: Sequence[int]) -> list[list[int]]:
    """Split ``wanted`` into strictly ascending runs: ``[3, 4, 0, 0, 1]`` -> ``[[3, 4], [0], [0, 1]]``.

    A plan that wraps around a small dataset asks for the same shard twice (or a sample twice); each run
    is one pass over the tar.
    """
    runs: list[list[int]] = []
    for index in wanted:
        index = int(index)
        if not runs or index <= runs[-1][-1]:
            runs.append([])
        runs[-1].append(index)
    return runs


def read_samples(
    url: str, wanted: Sequence[int], retries: int | None = None, max_member_bytes: int = MAX_MEMBER_BYTES,
    payload: tuple[str, ...] = IMAGE_EXTS,
) -> Iterator[tuple[int, RawSample | str]]:
    """Yield ``(index, RawSample)`` for each wanted sample index, in the order asked, or ``(index, reason)``.

    Indices may repeat or go back (a plan that wraps around the dataset): each ascending run of them is
    one pass over the shard. Remote sources (URL, ``pipe:``) that fail are reopened up to ``retries``
    times (default ``REMOTE_RETRIES``), resuming after the last sample delivered; local files are not
    retried. Indices the shard does not have (short or truncated tar) come out with reason
    ``truncated_shard``; when the shard cannot be opened at all, every index comes out with
    ``unreadable_shard``. ``payload``: the extensions a complete sample needs besides its caption
    (:func:`mindone.data.wds_sample.is_sample`): an image by default, ``(MOMENTS_EXT,)`` for latents.
    """
    for run in ascending_runs(wanted):
        yield from _read_run(url, run, retries, max_member_bytes, payload)


def _read_run(
    url: str, wanted: Sequence[int], retries: int | None, max_member_bytes: int, payload: tuple[str, ...]
) -> Iterator[tuple[int, RawSample | str]]:
    """:func:`read_samples` for one strictly ascending run of indices."""
    if retries is None:
        retries = REMOTE_RETRIES if url.startswith(("http://", "https://", "pipe:")) else 0
    done, attempt = 0, 0
    while done < len(wanted):
        try:
            with open_shard(url) as (fh, seekable):
                for item in _iter_samples(fh, seekable, wanted[done:], max_member_bytes, payload):
                    done += 1
                    yield item
            break
        except (OSError, tarfile.TarError, EOFError, ValueError) as err:
            permanent = isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500
            if attempt < retries and not permanent:
                attempt += 1
                logger.warning("%s: %s; retry %d of %d from sample %d", url, err, attempt, retries, done)
                time.sleep(RETRY_DELAY_S * attempt)
                continue
            reason = "unreadable_shard" if done == 0 else "truncated_shard"
            logger.warning("%s: %s after %d of %d wanted samples (%s)", url, reason, done, len(wanted), err)
            for index in wanted[done:]:
                yield int(index), reason
            return
    if done < len(wanted):
        logger.warning("%s: shard ends after %d of %d wanted samples", url, done, len(wanted))
        for index in wanted[done:]:
            yield int(index), "truncated_shard"


def _iter_samples(
    fh: IO[bytes], seekable: bool, wanted: Sequence[int], max_member_bytes: int, payload: tuple[str, ...]
) -> Iterator[tuple[int, RawSample | str]]:
    """The wanted samples of a tar, complete; a sample cut by truncation raises (caller marks the rest).

    Groups follow :mod:`mindone.data.wds_sample` (consecutive members with one key); a group is sample
    ``index`` only once it ends complete, so the group that may become the wanted sample is read, and
    dropped if it turns out incomplete. A wanted sample with a member over ``max_member_bytes`` comes out
    as ``oversized_member``, unread.
    """
    tar = tarfile.open(fileobj=fh, mode="r:" if seekable else "r|")
    targets = iter(int(w) for w in wanted)
    target = next(targets)
    index = 0  # the sample index of the current group, if it ends complete
    key: str | None = None
    exts: set[str] = set()
    sample: RawSample | str | None = None  # the current group's members when it is the wanted one
    for member in tar:
        if not member.isfile():
            continue
        parts = split_name(member.name)
        if parts is None:
            continue
        member_key, ext = parts
        if member_key != key:
            if key is not None and is_sample(exts, payload):
                if sample is not None:
                    yield index, sample
                    target = next(targets, None)
                    if target is None:
                        return
                index += 1
            key, exts = member_key, set()
            sample = RawSample(key) if index == target else None
        exts.add(ext)
        if isinstance(sample, RawSample):
            if member.size > max_member_bytes:
                sample = "oversized_member"
                continue
            data = tar.extractfile(member).read()
            if len(data) != member.size:
                raise EOFError(f"member {member.name} truncated")
            sample.files[ext] = data
    if sample is not None and is_sample(exts, payload):
        yield index, sample

"""Atomic output: write to a temporary name beside the target, then rename.

A reader never sees a half-written file: either the old content (or nothing) or the new one.
The temporary name starts with ``.`` and ends with ``.tmp`` so that globbing for outputs
(``part_*.parquet``) never matches it, and a later run can sweep leftovers with
:func:`remove_stale_temps`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

TMP_SUFFIX = ".tmp"


def temp_path_for(target: str | os.PathLike) -> Path:
    """A fresh, unique temporary path in the target's directory (same filesystem, so rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target``, on error it is removed."""
    tmp = temp_path_for(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "w", **kwargs):
    """``open`` that publishes the file only when the block exits without error."""
    with atomic_path(target) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(target: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(target, "w", encoding=encoding) as fh:
        fh.write(text)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_open(target, "wb") as fh:
        fh.write(data)


def remove_stale_temps(directory: str | os.PathLike) -> int:
    """Delete temporaries left by killed runs in ``directory``; returns how many were removed."""
    removed = 0
    for path in Path(directory).glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed

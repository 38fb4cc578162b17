"""Publish a whole output directory atomically.

A job writes into a hidden staging directory beside the target (same filesystem) and renames it onto
the target at the very end, so a killed run never leaves part files where a later step would read
them. Staging directories of dead runs (their owner pid is gone) are removed by the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mindone.errors import ConfigError

log = logging.getLogger(__name__)
OWNER_FILE = ".owner_pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_staging(target: Path) -> None:
    """Delete staging dirs for ``target`` left by killed runs."""
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        owner = path / OWNER_FILE
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid <= 0 or not _pid_alive(pid):
            log.info("removing leftover staging dir of a killed run: %s", path)
            shutil.rmtree(path, ignore_errors=True)


def check_target(target: Path, overwrite: bool, protect: list[Path] = ()) -> None:
    """Refuse a non-empty existing ``target`` unless ``overwrite``, and any target overlapping ``protect``."""
    t = target.resolve()
    for p in protect:
        p = p.resolve()
        if t == p or p in t.parents or t in p.parents:
            raise ConfigError(f"--output_dir {target}: overlaps the input directory {p}")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--output_dir {target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConfigError(f"--output_dir {target}: exists and is not empty (pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging dir; on success it replaces ``target``, on any error it is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the published dir gets the usual mode
    (staging / OWNER_FILE).write_text(str(os.getpid()))
    try:
        yield staging
        (staging / OWNER_FILE).unlink()
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=".tmp", dir=target.parent))
            os.replace(target, old / "content")
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

"""Logging set-up: one logger per module, the rank in the prefix when distributed."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"


def setup_logging(rank: int = 0, world_size: int = 1, level: int = logging.INFO, log_file: str | None = None) -> None:
    fmt = _FORMAT.format(rank=rank) if world_size > 1 else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", handlers=handlers, force=True)

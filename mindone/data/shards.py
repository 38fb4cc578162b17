"""Epoch plan: which samples each rank and each data worker reads, and in which order.

Every dataset is a list of *shards* with known sample counts (tar shards from ``part_<N>_stats.csv``;
for the files dataset every csv row is a shard of one sample). One epoch works like this:

1. **Shard shuffle.** The shards are permuted with a generator seeded by ``(seed, epoch)`` (identity
   when ``shuffle=False``); concatenating them gives the epoch stream, positions ``0 .. N-1``. Every rank
   computes the same stream, without communicating.
2. **Rank split, equal on every rank.** Each rank reads ``per_rank`` consecutive positions:
   rank ``r`` reads ``[r * per_rank, (r + 1) * per_rank)``. When ``N`` divides by the world size every
   sample is read exactly once. When it does not (the *uneven-split policy*, ``uneven``):

   - ``"pad"`` (default): no sample is missed. ``per_rank = ceil(N / world_size)``, rounded up to a whole
     number of batches when only whole batches are read (``drop_remainder``): ``per_rank = batch_size *
     ceil(N / (world_size * batch_size))``. The last ranks wrap around to the start of the stream, so at
     most ``world_size * batch_size - 1`` samples are seen twice (``world_size - 1`` without
     ``drop_remainder``);
   - ``"drop"``: ``per_rank = floor(N / world_size)``, and with ``drop_remainder`` only its whole batches
     are read: at most ``world_size * batch_size - 1`` samples (different ones each epoch, since the
     stream is reshuffled) are not seen this epoch.

   Shard boundaries do not matter: a rank starts and stops mid-shard when needed (skipping members by
   their tar headers only). Every rank therefore has the same ``steps_per_epoch`` (``per_rank //
   batch_size`` with ``drop_remainder``, else the ceiling), so no rank waits at the end of an epoch for a
   collective its peers never reach. With ``drop_remainder`` only ``steps * batch_size`` positions are read
   (all of ``per_rank`` under ``"pad"``, a whole number of batches).
3. **Worker split.** The rank's positions are cut into ``num_workers`` consecutive chunks (the first
   ``budget % num_workers`` chunks one longer). Batches are assembled round-robin: rank output ``i`` comes
   from worker ``i % num_workers``; so the output order depends only on the seed, epoch, world size,
   rank, worker count and batch size, never on timing.
4. **Sample shuffle.** Within its chunk a worker emits samples in a seeded, per-epoch order in which no
   sample moves more than ``shuffle_buffer`` places from its streaming position (sort by position + a
   uniform jitter in ``[0, shuffle_buffer)``). It behaves like a shuffle buffer of that size (that is the
   memory it needs: at most ``shuffle_buffer`` undecoded samples held), but the order is known in
   advance, which makes resume exact.
5. **Bad samples and refill.** A worker must yield exactly its quota. When a sample is bad (corrupt
   image, missing caption, filtered out, truncated shard...), it is skipped and counted, and once the
   worker's chunk is exhausted it refills from the positions that follow its chunk in the epoch stream
   (wrapping around), so a few samples may be seen twice in an epoch with bad data, but every rank still
   yields its fixed count. A worker that scans the whole stream without one good sample raises.
6. **Resume** at ``start_step`` (within ``epoch``): output ``start_step * batch_size`` is the next one;
   worker ``w`` has emitted ``ceil((start_step * batch_size - w) / num_workers)`` samples, so it starts
   at that index of its planned order, skipping earlier positions without decoding them (whole shards
   by count, the rest of a shard by tar headers). The resumed stream is exactly the tail of the
   uninterrupted one when the skipped part held no bad sample; each bad sample skipped shifts it by one
   (a sample is seen twice), since bad samples are only known by decoding them.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from mindone.errors import ConfigError

UNEVEN_POLICIES = ("pad", "drop")


def detect_rank_and_world_size() -> tuple[int, int]:
    """Rank and world size from MindSpore communication when initialised, else ``RANK_ID``/``RANK_SIZE``."""
    if "mindspore" in sys.modules:  # never import MindSpore just to ask
        try:
            from mindspore.communication import get_group_size, get_rank
            from mindspore.communication.management import GlobalComm

            if GlobalComm.INITED:
                return int(get_rank()), int(get_group_size())
        except (ImportError, RuntimeError):
            pass
    return int(os.environ.get("RANK_ID", 0)), int(os.environ.get("RANK_SIZE", 1))


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of one rank's epoch."""

    worker_id: int
    chunk_start: int  # epoch-stream position of the chunk's first sample
    quota: int  # samples the worker yields this epoch (before resume)
    order: np.ndarray  # local chunk indices in emit order
    emitted: int  # already emitted before a resume; the worker starts at order[emitted]

    @property
    def remaining(self) -> int:
        return self.quota - self.emitted


class EpochPlan:
    """The epoch stream and its split over ranks and workers (see the module docstring)."""

    def __init__(
        self,
        sizes: np.ndarray,
        *,
        rank: int,
        world_size: int,
        num_workers: int,
        batch_size: int,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        uneven: str = "pad",
        drop_remainder: bool = True,
    ) -> None:
        if uneven not in UNEVEN_POLICIES:
            raise ValueError(f"uneven: expected one of {', '.join(UNEVEN_POLICIES)}, got {uneven!r}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1 or num_workers < 1:
            raise ConfigError(f"batch_size ({batch_size}) and workers ({num_workers}) must be >= 1")
        sizes = np.asarray(sizes, dtype=np.int64)
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.shuffle, self.shuffle_buffer = shuffle, max(int(shuffle_buffer), 1)
        self.total = int(sizes.sum())
        self.shard_order = _rng(seed, epoch, 0x5EED).permutation(len(sizes)) if shuffle else np.arange(len(sizes))
        self.offsets = np.concatenate([[0], np.cumsum(sizes[self.shard_order])])
        if uneven == "drop":
            self.per_rank = self.total // world_size
        else:
            self.per_rank = math.ceil(self.total / world_size)
            if drop_remainder and self.per_rank >= batch_size:  # (below one batch per rank: refused below)
                self.per_rank = batch_size * math.ceil(self.total / (world_size * batch_size))
        if drop_remainder:
            self.steps_per_epoch = self.per_rank // batch_size
            self.budget = self.steps_per_epoch * batch_size
        else:
            self.steps_per_epoch = math.ceil(self.per_rank / batch_size)
            self.budget = self.per_rank
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"dataset has {self.total} samples: fewer than one batch per rank "
                f"(world size {world_size} x batch size {batch_size})"
            )
        self.rank_start = rank * self.per_rank

    def quotas(self) -> list[int]:
        base, extra = divmod(self.budget, self.num_workers)
        return [base + (w < extra) for w in range(self.num_workers)]

    def worker_plan(self, worker_id: int, start_step: int = 0) -> WorkerPlan:
        quotas = self.quotas()
        chunk_start = self.rank_start + sum(quotas[:worker_id])
        quota = quotas[worker_id]
        consumed = min(start_step * self.batch_size, self.budget)
        emitted = max(0, -(-(consumed - worker_id) // self.num_workers))
        if self.shuffle and self.shuffle_buffer > 1 and quota > 1:
            jitter = _rng(self.seed, self.epoch, self.rank, worker_id, self.world_size).random(quota)
            order = np.argsort(np.arange(quota) + jitter * self.shuffle_buffer, kind="stable")
        else:
            order = np.arange(quota)
        return WorkerPlan(worker_id, chunk_start, quota, order, min(emitted, quota))

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Epoch-stream positions (any integers, taken modulo N) -> (shard ids, member indices)."""
        positions = np.asarray(positions, dtype=np.int64) % self.total
        slot = np.searchsorted(self.offsets, positions, side="right") - 1
        return self.shard_order[slot], positions - self.offsets[slot]

    def shard_runs(self, positions: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Group positions (in the given order) into runs of one shard: ``(shard, members, positions)``."""
        if len(positions) == 0:
            return
        shards, members = self.locate(positions)
        cuts = np.flatnonzero(np.diff(shards)) + 1
        for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(shards)]])):
            yield int(shards[lo]), members[lo:hi], positions[lo:hi]

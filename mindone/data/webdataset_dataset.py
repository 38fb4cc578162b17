"""Reader for webdataset tar shards listed in ``part_<N>_stats.csv`` (local paths, URLs, ``pipe:``).

A shard that could not be opened at all (after the source's retries) is remembered: later reads of it in
the same worker come out ``unreadable_shard`` at once instead of paying the retries again, and until some
shard has been read, further shards get no retries (a dead host costs one timeout per shard). When the first
``GIVE_UP_AFTER`` distinct shards a worker tries are all unreadable and nothing has been read yet, the
source is taken to be wrong as a whole (a bad ``--shard_root``, missing credentials, a command that prints
nothing) and :class:`~mindone.data.workers.NoUsableSample` ends the run, instead of trying every shard of
the dataset first.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from mindone.data.annotations import ShardList
from mindone.data.tar_stream import MAX_MEMBER_BYTES, RawSample, read_samples
from mindone.data.wds_sample import IMAGE_EXTS
from mindone.data.workers import NoUsableSample

GIVE_UP_AFTER = 4


class WebdatasetReader:
    """Reads the wanted samples of one shard at a time; ``sizes`` are the stats-csv counts.

    ``payload``: what a complete sample holds besides its caption (:mod:`mindone.data.wds_sample`): an
    image by default, the cached moments for a latent dataset.
    """

    def __init__(self, shards: ShardList, max_member_bytes: int = MAX_MEMBER_BYTES,
                 payload: tuple[str, ...] = IMAGE_EXTS) -> None:  # fmt: skip
        self.urls = shards.urls
        self.sizes = shards.sizes
        self.max_member_bytes = max_member_bytes
        self.payload = payload
        self.unreadable: set[int] = set()
        self.any_read = False

    def read(self, shard: int, members: Sequence[int]) -> Iterator[tuple[int, RawSample | str]]:
        """``(member index, RawSample or skip reason)`` for each member, in the given ascending order."""
        members = np.asarray(members, dtype=np.int64)
        if shard in self.unreadable:
            yield from ((int(m), "unreadable_shard") for m in members)
            return
        # Once a shard has failed and none has ever been read, the source is suspect: no more retries.
        retries = 0 if self.unreadable and not self.any_read else None
        for member, item in read_samples(self.urls[shard], members, retries=retries,
                                         max_member_bytes=self.max_member_bytes, payload=self.payload):
            if item == "unreadable_shard":
                self._failed(shard)
            else:
                self.any_read = True
            yield member, item

    def _failed(self, shard: int) -> None:
        self.unreadable.add(shard)
        if not self.any_read and len(self.unreadable) >= min(GIVE_UP_AFTER, len(self.urls)):
            raise NoUsableSample(
                f"no usable sample: the first {len(self.unreadable)} shards tried could not be read "
                f"(e.g. {self.urls[shard][:120]}; see the warnings above)")

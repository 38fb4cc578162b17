"""Reader for webdataset tar shards listed in ``part_<N>_stats.csv`` (local paths, URLs, ``pipe:``)."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from mindone.data.annotations import ShardList
from mindone.data.tar_stream import RawSample, read_samples


class WebdatasetReader:
    """Reads the wanted samples of one shard at a time; ``sizes`` are the stats-csv counts."""

    def __init__(self, shards: ShardList) -> None:
        self.urls = shards.urls
        self.sizes = shards.sizes

    def read(self, shard: int, members: Sequence[int]) -> Iterator[tuple[int, RawSample | str]]:
        """``(member index, RawSample or skip reason)`` for each member, in the given ascending order."""
        return read_samples(self.urls[shard], np.asarray(members, dtype=np.int64))

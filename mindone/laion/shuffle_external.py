"""External bucket pass: scatter rows into K temporary bucket files, then process one bucket at a time.

Used for the global shuffle (random bucket per row, then a random permutation inside each bucket: the
concatenation is a uniformly random permutation of all rows) and for dedup (bucket = hash of the key, so
all copies of a key meet in one bucket). Memory is bounded by one bucket plus one scatter buffer, not
by the input size: K grows with the input, the bucket size does not.
"""

from __future__ import annotations

import math
import resource
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from mindone.errors import MindoneError

_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def choose_num_buckets(estimated_bytes: int, bucket_mb: int, requested: int | None = None) -> int:
    """``requested`` if given, else enough buckets that each holds about ``bucket_mb`` of rows."""
    if requested:
        return requested
    return max(1, math.ceil(estimated_bytes / (bucket_mb * 2**20)))


def ensure_open_files(needed: int) -> None:
    """Raise the soft open-file limit if K bucket files need it; a clear error if the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise MindoneError(f"{needed} shuffle buckets need more open files than allowed ({hard}); "
                           "raise --shuffle_bucket_mb or `ulimit -n`")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class BucketScatter:
    """Append rows to K bucket files (Arrow IPC stream, LZ4); rows keep their arrival order per bucket."""

    def __init__(self, directory: Path, num_buckets: int, schema: pa.Schema, flush_bytes: int = 128 * 2**20):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.num_buckets = num_buckets
        self.flush_bytes = flush_bytes
        ensure_open_files(num_buckets + 64)
        self.paths = [self.directory / f"bucket_{i:05d}.arrows" for i in range(num_buckets)]
        self._writers = [pa.ipc.new_stream(str(p), schema, options=_IPC_OPTIONS) for p in self.paths]
        self.counts = np.zeros(num_buckets, np.int64)
        self._pending: list[tuple[pa.Table, np.ndarray]] = []
        self._pending_bytes = 0

    def add(self, table: pa.Table, buckets: np.ndarray) -> None:
        """Queue ``table``'s rows for their ``buckets`` (int array, one entry per row)."""
        if table.num_rows == 0:
            return
        self._pending.append((table, buckets))
        self._pending_bytes += table.nbytes
        if self._pending_bytes >= self.flush_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables([t for t, _ in self._pending])
        buckets = np.concatenate([b for _, b in self._pending])
        self._pending, self._pending_bytes = [], 0
        order = np.argsort(buckets, kind="stable")
        counts = np.bincount(buckets, minlength=self.num_buckets)
        table = table.take(pa.array(order))
        start = 0
        for b in np.nonzero(counts)[0]:
            n = int(counts[b])
            for batch in table.slice(start, n).to_batches():
                self._writers[b].write_batch(batch)
            start += n
        self.counts += counts

    def close(self) -> None:
        self._flush()
        for w in self._writers:
            w.close()

    def buckets(self) -> Iterator[tuple[int, pa.Table]]:
        """Yield ``(index, table)`` for each bucket in order, deleting each file once it is read."""
        for i, path in enumerate(self.paths):
            with pa.OSFile(str(path)) as fh:
                table = pa.ipc.open_stream(fh).read_all()
            path.unlink()
            yield i, table

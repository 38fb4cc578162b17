"""A parquet file read through a read-only memory map, handing each row group's pages back once decoded."""

from __future__ import annotations

import mmap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _chunk_end(col: pq.ColumnChunkMetaData) -> int:
    start = col.dictionary_page_offset if col.has_dictionary_page and col.dictionary_page_offset else col.data_page_offset
    return start + col.total_compressed_size


class MappedParquet:
    """A parquet file read through a read-only memory map; ``release(rg)`` drops row group ``rg``'s pages.

    Reading through the map saves the kernel's copy into a read buffer. Without the release, every page
    read would stay in this process's RSS until the file is closed (a LAION part is 3+ GB).
    """

    def __init__(self, path: Path) -> None:
        self._map = None
        with open(path, "rb") as fh:
            try:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):  # empty file, or a filesystem without mmap: plain reads
                pass
        self.file = pq.ParquetFile(pa.BufferReader(pa.py_buffer(self._map)) if self._map is not None else path)
        meta = self.file.metadata
        self._ends = []  # byte offset where each row group's column chunks end
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            self._ends.append(max((_chunk_end(rg.column(j)) for j in range(rg.num_columns)), default=0))
        self._released = 0

    def close(self) -> None:
        self.file = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # an arrow buffer still points into the map: the GC unmaps it later
                pass
            self._map = None

    def release(self, row_group: int) -> None:
        if self._map is None or not hasattr(self._map, "madvise"):
            return
        end = (self._ends[row_group] // mmap.PAGESIZE) * mmap.PAGESIZE
        if end > self._released:
            self._map.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = end
